"""Triton version of kernels/linear_logprob.py: fused ``lm_head`` + log-softmax + gather, and KL(π_ref ‖ π).

Same maths, signatures and dtype rules as ``ChunkedLinearLogprob`` / ``ChunkedLinearKL`` (see that
module's docstring for the formulas); the pure-torch versions there are the references.

Design (the split Liger-Kernel's fused linear cross-entropy uses; written from the maths, not copied):
rows are walked on the host in chunks of ``chunk_size``; per chunk the matmul z = h Wᵀ (n, V) runs
in cuBLAS in the input dtype, and Triton kernels do everything that is per row over the vocabulary,
reading the chunk's logits once per pass:

    _logprob_fwd_kernel   one program per row, loop over V in BLOCK_V tiles: softcap, online
                          logsumexp (running max m and Σ e^{z−m}), gather z_y → log π_y = z_y − lse
    _logprob_grad_kernel  in place over the chunk: z ← g·(onehot(y) − e^{z−lse})·(1 − (z/s)²)
    _kl_fwd_kernel        both heads of a row: online lse of z/T, then of z_ref/T, then a second pass
                          Σ_v q_v (log q_v − log p_v) (one pass would cancel fp32 digits, see kernel)
    _kl_grad_kernel       in place: z ← g·(p − q)/T·(1 − (z/s)²)

then ∂L/∂h = G W and ∂L/∂W += Gᵀ h go back to cuBLAS, ∂L/∂W accumulated in fp32 (``mm(out_dtype=fp32)``
where torch has it for the device, else the product is upcast per chunk, as the reference does).
A hand-written Triton matmul would not beat cuBLAS for these shapes; the (n, V) softmax traffic is
what fusion removes. Peak extra memory is one (chunk_size, V) logits buffer in the input dtype
(two for KL), reused in place for the gradient; the (N, V) logits never exist.

Frozen head (the paper's setting: LoRA never touches lm_head): the gradient of every per-token
output is linear in its upstream scalar g, ∂L/∂h_i = g_i · dᵢ with dᵢ = (onehot − p)ᵢ W (log-prob) or
(p − q)ᵢ W / T (KL). When hidden needs a gradient and the weight does not, forward computes d (N, H)
right after each chunk's statistics and backward is one scale: 2 vocab-sized matmuls instead of 3,
and hidden/weight need not be kept for backward.

Dtypes as in the reference: the matmuls run in the input dtype (fp32, bf16 or fp16, one for hidden
and weight), the kernels upcast the logits to fp32 for softcap / softmax, outputs are fp32, and ∂L/∂z
is rounded to the input dtype (in place) before the gradient matmuls.

Softcap is supported in the kernels (tanh written with exp, which Triton's interpreter also has).
An lm_head bias b (V,) is added by cuBLAS with the matmul (z = h Wᵀ + b, one addmm), so the kernels
never see it; its gradient is the column sum of ∂L/∂z, one reduction per chunk.
fp64 inputs are not: the dispatcher (kernels/dispatch.py) sends them to the pure-torch path.
Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors,
which is how the default test-suite checks them without a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .linear_logprob import IGNORE_INDEX, _check_linear_inputs, _chunks

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_BLOCK_V = 4096  # vocabulary tile per loop step: 16 fp32 values per thread at 8 warps


# --------------------------------------------------------------------------- device functions


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x)·(1 − e^{−2|x|}) / (1 + e^{−2|x|}), overflow-free for any x."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP: tl.constexpr):
    """fp32 logits z = softcap(x) = s·tanh(x/s) (or x) at vocabulary offsets ``offs`` of one row."""
    x = tl.load(row_ptr + offs, mask=offs < V, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        x = softcap * _tanh(x / softcap)
    return x


@triton.jit
def _online_lse_step(m, s, x):
    """One tile of an online logsumexp: running max m and Σ e^{x−m} updated with tile x (−inf = absent)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    return m_new, s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)


@triton.jit
def _logprob_fwd_kernel(
    logits_ptr, stride, targets_ptr, lse_ptr, out_ptr, V, ignore_index, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Row i: lse_i = logsumexp_v z_iv (online), out_i = z_{i,y_i} − lse_i, or 0 if y_i == ignore_index."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride
    m = float("-inf")  # running max
    s = 0.0  # running Σ e^{z − m}
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z = tl.where(offs < V, _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP), float("-inf"))
        m, s = _online_lse_step(m, s, z)
    lse = m + tl.log(s)
    y = tl.load(targets_ptr + row)
    valid = y != ignore_index
    z_y = _load_z(row_ptr, tl.where(valid, y, 0), V, softcap, HAS_SOFTCAP)
    tl.store(lse_ptr + row, lse)
    tl.store(out_ptr + row, tl.where(valid, z_y - lse, 0.0))


@triton.jit
def _logprob_grad_kernel(
    logits_ptr, stride, targets_ptr, lse_ptr, g_ptr, V, ignore_index, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """In place, row i: x_iv ← g_i · (1[v = y_i] − e^{z_iv − lse_i}) · ∂z/∂x  (0 on ignored rows)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride
    y = tl.load(targets_ptr + row)
    g = tl.where(y != ignore_index, tl.load(g_ptr + row), 0.0)
    lse = tl.load(lse_ptr + row)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP)
        grad = g * (tl.where(offs == y, 1.0, 0.0) - tl.exp(z - lse))  # (BLOCK_V,) fp32, ∂L/∂z
        if HAS_SOFTCAP:
            grad = grad * (1.0 - (z / softcap) * (z / softcap))  # ∂z/∂x = 1 − tanh² = 1 − (z/s)²
        tl.store(row_ptr + offs, grad.to(logits_ptr.dtype.element_ty), mask=offs < V)


@triton.jit
def _kl_fwd_kernel(
    logits_ptr, ref_ptr, stride, ref_stride, lse_ptr, ref_lse_ptr, kl_ptr, V, inv_t, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Row i, with b = z/T (policy) and a = z_ref/T. Pass 1: lse_b, then lse_a (online). Pass 2:
    KL(q ‖ p) = Σ_v q_v ((a_v − b_v) − (lse_a − lse_b)), q = e^{a − lse_a}. Two passes rather than
    Σ q (a − b) − lse_a + lse_b in one: that form loses ~|lse|/KL of fp32's digits when π ≈ π_ref.

    Pass 1 walks the two heads in two loops (the same tiles in the same order, so the same lse
    and the same bytes read as one loop over both): with both heads in one loop, ptxas 13.4 spilled
    8 bytes on sm_90 for fp32 with softcap, at 64 registers (bench/kernel_aot.py, bench/README.md)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr, ref_row_ptr = logits_ptr + row * stride, ref_ptr + row * ref_stride
    m_b, s_b, m_a, s_a = float("-inf"), 0.0, float("-inf"), 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        b = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP) * inv_t
        m_b, s_b = _online_lse_step(m_b, s_b, tl.where(offs < V, b, float("-inf")))
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        a = _load_z(ref_row_ptr, offs, V, softcap, HAS_SOFTCAP) * inv_t
        m_a, s_a = _online_lse_step(m_a, s_a, tl.where(offs < V, a, float("-inf")))
    lse_b, lse_a = m_b + tl.log(s_b), m_a + tl.log(s_a)
    c = lse_a - lse_b  # log q − log p = (a − b) − c: differences of O(1) terms, not of O(log V) ones
    kl = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        b = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP) * inv_t
        a = _load_z(ref_row_ptr, offs, V, softcap, HAS_SOFTCAP) * inv_t
        kl += tl.sum(tl.where(offs < V, tl.exp(a - lse_a) * ((a - b) - c), 0.0), axis=0)
    tl.store(lse_ptr + row, lse_b)
    tl.store(ref_lse_ptr + row, lse_a)
    tl.store(kl_ptr + row, kl)


@triton.jit
def _kl_grad_kernel(
    logits_ptr, ref_ptr, stride, ref_stride, lse_ptr, ref_lse_ptr, g_ptr, V, inv_t, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """In place in the policy logits, row i: x_iv ← g_i · (p_iv − q_iv) / T · ∂z/∂x."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride
    scale = tl.load(g_ptr + row) * inv_t
    lse, ref_lse = tl.load(lse_ptr + row), tl.load(ref_lse_ptr + row)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP)
        z_ref = _load_z(ref_ptr + row * ref_stride, offs, V, softcap, HAS_SOFTCAP)
        grad = scale * (tl.exp(z * inv_t - lse) - tl.exp(z_ref * inv_t - ref_lse))  # (BLOCK_V,) ∂L/∂z
        if HAS_SOFTCAP:
            grad = grad * (1.0 - (z / softcap) * (z / softcap))  # ∂z/∂x
        tl.store(row_ptr + offs, grad.to(logits_ptr.dtype.element_ty), mask=offs < V)


# --------------------------------------------------------------------------- launchers


def _launch_meta(logits: torch.Tensor, softcap: float | None) -> dict:
    """Grid-independent launch arguments shared by every kernel here."""
    block_v = min(triton.next_power_of_2(logits.shape[1]), _MAX_BLOCK_V)
    return {"HAS_SOFTCAP": bool(softcap), "BLOCK_V": block_v, "num_warps": 8 if block_v >= 2048 else 4}


def _logprob_stats(logits, targets, lse, out, ignore_index, softcap):
    """lse (n,) and log π_y (n,) of one chunk of logits (n, V)."""
    n, v = logits.shape
    _logprob_fwd_kernel[(n,)](
        logits, logits.stride(0), targets, lse, out, v, ignore_index, float(softcap or 1.0),
        **_launch_meta(logits, softcap),
    )


def _logprob_grad_(logits, targets, lse, g, ignore_index, softcap):
    """Overwrite one chunk's logits (n, V) with ∂(Σ g·log π_y)/∂(hWᵀ), in the logits' dtype."""
    n, v = logits.shape
    _logprob_grad_kernel[(n,)](
        logits, logits.stride(0), targets, lse, g, v, ignore_index, float(softcap or 1.0),
        **_launch_meta(logits, softcap),
    )


def _kl_stats(logits, ref_logits, lse, ref_lse, kl, temperature, softcap):
    n, v = logits.shape
    _kl_fwd_kernel[(n,)](
        logits, ref_logits, logits.stride(0), ref_logits.stride(0), lse, ref_lse, kl, v,
        1.0 / temperature, float(softcap or 1.0), **_launch_meta(logits, softcap),
    )


def _kl_grad_(logits, ref_logits, lse, ref_lse, g, temperature, softcap):
    """Overwrite the policy logits (n, V) with g·(p − q)/T·∂z/∂x."""
    n, v = logits.shape
    _kl_grad_kernel[(n,)](
        logits, ref_logits, logits.stride(0), ref_logits.stride(0), lse, ref_lse, g, v,
        1.0 / temperature, float(softcap or 1.0), **_launch_meta(logits, softcap),
    )


def _accumulate_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b with fp32 output from the matmul when torch supports it for the device."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if a.is_cuda:
        try:
            acc += torch.mm(a, b, out_dtype=acc.dtype)  # cuBLAS bf16/fp16 × bf16/fp16 → fp32
            return
        except (RuntimeError, TypeError):  # torch without mm(out_dtype=...)
            pass
    acc += (a @ b).to(acc.dtype)  # CPU / older torch: one rounding to the input dtype per chunk


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One chunk's logits h Wᵀ (+ b): (n, H) × (V, H) → (n, V) in the input dtype, a fresh buffer."""
    return hidden @ weight.T if bias is None else F.linear(hidden, weight, bias)


def _no_autocast(t: torch.Tensor):
    """The matmuls here run in the inputs' dtype, forward and backward alike (the wrappers check that
    hidden and weight share one), whatever torch.autocast is active around the call."""
    return torch.autocast(t.device.type, enabled=False)


def _check_triton_inputs(hidden: torch.Tensor, *others: torch.Tensor) -> None:
    if hidden.dtype not in SUPPORTED_DTYPES or any(t.dtype != hidden.dtype for t in others):
        raise ValueError(
            f"the Triton kernels take hidden and weight of one dtype among fp32/bf16/fp16, got "
            f"{[hidden.dtype, *(t.dtype for t in others)]}; use the torch path (RLVF_KERNELS=torch)"
        )
    interpreted = type(_logprob_fwd_kernel).__name__ == "InterpretedFunction"  # fixed when @jit decorated
    if not hidden.is_cuda and not interpreted:
        raise ValueError(
            "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before rlvf.kernels "
            "imports triton); use the torch path (RLVF_KERNELS=torch) on CPU"
        )


# --------------------------------------------------------------------------- log-probs: host side


def linear_logprob_forward(hidden, weight, targets, ignore_index, chunk_size, softcap, direction: bool, bias=None):
    """Forward over row chunks: log π_y (N,) fp32, lse (N,) fp32, and, if ``direction``, the
    frozen-head gradient directions d = (onehot(y) − p)·∂z/∂x @ W (N, H) in the input dtype."""
    n_rows = hidden.shape[0]
    lse = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)  # (N,)
    out = torch.empty_like(lse)  # (N,)
    dirs = torch.empty_like(hidden) if direction else None  # (N, H)
    ones = torch.ones_like(lse) if direction else None  # g = 1: the kernel still zeroes ignored rows
    for s, e in _chunks(n_rows, chunk_size):
        logits = _head_logits(hidden[s:e], weight, bias)  # (n, V), input dtype, cuBLAS
        _logprob_stats(logits, targets[s:e], lse[s:e], out[s:e], ignore_index, softcap)
        if direction:
            _logprob_grad_(logits, targets[s:e], lse[s:e], ones[s:e], ignore_index, softcap)
            dirs[s:e] = logits @ weight  # (n, H)
    return out, lse, dirs


def linear_logprob_backward(grad_out, hidden, weight, targets, lse, ignore_index, chunk_size, softcap,
                            need_hidden: bool, need_weight: bool, bias=None, need_bias: bool = False):
    """Recompute each chunk's logits, turn them into ∂L/∂(hWᵀ + b) in place, then ∂L/∂h = G W (n, H),
    ∂L/∂W += Gᵀ h (V, H) and ∂L/∂b += Σ_rows G (V,) in fp32.
    Returns (grad_hidden | None, grad_weight | None, grad_bias | None)."""
    g = grad_out.to(torch.float32).contiguous()  # (N,)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[:1], dtype=torch.float32, device=weight.device) if need_bias else None
    for s, e in _chunks(hidden.shape[0], chunk_size):
        logits = _head_logits(hidden[s:e], weight, bias)  # (n, V)
        _logprob_grad_(logits, targets[s:e], lse[s:e], g[s:e], ignore_index, softcap)  # G, (n, V)
        if need_hidden:
            grad_hidden[s:e] = logits @ weight  # (n, H)
        if need_weight:
            _accumulate_fp32(grad_weight, logits.T, hidden[s:e])  # (V, H)
        if need_bias:
            grad_bias += logits.sum(0, dtype=torch.float32)  # (V,)
    return (grad_hidden, (grad_weight.to(weight.dtype) if need_weight else None),
            (grad_bias.to(bias.dtype) if need_bias else None))


def _scale_rows(dirs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g_i · d_i for saved directions d (N, H) and upstream g (N,), computed in fp32: (N, H)."""
    return (dirs * g.to(torch.float32)[:, None]).to(dirs.dtype)


class TritonLinearLogprob(torch.autograd.Function):
    """``ChunkedLinearLogprob`` with the per-row vocabulary work in Triton (see module doc)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, softcap, bias=None):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
        direction = need_hidden and not need_weight and not need_bias  # frozen head: gradient precomputed here
        with _no_autocast(hidden):
            out, lse, dirs = linear_logprob_forward(
                hidden, weight, targets, ignore_index, chunk_size, softcap, direction, bias
            )
        ctx.direction = direction
        if direction:
            ctx.save_for_backward(dirs)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse, bias)
        ctx.ignore_index, ctx.chunk_size, ctx.softcap = ignore_index, chunk_size, softcap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.direction:
            (dirs,) = ctx.saved_tensors
            return _scale_rows(dirs, grad_out), None, None, None, None, None, None
        hidden, weight, targets, lse, bias = ctx.saved_tensors
        with _no_autocast(hidden):
            grad_hidden, grad_weight, grad_bias = linear_logprob_backward(
                grad_out, hidden, weight, targets, lse, ctx.ignore_index, ctx.chunk_size, ctx.softcap,
                *ctx.needs_input_grad[:2], bias, ctx.needs_input_grad[6],
            )
        return grad_hidden, grad_weight, None, None, None, None, grad_bias


def triton_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token log π(y | h), 0 where target == ignore_index; drop-in for ``chunked_linear_logprobs``.

    hidden (N, H), weight (V, H) and bias (V,) or None (same dtype: fp32, bf16 or fp16), targets (N,)
    long → (N,) fp32, differentiable in hidden, weight and bias. Peak extra memory O(chunk_size · V).
    """
    _check_linear_inputs(hidden, weight, targets, chunk_size, bias)
    _check_triton_inputs(hidden, weight, *(() if bias is None else (bias,)))
    targets = targets.contiguous()
    return TritonLinearLogprob.apply(hidden, weight, targets, ignore_index, chunk_size, softcap or None, bias)


# --------------------------------------------------------------------------- KL(π_ref ‖ π): host side


def linear_kl_forward(hidden, ref_hidden, weight, ref_weight, mask, temperature, chunk_size, softcap,
                      direction: bool, bias=None):
    """Per-token KL (N,) fp32 (0 where ~mask), lse and ref_lse (N,) of z/T and z_ref/T, and, if
    ``direction``, d = mask·(p − q)/T·∂z/∂x @ W (N, H)."""
    n_rows = hidden.shape[0]
    kl = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)  # (N,)
    lse, ref_lse = torch.empty_like(kl), torch.empty_like(kl)  # (N,) each
    dirs = torch.empty_like(hidden) if direction else None  # (N, H)
    g = mask.to(torch.float32)  # (N,): the direction of a masked-out row is 0
    for s, e in _chunks(n_rows, chunk_size):
        logits = _head_logits(hidden[s:e], weight, bias)  # (n, V)
        ref_logits = _head_logits(ref_hidden[s:e], ref_weight, bias)  # (n, V), the same bias
        _kl_stats(logits, ref_logits, lse[s:e], ref_lse[s:e], kl[s:e], temperature, softcap)
        if direction:
            _kl_grad_(logits, ref_logits, lse[s:e], ref_lse[s:e], g[s:e], temperature, softcap)
            dirs[s:e] = logits @ weight  # (n, H)
    return kl.masked_fill_(~mask, 0.0), lse, ref_lse, dirs


def linear_kl_backward(grad_kl, hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, temperature,
                       chunk_size, softcap, need_hidden: bool, need_weight: bool, bias=None, need_bias: bool = False):
    """Recompute both heads' logits per chunk; ∂L/∂z = g·(p − q)/T in place; cuBLAS for h and W."""
    g = grad_kl.to(torch.float32).masked_fill(~mask, 0.0).contiguous()  # (N,)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[:1], dtype=torch.float32, device=weight.device) if need_bias else None
    for s, e in _chunks(hidden.shape[0], chunk_size):
        logits = _head_logits(hidden[s:e], weight, bias)  # (n, V)
        ref_logits = _head_logits(ref_hidden[s:e], ref_weight, bias)  # (n, V)
        _kl_grad_(logits, ref_logits, lse[s:e], ref_lse[s:e], g[s:e], temperature, softcap)
        if need_hidden:
            grad_hidden[s:e] = logits @ weight  # (n, H)
        if need_weight:
            _accumulate_fp32(grad_weight, logits.T, hidden[s:e])  # (V, H)
        if need_bias:
            grad_bias += logits.sum(0, dtype=torch.float32)  # (V,)
    return (grad_hidden, (grad_weight.to(weight.dtype) if need_weight else None),
            (grad_bias.to(bias.dtype) if need_bias else None))


class TritonLinearKL(torch.autograd.Function):
    """``ChunkedLinearKL`` with the per-row vocabulary work in Triton; gradient to hidden, weight and bias only."""

    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, ref_weight, mask, temperature, chunk_size, softcap, bias=None):
        need_hidden, need_weight, need_bias = (ctx.needs_input_grad[i] for i in (0, 2, 8))
        direction = need_hidden and not need_weight and not need_bias
        with _no_autocast(hidden):
            kl, lse, ref_lse, dirs = linear_kl_forward(
                hidden, ref_hidden, weight, ref_weight, mask, temperature, chunk_size, softcap, direction, bias
            )
        ctx.direction = direction
        if direction:
            ctx.save_for_backward(dirs)
        else:
            ctx.save_for_backward(hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, bias)
        ctx.temperature, ctx.chunk_size, ctx.softcap = temperature, chunk_size, softcap
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        if ctx.direction:
            (dirs,) = ctx.saved_tensors
            return _scale_rows(dirs, grad_kl), None, None, None, None, None, None, None, None
        hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, bias = ctx.saved_tensors
        with _no_autocast(hidden):
            grad_hidden, grad_weight, grad_bias = linear_kl_backward(
                grad_kl, hidden, ref_hidden, weight, ref_weight, mask, lse, ref_lse, ctx.temperature,
                ctx.chunk_size, ctx.softcap, ctx.needs_input_grad[0], ctx.needs_input_grad[2], bias,
                ctx.needs_input_grad[8],
            )
        return grad_hidden, None, grad_weight, None, None, None, None, None, grad_bias


def triton_linear_kl(
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
    """Per-token KL(π_ref ‖ π) at temperature T; drop-in for ``chunked_linear_kl`` (same arguments).

    hidden, ref_hidden (N, H), weight (and ref_weight) (V, H), bias (V,) or None, one dtype among
    fp32/bf16/fp16; mask (N,) bool → (N,) fp32, 0 where mask is False; differentiable in hidden,
    weight and bias only.
    """
    _check_linear_inputs(hidden, weight, mask, chunk_size, bias)
    if ref_hidden.shape != hidden.shape:
        raise ValueError(f"ref_hidden {tuple(ref_hidden.shape)} must match hidden {tuple(hidden.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ref_weight = (weight if ref_weight is None else ref_weight).detach()
    _check_triton_inputs(hidden, ref_hidden, weight, ref_weight, *(() if bias is None else (bias,)))
    args = (mask.bool().contiguous(), float(temperature), chunk_size, softcap or None, bias)
    return TritonLinearKL.apply(hidden, ref_hidden.detach(), weight, ref_weight, *args)
