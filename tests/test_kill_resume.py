"""Crash safety: SIGKILL at a random step, then ``--resume``, ends with the uninterrupted run's adapter
bit for bit (CPU, fp32, same thread count); a crash while a checkpoint is being written leaves the
previous checkpoint in place and usable.

Why bit for bit: a checkpoint holds the adapter, AdamW state, scheduler and every rank's RNG
(dropout is on here), and micro-batch i is a pure function of (seed, i), so the resumed run repeats
exactly the computation the killed one would have done after its last complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvf import checkpoint as ckpt
from rlvf.config import load_config
from rlvf.metrics_log import read_metrics
from test_train import make_config, run

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"max_steps": 6, "save_every": 1, "grad_accum": 2, "batch_size": 2, "eval_every": 3}


def launch(config: Path, *extra: str, nproc: int = 0) -> subprocess.Popen:
    """``python -m rlvf.train`` (nproc 0) or ``torchrun --nproc_per_node nproc``, one thread per process."""
    cmd = [sys.executable, "-m", "rlvf.train"] if not nproc else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "rlvf.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([*cmd, "--config", str(config), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written
            pass
    return steps


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc); torchrun starts each rank in its own session."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out += process_tree(int(child))
    return out


def kill_at_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL the run (torchrun's agent and every rank at once) once ``step`` is logged."""
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in logged_steps(run_dir)):
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run to log"
        time.sleep(0.02)
    for pid in reversed(process_tree(proc.pid)):  # ranks first, so the agent cannot react
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    assert proc.returncode != 0 and not (run_dir / "adapter").exists()


def assert_same_adapter(a: Path, b: Path) -> None:
    wa = load_file(a / "adapter" / "adapter_model.safetensors")
    wb = load_file(b / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]


def kill_and_resume(tmp_path, model_dir, nproc: int, seed: int) -> None:
    full = make_config(tmp_path, model_dir, name="full", train=TRAIN)
    cut = make_config(tmp_path, model_dir, name="cut", train=TRAIN)
    finish(launch(full, nproc=nproc))
    out = Path(load_config(cut).output_dir)
    step = random.Random(seed).randint(1, TRAIN["max_steps"] - 2)  # leaves time to kill before the end
    kill_at_step(launch(cut, nproc=nproc), out, step)
    finish(launch(cut, "--resume", nproc=nproc))
    assert_same_adapter(tmp_path / "full", out)
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(out))


def test_sigkill_single_process_then_resume_is_bit_exact(tmp_path, tiny_model_dir):
    kill_and_resume(tmp_path, tiny_model_dir, nproc=0, seed=0)


@pytest.mark.slow
def test_sigkill_two_ranks_then_resume_is_bit_exact(tmp_path, tiny_model_dir):
    kill_and_resume(tmp_path, tiny_model_dir, nproc=2, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_sigkill_at_other_steps(tmp_path, tiny_model_dir, seed):
    kill_and_resume(tmp_path, tiny_model_dir, nproc=0, seed=seed)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return run(make_config(tmp, tiny_model_dir, name="full", train={**TRAIN, "max_steps": 3}))


@pytest.mark.parametrize("where", ["save_adapter", pytest.param("_publish", marks=pytest.mark.slow)])
def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_model_dir, monkeypatch,
                                                                 uninterrupted, where):
    """The write of checkpoint 2 dies after its sharded state is on disk (in save_adapter, or just
    before the rename): step-000001 stays the latest, and resuming from it finishes the run exactly."""
    path = make_config(tmp_path, tiny_model_dir, name="crash", train={**TRAIN, "max_steps": 3})
    real, calls = getattr(ckpt, where), []

    def crash(*args, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing a checkpoint")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, where, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(path)
    monkeypatch.undo()
    out, root = tmp_path / "crash", tmp_path / "crash" / "checkpoints"
    assert (root / ".tmp-step-000002" / "state" / ".metadata").is_file() and not (root / "step-000002").exists()
    assert ckpt.latest_checkpoint(out) == root / "step-000001"
    run(path, "--resume")
    assert_same_adapter(uninterrupted, out)
    assert strip(read_metrics(uninterrupted)) == strip(read_metrics(out))
    assert not (root / ".tmp-step-000002").exists()  # the next write of step 2 replaced the leftover
