"""Fused ``lm_head`` + log-softmax + gather, and the per-token KL, without (N, V) logits.

Per-token log-probability of the target token y under logits z = softcap(h Wᵀ + b):

    log π(y | h) = z_y − logsumexp(z)                                   z ∈ R^V, h ∈ R^H

and its gradient (g = ∂L/∂ log π, p = softmax(z), s = softcap):

    ∂L/∂z       = g · (onehot(y) − p)
    ∂L/∂(hWᵀ)   = ∂L/∂z · (1 − tanh²(hWᵀ/s)) = ∂L/∂z · (1 − (z/s)²)      (softcap z = s·tanh(hWᵀ/s))
    ∂L/∂h       = ∂L/∂(hWᵀ) W          ∂L/∂W = ∂L/∂(hWᵀ)ᵀ h        ∂L/∂b = Σ_rows ∂L/∂(hWᵀ)

The bias b (V,) is optional (an lm_head with a bias, e.g. Phi-1/2); a scalar logit multiplier
(Cohere's logit_scale, Granite's 1/logits_scaling, Falcon-H1's lm_head_multiplier) is not an
argument here: m·(h Wᵀ + b) = (m·h) Wᵀ + m·b, so rlvf/logprobs.py folds it into hidden and bias.

Per-token KL(π_ref ‖ π) at temperature T, with q = softmax(z_ref/T) and p = softmax(z/T):

    KL = Σ_v q_v (log q_v − log p_v)           ∂KL/∂z = (p − q) / T

The chunked autograd.Functions walk over N in chunks of ``chunk_size`` rows. Forward keeps only
(hidden, weight, targets) and one fp32 logsumexp per row, O(N); backward recomputes each chunk's
logits, so peak extra memory is O(chunk_size · V) instead of the O(N · V) that ``hidden @ W.T``
followed by autograd would keep. The ``naive_*`` functions are the references the tests compare
against. The Triton kernels of linear_logprob_triton.py take the same arguments.

Dtypes follow Hugging Face: the matmul runs in the input dtype and its result is upcast to fp32
before softcap / softmax (fp64 inputs stay fp64, so torch.autograd.gradcheck applies); outputs
are fp32; gradients come back in the input dtypes, the weight gradient accumulated over chunks
in fp32. Under torch.autocast, cast hidden and weight to one dtype first: these Functions do not
autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- shared maths


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the softmax runs in: fp32, or fp64 for fp64 inputs (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits z = softcap(h Wᵀ + b) of one chunk: (n, H) × (V, H) (+ (V,)) → (n, V)."""
    logits = hidden @ weight.T if bias is None else F.linear(hidden, weight, bias)  # (n, V), input dtype
    logits = logits.to(_acc_dtype(logits.dtype))  # (n, V), fp32
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)  # (n, V), Gemma-2 final_logit_softcapping
    return logits


def _softcap_backward(grad: torch.Tensor, logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Chain ∂L/∂z back through z = s·tanh(x/s): ∂z/∂x = 1 − tanh² = 1 − (z/s)². In place."""
    if softcap:
        grad.mul_(1.0 - (logits / softcap).square())  # (n, V)
    return grad


def _logprob_grad_logits(
    logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """∂(g · log π_y)/∂z = g · (onehot(y) − softmax(z)) for one chunk.

    logits (n, V) fp32, lse (n,), targets (n,) valid indices, g (n,) fp32 (0 on ignored rows).
    """
    grad = (logits - lse[:, None]).exp_().mul_(-g[:, None])  # (n, V): −g·p
    grad.scatter_add_(1, targets[:, None], g[:, None])  # (n, V): + g·onehot(y)
    return grad


def _chunks(n: int, chunk_size: int):
    """Start/end pairs covering range(n) in chunks of at most ``chunk_size``."""
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def _check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, chunk_size: int,
                         bias: torch.Tensor | None = None):
    if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != weight.dtype):
        raise ValueError(f"expected a bias of shape ({weight.shape[0]},) and dtype {weight.dtype}, "
                         f"got {tuple(bias.shape)} {bias.dtype}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if rows.shape != hidden.shape[:1]:
        raise ValueError(f"expected a per-row tensor of shape ({hidden.shape[0]},), got {tuple(rows.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


# --------------------------------------------------------------------------- log-probs


def naive_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference per-token log π(y | h) with the full (N, V) logits; 0 where target == ignore_index.

    hidden (N, H), weight (V, H), targets (N,) long, bias (V,) or None → (N,) fp32.
    """
    logits = _logits(hidden, weight, softcap, bias)  # (N, V)
    valid = targets != ignore_index  # (N,)
    safe = targets.masked_fill(~valid, 0)  # (N,)
    logps = logits.log_softmax(-1).gather(1, safe[:, None]).squeeze(1)  # (N,)
    return logps.masked_fill(~valid, 0.0)


def _lse_and_direction(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logsumexp (n,), target logit (n,) and ∂ log π_y/∂h = ((onehot(y) − p) ⊙ ∂z/∂x) W (n, H) of one
    chunk, with a single exp over the chunk: p = e / Σe with e = exp(z − max z), lse = max z + log Σe.

    Overwrites ``logits`` (n, V) fp32; at most one more (n, V) buffer is alive (softcap only).
    """
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)  # (n,)
    factor = (logits / softcap).square_().neg_().add_(1.0) if softcap else None  # (n, V): 1 − tanh²
    top = logits.amax(dim=-1)  # (n,)
    e = logits.sub_(top[:, None]).exp_()  # (n, V), in place
    total = e.sum(dim=-1)  # (n,)
    grad = e.mul_(total.reciprocal().neg_()[:, None])  # (n, V): −p, in place, one pass
    grad.scatter_add_(1, targets[:, None], torch.ones_like(total)[:, None])  # + onehot(y)
    if factor is not None:
        grad.mul_(factor)
    return top + total.log(), target_logit, grad.to(weight.dtype) @ weight  # (n,), (n,), (n, H)


class ChunkedLinearLogprob(torch.autograd.Function):
    """log π(y | h) = z_y − logsumexp(z), z = softcap(h Wᵀ + b), computed chunk by chunk (see module doc).

    ``direction`` (a frozen head and bias, the LoRA case): forward also computes each row's gradient
    direction d = ∂ log π_y / ∂h (N, H) while the chunk's logits are at hand, and backward is
    g ⊙ d — two vocabulary-sized matmuls in all (as the naive path), not three, and nothing but
    d is kept for backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, softcap, direction=False, bias=None):
        valid = targets != ignore_index  # (N,)
        safe = targets.masked_fill(~valid, 0)  # (N,)
        lse = hidden.new_empty(hidden.shape[0], dtype=_acc_dtype(hidden.dtype))  # (N,)
        target_logit = torch.empty_like(lse)  # (N,)
        dirs = torch.empty_like(hidden) if direction else None  # (N, H)
        for s, e in _chunks(hidden.shape[0], chunk_size):
            logits = _logits(hidden[s:e], weight, softcap, bias)  # (n, V)
            if direction:
                lse[s:e], target_logit[s:e], dirs[s:e] = _lse_and_direction(logits, safe[s:e], weight, softcap)
            else:
                lse[s:e] = torch.logsumexp(logits, dim=-1)
                target_logit[s:e] = logits.gather(1, safe[s:e, None]).squeeze(1)
            del logits
        ctx.direction = direction
        if direction:
            ctx.save_for_backward(dirs.masked_fill_(~valid[:, None], 0.0))
        else:
            ctx.save_for_backward(hidden, weight, targets, lse, bias)
        ctx.ignore_index, ctx.chunk_size, ctx.softcap = ignore_index, chunk_size, softcap
        return (target_logit - lse).masked_fill_(~valid, 0.0)  # (N,)

    @staticmethod
    def backward(ctx, grad_logps):
        if ctx.direction:
            (dirs,) = ctx.saved_tensors
            grad_hidden = (dirs * grad_logps.to(torch.float32)[:, None]).to(dirs.dtype)  # (N, H)
            return grad_hidden, None, None, None, None, None, None, None
        hidden, weight, targets, lse, bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[7]
        valid = targets != ctx.ignore_index  # (N,)
        safe = targets.masked_fill(~valid, 0)  # (N,)
        g = grad_logps.to(lse.dtype).masked_fill(~valid, 0.0)  # (N,): ignored rows get zero gradient
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
        grad_weight = weight.new_zeros(weight.shape, dtype=lse.dtype) if need_weight else None
        grad_bias = weight.new_zeros(weight.shape[:1], dtype=lse.dtype) if need_bias else None  # (V,)
        for s, e in _chunks(hidden.shape[0], ctx.chunk_size):
            logits = _logits(hidden[s:e], weight, ctx.softcap, bias)  # (n, V)
            grad = _logprob_grad_logits(logits, lse[s:e], safe[s:e], g[s:e])  # (n, V)
            grad = _softcap_backward(grad, logits, ctx.softcap).to(hidden.dtype)  # ∂L/∂(hWᵀ + b)
            del logits
            if need_hidden:
                grad_hidden[s:e] = grad @ weight  # (n, H)
            if need_weight:
                grad_weight += (grad.T @ hidden[s:e]).to(lse.dtype)  # (V, H)
            if need_bias:
                grad_bias += grad.sum(0, dtype=lse.dtype)  # (V,)
            del grad
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, None, None, None, None, None, grad_bias


def chunked_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token log π(y | h) without materialising (N, V) logits; 0 where target == ignore_index.

    hidden (N, H), weight (V, H) and bias (V,) or None (same dtype), targets (N,) long → (N,) fp32,
    differentiable in hidden, weight and bias. Peak extra memory O(chunk_size · V).
    """
    _check_linear_inputs(hidden, weight, targets, chunk_size, bias)
    frozen_head = not weight.requires_grad and (bias is None or not bias.requires_grad)
    direction = torch.is_grad_enabled() and hidden.requires_grad and frozen_head
    return ChunkedLinearLogprob.apply(hidden, weight, targets, ignore_index, chunk_size, softcap or None, direction,
                                      bias)


# --------------------------------------------------------------------------- KL(π_ref ‖ π)


def _kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Σ_v q (log q − log p) per row: (n, V) log-probs of π and π_ref → (n,)."""
    return (logq.exp() * (logq - logp)).sum(-1)


def naive_linear_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    softcap: float | None = None,
    ref_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference per-token KL(π_ref ‖ π) with full logits, via ``F.kl_div``; 0 where mask is False.

    π = softmax(softcap(h Wᵀ + b)/T), π_ref = softmax(softcap(h_ref W_refᵀ + b)/T), W_ref =
    ``ref_weight`` or ``weight``; the reference side is a constant (detached). hidden, ref_hidden
    (N, H), weight (V, H), bias (V,) or None, mask (N,) bool → (N,) fp32.
    """
    ref_weight = weight if ref_weight is None else ref_weight
    ref_bias = None if bias is None else bias.detach()
    logp = (_logits(hidden, weight, softcap, bias) / temperature).log_softmax(-1)  # (N, V)
    logq = (_logits(ref_hidden.detach(), ref_weight.detach(), softcap, ref_bias) / temperature).log_softmax(-1)
    kl = F.kl_div(logp, logq, reduction="none", log_target=True).sum(-1)  # (N,)
    return kl.masked_fill(~mask, 0.0)


class ChunkedLinearKL(torch.autograd.Function):
    """Per-token KL(π_ref ‖ π) chunk by chunk; gradient (p − q)/T flows to hidden, weight and bias only
    (the reference head uses the same bias, as a constant)."""

    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, ref_weight, mask, temperature, chunk_size, softcap, bias=None):
        kl = hidden.new_empty(hidden.shape[0], dtype=_acc_dtype(hidden.dtype))  # (N,)
        lse = torch.empty_like(kl)  # (N,) logsumexp of z/T
        ref_lse = torch.empty_like(kl)  # (N,) logsumexp of z_ref/T
        for s, e in _chunks(hidden.shape[0], chunk_size):
            z = _logits(hidden[s:e], weight, softcap, bias) / temperature  # (n, V)
            z_ref = _logits(ref_hidden[s:e], ref_weight, softcap, bias) / temperature  # (n, V)
            lse[s:e], ref_lse[s:e] = torch.logsumexp(z, -1), torch.logsumexp(z_ref, -1)
            kl[s:e] = _kl_rows(z - lse[s:e, None], z_ref - ref_lse[s:e, None])
        ctx.save_for_backward(hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, bias)
        ctx.temperature, ctx.chunk_size, ctx.softcap = temperature, chunk_size, softcap
        return kl.masked_fill_(~mask, 0.0)

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = (ctx.needs_input_grad[i] for i in (0, 2, 8))
        t = ctx.temperature
        g = grad_kl.to(lse.dtype).masked_fill(~mask, 0.0)  # (N,)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
        grad_weight = weight.new_zeros(weight.shape, dtype=lse.dtype) if need_weight else None
        grad_bias = weight.new_zeros(weight.shape[:1], dtype=lse.dtype) if need_bias else None  # (V,)
        for s, e in _chunks(hidden.shape[0], ctx.chunk_size):
            logits = _logits(hidden[s:e], weight, ctx.softcap, bias)  # (n, V)
            p = torch.exp(logits / t - lse[s:e, None])  # (n, V)
            q = torch.exp(_logits(ref_hidden[s:e], ref_weight, ctx.softcap, bias) / t - ref_lse[s:e, None])
            grad = p.sub_(q).mul_(g[s:e, None] / t)  # (n, V): g · (p − q) / T
            grad = _softcap_backward(grad, logits, ctx.softcap).to(hidden.dtype)
            if need_hidden:
                grad_hidden[s:e] = grad @ weight  # (n, H)
            if need_weight:
                grad_weight += (grad.T @ hidden[s:e]).to(lse.dtype)  # (V, H)
            if need_bias:
                grad_bias += grad.sum(0, dtype=lse.dtype)  # (V,)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, None, grad_weight, None, None, None, None, None, grad_bias


def chunked_linear_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    softcap: float | None = None,
    ref_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL(π_ref ‖ π) = Σ_v q_v (log q_v − log p_v) at temperature T, O(chunk_size · V) memory.

    p = softmax(softcap(h Wᵀ + b)/T) is the policy (differentiable in hidden, weight and bias);
    q = softmax(softcap(h_ref W_refᵀ + b)/T) is the reference, a constant: W_ref = ``ref_weight`` or
    ``weight`` (pass the frozen head explicitly when the head itself is trained). hidden,
    ref_hidden (N, H), weight (V, H), bias (V,) or None, mask (N,) bool → (N,) fp32, 0 where mask is False.
    """
    _check_linear_inputs(hidden, weight, mask, chunk_size, bias)
    if ref_hidden.shape != hidden.shape:
        raise ValueError(f"ref_hidden {tuple(ref_hidden.shape)} must match hidden {tuple(hidden.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ref_weight = (weight if ref_weight is None else ref_weight).detach()
    args = (mask.bool(), float(temperature), chunk_size, softcap or None, bias)
    return ChunkedLinearKL.apply(hidden, ref_hidden.detach(), weight, ref_weight, *args)
