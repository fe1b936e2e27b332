"""The training metrics log: one JSON object per line in ``<run>/metrics.jsonl``, optionally mirrored to
W&B or TensorBoard. (A feedback's quantitative checks are rlvf/feedback_metrics.py.)
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from rlvf.errors import UserError


def check_reporter(report_to: str) -> None:
    """Fail before any work if the requested reporter is not installed."""
    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"train.report_to: '{report_to}' needs the {package} package (pip install {package})")


class MetricsWriter:
    """Append-only metrics log. Keys follow TRL/HF names (loss, rewards/margins, eval/loss, ...)."""

    def __init__(self, run_dir: Path, report_to: str = "none", run_name: str = "", config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._wandb = self._tb = None
        if report_to == "wandb":
            import wandb

            self._wandb = wandb.init(name=run_name or None, config=config, dir=str(run_dir))
        elif report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
