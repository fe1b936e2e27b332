"""How many threads torch uses on the CPU.

torch's default gives every matmul all the cores. For a small model (the shipped 3.3M-parameter
tiny-world model, or any model under ``SMALL_MODEL_PARAMS``) the matrices are too small to split
well, and rlvf's server answers several requests at once from Python threads, each of which would
start its own team of intra-op threads: on a busy 2-core machine the demo took 10 min 46 s with
torch's default against 1 min 35 s with one thread. So on the CPU a small model runs on one
intra-op thread per request, and a large one keeps torch's default.

The user decides whenever they say so: with ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) in the
environment rlvf leaves torch's thread count alone. (torch cannot tell an explicit
``torch.set_num_threads`` from its default, so the environment variable is the way to choose.)
"""
from __future__ import annotations

import os

import torch

SMALL_MODEL_PARAMS = 50_000_000
USER_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_for(n_params: int, device: torch.device, env: dict | None = None) -> int | None:
    """The intra-op thread count to set for a model of ``n_params`` on ``device``; None: leave torch's."""
    env = os.environ if env is None else env
    if device.type != "cpu" or any(env.get(k) for k in USER_SETTINGS):
        return None
    return 1 if n_params < SMALL_MODEL_PARAMS else None


def apply(model: torch.nn.Module, device: torch.device) -> int:
    """Set the policy for ``model`` (counted once, all parameters); returns the thread count in use."""
    n = threads_for(sum(p.numel() for p in model.parameters()), torch.device(device))
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
