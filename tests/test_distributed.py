"""FSDP2 training under torchrun on the CPU (gloo): two ranks against one process, and checkpoints
written by N ranks resumed on M.

Why the runs must agree: each rank takes a contiguous half of every micro-batch and backpropagates
loss_rank · n_rank/n_global · world_size; FSDP's reduce-scatter averages over the 2 ranks, so the
summed gradient is that of the mean over the global micro-batch, the single-process gradient. Only
the order of floating-point sums differs (per rank, then across ranks), hence the tolerances:
1e-5 relative on logged losses, 1e-6 absolute on the adapter. Dropout is off: its masks are drawn
per rank, so with dropout the runs agree only in distribution.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvf.config import load_config
from rlvf.metrics_log import read_metrics
from test_train import make_config, run

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"max_steps": 4, "grad_accum": 2, "batch_size": 2, "eval_every": 2, "save_every": 2, "save_total_limit": 2}
# Sums of log-probs: equal up to the order of fp32 sums.
RELATIVE = ("loss", "loss/dpo", "loss/sft", "loss/near", "loss/out", "grad_norm", "lr", "logps/chosen",
            "logps/rejected", "eval/loss", "eval/loss/dpo", "eval/loss/near", "eval/loss/out")
# β·(log π − log π_ref) of ~250-nat fp32 log-probs (ulp ≈ 3e-5): compared absolutely.
ABSOLUTE = ("rewards/chosen", "rewards/rejected", "rewards/margins", "eval/rewards/margins")


def torchrun(config: Path, *extra: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc -m rlvf.train --config config ...``, one thread per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "rlvf.train", "--config", str(config), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def assert_same_run(a: Path, b: Path, rel: float = 1e-5, weight_rel: float = 2e-5) -> None:
    """Same logged trajectory (one row per step and eval, rank 0 only) and the same final adapter."""
    ra, rb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in RELATIVE:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rel), (x["step"], key)
        for key in ABSOLUTE:
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=1e-5), (x["step"], key)
    wa, wb = adapter(a), adapter(b)
    assert wa.keys() == wb.keys()
    # relative to the adapter's largest weight: AdamW divides each gradient element by its own running
    # RMS, so fp32 sum-order rounding in a near-zero gradient element still moves that weight at lr scale
    err = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    scale = max(wa[k].abs().max().item() for k in wa)
    assert err <= weight_rel * scale, (err, scale)


def config(tmp_path, model_dir, name, **sections):
    return make_config(tmp_path, model_dir, name=name, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                       train=STEPS, **sections)


def rewind(run_dir: Path, step: int, config_path: Path) -> Path:
    """A copy of a finished run as it was on disk right after checkpoint ``step`` (for --resume)."""
    out = Path(load_config(config_path).output_dir)
    shutil.copytree(run_dir, out)
    shutil.rmtree(out / "adapter")
    (out / "train_summary.json").unlink()
    for ck in (out / "checkpoints").glob("step-*"):
        if int(ck.name[5:]) > step:
            shutil.rmtree(ck)
    (out / "checkpoints" / "latest").write_text(f"step-{step:06d}\n")
    return out


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir):
    """The uninterrupted single-process run every distributed variant is compared with."""
    tmp = tmp_path_factory.mktemp("single")
    return run(config(tmp, tiny_model_dir, "single"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_model_dir):
    """The same run on 2 ranks: (run directory, torchrun's stderr)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    proc = torchrun(config(tmp, tiny_model_dir, "fsdp"))
    return tmp / "fsdp", proc.stderr


def test_two_ranks_match_one_process(single_run, fsdp_run):
    out, stderr = fsdp_run
    assert_same_run(single_run, out)
    assert stderr.count("saved adapter to") == 1 and "× 2 ranks (FSDP2)" in stderr  # rank 0 alone reports
    last = out / "checkpoints" / "step-000004"
    assert (last / "state" / ".metadata").is_file()
    assert sorted(p.name for p in (last / "rng").iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert adapter(last).keys() == adapter(out).keys()


def test_checkpoint_of_two_ranks_resumes_on_one(tmp_path, tiny_model_dir, single_run, fsdp_run):
    path = config(tmp_path, tiny_model_dir, "resumed")
    rewind(fsdp_run[0], 2, path)
    out = run(path, "--resume")
    assert_same_run(single_run, out)


def test_checkpoint_of_one_process_resumes_on_two_ranks(tmp_path, tiny_model_dir, single_run):
    path = config(tmp_path, tiny_model_dir, "resumed")
    out = rewind(single_run, 2, path)
    proc = torchrun(path, "--resume")
    assert "resuming" in proc.stderr and "step-000002" in proc.stderr
    assert_same_run(single_run, out)


@pytest.mark.slow
@pytest.mark.parametrize("method,model", [
    ({"name": "scd_neg"}, {}),
    ({"name": "c3po", "constraint": "kd"}, {}),
    ({"name": "dpo"}, {"gradient_checkpointing": True}),
], ids=["scd_neg", "c3po-kd", "dpo-gradient-checkpointing"])
def test_three_ranks_with_uneven_slices_match_one_process(tmp_path, tiny_model_dir, method, model):
    """batch_size 2 over 3 ranks: slices of 1, 0 (a stand-in item weighted 0) and 1 items."""
    sections = {"method": method, "model": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "train": {**STEPS, "max_steps": 2}}
    one = run(make_config(tmp_path, tiny_model_dir, name="one", **sections))
    torchrun(make_config(tmp_path, tiny_model_dir, name="three", **sections), nproc=3)
    # 1e-5, not 1e-6: a few lora_A entries have |gradient| ≈ Adam's eps (1e-8) at step 2 (B was 0 at
    # step 1), where the update lr·g/(|g| + eps) turns ulp-level differences of g into ~1e-3·lr.
    # Losses to 2e-4: KD's logged KL terms (eval/loss/near, eval/loss/out ≈ 0.012) measure how far two
    # nearly equal distributions are apart, so the 1e-4-relative weight differences above show in them
    # at the same relative size (1.9e-5 and 1.1e-4 measured); the CE/DPO terms agree to 1e-5.
    assert_same_run(one, tmp_path / "three", rel=2e-4, weight_rel=1e-4)


@pytest.mark.slow
def test_bf16_base_with_fp32_adapter_on_two_ranks(tmp_path, tiny_model_dir):
    """The CUDA layout (bf16 base, fp32 adapter: one FSDP all-gather of mixed dtypes, fp32 reduce) on
    gloo. bf16 rounds each log-prob sum to ~1e-3 relative, so only the trajectory is compared, loosely."""
    sections = {"model": {"dtype": "bfloat16"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "train": {**STEPS, "max_steps": 2}}
    one = run(make_config(tmp_path, tiny_model_dir, name="one", **sections))
    torchrun(make_config(tmp_path, tiny_model_dir, name="two", **sections))
    for x, y in zip(read_metrics(one), read_metrics(tmp_path / "two")):
        assert x["step"] == y["step"]
        for key in ("loss", "eval/loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-3)
    # (Adapters are not compared: Adam turns bf16 noise in near-zero gradients into ±lr steps.)
    assert all(t.dtype == torch.float32 for t in adapter(tmp_path / "two").values())
