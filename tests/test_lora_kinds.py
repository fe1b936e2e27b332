"""LoRA on every kind of weight PEFT adapts, checked against peft 0.21 as the oracle.

Tiny random models built from transformers config classes (hidden 64, 2 layers, vocabulary 96):
llama (control), gpt2 (Conv1D: weight (in, out), PEFT's fan_in_fan_out), phi3 / falcon / gpt_neox
(fused qkv and gate-up projections; Falcon's own nn.Linear subclass), mixtral / qwen3_moe / gpt_oss
(experts as 3-D parameters, GPT-OSS's stored (E, in, out), and a router that is not an nn.Linear:
PEFT's target_parameters) and falcon_h1 (Mamba mixers, whose out_proj PEFT refuses); then the 14
other architectures of tests/test_architectures.py, built by its config builder (mistral, qwen2,
qwen3, gemma, gemma2, gemma3_text, phi, opt, cohere, cohere2, granite, olmo2, starcoder2, bloom:
tied heads, softcaps, logit multipliers, lm_head biases, OPT's and BLOOM's projections). For each
of the 23, with B random the adapters move the logits by ≥ 1% of their magnitude (so no equality
below can hold with an adapter ignored), and:

- "all-linear" adapts exactly what ``peft.get_peft_model(target_modules="all-linear")`` adapts
  (modules and parameters, by name; for GPT-OSS with the experts and router named as
  target_parameters), and saves the tensors under the keys PEFT saves;
- with B set to random non-zero values, the logits equal those of PEFT after it loads rlvf's
  saved adapter (fp32, ≤ 1e-5 relative), and so do the gradients of every LoRA weight;
- rlvf's own save/load round trip is exact, adapters switched off give the base model bit for
  bit, and the merged export (and an in-place merge) equals the adapted model;
- every LoRA gradient is finite and non-zero.

Where PEFT itself cannot load an adapter, the test says so (xfail with PEFT's reason).
"""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import torch.nn as nn

from rlvf.errors import UserError
from rlvf.lora import (LoRALinear, describe_adapters, disable_adapters, inject_lora, lora_modules,
                       lora_state_dict, merge_adapters, unmerge_adapters)
from rlvf.lora_param import LoRAParameter
from rlvf.peft_format import export_merged, load_adapter, mix_adapters, save_adapter
from lora_helpers import randomize_lora_B
from test_architectures import ARCHITECTURES, _config as architecture_config

VOCAB = 96
RTOL = 1e-5  # fp32, relative to the largest magnitude of the reference
COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
              max_position_embeddings=64)


def _config(arch: str, **extra):
    import transformers as T

    gqa = dict(intermediate_size=96, num_key_value_heads=2)
    configs = {
        "llama": lambda: T.LlamaConfig(**gqa, **COMMON),
        "gpt2": lambda: T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                     bos_token_id=0, eos_token_id=0),
        "phi3": lambda: T.Phi3Config(**gqa, pad_token_id=0, bos_token_id=1, eos_token_id=2, **COMMON),
        "falcon": lambda: T.FalconConfig(**COMMON),
        "gpt_neox": lambda: T.GPTNeoXConfig(intermediate_size=96, **COMMON),
        "mixtral": lambda: T.MixtralConfig(intermediate_size=32, num_key_value_heads=2, num_local_experts=4,
                                           num_experts_per_tok=2, **COMMON),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(intermediate_size=96, moe_intermediate_size=32, num_key_value_heads=2,
                                              num_experts=4, num_experts_per_tok=2, head_dim=16, **COMMON),
        "gpt_oss": lambda: T.GptOssConfig(intermediate_size=32, num_key_value_heads=2, head_dim=16,
                                          num_local_experts=4, num_experts_per_tok=2, **COMMON),
        "falcon_h1": lambda: T.FalconH1Config(**gqa, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16,
                                              mamba_d_state=8, mamba_n_groups=1, **COMMON),
    }
    config = configs[arch]() if arch in configs else architecture_config(arch)
    for key, value in extra.items():
        setattr(config, key, value)
    return config


# the nine above, whose layer kinds differ, and every other architecture of tests/test_architectures.py
# (built there, vocabulary 128: dense nn.Linear models with softcaps, logit multipliers, lm_head biases,
# fused query_key_value and OPT's projections), so that each of the 23 round-trips through PEFT
ARCHS = ["llama", "gpt2", "phi3", "falcon", "gpt_neox", "mixtral", "qwen3_moe", "gpt_oss", "falcon_h1"]
ARCHS += [a for a in ARCHITECTURES if a not in ARCHS]
MOE = {"mixtral", "qwen3_moe", "gpt_oss"}
# PEFT's all-linear adds the router and experts itself only for the model types of its transformers-5
# conversion (Mixtral- and Qwen-MoE-style); for GPT-OSS (experts (E, in, out), is_transposed) they are
# named as target_parameters.
PEFT_PARAMS = {"gpt_oss": ["down_proj", "gate_up_proj", "router.weight"]}


def _build(arch: str, **extra) -> nn.Module:
    """The same random fp32 model every call (seeded), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(_config(arch, **extra), dtype=torch.float32).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(123))  # (B, T)


def _loss(model) -> torch.Tensor:
    """A scalar that depends on every logit: cross-entropy against fixed random targets."""
    logits = model(_ids()).logits  # (B, T, V)
    targets = torch.randint(0, VOCAB, logits.shape[:2], generator=torch.Generator().manual_seed(7))
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(_ids()).logits


def _assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    err = (got - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item(), f"max abs error {err:.3g}, reference max {expected.abs().max():.3g}"


def _adapted(arch: str, build: dict | None = None, **inject):
    model = _build(arch, **(build or {}))
    inject_lora(model, **{"target_modules": "all-linear", "exclude_modules": (), "r": 4, "alpha": 8,
                          "dropout": 0.05, "seed": 0, **inject})
    randomize_lora_B(model)
    return model


def _peft_all_linear(arch: str):
    """peft.get_peft_model with target_modules="all-linear" (minus out_proj on Falcon-H1, see below)."""
    from peft import LoraConfig, get_peft_model

    exclude = ["out_proj"] if arch == "falcon_h1" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(_build(arch), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                       exclude_modules=exclude, target_parameters=PEFT_PARAMS.get(arch)))


def _peft_load(arch: str, adapter_dir, trainable: bool = False):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(_build(arch), adapter_dir, is_trainable=trainable).eval()


def _peft_file_key(name: str) -> str:
    """PEFT's in-memory parameter name -> its key in the adapter file (no prefix)."""
    return name.removeprefix("base_model.model.").replace(".default.", ".")


# ---------------------------------------------------------------------------------------------
# The architecture matrix


@pytest.mark.parametrize("arch", ARCHS)
def test_all_linear_adapts_what_peft_adapts(arch, tmp_path):
    """Same modules and parameters as PEFT's all-linear, and the same keys in the saved file."""
    model = _build(arch)
    paths = inject_lora(model, "all-linear", exclude_modules=(), r=4, alpha=8, dropout=0.0)
    peft_model = _peft_all_linear(arch)
    tuner = peft_model.base_model
    assert sorted(paths) == sorted(tuner.targeted_module_names + tuner.targeted_parameter_names)
    peft_model.save_pretrained(tmp_path / "peft")
    save_adapter(model, tmp_path / "rlvf")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as f:
        peft_keys = sorted(f.keys())
    with safe_open(str(tmp_path / "rlvf" / "adapter_model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == peft_keys
    if arch == "falcon_h1":  # PEFT's own all-linear refuses the Mamba mixer's out_proj; rlvf leaves it out
        from peft import LoraConfig, get_peft_model

        with pytest.raises(ValueError, match="incompatible with Mamba"):
            get_peft_model(_build(arch), LoraConfig(target_modules="all-linear"))
        assert not any(p.endswith("out_proj") for p in paths) and any(p.endswith("in_proj") for p in paths)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_adapter_gives_peft_the_same_logits_and_gradients(arch, tmp_path):
    model = _adapted(arch)
    out = save_adapter(model, tmp_path / "a")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (arch == "gpt2")
    assert bool(config["target_parameters"]) is (arch in MOE)
    assert config["lora_dropout"] == (0.0 if arch in MOE else 0.05)  # PEFT refuses dropout with target_parameters
    peft_model = _peft_load(arch, out, trainable=True)
    loss = _loss(model)
    peft_loss = _loss(peft_model)
    _assert_close(loss.detach(), peft_loss.detach())
    _assert_close(_logits(model), _logits(peft_model))
    loss.backward()
    peft_loss.backward()
    ours = {key: model.get_parameter(name).grad for name, key in _key_map(model).items()}
    theirs = {_peft_file_key(n): p.grad for n, p in peft_model.named_parameters() if "lora_" in n}
    assert sorted(ours) == sorted(theirs)
    for key, grad in ours.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, key
        _assert_close(grad, theirs[key], rtol=1e-4)  # a sum over many more products than the logits


@pytest.mark.parametrize("arch", sorted(MOE))
def test_peft_saved_moe_adapter_loads_here(arch, tmp_path):
    """PEFT's own all-linear adapter (gate_up_proj at rank 2r, α 2α for Mixtral/Qwen-MoE via rank_pattern
    and alpha_pattern, as its transformers-5 conversion sets them) gives the same logits in rlvf."""
    peft_model = _peft_all_linear(arch)
    randomize_lora_B(peft_model)
    peft_model.save_pretrained(tmp_path / "peft")
    model = _build(arch)
    paths = load_adapter(model, tmp_path / "peft")
    assert paths == sorted(peft_model.base_model.targeted_module_names + peft_model.base_model.targeted_parameter_names)
    _assert_close(_logits(model), _logits(peft_model.eval()))


def _key_map(model) -> dict[str, str]:
    from rlvf.lora import peft_key_map

    return peft_key_map(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_disable_merge_and_export(arch, tmp_path):
    model = _adapted(arch)
    adapted = _logits(model)
    with disable_adapters(model):
        base = _logits(model)
        assert torch.equal(base, _logits(_build(arch)))  # the base model, bit for bit
    # the adapters change the logits far beyond the tolerances below (≥ 3% of their magnitude on every
    # architecture here), so that no equality in this file can hold with an adapter ignored
    assert (adapted - base).abs().max() > 0.01 * base.abs().max()
    out = save_adapter(model, tmp_path / "a")
    fresh = _build(arch)
    loaded = load_adapter(fresh, out)
    assert loaded == sorted(lora_modules(model))
    assert torch.equal(_logits(fresh), adapted)
    assert all(torch.equal(t, lora_state_dict(model)[k]) for k, t in lora_state_dict(fresh).items())

    merge_adapters(model)
    _assert_close(_logits(model), adapted)
    unmerge_adapters(model)

    class NoTokenizer:
        def save_pretrained(self, path):
            pass

    from transformers import AutoModelForCausalLM

    merged_dir = export_merged(model, NoTokenizer(), tmp_path / "merged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    _assert_close(_logits(merged), adapted)


# ---------------------------------------------------------------------------------------------
# Layer kinds one at a time


def test_conv1d_layer_is_x_w_plus_b_plus_the_update():
    """GPT-2's Conv1D computes x W + b with W (in, out); LoRA adds s · x Aᵀ Bᵀ, and ΔW is stored (in, out)."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = Conv1D(12, 5)  # nf = out = 12, nx = in = 5
    nn.init.normal_(base.bias)
    layer = LoRALinear(base, r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 4, 5)
    A, B = layer.lora_A.weight, layer.lora_B.weight  # (3, 5), (12, 3)
    torch.testing.assert_close(layer(x), x @ base.weight + base.bias + 2.0 * x @ A.T @ B.T)
    assert layer.delta_weight().shape == (5, 12)
    layer.disabled = True
    assert torch.equal(layer(x), base(x))


def test_expert_stack_update_is_per_expert_b_a():
    """ΔW_e = s · B_e A_e with A_e = A.view(E, r, in)[e] and B_e = B.view(out, r, E)[:, :, e] (PEFT's
    ParamWrapper layout), in the weight's (E, out, in) or, if is_transposed, (E, in, out) layout."""
    E, r, d_in, d_out = 3, 2, 5, 4
    for transposed in (False, True):
        owner = nn.Module()
        owner.is_transposed = transposed
        owner.w = nn.Parameter(torch.randn(E, d_in, d_out) if transposed else torch.randn(E, d_out, d_in))
        lora = LoRAParameter(owner, "w", r, alpha=3.0)
        with torch.no_grad():
            lora.lora_B.weight.normal_()
        A, B = lora.lora_A.weight, lora.lora_B.weight  # (E·r, in), (out, r·E)
        for e in range(E):
            expected = 1.5 * B[:, e::E] @ A[e * r:(e + 1) * r]  # (out, in)
            got = lora.delta_weight()[e]
            torch.testing.assert_close(got.T if transposed else got, expected)
            torch.testing.assert_close(lora.adapted_weight(owner.w)[e] - owner.w[e], got)


def test_copy_factors_pads_each_expert():
    """A rank-2 adapter copied into rank-4 slots (the server's shared modules) keeps its ΔW."""
    owner = nn.Module()
    owner.w = nn.Parameter(torch.randn(3, 4, 5))  # (E, out, in)
    small, big = LoRAParameter(owner, "w", 2, alpha=2.0), LoRAParameter(owner, "w", 4, alpha=4.0)
    with torch.no_grad():
        small.lora_B.weight.normal_()
    big.copy_factors(small.lora_A.weight, small.lora_B.weight)
    torch.testing.assert_close(big.delta_weight(), small.delta_weight())


def test_startup_line_names_kinds_and_share():
    model = _build("mixtral")
    inject_lora(model, "all-linear", r=4, alpha=8, dropout=0.0)
    line = describe_adapters(model)
    for kind in ("Linear ×8", "MixtralTopKRouter.weight ×2", "MixtralExperts.gate_up_proj ×2",
                 "MixtralExperts.down_proj ×2"):
        assert kind in line, line
    # independently: every weight but embeddings and lm_head, norms included
    total = sum(p.numel() for n, p in _build("mixtral").named_parameters()
                if not re.search(r"embed_tokens|lm_head", n))
    adapted = total - sum(p.numel() for n, p in _build("mixtral").named_parameters()
                          if re.search(r"norm", n) and "embed" not in n)
    assert f"{adapted:,} of {total:,} non-embedding weights ({adapted / total:.1%})" in line, line


def test_falcon_h1_mamba_out_proj_is_refused_by_name():
    with pytest.raises(UserError, match=r"mamba\.out_proj is a Mamba mixer's out_proj.*lora.exclude_modules"):
        inject_lora(_build("falcon_h1"), ["in_proj", "out_proj"], r=2, alpha=2)


def test_linear_subclass_that_is_not_linear_is_refused():
    """An nn.Linear subclass whose forward returns something else (e.g. a router's tuple) is named."""

    class TupleRouter(nn.Linear):
        def forward(self, x):
            return super().forward(x), None

    model = nn.Sequential(nn.Linear(4, 4), TupleRouter(4, 2))
    with pytest.raises(UserError, match=r"lora.target_modules: 1: TupleRouter is an nn.Linear whose forward"):
        inject_lora(model, "all-linear", exclude_modules=(), r=2, alpha=2)


def test_bad_expert_adapter_is_refused_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    out = save_adapter(_adapted("mixtral"), tmp_path / "a")
    file = out / "adapter_model.safetensors"
    tensors = load_file(file)
    a = "base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight"  # gate_up_proj's A (E·r, in)
    b = a.replace("lora_A", "lora_B")  # (out, r·E); 15 is no multiple of E = 4 experts
    save_file({**tensors, a: tensors[a][:-1], b: tensors[b][:, :-1].contiguous()}, file, metadata={"format": "pt"})
    model = _build("mixtral")
    with pytest.raises(UserError, match=r"experts.base_layer.lora_A.weight has shape \(15, 64\), expected "
                                        r"\(12, 64\) for model.layers.0.mlp.experts.gate_up_proj \(4, 64, 64\)"):
        load_adapter(model, out)
    assert not lora_modules(model)


@pytest.mark.parametrize("arch", sorted(MOE))
def test_mix_of_expert_adapters_is_the_weighted_sum_in_peft(arch, tmp_path):
    """rlvf's all-linear adapter (attention, experts and router; r 4, α 8) mixed with weight −0.5 into
    one PEFT made (q_proj and the gate-up experts only; r 2, α 6): its key for the experts names
    gate_up_proj, where the first adapter's same key names down_proj (PEFT nests one wrapper per
    parameter), so the mix must go by parameter, not by key. Oracle: PEFT, loading each adapter and
    merging it, gives ΔWᵢ = Mᵢ − W; loading the mix and merging it must give W + ΔW₁ − 0.5·ΔW₂ for
    every weight of the model. The mix reads the model's structure from the base model's config.json
    alone (a meta-device skeleton), and rlvf loads the mix with PEFT's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    _build(arch).save_pretrained(base_dir)

    def base():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()

    one = save_adapter(_adapted(arch), tmp_path / "one", base_model_name_or_path=str(base_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_two = get_peft_model(base(), LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"],
                                                     target_parameters=["gate_up_proj"]))
    randomize_lora_B(peft_two, seed=1)
    peft_two.save_pretrained(tmp_path / "two")
    two_keys = json.loads((tmp_path / "two" / "adapter_config.json").read_text())
    assert two_keys["target_parameters"] == ["gate_up_proj"]
    mixed = mix_adapters([(one, 1.0), (tmp_path / "two", -0.5)], tmp_path / "mix")
    config = json.loads((mixed / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4 + 2 and config["lora_dropout"] == 0.0
    assert set(config["target_parameters"]) >= {"gate_up_proj"} and len(config["target_parameters"]) >= 2

    def merged(adapter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PeftModel.from_pretrained(base(), adapter).merge_and_unload().state_dict()

    W, M1, M2, M = base().state_dict(), merged(one), merged(tmp_path / "two"), merged(mixed)
    changed = set()
    for key, w in W.items():
        expected = w + (M1[key] - w) - 0.5 * (M2[key] - w)
        _assert_close(M[key], expected, rtol=1e-5)
        if not torch.equal(M[key], w):
            changed.add(key.rsplit(".", 1)[0])
    assert any(k.endswith("experts.gate_up_proj") or k.endswith("experts") for k in changed), changed
    assert any("router" in k or "gate" in k for k in changed) and any(k.endswith("q_proj") for k in changed)
    rlvf_model = base()
    load_adapter(rlvf_model, mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_close(_logits(rlvf_model), _logits(PeftModel.from_pretrained(base(), mixed).eval()))


def test_mix_of_expert_adapters_needs_the_base_model(tmp_path):
    out = save_adapter(_adapted("mixtral"), tmp_path / "a")  # built from a config: no base model recorded
    with pytest.raises(UserError, match=r"a/adapter_config.json: records no base_model_name_or_path, which is "
                                        r"needed to read its target_parameters"):
        mix_adapters([(out, 1.0)], tmp_path / "mix")
    assert not (tmp_path / "mix").exists()


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="peft 0.21.2 on transformers 5 rewrites target_modules gate_proj/up_proj/down_proj of "
                          "Qwen-MoE-style models into the experts' target_parameters (its v4->v5 conversion), so "
                          "LoRA on a dense MLP layer (mlp_only_layers) of such a model does not load in PEFT")
def test_dense_mlp_layer_of_a_qwen_moe_model_in_peft(tmp_path):
    model = _adapted("qwen3_moe", build=dict(mlp_only_layers=[0]))
    assert "model.layers.0.mlp.down_proj" in lora_modules(model)
    out = save_adapter(model, tmp_path / "a")
    fresh = _build("qwen3_moe", mlp_only_layers=[0])  # rlvf's own round trip is exact
    load_adapter(fresh, out)
    assert torch.equal(_logits(fresh), _logits(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(_build("qwen3_moe", mlp_only_layers=[0]), out).eval()
    _assert_close(_logits(peft_model), _logits(model))
