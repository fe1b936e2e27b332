"""Checkpoints: adapter (PEFT format) + optimizer, scheduler, RNG and data position, written atomically.

Layout under the run directory::

    checkpoints/step-000010/adapter/{adapter_config.json, adapter_model.safetensors}
    checkpoints/step-000010/trainer_state.pt     optimizer, scheduler, RNG (torch.load weights_only)
    checkpoints/step-000010/trainer_state.json   step, micro-batch position, metrics (readable)
    checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place, and ``latest``
is replaced atomically afterwards, so a crash mid-write leaves the previous checkpoint usable.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlvf.errors import UserError
from rlvf.lora import lora_state_dict, save_adapter

PEFT_PREFIX = "base_model.model."


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                    base_model: str, keep: int) -> Path:
    """Write checkpoint ``step`` and prune all but the newest ``keep``. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_adapter(model, tmp / "adapter", base_model_name_or_path=base_model)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / "trainer_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_text_atomic(root / "latest", name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG from ``path``; returns the saved state."""
    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    params = lora_state_dict(model)
    loaded = {k[len(PEFT_PREFIX):]: v for k, v in weights.items()}
    if set(loaded) != set(params):
        raise UserError(f"{path}: checkpoint adapter does not match the configured LoRA modules "
                        f"({len(loaded)} tensors saved, {len(params)} expected); was the config changed?")
    with torch.no_grad():
        for key, tensor in params.items():
            tensor.copy_(loaded[key])
    blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["cpu"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
