"""rlvf.lora and rlvf.peft_format against hand-written maths and against peft (the oracle for the
adapter file format).

Expected values:
- LoRALinear: y = x Wᵀ + b + s · x Aᵀ Bᵀ with s = α/r, or α/√r for rsLoRA (Hu et al. 2021 eq. 3;
  Kalajdzievski 2023).
- Mixing: ΔW_mix = Σ wᵢ · sᵢ · Bᵢ Aᵢ, computed here from each adapter's own tensors.
- Files: whatever peft 0.21 computes from the same folder (``PeftModel.from_pretrained``).
All in fp32 on the CPU; logits compared with rtol = atol = 1e-5.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlvf.errors import UserError
from rlvf.lora import (
    LoRALinear,
    disable_adapters,
    inject_lora,
    lora_modules,
    lora_state_dict,
    merge_adapters,
    trainable_parameters,
    unmerge_adapters,
)
from rlvf.peft_format import export_merged, load_adapter, mix_adapters, save_adapter
from lora_helpers import randomize_lora_B

TOL = dict(rtol=1e-5, atol=1e-5)
PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
QV = ["q_proj", "v_proj"]
Q0 = "model.layers.0.self_attn.q_proj"


def _fresh(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _input_ids(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, model.config.vocab_size, (2, 9), generator=g)  # (B, T)


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(_input_ids(model)).logits  # (B, T, V)


def _peft_logits(model_dir, adapter_dir) -> torch.Tensor:
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(_fresh(model_dir), adapter_dir).eval())


def _all_linear_but_lm_head(model) -> list[str]:
    linear = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    return sorted(p for p in linear if p != "lm_head")


def _adapter(tiny_model_dir, out_dir, seed=0, **inject_kwargs):
    """Save an adapter with random nonzero B; return (its dir, its lora_state_dict)."""
    model = _fresh(tiny_model_dir)
    inject_lora(model, seed=seed, **inject_kwargs)
    randomize_lora_B(model, seed)
    return save_adapter(model, out_dir), {k: v.clone() for k, v in lora_state_dict(model).items()}


# ---------------------------------------------------------------------------------------------
# The layer


@pytest.mark.parametrize("use_rslora, scaling", [(False, 6 / 3), (True, 6 / math.sqrt(3))])
def test_lora_linear_matches_formula(use_rslora, scaling):
    torch.manual_seed(0)
    base = nn.Linear(13, 7, bias=True)
    layer = LoRALinear(base, r=3, alpha=6, use_rslora=use_rslora)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 5, 13)
    W, b, A, B = base.weight, base.bias, layer.lora_A.weight, layer.lora_B.weight
    expected = x @ W.T + b + scaling * (x @ A.T @ B.T)  # (4, 5, 7)
    assert layer.scaling == pytest.approx(scaling)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), scaling * B @ A)


def test_lora_linear_keeps_base_parameters_and_starts_at_zero():
    base = nn.Linear(8, 5, bias=True).to(torch.bfloat16)
    layer = LoRALinear(base, r=2, alpha=4, dropout=0.1)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "lora_A.weight", "lora_B.weight"}
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert layer.lora_A.weight.abs().max() <= 1 / math.sqrt(8)  # kaiming_uniform_(a=√5) bound
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert torch.equal(layer.eval()(x), base(x))  # B = 0: exactly the base layer
    assert "r=2" in repr(layer) and isinstance(layer.dropout, nn.Dropout)


def test_bf16_base_and_autocast():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    ref = LoRALinear(base, r=4, alpha=8)
    nn.init.normal_(ref.lora_B.weight)
    x = torch.randn(2, 16)
    y_ref = ref(x)  # fp32 everywhere
    # bf16 base, fp32 adapters: output in bf16, adapter grads in fp32.
    layer = LoRALinear(nn.Linear(16, 8).to(torch.bfloat16), r=4, alpha=8)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(ref.get_parameter(name))  # cast to bf16 for the base, fp32 for A and B
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)  # bf16 base: ~3 digits
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32 and layer.weight.grad is None
    # fp32 base under autocast: the base matmul runs in bf16, the adapter path in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ref(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)


def test_merge_unmerge_round_trip():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 6), r=3, alpha=5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 12)
    W0, y0 = layer.weight.detach().clone(), layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y0, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert not layer.merged and (layer.weight - W0).abs().max() <= 1e-6
    torch.testing.assert_close(layer(x), y0, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def _plain_lora_grads(layer, x, upstream, scale):
    """y = x Wᵀ + b + s·((x ⊙ D) Aᵀ) Bᵀ through plain autograd, D the dropout multiplier."""
    W, b = layer.weight, layer.bias
    A = layer.lora_A.weight.detach().clone().requires_grad_(True)
    B = layer.lora_B.weight.detach().clone().requires_grad_(True)
    x = x.detach().clone().requires_grad_(True)
    y = x @ W.T + b + layer.scaling * ((x * scale) @ A.T @ B.T)  # (…, out)
    (y * upstream).sum().backward()
    return y, x.grad, A.grad, B.grad


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_lora_branch_backward_matches_plain_autograd(p):
    """The custom autograd.Function (mask redrawn from a seed in backward) against autograd of the
    plain formula with the same mask: D = M/(1 − p̂), M the Bernoulli(1 − p̂) keep mask, p̂ = p at
    16-bit resolution."""
    from rlvf.lora import _draw_seed, _drop_mask, quantized_dropout

    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(13, 7), r=3, alpha=6, dropout=p).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 5, 13, requires_grad=True)
    upstream = torch.randn(4, 5, 7)
    torch.manual_seed(123)
    y = layer(x)
    (y * upstream).sum().backward()
    torch.manual_seed(123)  # the layer draws its seed from the global RNG: draw the same one
    mask = (~_drop_mask(torch.Size([20, 13]), p, _draw_seed(), x.device)).reshape(4, 5, 13).float() if p else None
    if p:
        assert (mask == 0).any() and (mask == 1).any()
    scale = mask / (1 - quantized_dropout(p)) if p else 1.0  # inverted dropout, as nn.Dropout
    want = _plain_lora_grads(layer, x, upstream, scale)
    got = (y, x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_drop_mask_rate_and_repeatability(p):
    """The drop mask has rate p̂ (p to 2⁻¹⁶), repeats from its seed, differs across seeds, and has
    no structure across the four 16-bit lanes of a random word (each lane alone has rate p̂)."""
    from rlvf.lora import _drop_mask, quantized_dropout

    assert abs(quantized_dropout(p) - p) <= 2**-17
    shape = torch.Size([1000, 401])  # an odd element count: the last word is cut
    m = _drop_mask(shape, p, 5, torch.device("cpu"))
    assert m.dtype == torch.bool and m.shape == shape
    assert torch.equal(m, _drop_mask(shape, p, 5, torch.device("cpu")))
    assert not torch.equal(m, _drop_mask(shape, p, 6, torch.device("cpu")))
    n = m.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(m.float().mean().item() - p) < 5 * sd
    lanes = m.flatten()[: n - n % 4].view(-1, 4).float().mean(0)  # (4,) rate per lane
    assert (lanes - p).abs().max().item() < 5 * 2 * sd


def test_lora_dropout_saves_no_copy_of_the_input():
    """With dropout on, backward keeps x and h = dropout(x) Aᵀ only, not a mask or a dropped-out copy."""
    layer = LoRALinear(nn.Linear(64, 32), r=4, alpha=8, dropout=0.1).train()
    x = torch.randn(16, 64, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    activations = sum(n for ptr, n in saved.items() if ptr not in params)
    assert activations == x.numel() * 4 + 16 * 4 * 4  # x (16, 64) and h (16, 4), fp32
    W, b, A, B = layer.weight, layer.bias, layer.lora_A.weight, layer.lora_B.weight
    expected = x @ W.T + b + layer.scaling * (x @ A.T @ B.T)  # eval: dropout off
    torch.testing.assert_close(layer.eval()(x), expected, **TOL)


def test_disable_adapters_gives_the_base_model_exactly(tiny_model, tiny_model_dir):
    base_logits = _logits(_fresh(tiny_model_dir))
    inject_lora(tiny_model, r=4, alpha=8)
    randomize_lora_B(tiny_model)
    adapted = _logits(tiny_model)
    assert not torch.allclose(adapted, base_logits)
    with disable_adapters(tiny_model):
        assert torch.equal(_logits(tiny_model), base_logits)
    assert torch.equal(_logits(tiny_model), adapted)
    with pytest.raises(KeyError), disable_adapters(tiny_model):
        raise KeyError("boom")
    assert not any(m.disabled for m in lora_modules(tiny_model).values())
    merge_adapters(tiny_model)
    with pytest.raises(RuntimeError, match="merged"), disable_adapters(tiny_model):
        pass
    torch.testing.assert_close(_logits(tiny_model), adapted, **TOL)
    unmerge_adapters(tiny_model)


# ---------------------------------------------------------------------------------------------
# Injection


def test_inject_all_linear_wraps_every_linear_but_lm_head(tiny_model):
    expected = _all_linear_but_lm_head(tiny_model)
    base_keys = set(tiny_model.state_dict())
    paths = inject_lora(tiny_model, r=4, alpha=8, exclude_modules=())  # all-linear skips lm_head
    assert paths == expected and sorted(lora_modules(tiny_model)) == expected
    assert not any(m.training for m in tiny_model.modules())  # an eval() model stays in eval
    assert len(paths) == 7 * tiny_model.config.num_hidden_layers
    keys = set(tiny_model.state_dict())
    assert base_keys <= keys  # HF key names kept
    assert keys - base_keys == {f"{p}.lora_{x}.weight" for p in paths for x in "AB"}
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(tiny_model))
    assert len(trainable_parameters(tiny_model)) == 2 * len(paths)


OQV = ["self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]


@pytest.mark.parametrize(
    "target, exclude, expected",
    [
        (["q_proj", "v_proj"], ("lm_head",), ["self_attn.q_proj", "self_attn.v_proj"]),
        (["self_attn.o_proj"], (), ["self_attn.o_proj"]),
        (r"model\.layers\.\d+\.mlp\.(up|down)_proj", (), ["mlp.down_proj", "mlp.up_proj"]),
        # exclude_modules wins; list entries are name suffixes, a string is a regex
        ("all-linear", ["self_attn.k_proj", "down_proj"], ["mlp.gate_proj", "mlp.up_proj", *OQV]),
        ("all-linear", r".*\.(gate|up|down)_proj", ["self_attn.k_proj", *OQV]),
    ],
)
def test_inject_selection(tiny_model, target, exclude, expected):
    layers = range(tiny_model.config.num_hidden_layers)
    paths = inject_lora(tiny_model, target_modules=target, exclude_modules=exclude, r=2, alpha=2)
    assert paths == sorted(f"model.layers.{i}.{e}" for i in layers for e in expected)


def test_inject_errors(tiny_model):
    with pytest.raises(UserError, match=r"target_modules: .*matched no linear layer .*LlamaForCausal"):
        inject_lora(tiny_model, target_modules=["nope_proj"])
    with pytest.raises(UserError, match="matched no linear layer"):
        inject_lora(tiny_model, target_modules=["q_proj"], exclude_modules=["q_proj"])
    with pytest.raises(UserError, match="not a valid regex"):
        inject_lora(tiny_model, target_modules="model.(")
    assert not lora_modules(tiny_model)
    inject_lora(tiny_model, target_modules=["q_proj"], r=2, alpha=2)
    with pytest.raises(UserError, match="already has LoRA adapters"):
        inject_lora(tiny_model, target_modules=["v_proj"])


def test_inject_seed_is_deterministic_and_leaves_global_rng(tiny_model_dir):
    a, b = _fresh(tiny_model_dir), _fresh(tiny_model_dir)
    rng = torch.get_rng_state()
    inject_lora(a, r=4, alpha=8, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    inject_lora(b, r=4, alpha=8, seed=7)
    sa, sb = lora_state_dict(a), lora_state_dict(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# Saving here, loading in peft


@pytest.mark.parametrize(
    "inject_kwargs, target_modules",
    [
        (dict(r=4, alpha=8), ALL_LINEAR),
        (dict(r=4, alpha=8, use_rslora=True, target_modules=QV), QV),
        (dict(r=3, alpha=5, target_modules=[Q0]), [Q0]),  # not every q_proj: full paths
    ],
    ids=["all-linear", "rslora", "one-module"],
)
def test_saved_adapter_loads_in_peft(tiny_model_dir, tmp_path, inject_kwargs, target_modules):
    model = _fresh(tiny_model_dir)
    inject_lora(model, seed=0, **inject_kwargs)
    randomize_lora_B(model)
    out = save_adapter(model, tmp_path / "adapter", base_model_name_or_path="tiny/base")

    config = json.loads((out / CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == inject_kwargs["r"] and config["lora_alpha"] == inject_kwargs["alpha"]
    assert config["use_rslora"] == inject_kwargs.get("use_rslora", False)
    assert config["target_modules"] == target_modules
    assert config["bias"] == "none" and config["modules_to_save"] is None and not config["use_dora"]
    assert config["base_model_name_or_path"] == "tiny/base" and config["lora_dropout"] == 0.05
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    with safe_open(out / WEIGHTS, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    ours = lora_state_dict(model)
    assert keys == {PREFIX + k for k in ours}
    for key, tensor in load_file(out / WEIGHTS).items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, ours[key[len(PREFIX):]])
    assert ours[f"{Q0}.lora_A.weight"].shape == (inject_kwargs["r"], 64)  # (r, in)
    assert ours[f"{Q0}.lora_B.weight"].shape == (64, inject_kwargs["r"])  # (out, r)

    expected = _logits(model)
    assert not torch.allclose(expected, _logits(_fresh(tiny_model_dir)))  # the adapter acts
    torch.testing.assert_close(_peft_logits(tiny_model_dir, out), expected, **TOL)


def test_save_replaces_existing_folder_atomically(tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    _adapter(tiny_model_dir, out, target_modules=["q_proj"], r=2, alpha=2)
    _, state = _adapter(tiny_model_dir, out, seed=1, target_modules=["v_proj"], r=2, alpha=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folders left
    assert sorted(p.name for p in out.iterdir()) == [CONFIG, WEIGHTS]
    assert set(load_file(out / WEIGHTS)) == {PREFIX + k for k in state}


# ---------------------------------------------------------------------------------------------
# Saved by peft, loading here


@pytest.mark.parametrize(
    "lora_config",
    [
        dict(r=4, lora_alpha=8, target_modules="all-linear"),
        dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            rank_pattern={"q_proj": 2, "model.layers.1.mlp.down_proj": 6},
            alpha_pattern={"v_proj": 3},
        ),
    ],
    ids=["all-linear", "rslora", "rank-alpha-pattern"],
)
def test_peft_saved_adapter_loads_here(tiny_model_dir, tmp_path, lora_config):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    peft_config = LoraConfig(task_type="CAUSAL_LM", **lora_config)
    peft_model = get_peft_model(_fresh(tiny_model_dir), peft_config)
    randomize_lora_B(peft_model)
    expected = _logits(peft_model.eval())
    peft_model.save_pretrained(tmp_path / "peft")

    model = _fresh(tiny_model_dir)
    paths = load_adapter(model, tmp_path / "peft")
    wrapped_by_peft = [n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    assert paths == sorted(n[len(PREFIX):] for n in wrapped_by_peft)
    assert trainable_parameters(model) == []
    torch.testing.assert_close(_logits(model), expected, **TOL)
    if "rank_pattern" in lora_config:
        modules = lora_modules(model)
        assert modules[Q0].r == 2
        assert modules["model.layers.1.mlp.down_proj"].r == 6
        assert modules["model.layers.0.self_attn.v_proj"].scaling == 3 / 4

    # ... and saved again here (rank_pattern/alpha_pattern with full paths), peft agrees.
    save_adapter(model, tmp_path / "again")
    config = json.loads((tmp_path / "again" / CONFIG).read_text())
    if "rank_pattern" in lora_config:  # most common r = 4, lora_alpha = 8; the rest by full path
        assert (config["r"], config["lora_alpha"]) == (4, 8)
        q, v = "model.layers.{}.self_attn.q_proj", "model.layers.{}.self_attn.v_proj"
        down1 = "model.layers.1.mlp.down_proj"
        assert config["rank_pattern"] == {q.format(0): 2, q.format(1): 2, down1: 6}
        assert config["alpha_pattern"] == {v.format(0): 3, v.format(1): 3}
    torch.testing.assert_close(_peft_logits(tiny_model_dir, tmp_path / "again"), expected, **TOL)


def test_load_trainable_and_one_adapter_at_a_time(tiny_model_dir, tmp_path):
    out, state = _adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj"], r=2, alpha=4)
    model = _fresh(tiny_model_dir)
    load_adapter(model, out, trainable=True, dropout=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state)
    assert all(isinstance(m.dropout, nn.Identity) for m in lora_modules(model).values())
    with pytest.raises(UserError, match="already has LoRA adapters"):
        load_adapter(model, out)


def test_load_tolerates_adapter_name_in_keys(tiny_model_dir, tmp_path):
    """peft's in-memory keys carry the adapter name: ...q_proj.lora_A.default.weight."""
    out, _ = _adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj"], r=2, alpha=4)
    expected = _peft_logits(tiny_model_dir, out)
    _edit_tensors(lambda t: {k.replace(".weight", ".default.weight"): v for k, v in t.items()})(out)
    model = _fresh(tiny_model_dir)
    load_adapter(model, out)
    torch.testing.assert_close(_logits(model), expected, **TOL)


# ---------------------------------------------------------------------------------------------
# Bad adapter folders


def _edit_config(**changes):
    def edit(d):
        config = json.loads((d / CONFIG).read_text())
        (d / CONFIG).write_text(json.dumps({**config, **changes}))

    return edit


def _edit_tensors(edit_dict):
    def edit(d):
        tensors = load_file(d / WEIGHTS)
        save_file(edit_dict(tensors), d / WEIGHTS, metadata={"format": "pt"})

    return edit


Q_PROJ = PREFIX + Q0
Q_A = Q_PROJ + ".lora_A.weight"


def _move_module(tensors, old, new):
    """Rename both the lora_A and lora_B keys of module ``old`` to module ``new``."""
    return {k.replace(old + ".lora_", new + ".lora_"): v for k, v in tensors.items()}


BAD_ADAPTERS = {
    "missing config": (lambda d: (d / CONFIG).unlink(), r"adapter_config.json: not found"),
    "config not json": (lambda d: (d / CONFIG).write_text("{r: 4"), "not valid JSON"),
    "wrong peft_type": (_edit_config(peft_type="IA3"), r"adapter_config.json: peft_type = 'IA3'"),
    "bias": (_edit_config(bias="all"), r"adapter_config.json: bias = 'all'"),
    "dora": (_edit_config(use_dora=True), "use_dora"),
    "modules_to_save": (_edit_config(modules_to_save=["lm_head"]), "modules_to_save"),
    "config r disagrees": (_edit_config(r=8), r"rank 2 but adapter_config.json gives it r = 8"),
    "missing safetensors": (
        lambda d: (d / WEIGHTS).unlink(),
        r"adapter_model.safetensors: not found",
    ),
    "unknown module": (
        _edit_tensors(lambda t: _move_module(t, Q_PROJ, Q_PROJ.replace("layers.0", "layers.9"))),
        r"adapter_model.safetensors: key .*layers\.9\.self_attn\.q_proj.* does not exist",
    ),
    "not a linear": (
        _edit_tensors(lambda t: _move_module(t, Q_PROJ, PREFIX + "model.layers.0.self_attn")),
        "is a LlamaAttention, not nn.Linear",
    ),
    "wrong shape": (
        _edit_tensors(lambda t: {**t, Q_A: torch.zeros(2, 65)}),
        r"q_proj.lora_A.weight has shape \(2, 65\), expected \(2, 64\)",
    ),
    "no prefix": (
        _edit_tensors(lambda t: _move_module(t, Q_PROJ, Q_PROJ[len(PREFIX):])),
        r"lacks PEFT's 'base_model.model.' prefix",
    ),
    "not a lora key": (
        _edit_tensors(lambda t: {**t, PREFIX + "model.norm.weight": torch.zeros(64)}),
        "is not a LoRA weight",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_bad_adapter_raises_user_error(tiny_model_dir, tmp_path, case):
    out, _ = _adapter(tiny_model_dir, tmp_path / "bad", target_modules=QV, r=2, alpha=4)
    break_it, message = BAD_ADAPTERS[case]
    break_it(out)
    model = _fresh(tiny_model_dir)
    with pytest.raises(UserError, match=message):
        load_adapter(model, out)
    assert not lora_modules(model)  # checked before the model is touched


# ---------------------------------------------------------------------------------------------
# Mixing


def _hand_delta(state, module, r, alpha, use_rslora) -> torch.Tensor:
    s = alpha / math.sqrt(r) if use_rslora else alpha / r
    return s * state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]  # (out, in)


def test_mix_adapters_is_the_weighted_sum_of_deltas(tiny_model_dir, tmp_path):
    """adapter 1: plain, r=4, every linear; adapter 2: rsLoRA, r=2, q_proj/v_proj only."""
    a1, s1 = _adapter(tiny_model_dir, tmp_path / "a1", seed=1, r=4, alpha=8)
    a2, s2 = _adapter(
        tiny_model_dir, tmp_path / "a2", seed=2, r=2, alpha=6, use_rslora=True, target_modules=QV
    )
    w1, w2 = 0.7, -0.4
    out = mix_adapters([(a1, w1), (str(a2), w2)], tmp_path / "mix")

    config = json.loads((out / CONFIG).read_text())
    assert config["r"] == config["lora_alpha"] == 6 and config["use_rslora"] is False
    assert config["target_modules"] == ALL_LINEAR  # the union of the two lists
    mixed = {k[len(PREFIX):]: v for k, v in load_file(out / WEIGHTS).items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in s1})
    expected_delta = {}
    for module in modules:
        delta = w1 * _hand_delta(s1, module, 4, 8, False)
        if f"{module}.lora_A.weight" in s2:
            delta = delta + w2 * _hand_delta(s2, module, 2, 6, True)
        expected_delta[module] = delta
        got = mixed[f"{module}.lora_B.weight"] @ mixed[f"{module}.lora_A.weight"]  # scaling 6/6 = 1
        torch.testing.assert_close(got, delta, rtol=1e-5, atol=1e-7)

    # In peft: the mix gives base + Σ wᵢ·sᵢ·Bᵢ·Aᵢ, merged into the weights by hand.
    hand = _fresh(tiny_model_dir)
    with torch.no_grad():
        for module, delta in expected_delta.items():
            hand.get_submodule(module).weight += delta
    torch.testing.assert_close(_peft_logits(tiny_model_dir, out), _logits(hand), **TOL)


def test_mix_matches_peft_add_weighted_adapter(tiny_model_dir, tmp_path):
    """Same maths as peft's "cat" mix when no adapter uses rsLoRA."""
    from peft import PeftModel

    a1, _ = _adapter(tiny_model_dir, tmp_path / "a1", seed=1, r=4, alpha=8, target_modules=QV)
    a2, _ = _adapter(tiny_model_dir, tmp_path / "a2", seed=2, r=2, alpha=3, target_modules=QV)
    peft_model = PeftModel.from_pretrained(_fresh(tiny_model_dir), a1, adapter_name="a1")
    peft_model.load_adapter(a2, adapter_name="a2")
    peft_model.add_weighted_adapter(["a1", "a2"], [0.6, 0.5], "mix", combination_type="cat")
    peft_model.set_adapter("mix")
    mixed = _fresh(tiny_model_dir)
    load_adapter(mixed, mix_adapters([(a1, 0.6), (a2, 0.5)], tmp_path / "mix"))
    torch.testing.assert_close(_logits(mixed), _logits(peft_model.eval()), **TOL)


def test_mix_refuses_different_base_models(tiny_model_dir, tmp_path):
    a1, _ = _adapter(tiny_model_dir, tmp_path / "a1", target_modules=["q_proj"], r=2, alpha=2)
    a2, _ = _adapter(tiny_model_dir, tmp_path / "a2", target_modules=["q_proj"], r=2, alpha=2)
    _edit_config(base_model_name_or_path="some/other-model")(a2)
    with pytest.raises(UserError, match="different base models"):
        mix_adapters([(a1, 1.0), (a2, 1.0)], tmp_path / "mix")


# ---------------------------------------------------------------------------------------------
# Export


def test_export_merged(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    model = _fresh(tiny_model_dir)
    inject_lora(model, r=4, alpha=8, seed=0)
    randomize_lora_B(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _logits(model)

    out = export_merged(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "merged")
    exported = _fresh(out)
    assert not any("lora_" in k for k in exported.state_dict())
    torch.testing.assert_close(_logits(exported), expected, **TOL)
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()

    # The in-memory model is unmerged and bit-for-bit unchanged.
    assert not any(m.merged for m in lora_modules(model).values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(_logits(model), expected)


# ---------------------------------------------------------------------------------------------
# base_model_name_or_path


def test_local_base_model_is_saved_as_an_absolute_path(tiny_model_dir, tmp_path, monkeypatch):
    """PEFT's AutoPeftModelForCausalLM loads the base from adapter_config.json: a path relative to
    where training ran would fail anywhere else. Hub ids stay as given."""
    from peft import AutoPeftModelForCausalLM

    monkeypatch.chdir(tiny_model_dir.parent)
    model = _fresh(tiny_model_dir.name)  # loaded by a relative path, as a config's model.path may be
    inject_lora(model, target_modules=QV, r=2, alpha=4, seed=0)
    randomize_lora_B(model)
    expected = _logits(model)
    out = save_adapter(model, tmp_path / "adapter")
    hub = save_adapter(model, tmp_path / "hub", base_model_name_or_path="tiny-org/tiny-llama")
    mixed = mix_adapters([(out, 1.0)], tmp_path / "mix")
    for adapter in (out, mixed):
        assert json.loads((adapter / CONFIG).read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert json.loads((hub / CONFIG).read_text())["base_model_name_or_path"] == "tiny-org/tiny-llama"

    monkeypatch.chdir(tmp_path)  # elsewhere: the relative path would not resolve
    auto = AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(auto), expected, **TOL)
