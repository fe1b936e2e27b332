"""Checkpoints: adapter + optimizer (torch.distributed.checkpoint), scheduler, RNG and data position,
written atomically by one process or by every rank of a torchrun job.

Layout under the run directory::

    checkpoints/step-000010/state/               DCP: adapter and AdamW state by parameter name, one file
                                                 per rank (.metadata, __0_0.distcp, ...); loads on any
                                                 number of ranks (DCP reshards)
    checkpoints/step-000010/adapter/             the whole adapter in PEFT format (written by rank 0)
    checkpoints/step-000010/trainer_state.pt     scheduler (torch.load weights_only)
    checkpoints/step-000010/rng/rank-00000.pt    each rank's RNG (dropout), restored on the same world size
    checkpoints/step-000010/trainer_state.json   step, micro-batch position, world size, metrics (readable)
    checkpoints/latest                            name of the newest complete checkpoint

Every rank writes into the hidden ``.tmp-step-000010``; after a barrier rank 0 fsyncs it, renames it
into place and replaces ``latest`` atomically, so a crash at any point leaves the previous
checkpoint usable, and no checkpoint is ever visible half-written.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rlvf import distributed as D
from rlvf.atomic import write_text_atomic
from rlvf.errors import UserError
from rlvf.lora import lora_state_dict
from rlvf.peft_format import PEFT_PREFIX, save_adapter


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _single_process_dcp(ranks: D.Ranks):
    """DCP warns that it assumes one process when there is no process group: that is intended here."""
    with warnings.catch_warnings():
        if not ranks.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_rank_files(tmp: Path, model, optimizer, ranks: D.Ranks) -> None:
    """Every rank: its shard of adapter + optimizer (DCP, collective) and its RNG state."""
    import torch.distributed.checkpoint as dcp

    with _single_process_dcp(ranks):
        dcp.save(D.train_state(model, optimizer), checkpoint_id=tmp / "state", no_dist=not ranks.distributed)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng, tmp / "rng" / f"rank-{ranks.rank:05d}.pt")


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                    base_model: str, keep: int, ranks: D.Ranks = D.SINGLE, revision: str | None = None) -> Path:
    """Write checkpoint ``step`` and prune all but the newest ``keep``. Returns its directory. Its
    ``adapter/`` is a PEFT adapter of ``base_model`` (at ``revision``, for a Hub model), as the final one.

    Under torchrun every rank must call it (it is a collective).
    """
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    if ranks.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier write
        tmp.mkdir()
    D.barrier(ranks)
    _write_rank_files(tmp, model, optimizer, ranks)
    full = D.full_adapter_state(model, ranks)  # collective; the whole adapter on rank 0
    if ranks.main:
        save_adapter(model, tmp / "adapter", base_model_name_or_path=base_model, revision=revision, tensors=full)
        torch.save({"scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "world_size": ranks.size}, indent=2) + "\n",
                                                encoding="utf-8")
    D.barrier(ranks)  # every rank's files are written
    if ranks.main:
        _publish(tmp, final, root, name)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier(ranks)  # nobody reads or rewrites the directory before it is in place
    return final


def _publish(tmp: Path, final: Path, root: Path, name: str) -> None:
    """fsync the finished temporary directory, rename it to ``final`` and point ``latest`` at it."""
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / "latest", name + "\n")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / "trainer_state.json").is_file():
            return path
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _check_adapter_keys(path: Path, model) -> None:
    with safe_open(str(path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        saved = {k[len(PEFT_PREFIX):] for k in f.keys()}
    expected = set(lora_state_dict(model))
    if saved != expected:
        raise UserError(f"{path}: checkpoint adapter does not match the configured LoRA modules "
                        f"({len(saved)} tensors saved, {len(expected)} expected); was the config changed?")


def _load_single_process_state(path: Path, model, optimizer, blob: dict, ranks: D.Ranks) -> None:
    """Checkpoints written before sharded state: PEFT adapter + a whole optimizer state dict."""
    if ranks.distributed:
        raise UserError(f"{path}: this checkpoint predates sharded checkpoints; resume it without torchrun")
    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    with torch.no_grad():
        for key, tensor in lora_state_dict(model).items():
            tensor.copy_(weights[PEFT_PREFIX + key])
    optimizer.load_state_dict(blob["optimizer"])


# torch.distributed.checkpoint unpickles state/.metadata with plain pickle.load; before it does,
# the file is read with an unpickler that only builds DCP's own metadata classes, so a tampered
# checkpoint cannot run code on --resume.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                "torch.distributed.checkpoint.planner")
_DCP_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module in _DCP_MODULES or (module, name) in _DCP_GLOBALS
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_dcp_metadata(state_dir: Path) -> None:
    """Refuse a DCP metadata file that references anything but DCP's metadata classes."""
    for path in sorted(Path(state_dir).glob(".metadata*")):
        try:
            with open(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
            raise UserError(f"{path}: refused: not a torch.distributed.checkpoint metadata file "
                            f"(it references {err}); resume only from checkpoints you trust") from None


def _load_tensors(path: Path):
    """torch.load(weights_only=True), a refused pickle being one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling refused"
        raise UserError(f"{path}: refused by weights_only loading ({first}); resume only from checkpoints "
                        "you trust") from None


def load_checkpoint(path: Path, model, optimizer, scheduler, ranks: D.Ranks = D.SINGLE) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG from ``path``; returns the saved state.

    Loads on any number of ranks; each rank's RNG is restored only on the world size that saved it.
    """
    import torch.distributed.checkpoint as dcp

    _check_adapter_keys(path, model)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    blob = _load_tensors(path / "trainer_state.pt")
    if "optimizer" in blob:
        _load_single_process_state(path, model, optimizer, blob, ranks)
        rng = blob["rng"]
    else:
        check_dcp_metadata(path / "state")
        target = D.train_state(model, optimizer)
        with _single_process_dcp(ranks):
            dcp.load(target, checkpoint_id=path / "state", no_dist=not ranks.distributed)
        D.load_train_state(model, optimizer, target)
        rng_file = path / "rng" / f"rank-{ranks.rank:05d}.pt"
        same_size = state.get("world_size", 1) == ranks.size and rng_file.is_file()
        rng = _load_tensors(rng_file) if same_size else None
        if rng is None and ranks.main:
            print(f"{path.name}: written by {state.get('world_size', 1)} processes, resumed on {ranks.size}; "
                  "dropout draws a fresh random stream", file=sys.stderr)
    scheduler.load_state_dict(blob["scheduler"])
    if rng is not None:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            cuda = rng["cuda"]
            if isinstance(cuda, list):  # older checkpoints saved every device's state
                torch.cuda.set_rng_state_all(cuda)
            else:
                torch.cuda.set_rng_state(cuda)
    return state
