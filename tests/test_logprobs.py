"""Chunked lm_head log-probs and KL vs their naive references, kernel level and model level."""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from torch import nn

from rlvf.kernels import (
    chunked_linear_kl,
    chunked_linear_logprobs,
    naive_linear_kl,
    naive_linear_logprobs,
)
from rlvf.logprobs import (
    SequenceLogps,
    backbone_hidden,
    naive_sequence_logprobs,
    output_head,
    probe_head,
    sequence_kl,
    sequence_logprobs,
)

N, H, V, CHUNK = 37, 24, 101, 16  # odd on purpose: N not a multiple of CHUNK, V odd

# (dtype, atol, rtol) for values and gradients, compared against the fp32 naive reference.
TOLERANCES = [
    (torch.float32, 1e-5, 1e-5),  # measured max error ≈ 1.5e-7 of scale
    # bf16 keeps 8 mantissa bits: the logits are rounded to ~0.4 % before the fp32 softmax and the
    # gradient of the logits is rounded again before each matmul; measured max error ≈ 5e-3 of scale.
    (torch.bfloat16, 1.5e-2, 2e-2),
    # fp16 keeps 11 mantissa bits, ~8x finer than bf16; measured max error ≈ 5e-4 of scale.
    (torch.float16, 2e-3, 5e-3),
]


def _inputs(dtype, seed=0, n=N, ignore_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g)
    weight = torch.randn(V, H, generator=g) / H**0.5
    targets = torch.randint(0, V, (n,), generator=g)
    targets[torch.rand(n, generator=g) < ignore_frac] = -100
    upstream = torch.randn(n, generator=g)  # a random ∂L/∂logp, so every row's gradient matters
    return hidden.to(dtype), weight.to(dtype), targets, upstream


def _grads(fn, hidden, weight, upstream):
    """Value of fn(hidden, weight) and its gradients wrt hidden and weight, all upcast to fp32."""
    hidden = hidden.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    out = fn(hidden, weight)
    (out * upstream).sum().backward()
    return out.float(), hidden.grad.float(), weight.grad.float()


def _assert_close(actual, expected, atol, rtol):
    """Elementwise |a − e| ≤ atol·max|e| + rtol·|e|: atol is relative to the tensor's scale."""
    scale = expected.abs().max().clamp(min=1e-12).item()
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_logprobs_match_naive(dtype, atol, rtol, softcap):
    hidden, weight, targets, upstream = _inputs(dtype)

    def chunked(h, w):
        return chunked_linear_logprobs(h, w, targets, chunk_size=CHUNK, softcap=softcap)

    def naive(h, w):
        return naive_linear_logprobs(h, w, targets, softcap=softcap)

    got = _grads(chunked, hidden, weight, upstream)
    want = _grads(naive, hidden.float(), weight.float(), upstream)
    assert got[0].dtype == torch.float32 and got[0].shape == (N,)
    for a, e in zip(got, want):
        _assert_close(a, e, atol, rtol)
    assert torch.all(got[0][targets == -100] == 0)


def test_chunked_logprobs_bf16_matches_bf16_reference():
    """Same-dtype comparison: both round the logits to bf16 identically, so values agree tightly."""
    hidden, weight, targets, upstream = _inputs(torch.bfloat16, seed=1)

    def chunked(h, w):
        return chunked_linear_logprobs(h, w, targets, chunk_size=CHUNK)

    got = _grads(chunked, hidden, weight, upstream)
    want = _grads(lambda h, w: naive_linear_logprobs(h, w, targets), hidden, weight, upstream)
    _assert_close(got[0], want[0], 1e-5, 1e-5)
    for a, e in zip(got[1:], want[1:]):
        _assert_close(a, e, 1e-2, 1e-2)  # bf16 gradients: one rounding of the product per chunk vs once


def test_all_ignored_and_big_chunk():
    hidden, weight, targets, upstream = _inputs(torch.float32, ignore_frac=1.0)
    value, grad_h, grad_w = _grads(
        lambda h, w: chunked_linear_logprobs(h, w, targets, chunk_size=4096), hidden, weight, upstream
    )
    assert torch.all(value == 0) and torch.all(grad_h == 0) and torch.all(grad_w == 0)


def test_chunk_bigger_than_n_and_empty_input():
    hidden, weight, targets, upstream = _inputs(torch.float32, seed=2)

    def chunked(h, w):
        return chunked_linear_logprobs(h, w, targets, chunk_size=4096)

    got = _grads(chunked, hidden, weight, upstream)
    want = _grads(lambda h, w: naive_linear_logprobs(h, w, targets), hidden, weight, upstream)
    for a, e in zip(got, want):
        _assert_close(a, e, 1e-5, 1e-5)
    empty = chunked_linear_logprobs(hidden[:0], weight, targets[:0])
    assert empty.shape == (0,)


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_frozen_head_precomputed_direction_matches_naive(dtype, atol, rtol, softcap):
    """Frozen head (the LoRA case): forward precomputes ∂ log π_y/∂h per row; backward scales it."""
    hidden, weight, targets, upstream = _inputs(dtype, seed=4)
    grads = []
    for fn, h, w in [(chunked_linear_logprobs, hidden, weight), (naive_linear_logprobs, hidden.float(), weight.float())]:
        h = h.detach().requires_grad_(True)
        kwargs = {"chunk_size": CHUNK} if fn is chunked_linear_logprobs else {}
        out = fn(h, w, targets, softcap=softcap, **kwargs)
        (out * upstream).sum().backward()
        grads.append((out.float(), h.grad.float()))
    for a, e in zip(*grads):
        _assert_close(a, e, atol, rtol)
    saved = _saved_shapes(lambda: chunked_linear_logprobs(hidden.requires_grad_(True), weight, targets, chunk_size=CHUNK))
    assert saved == [(N, H)], "only the (N, H) directions are kept for backward"


def test_frozen_weight_gets_no_gradient():
    hidden, weight, targets, _ = _inputs(torch.float32, seed=3)
    hidden.requires_grad_(True)
    chunked_linear_logprobs(hidden, weight, targets, chunk_size=CHUNK).sum().backward()
    assert weight.grad is None and hidden.grad is not None


# --------------------------------------------------------------------------- an lm_head bias


def _bias_grads(fn, hidden, weight, bias, upstream):
    """fn(hidden, weight, bias) and its gradients wrt all three, upcast to fp32."""
    leaves = [t.detach().requires_grad_(True) for t in (hidden, weight, bias)]
    out = fn(*leaves)
    (out * upstream).sum().backward()
    return (out.float(), *(t.grad.float() for t in leaves))


def _bias(dtype, seed=7):
    return torch.randn(V, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_logprobs_with_bias_match_naive(dtype, atol, rtol, softcap):
    """z = softcap(h Wᵀ + b): values and the gradients wrt hidden, weight and bias (∂L/∂b = Σ_rows ∂L/∂z)."""
    hidden, weight, targets, upstream = _inputs(dtype, seed=8)
    bias = _bias(dtype)

    def chunked(h, w, b):
        return chunked_linear_logprobs(h, w, targets, chunk_size=CHUNK, softcap=softcap, bias=b)

    def naive(h, w, b):
        return naive_linear_logprobs(h, w, targets, softcap=softcap, bias=b)

    got = _bias_grads(chunked, hidden, weight, bias, upstream)
    want = _bias_grads(naive, hidden.float(), weight.float(), bias.float(), upstream)
    for a, e in zip(got, want):
        _assert_close(a, e, atol, rtol)
    without = naive_linear_logprobs(hidden.float(), weight.float(), targets, softcap=softcap)
    assert (want[0] - without).abs().max() > 0.1, "the bias must change the log-probs"


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_frozen_head_with_bias_precomputed_direction(softcap):
    """A frozen weight and bias (the LoRA case) take the direction path, with the bias in the logits."""
    hidden, weight, targets, upstream = _inputs(torch.float32, seed=9)
    bias = _bias(torch.float32)
    h = hidden.clone().requires_grad_(True)
    saved = _saved_shapes(lambda: chunked_linear_logprobs(h, weight, targets, chunk_size=CHUNK, softcap=softcap,
                                                          bias=bias))
    assert saved == [(N, H)]
    out = chunked_linear_logprobs(h, weight, targets, chunk_size=CHUNK, softcap=softcap, bias=bias)
    (out * upstream).sum().backward()
    ref_h = hidden.clone().requires_grad_(True)
    want = naive_linear_logprobs(ref_h, weight, targets, softcap=softcap, bias=bias)
    (want * upstream).sum().backward()
    _assert_close(out, want, 1e-5, 1e-5)
    _assert_close(h.grad, ref_h.grad, 1e-5, 1e-5)


def test_chunked_kl_with_bias_matches_naive():
    # fp64: a KL is a small difference of O(log V) terms, so fp32 rounding would dominate (see below)
    hidden, weight, _, upstream = _inputs(torch.float64, seed=10)
    bias = _bias(torch.float64)
    ref_hidden = hidden + 0.5 * torch.randn_like(hidden)
    mask = torch.rand(N, generator=torch.Generator().manual_seed(11)) > 0.3

    def chunked(h, w, b):
        return chunked_linear_kl(h, ref_hidden, w, mask, 2.0, CHUNK, 3.0, bias=b)

    def naive(h, w, b):
        return naive_linear_kl(h, ref_hidden, w, mask, 2.0, 3.0, bias=b)

    got = _bias_grads(chunked, hidden, weight, bias, upstream)
    for a, e in zip(got, _bias_grads(naive, hidden, weight, bias, upstream)):
        _assert_close(a, e, 1e-5, 1e-5)


def test_bias_of_the_wrong_shape_is_refused():
    hidden, weight, targets, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match="bias of shape"):
        chunked_linear_logprobs(hidden, weight, targets, bias=torch.zeros(V + 1))


def test_triton_with_bias_matches_naive():
    """The Triton host code adds the bias in the cuBLAS matmul; values and gradients of hidden, weight
    and bias, and the frozen-head direction path (Triton's interpreter on CPU, see tests/conftest.py)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    from rlvf.kernels import linear_logprob_triton as tk

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, weight, targets, upstream = (t.to(device) for t in _inputs(torch.float32, seed=12))
    bias = _bias(torch.float32).to(device)
    ref_hidden = hidden + 0.5 * torch.randn_like(hidden)
    mask = targets != -100

    cases = [
        (lambda h, w, b: tk.triton_linear_logprobs(h, w, targets, chunk_size=CHUNK, softcap=3.0, bias=b),
         lambda h, w, b: naive_linear_logprobs(h, w, targets, softcap=3.0, bias=b)),
        (lambda h, w, b: tk.triton_linear_kl(h, ref_hidden, w, mask, 2.0, CHUNK, None, bias=b),
         lambda h, w, b: naive_linear_kl(h, ref_hidden, w, mask, 2.0, None, bias=b)),
    ]
    for fused, naive in cases:
        got = _bias_grads(fused, hidden, weight, bias, upstream)
        want = _bias_grads(naive, hidden, weight, bias, upstream)
        for a, e in zip(got, want):
            _assert_close(a, e, 1e-5, 1e-5)
        h = hidden.clone().requires_grad_(True)  # frozen weight and bias: the direction path
        (fused(h, weight, bias) * upstream).sum().backward()
        _assert_close(h.grad, want[1], 1e-5, 1e-5)


def _saved_shapes(fn):
    """Shapes of every tensor autograd saves for backward while ``fn`` runs."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_chunked_forward_saves_no_vocab_sized_tensor():
    hidden, weight, targets, _ = _inputs(torch.float32)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    chunked = _saved_shapes(lambda: chunked_linear_logprobs(hidden, weight, targets, chunk_size=CHUNK))
    naive = _saved_shapes(lambda: naive_linear_logprobs(hidden, weight, targets))
    assert not [s for s in chunked if s[-1] == V], chunked
    assert [s for s in naive if s == (N, V)], "the check must be able to see the naive path's logits"


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_kl_matches_naive(softcap, temperature):
    hidden, weight, _, upstream = _inputs(torch.float32, seed=4)
    ref_hidden = hidden + 0.5 * torch.randn_like(hidden)
    ref_weight = weight + 0.1 * torch.randn_like(weight)  # a separate frozen reference head
    mask = torch.rand(N, generator=torch.Generator().manual_seed(5)) > 0.3

    def chunked(h, w):
        return chunked_linear_kl(h, ref_hidden, w, mask, temperature, CHUNK, softcap, ref_weight)

    def naive(h, w):
        return naive_linear_kl(h, ref_hidden, w, mask, temperature, softcap, ref_weight)

    got = _grads(chunked, hidden, weight, upstream)
    want = _grads(naive, hidden, weight, upstream)
    for a, e in zip(got, want):
        _assert_close(a, e, 1e-5, 1e-5)
    assert torch.all(got[0] >= -1e-6) and torch.all(got[0][~mask] == 0)


def test_kl_of_identical_distributions_is_zero():
    hidden, weight, _, _ = _inputs(torch.float32, seed=6)
    kl = chunked_linear_kl(hidden, hidden, weight, torch.ones(N, dtype=torch.bool), chunk_size=CHUNK)
    torch.testing.assert_close(kl, torch.zeros(N), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- model level


def _batch(vocab_size, seed=0, batch=4, max_len=21, pad_id=0):
    """Right-padded random sequences with random lengths and prompt lengths; labels −100 on prompt/pad."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.full((batch, max_len), pad_id)
    attention_mask = torch.zeros(batch, max_len, dtype=torch.long)
    labels = torch.full((batch, max_len), -100)
    for b in range(batch):
        length = int(torch.randint(6, max_len + 1, (), generator=g))
        prompt = int(torch.randint(1, length - 1, (), generator=g))
        input_ids[b, :length] = torch.randint(4, vocab_size, (length,), generator=g)
        attention_mask[b, :length] = 1
        labels[b, prompt:length] = input_ids[b, prompt:length]
    return input_ids, attention_mask, labels


def _model_grads(model, fn, batch, weights):
    """Per-sequence logps of fn(model, *batch) and the gradient of Σ_b w_b·logps_b for every param."""
    model.zero_grad(set_to_none=True)
    out: SequenceLogps = fn(model, *batch)
    (out.logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_model_match(model, batch, chunk_size=7, rtol=1e-5):
    weights = torch.linspace(0.5, 1.5, batch[0].shape[0])

    def fused(m, *b):
        return sequence_logprobs(m, *b, chunk_size=chunk_size)

    got, got_grads = _model_grads(model, fused, batch, weights)
    want, want_grads = _model_grads(model, naive_sequence_logprobs, batch, weights)
    _assert_close(got.logps, want.logps, rtol, rtol)
    assert torch.equal(got.n_tokens, want.n_tokens)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) > 0
    for name in want_grads:
        _assert_close(got_grads[name], want_grads[name], rtol, rtol)
    return got


def test_sequence_logprobs_match_naive(tiny_model):
    input_ids, attention_mask, labels = _batch(tiny_model.config.vocab_size, pad_id=tiny_model.config.pad_token_id)
    labels[1] = -100  # a sequence with nothing to score
    got = _assert_model_match(tiny_model, (input_ids, attention_mask, labels))
    assert torch.equal(got.n_tokens, (labels[:, 1:] != -100).sum(1))
    assert got.n_tokens[1] == 0 and got.logps[1] == 0 and got.per_token[1] == 0
    keep = got.n_tokens > 0
    torch.testing.assert_close(got.per_token[keep], got.logps[keep] / got.n_tokens[keep])


def test_sequence_logprobs_tied_embeddings(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlvf.random_llama import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(tmp_path, seed=1, tie_word_embeddings=True), dtype=torch.float32
    ).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert output_head(model).fused
    _assert_model_match(model, _batch(model.config.vocab_size, seed=1, pad_id=model.config.pad_token_id))


class _LoRAHead(nn.Module):
    """A stand-in for an adapter-wrapped lm_head: base weight plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.weight = base.weight
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.lora_b = nn.Parameter(torch.randn(base.out_features, rank) * 0.1)

    def forward(self, x):
        return x @ self.weight.T + (x @ self.lora_a.T) @ self.lora_b.T


def test_sequence_logprobs_generic_head(tiny_model):
    torch.manual_seed(0)
    tiny_model.lm_head = _LoRAHead(tiny_model.lm_head)
    assert not output_head(tiny_model).fused
    _assert_model_match(tiny_model, _batch(tiny_model.config.vocab_size, seed=2))


def test_sequence_logprobs_gemma2_softcap():
    """Gemma-2 applies final_logit_softcapping inside its forward; the fused path must too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    nn.init.normal_(model.lm_head.weight, std=1.0)  # large logits, so the cap really bends them
    assert output_head(model).softcap == 2.0
    _assert_model_match(model, _batch(97, seed=3))


def test_output_head_rejects_logit_scale(tiny_model):
    tiny_model.config.logit_scale = 0.0625  # what Cohere models set
    with pytest.raises(ValueError, match="logit_scale"):
        output_head(tiny_model)


def test_sequence_forward_saves_no_vocab_sized_tensor(tiny_model):
    vocab = tiny_model.config.vocab_size
    batch = _batch(vocab, pad_id=tiny_model.config.pad_token_id)
    for p in tiny_model.parameters():
        p.requires_grad_(True)
    fused = _saved_shapes(lambda: sequence_logprobs(tiny_model, *batch, chunk_size=8))
    naive = _saved_shapes(lambda: naive_sequence_logprobs(tiny_model, *batch))
    assert not [s for s in fused if s[-1] == vocab], fused
    assert [s for s in naive if s[-1] == vocab], "the check must be able to see the naive path's logits"


def _naive_sequence_kl(model, ref_model, input_ids, attention_mask, labels, temperature):
    """Σ_t KL(π_ref ‖ π) over scored tokens with full logits from both models: (B,)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    with torch.no_grad():
        ref_logits = ref_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp, logq = (z.div(temperature).log_softmax(-1) for z in (logits, ref_logits))
    kl = torch.nn.functional.kl_div(logp, logq, reduction="none", log_target=True).sum(-1)  # (B, T-1)
    return torch.where(labels[:, 1:] != -100, kl, 0.0).sum(1)


@pytest.mark.parametrize("generic_head", [False, True])
def test_sequence_kl_matches_naive(tiny_model, generic_head):
    ref_model = copy.deepcopy(tiny_model)  # the reference: same head, perturbed backbone
    with torch.no_grad():
        for p in ref_model.model.layers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if generic_head:
        tiny_model.lm_head = _LoRAHead(tiny_model.lm_head)
        ref_model.lm_head = copy.deepcopy(tiny_model.lm_head)  # the head the reference uses
    input_ids, attention_mask, labels = _batch(tiny_model.config.vocab_size, seed=4)
    weights = torch.linspace(0.5, 1.5, input_ids.shape[0])

    def fused(model, *batch):
        hidden = backbone_hidden(model, input_ids, attention_mask)
        with torch.no_grad():
            ref_hidden = backbone_hidden(ref_model, input_ids, attention_mask)
        return sequence_kl(model, hidden, ref_hidden, labels, temperature=2.0, chunk_size=7)

    got = fused(tiny_model)
    (got.kl * weights).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad(set_to_none=True)
    want = _naive_sequence_kl(tiny_model, ref_model, input_ids, attention_mask, labels, 2.0)
    (want * weights).sum().backward()
    # KL_t = Σ_v q (log q − log p) is a small difference of O(log V) terms, so fp32 rounding (in both
    # paths) is relative to the tokens' log V, not to the KL: with 2⁻²³ ≈ 1.2e-7, allow 1e-6 · log V per
    # scored token (seen: 1.3e-6 on one thread, where 1e-5 of the KL's own scale allowed only 6.8e-7).
    n_scored = (labels[:, 1:] != -100).sum(1)  # (B,)
    atol = 1e-6 * math.log(tiny_model.config.vocab_size) * n_scored.max().item()
    torch.testing.assert_close(got.kl, want, atol=atol, rtol=1e-5)
    assert torch.all(want > 0)
    for name, p in tiny_model.named_parameters():
        if p.grad is not None:
            _assert_close(got_grads[name], p.grad, 1e-5, 1e-5)


# --------------------------------------------------------------------------- a measured logit multiplier


def _scaled_biased_model():
    """A tiny Cohere model (logits × logit_scale = 0.0625 in its forward) whose lm_head also has a
    bias: z = m·(h Wᵀ + b), the case where folding m into hidden and bias must get both right."""
    from transformers import CohereConfig, CohereForCausalLM

    config = CohereConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = CohereForCausalLM(config).eval()
    model.lm_head = nn.Linear(32, 97, bias=True)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=16.0)  # logits of a few units after × 0.0625
        model.lm_head.bias.normal_(std=16.0)
    return model


def test_probe_measures_the_logit_multiplier_and_the_model_level_paths_use_it():
    from rlvf.config import MethodConfig
    from rlvf.losses import dpo_loss
    from rlvf.logprobs import LOGIT_SCALE_ATTR, sequence_method_loss
    from rlvf.objective import Layout

    model = _scaled_biased_model()
    with pytest.raises(ValueError, match="logit_scale"):  # unprobed: refused, not silently unscaled
        output_head(model)
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    probe = probe_head(model, ids, torch.ones_like(ids))
    assert probe.scale == 0.0625 and probe.source == "config.logit_scale" and probe.error < 1e-6
    assert getattr(model, LOGIT_SCALE_ATTR) == 0.0625
    head = output_head(model)
    assert head.fused and head.bias is model.lm_head.bias and head.scale == 0.0625

    _assert_model_match(model, _batch(97, seed=5))  # log-probs and every parameter's gradient

    batch = _batch(97, seed=6, batch=7)  # 2 pairs, 1 near, 2 out
    ref_c, ref_r = torch.tensor([-30.0, -25.0]), torch.tensor([-28.0, -31.0])
    method, layout = MethodConfig(lambda_out=0.2, lambda_near=0.1), Layout(pairs=2, near=1, out=2)
    got = sequence_method_loss(model, *batch, layout, method, ref_c, ref_r, chunk_size=5)
    lp = naive_sequence_logprobs(model, *batch)
    d = dpo_loss(lp.logps[:2], lp.logps[2:4], ref_c, ref_r, beta=0.1)
    near, out = ((-lp.logps[s] / lp.n_tokens[s]).mean() for s in (slice(4, 5), slice(5, 7)))
    _assert_close(got.loss.detach(), (d.losses.mean() + 0.2 * out + 0.1 * near).detach(), 1e-5, 1e-5)


def test_sequence_kl_with_a_logit_multiplier_and_bias():
    model = _scaled_biased_model()
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    probe_head(model, ids, torch.ones_like(ids))
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_model.model.layers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    input_ids, attention_mask, labels = _batch(97, seed=7)
    hidden = backbone_hidden(model, input_ids, attention_mask)
    with torch.no_grad():
        ref_hidden = backbone_hidden(ref_model, input_ids, attention_mask)
    got = sequence_kl(model, hidden, ref_hidden, labels, temperature=2.0, chunk_size=7).kl
    want = _naive_sequence_kl(model, ref_model, input_ids, attention_mask, labels, 2.0)
    n_scored = (labels[:, 1:] != -100).sum(1)
    torch.testing.assert_close(got, want, atol=1e-6 * math.log(97) * n_scored.max().item(), rtol=1e-5)
    assert torch.all(want > 1e-3)


def test_probe_reports_logits_it_cannot_reproduce(tiny_model):
    """A forward that adds a token- and position-dependent term: no multiplier explains it."""
    forward = tiny_model.forward

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        t, v = out.logits.shape[-2:]
        out.logits = out.logits + 0.1 * torch.arange(t)[:, None] * torch.linspace(-1, 1, v)
        return out

    ids = torch.randint(3, tiny_model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    assert probe_head(tiny_model, ids, torch.ones_like(ids)).error < 1e-6
    tiny_model.forward = patched
    assert probe_head(tiny_model, ids, torch.ones_like(ids)).error > 1e-2
