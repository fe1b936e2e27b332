"""Fused ops, each beside its plain-PyTorch reference (installed as ``rlvf.kernels``).

Nothing here imports Triton at import time; CUDA kernels are picked by the callers in rlvf/.
"""
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
    "IGNORE_INDEX",
    "ChunkedLinearKL",
    "ChunkedLinearLogprob",
    "chunked_linear_kl",
    "chunked_linear_logprobs",
    "naive_linear_kl",
    "naive_linear_logprobs",
]
