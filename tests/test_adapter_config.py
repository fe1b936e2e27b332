"""adapter_config.json fields that change which modules PEFT wraps, or how, against peft 0.21 as the oracle.

Expected values are peft's own: for each field, the set of modules ``get_peft_model`` /
``PeftModel.from_pretrained`` wrap (its ``LoraLayer`` modules) and the logits it computes, in fp32
on the tiny Llama (2 layers × q/k/v/o/gate/up/down), compared with rtol = atol = 1e-5. A field
value rlvf cannot reproduce is refused in one line before the model is touched.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from rlvf.adapter_config import left_out_by
from rlvf.errors import UserError
from rlvf.lora import inject_lora, lora_modules
from rlvf.lora_targets import select_linear_modules
from rlvf.peft_format import load_adapter, save_adapter
from lora_helpers import randomize_lora_B

TOL = dict(rtol=1e-5, atol=1e-5)
PREFIX = "base_model.model."
CONFIG = "adapter_config.json"


def _fresh(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return model(torch.randint(0, model.config.vocab_size, (2, 9), generator=g)).logits  # (B, T, V)


def _peft_wrapped(peft_model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return sorted(n[len(PREFIX):] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))


def _edit(adapter, **changes) -> None:
    path = adapter / CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _peft_from_pretrained(model_dir, adapter):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out on nn.Linear, ignored weights: peft warns
        return PeftModel.from_pretrained(_fresh(model_dir), adapter).eval()


# Each config as peft builds it (LoraConfig fields, r = 4, lora_alpha = 8 unless given).
PEFT_CONFIGS = {
    "target list": dict(target_modules=["q_proj", "v_proj"]),
    "target regex": dict(target_modules=r".*\.(q|down)_proj"),
    "target full path": dict(target_modules=["model.layers.1.self_attn.k_proj", "o_proj"]),
    "all-linear minus exclude list": dict(target_modules="all-linear", exclude_modules=["v_proj", "up_proj"]),
    "exclude regex": dict(target_modules=["q_proj", "v_proj", "gate_proj"], exclude_modules=r".*layers\.1\..*"),
    "layers_to_transform list": dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[0]),
    "layers_to_transform int": dict(target_modules=["q_proj", "down_proj"], layers_to_transform=1),
    "layers_pattern": dict(target_modules=["k_proj", "up_proj"], layers_to_transform=[1], layers_pattern="layers"),
    "layers_pattern list": dict(target_modules=["o_proj"], layers_to_transform=[0, 1], layers_pattern=["h", "layers"]),
    "layers + full path": dict(target_modules=["q_proj", "model.layers.1.mlp.up_proj"], layers_to_transform=[0]),
    "rank/alpha pattern regex": dict(target_modules=["q_proj", "v_proj", "o_proj"],
                                     rank_pattern={r"layers\.1\.self_attn\.(q|o)_proj": 2},
                                     alpha_pattern={"v_proj": 3, r"model\.layers\.0\.self_attn\.o_proj": 5}),
    "rslora + patterns": dict(target_modules=["q_proj", "up_proj"], use_rslora=True, rank_pattern={"up_proj": 6},
                              alpha_pattern={"q_proj": 16}),
    "init gaussian": dict(target_modules=["q_proj"], init_lora_weights="gaussian"),
    "init false": dict(target_modules=["v_proj"], init_lora_weights=False),
    "init orthogonal": dict(target_modules=["gate_proj"], init_lora_weights="orthogonal"),
    "dropout": dict(target_modules=["q_proj"], lora_dropout=0.3),
}


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
def test_peft_saved_adapter_wraps_the_same_modules_and_computes_the_same_logits(tiny_model_dir, tmp_path, case):
    from peft import LoraConfig, get_peft_model

    fields = {"r": 4, "lora_alpha": 8, **PEFT_CONFIGS[case]}
    peft_model = get_peft_model(_fresh(tiny_model_dir), LoraConfig(task_type="CAUSAL_LM", **fields))
    randomize_lora_B(peft_model)
    peft_model.eval()
    expected, wrapped = _logits(peft_model), _peft_wrapped(peft_model)
    peft_model.save_pretrained(tmp_path / "peft")

    model = _fresh(tiny_model_dir)
    assert load_adapter(model, tmp_path / "peft") == wrapped == sorted(lora_modules(model))
    torch.testing.assert_close(_logits(model), expected, **TOL)
    assert not torch.allclose(expected, _logits(_fresh(tiny_model_dir)))  # the adapter acts


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
def test_selection_is_peft_selection(tiny_model_dir, case):
    """left_out_by(...) is None exactly for the modules peft wraps, for every config above."""
    from peft import LoraConfig, get_peft_model

    fields = {"r": 4, "lora_alpha": 8, **PEFT_CONFIGS[case]}
    model = _fresh(tiny_model_dir)
    all_linear = set(select_linear_modules(model, "all-linear", ()))
    config = {"target_modules": fields["target_modules"], **{k: v for k, v in fields.items() if k != "target_modules"}}
    ours = sorted(p for p in select_linear_modules(model, ".*") if left_out_by(config, p, all_linear) is None)
    assert ours == _peft_wrapped(get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **fields)))


def _rlvf_adapter(tiny_model_dir, out, **inject):
    model = _fresh(tiny_model_dir)
    inject_lora(model, seed=0, dropout=0.0, **{"r": 2, "alpha": 4, **inject})
    randomize_lora_B(model)
    return save_adapter(model, out)


@pytest.mark.parametrize("changes", [{"init_lora_weights": "eva"}, {"init_lora_weights": "Gaussian"},
                                     {"fan_in_fan_out": True}, {"lora_dropout": 0.5, "inference_mode": False},
                                     {"unknown_future_key": 1}, {"layers_to_transform": []}])
def test_fields_that_do_not_change_the_loaded_model(tiny_model_dir, tmp_path, changes):
    """peft loads these like the plain adapter (fan_in_fan_out: peft warns and sets it False for
    nn.Linear; init_lora_weights: replaced by the saved weights; unknown keys: dropped)."""
    adapter = _rlvf_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj", "v_proj"])
    _edit(adapter, **changes)
    expected = _logits(_peft_from_pretrained(tiny_model_dir, adapter))
    model = _fresh(tiny_model_dir)
    load_adapter(model, adapter)
    torch.testing.assert_close(_logits(model), expected, **TOL)


# Configs edited so that peft wraps fewer modules than have weights: peft silently ignores the rest
# (vLLM, going by the weights, would apply them), so rlvf refuses, naming the field.
NARROWED = {
    "layers_to_transform": ({"layers_to_transform": [0]}, 2, "layers_to_transform [0] leaves it out (layer 1)"),
    "exclude_modules": ({"exclude_modules": ["v_proj"]}, 2, "exclude_modules ['v_proj'] excludes it"),
    "regex target": ({"target_modules": r".*\.q_proj"}, 2, r"is not matched by adapter_config.json target_modules"),
    "layers_pattern": ({"layers_to_transform": [0, 1], "layers_pattern": "blocks"}, 0,  # peft: none, so it raises
                       "no layer index found (layers_pattern 'blocks')"),
}


@pytest.mark.parametrize("case", list(NARROWED))
def test_weights_outside_the_selection_are_refused(tiny_model_dir, tmp_path, case):
    changes, peft_count, fragment = NARROWED[case]
    adapter = _rlvf_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj", "v_proj"])
    _edit(adapter, **changes)
    if peft_count:
        assert len(_peft_wrapped(_peft_from_pretrained(tiny_model_dir, adapter))) == peft_count < 4
    else:
        from peft.utils.error import NoMatchingPeftModuleError

        with pytest.raises(NoMatchingPeftModuleError):
            _peft_from_pretrained(tiny_model_dir, adapter)
    model = _fresh(tiny_model_dir)
    with pytest.raises(UserError, match="has LoRA weights but") as err:
        load_adapter(model, adapter)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not lora_modules(model)


def test_selected_module_without_weights(tiny_model_dir, tmp_path):
    """peft wraps a selected module that has no saved weights with its initial A/B: a zero update for
    init_lora_weights true (rlvf agrees), a random one for false (rlvf refuses)."""
    adapter = _rlvf_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj"])
    _edit(adapter, target_modules=["q_proj", "k_proj"])
    expected = _logits(_peft_from_pretrained(tiny_model_dir, adapter))
    model = _fresh(tiny_model_dir)
    load_adapter(model, adapter)
    torch.testing.assert_close(_logits(model), expected, **TOL)
    _edit(adapter, init_lora_weights=False)
    with pytest.raises(UserError, match=r"selects model.layers.0.self_attn.k_proj, which has no weights"):
        load_adapter(_fresh(tiny_model_dir), adapter)


REFUSED = {
    "dora": ({"use_dora": True}, "use_dora = True is not supported (DoRA"),
    "bias all": ({"bias": "all"}, "bias = 'all' is not supported"),
    "bias lora_only": ({"bias": "lora_only"}, "bias = 'lora_only' is not supported"),
    "lora_bias": ({"lora_bias": True}, "lora_bias = True is not supported"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save = ['lm_head'] is not supported"),
    "layer_replication": ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication = [[0, 2], [1, 2]]"),
    "target_parameters str": ({"target_parameters": "down_proj"}, "target_parameters must be a list"),
    "target_parameters 1-D": ({"target_parameters": ["input_layernorm.weight"]}, "PEFT adapts 2-D and 3-D"),
    "trainable tokens": ({"trainable_token_indices": [1, 2]}, "trainable_token_indices ="),
    "alora": ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens ="),
    "qalora": ({"use_qalora": True}, "use_qalora = True"),
    "megatron": ({"megatron_config": {"tensor_model_parallel_size": 2}}, "megatron_config ="),
    "variant": ({"kasa_config": {"x": 1}}, "kasa_config ="),
    "pissa": ({"init_lora_weights": "pissa_niter_4"}, "PEFT rewrites the base weights"),
    "olora": ({"init_lora_weights": "olora"}, "init_lora_weights = 'olora'"),
    "loftq": ({"init_lora_weights": "loftq"}, "init_lora_weights = 'loftq'"),
    "mica": ({"init_lora_weights": "mica"}, "a LoRA variant"),
    "no target_modules": ({"target_modules": None}, "target_modules is missing"),
    "regex + layers": ({"target_modules": ".*q_proj", "layers_to_transform": [0]},
                       "layers_to_transform needs target_modules to be a list"),
    "pattern without layers": ({"layers_pattern": "layers"}, "layers_pattern is set but layers_to_transform is not"),
    "bad layer index": ({"layers_to_transform": ["0"]}, "layers_to_transform must be a layer index"),
    "bad exclude": ({"exclude_modules": "(v_proj"}, "exclude_modules '(v_proj' is not a valid regex"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_fields_rlvf_cannot_honour_are_refused_in_one_line(tiny_model_dir, tmp_path, case):
    changes, fragment = REFUSED[case]
    adapter = _rlvf_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj", "v_proj"])
    _edit(adapter, **changes)
    model = _fresh(tiny_model_dir)
    with pytest.raises(UserError) as err:
        load_adapter(model, adapter)
    message = str(err.value)
    assert fragment in message and str(adapter / CONFIG) in message and "\n" not in message, message
    assert not lora_modules(model)


def test_mix_keeps_a_narrowed_selection_exact(tiny_model_dir, tmp_path):
    """A mix of a peft adapter on layer 0 only (layers_to_transform) and one on every v_proj names
    its modules in full, so peft wraps exactly the mixed modules; peft and rlvf agree on the mix."""
    from peft import LoraConfig, get_peft_model

    from rlvf.peft_format import mix_adapters

    config = LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, target_modules=["q_proj"], layers_to_transform=[0])
    peft_model = get_peft_model(_fresh(tiny_model_dir), config)
    randomize_lora_B(peft_model)
    peft_model.save_pretrained(tmp_path / "layer0")
    other = _rlvf_adapter(tiny_model_dir, tmp_path / "v", target_modules=["v_proj"])
    mixed = mix_adapters([(tmp_path / "layer0", 0.5), (other, 1.0)], tmp_path / "mix")
    targets = json.loads((mixed / CONFIG).read_text())["target_modules"]
    assert targets == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                       "model.layers.1.self_attn.v_proj"]
    peft_mix = _peft_from_pretrained(tiny_model_dir, mixed)
    model = _fresh(tiny_model_dir)
    assert load_adapter(model, mixed) == _peft_wrapped(peft_mix) == targets
    torch.testing.assert_close(_logits(model), _logits(peft_mix), **TOL)
