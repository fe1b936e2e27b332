"""Pick the implementation of the fused lm-head ops: Triton on CUDA, the chunked torch path elsewhere.

    backend "auto" (default): Triton when the tensors are on CUDA in fp32/bf16/fp16 and triton is
                              importable; the pure-PyTorch chunked path otherwise (CPU, fp64, no triton)
    backend "torch" / "triton": forced. Forced Triton on CPU tensors needs TRITON_INTERPRET=1 set
                              before anything imports rlvf.kernels.linear_logprob_triton (tests do this).

The choice comes from the ``backend`` argument, else the ``RLVF_KERNELS`` environment variable,
read at call time. Triton is imported only when the Triton path is taken, so CPU users need not
install it.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .linear_logprob import IGNORE_INDEX, chunked_linear_kl, chunked_linear_logprobs

ENV_VAR = "RLVF_KERNELS"
BACKENDS = ("auto", "torch", "triton")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """True when the triton package can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def pick_backend(*tensors: torch.Tensor, backend: str | None = None) -> str:
    """"triton" or "torch" for ops on ``tensors`` (hidden first, then weights), see module doc."""
    choice = (backend or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend {choice!r} (argument or ${ENV_VAR}) must be one of {', '.join(BACKENDS)}")
    if choice == "triton" and not triton_available():
        raise ImportError(f"kernel backend 'triton' was asked for but triton is not installed: pip install triton, "
                          f"or set {ENV_VAR}=torch")
    if choice != "auto":
        return choice
    dtype = tensors[0].dtype
    on_gpu = all(t.is_cuda and t.dtype == dtype for t in tensors) and dtype in _TRITON_DTYPES
    return "triton" if on_gpu and triton_available() else "torch"


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    softcap: float | None = None,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token log π(y | h) (N,) fp32 via ``triton_linear_logprobs`` or ``chunked_linear_logprobs``
    (same arguments and result; see kernels/linear_logprob.py)."""
    heads = (weight,) if bias is None else (weight, bias)
    if pick_backend(hidden, *heads, backend=backend) == "triton":
        from .linear_logprob_triton import triton_linear_logprobs

        return triton_linear_logprobs(hidden, weight, targets, ignore_index, chunk_size, softcap, bias)
    return chunked_linear_logprobs(hidden, weight, targets, ignore_index, chunk_size, softcap, bias)


def linear_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    softcap: float | None = None,
    ref_weight: torch.Tensor | None = None,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL(π_ref ‖ π) (N,) fp32 via ``triton_linear_kl`` or ``chunked_linear_kl`` (same arguments)."""
    heads = tuple(t for t in (weight, ref_weight, bias) if t is not None)
    if pick_backend(hidden, ref_hidden, *heads, backend=backend) == "triton":
        from .linear_logprob_triton import triton_linear_kl

        return triton_linear_kl(hidden, ref_hidden, weight, mask, temperature, chunk_size, softcap, ref_weight, bias)
    return chunked_linear_kl(hidden, ref_hidden, weight, mask, temperature, chunk_size, softcap, ref_weight, bias)
