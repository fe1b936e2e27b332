"""Data-parallel training with FSDP2 (``torch.distributed.fsdp.fully_shard``), launched by torchrun.

    torchrun --nproc_per_node N -m rlvf.train --config CONFIG.yaml

Without torchrun's environment (RANK, WORLD_SIZE, ...) every helper here is a no-op on a
``Ranks()`` of one process, so a plain ``python -m rlvf.train`` runs exactly the single-process loop.

Under torchrun:

- each decoder layer is one FSDP unit and the model root (embeddings, final norm, lm head) another;
  the frozen base weights are sharded like the adapter. On CUDA the base is stored and gathered in
  bf16 (``model.dtype: auto``), the adapter and its AdamW state in fp32, and gradients are
  reduce-scattered in fp32 (``MixedPrecisionPolicy(reduce_dtype=float32)``).
- every micro-batch of the single-process run is split into contiguous slices, one per rank
  (``rlvf.batches.shard_micro_batch``). A rank backpropagates its share of the global mean,
  loss_rank · n_rank / n_global, and FSDP's reduce-scatter *sums* the ranks' gradients (its
  default average over ranks is switched off), so the gradient is that of the mean over the
  global micro-batch, as in one process. This holds for every loss rlvf.objective builds, each a
  mean of per-item terms (DPO, IPO, hinge, NLL, KD, squared constraints). Dropout masks are drawn
  per rank (seed + rank).
- rlvf's log-prob path calls the backbone and uses the lm head's weight directly, never
  ``model.forward``; ``run_forward`` runs such a function as a registered FSDP forward method of
  the root, so the root's parameters are gathered around it and its backward hooks are set.

A rank whose slice of a micro-batch is empty (global batch smaller than the number of ranks)
computes on a stand-in item with weight 0, so all ranks always run the same collectives.
"""
from __future__ import annotations

import functools
import os
import types
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

_FORWARD = "rlvf_forward"  # the method registered as an FSDP forward on the root module


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes, torch.distributed's "world" (``Ranks()``: a
    single process)."""

    rank: int = 0
    size: int = 1  # the number of ranks (torch's world size)
    local_rank: int = 0
    distributed: bool = False

    @property
    def main(self) -> bool:
        """True on the rank that logs, writes metrics and consolidates the adapter."""
        return self.rank == 0


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> Ranks:
    """Join the process group from torchrun's env vars (NCCL on CUDA, gloo on CPU); ``SINGLE`` without them."""
    if not launched_by_torchrun():
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, True)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, ranks: Ranks) -> torch.device:
    """cuda:LOCAL_RANK for a distributed CUDA run, else ``device``."""
    return torch.device("cuda", ranks.local_rank) if ranks.distributed and device.type == "cuda" else device


# ----------------------------------------------------------------------------- sharding


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: modules of the classes HF lists in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (_no_split_modules={sorted(names)})")
    return layers


def _call(self, fn):
    return fn()


def shard_model(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """FSDP2 in place: ``fully_shard`` every decoder layer, then the root; parameters move to ``device``.

    Mixed precision: every parameter is gathered in the dtype it is stored in — the frozen base in
    ``model.dtype`` (bf16 on CUDA by default), the adapter in fp32, which ``LoRALinear`` computes in
    — and gradients are reduce-scattered in fp32. (Casting the adapter to bf16 on gather, the
    usual ``param_dtype=bf16``, would round the very update LoRA learns.)
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (ranks.size,))
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    units = [fully_shard(layer, mesh=mesh, mp_policy=policy) for layer in _decoder_layers(model)]
    units.append(fully_shard(model, mesh=mesh, mp_policy=policy))
    for unit in units:  # reduce-scatter sums; the loop scales each rank's loss by its share instead
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    setattr(model, _FORWARD, types.MethodType(_call, model))
    register_fsdp_forward_method(model, _FORWARD)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def run_forward(model: nn.Module, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as the root's forward under FSDP (root parameters gathered), else directly."""
    if is_sharded(model):  # one opaque argument: FSDP's input casting and moving leave it alone
        return getattr(model, _FORWARD)(functools.partial(fn, *args, **kwargs))
    return fn(*args, **kwargs)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulation window."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)


# ----------------------------------------------------------------------------- collectives


def all_reduce_sums(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Σ over ranks of each value (every rank must pass the same keys); identity for one process."""
    if not ranks.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)  # (K,)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_true(flag: bool, ranks: Ranks) -> bool:
    """True when ``flag`` holds on every rank."""
    if not ranks.distributed:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item()) == 0


def all_gather_rows(t: torch.Tensor, sizes: list[int], ranks: Ranks) -> torch.Tensor:
    """Concatenate each rank's (sizes[rank], ...) CPU tensor in rank order: (Σ sizes, ...)."""
    if not ranks.distributed:
        return t
    width = max(sizes)
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(ranks.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def shard_range(n: int, ranks: Ranks) -> range:
    """This rank's contiguous slice of n items; sizes differ by at most one, lower ranks first."""
    return range(n * ranks.rank // ranks.size, n * (ranks.rank + 1) // ranks.size)


def shard_sizes(n: int, ranks: Ranks) -> list[int]:
    return [n * (r + 1) // ranks.size - n * r // ranks.size for r in range(ranks.size)]


# ----------------------------------------------------------------------------- gradients and state


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm over all ranks' shards (a plain scalar tensor), clipped to ``max_norm``."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.nn.utils.get_total_norm(grads)
    total = total.full_tensor() if isinstance(total, DTensor) else total
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _state_options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=False)


def train_state(model: nn.Module, optimizer) -> dict:
    """{"model": adapter tensors, "optim": optimizer state}, keyed by parameter names, sharded under FSDP
    (DTensors), for ``torch.distributed.checkpoint``; frozen base weights are left out."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_state_options())
    return {"model": msd, "optim": osd}


def load_train_state(model: nn.Module, optimizer, state: dict) -> None:
    """Put a ``train_state`` dict (after ``dcp.load`` into it) back into the model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_state_options())


def full_adapter_state(model: nn.Module, ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """The whole adapter on rank 0's CPU ({<path>.lora_A.weight: tensor}), None on other ranks.

    A collective under FSDP: every rank must call it.
    """
    if not is_sharded(model):
        return None  # the model's own tensors are whole; save_adapter reads them
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_state_options(full=True))
    return state if ranks.main else None
