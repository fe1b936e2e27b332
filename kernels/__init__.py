"""Fused ops, each beside its plain-PyTorch reference (installed as ``rlvf.kernels``).

    linear_logprob.py         chunked lm_head + log-softmax + gather and per-token KL (pure torch),
                              with the naive full-logits references
    linear_logprob_triton.py  the same two ops with Triton kernels (CUDA; CPU under TRITON_INTERPRET=1)
    dispatch.py               ``linear_logprobs`` / ``linear_kl``: Triton on CUDA, torch otherwise
                              (``RLVF_KERNELS=auto|torch|triton``)
    c3po_loss.py              any method's micro-batch loss on one fused log-prob call (assembled by
                              rlvf/objective.py), and its full-logits reference

Nothing here imports Triton at import time: dispatch.py imports linear_logprob_triton only when the
Triton path is taken, so triton stays an optional dependency.
"""
from .c3po_loss import fused_c3po_loss, naive_c3po_loss
from .dispatch import (
    ENV_VAR,
    linear_kl,
    linear_logprobs,
    pick_backend,
    triton_available,
)
from .linear_logprob import (
    IGNORE_INDEX,
    ChunkedLinearKL,
    ChunkedLinearLogprob,
    chunked_linear_kl,
    chunked_linear_logprobs,
    naive_linear_kl,
    naive_linear_logprobs,
)

__all__ = [
    "ENV_VAR",
    "IGNORE_INDEX",
    "ChunkedLinearKL",
    "ChunkedLinearLogprob",
    "chunked_linear_kl",
    "chunked_linear_logprobs",
    "fused_c3po_loss",
    "linear_kl",
    "linear_logprobs",
    "naive_c3po_loss",
    "naive_linear_kl",
    "naive_linear_logprobs",
    "pick_backend",
    "triton_available",
]
