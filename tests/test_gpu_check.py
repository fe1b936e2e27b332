"""bench/gpu_check.sh: the prepared GPU check runs end to end on the CPU (--dry-run), its GPU plan uses
the bench scripts' real options, and its summaries read the rows those scripts write.

The default suite runs the dry run on three of its steps (pytest -m cuda, the measured model step,
the skipped FSDP2 step); the bench scripts' steps are the same subprocess runner with their --smoke
runs, which tests/test_bench.py runs already, and their summaries are checked here on written rows.
The slow test runs every step, FSDP2 included on two gloo ranks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from bench_modules import load_bench

ROOT = Path(__file__).resolve().parent.parent


gc = load_bench("gpu_check")


def dry_run(out: Path, *extra: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    path = out / "gpu_check.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return proc, rows


def _check(proc, rows, expected: dict[str, str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {r["step"]: r["status"] for r in rows} == expected
    assert all(r["device"] and r["dry_run"] and "versions" in r for r in rows)
    assert "| step | status |" in proc.stdout  # the summary table
    for r in rows:
        if r["status"] == "ok":
            assert r["summary"]["verdict"] in ("met", "n/a (CPU)"), r


def test_dry_run_end_to_end(tmp_path):
    steps = ["pytest -m cuda", "model step (ckpt on)", "FSDP2 step"]
    proc, rows = dry_run(tmp_path, "--only", ",".join(steps))
    _check(proc, rows, {"pytest -m cuda": "ok", "model step (ckpt on)": "ok", "FSDP2 step": "skipped"})
    (step,) = [json.loads(l) for l in (tmp_path / "gpu_step.jsonl").read_text().splitlines()]
    assert abs(step["error"]) < 0.05 and step["measured_peak_gib"] > 0  # model vs LiveBytes, tiny model
    assert (tmp_path / "logs" / "pytest_m_cuda.log").is_file()


@pytest.mark.slow
def test_dry_run_every_step_with_fsdp_on_two_ranks(tmp_path):
    proc, rows = dry_run(tmp_path, "--fsdp-cpu")
    _check(proc, rows, {name: "ok" for name in ("pytest -m cuda", "model step (ckpt on)", "logprob_loss", "train_step",
                                                 "lora_layer", "model step (ckpt off)", "FSDP2 step")})


def _gpu_plan(count: int, memory_gib: float):
    args = SimpleNamespace(dry_run=False, fsdp_cpu=False)
    return gc.plan(args, Path("/tmp/out"), {"count": count, "name": "NVIDIA H200", "memory": memory_gib * 2**30})


def test_gpu_plan_passes_options_the_scripts_accept():
    """Every GPU command line parses with its own script's argparse (no unknown flag on the GPU day)."""
    for step in _gpu_plan(8, 141):
        argv = step.argv
        if argv[0] == "-m" and argv[1] == "pytest":
            assert argv[2:6] == ["-q", "-m", "cuda", "-p"]
            continue
        if argv[0] == "-m":  # torchrun ... bench/gpu_check.py fsdp ...
            assert argv[1] == "torch.distributed.run" and "--nproc_per_node=8" in argv
            argv = argv[argv.index(str(ROOT / "bench" / "gpu_check.py")):]
        script = Path(argv[0]).stem
        module = gc if script == "gpu_check" else load_bench(script)
        parsed = module.parse_args(argv[1:])
        assert getattr(parsed, "device", "cuda") == "cuda" and not getattr(parsed, "smoke", False)
        assert not getattr(parsed, "dry_run", False)


def test_gpu_plan_skips_what_the_machine_cannot_run():
    one = {s.name: s.skip for s in _gpu_plan(1, 39.4)}  # one A100-40GB
    assert one["FSDP2 step"] and one["model step (ckpt off)"] and not one["model step (ckpt on)"]
    big = {s.name: s for s in _gpu_plan(8, 79.1)}
    assert not big["FSDP2 step"].skip and "llama3-70b" in big["FSDP2 step"].argv
    assert not big["model step (ckpt off)"].skip
    assert sum(s.timeout_s for s in _gpu_plan(1, 141) if not s.skip) > gc.BUDGET_S  # the budget decides


def _write(out: Path, name: str, rows: list[dict]) -> None:
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summaries_read_the_bench_rows(tmp_path):
    times = lambda ms: {"fwd_bwd": {"median": ms, "p20": ms, "p80": ms}}  # noqa: E731
    dpo = {"case": "dpo"}
    _write(tmp_path, "logprob_loss", [{"implementation": "rlvf", "shapes": dpo, "tflops": 420.0, "peak_mib": 300.0},
                                      {"implementation": "naive", "shapes": dpo, "peak_mib": 3000.0},
                                      {"implementation": "torch.matmul", "shapes": dpo, "tflops": 600.0}])
    got = gc.sum_logprob(tmp_path, "", dry=False)
    assert got["verdict"] == "met" and "0.70 × cuBLAS" in got["result"] and "0.100 × naive" in got["result"]
    _write(tmp_path, "lora_layer", [{"implementation": i, "shapes": {"dropout": 0.05}, "times_ms": times(ms)}
                                    for i, ms in (("rlvf", 11.0), ("peft", 10.0))])
    assert gc.sum_lora(tmp_path, "", dry=False)["verdict"] == "MISSED"
    _write(tmp_path, "train_step", [{"implementation": "rlvf-dpo", "tokens_per_s": 3000.0, "peak_mib": 10.0},
                                    {"implementation": "trl-dpo", "tokens_per_s": 2000.0, "peak_mib": 20.0}])
    assert gc.sum_train(tmp_path, "", dry=False)["verdict"] == "met"
    assert gc.sum_pytest(tmp_path, "12 passed, 3 skipped, 400 deselected in 9.1s", dry=False)["verdict"] == "met"
    assert gc.sum_pytest(tmp_path, "1 failed, 11 passed in 9.1s", dry=False)["verdict"] == "MISSED"
    row = {"label": "ckpt on", "setting": {"checkpointing": True, "ranks": 1}, "measured_peak_gib": 20.0,
           "model_peak_gib": 21.0, "error": 0.05, "step_s": 1.5, "fits_a100_40gb": True}
    _write(tmp_path, "gpu_step", [row])
    assert gc.sum_step("ckpt on")(tmp_path, "", dry=False)["verdict"] == "met"
    _write(tmp_path, "gpu_step", [{**row, "error": 0.2}])
    assert gc.sum_step("ckpt on")(tmp_path, "", dry=False)["verdict"] == "MISSED"
