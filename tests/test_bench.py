"""The microbenchmarks in bench/ still run: each script in --smoke mode (tiny shapes, one
iteration, rows written to a temporary folder), and every row has the documented schema.

Nothing is timed or compared here (targets are checked by the benchmarks themselves). Peers that
are not installed are skipped: peft for the LoRA layer, trl + peft for the training step; a
missing liger-kernel leaves an "error" row, which is allowed.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
STATS = {"median", "p20", "p80"}


def _load(name: str):
    """Import bench/<name>.py as a module (the scripts put bench/ on sys.path for ``common``)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_row(row: dict, benchmark: str, optional_peers: set[str]) -> None:
    for key in ("benchmark", "implementation", "device", "dtype", "shapes", "versions", "date", "command"):
        assert key in row, f"row lacks {key!r}: {row}"
    assert row["benchmark"] == benchmark
    assert {"python", "torch"} <= set(row["versions"])
    assert row["command"].startswith(f"python bench/{benchmark}.py")
    if "error" in row:
        assert row["implementation"] in optional_peers, f"{row['implementation']} failed: {row['error']}"
        return
    times = row["times_ms"]
    assert "forward" in times and all(STATS <= set(t) for t in times.values())
    if row["implementation"] != "torch.matmul":
        assert {"forward", "backward", "fwd_bwd"} <= set(times)
        assert isinstance(row["peak_mib"], float)


CASES = [
    ("logprob_loss", (), [], {"liger"} if importlib.util.find_spec("liger_kernel") is None else set()),
    ("lora_layer", ("peft",), [], set()),
    ("train_step", ("trl", "peft"), [], set()),
]


@pytest.mark.parametrize("name, peers, extra, optional", CASES, ids=[c[0] for c in CASES])
def test_bench_smoke(name, peers, extra, optional, tmp_path):
    for peer in peers:
        pytest.importorskip(peer)
    _load(name).main(["--smoke", "--out", str(tmp_path), *extra])
    lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
    assert lines
    rows = [json.loads(line) for line in lines]
    for row in rows:
        _check_row(row, name, optional)
    if name == "lora_layer":
        assert {r["shapes"]["dropout"] for r in rows} == {0.0, 0.05}
        assert all(r["saved_for_backward_mib"] > 0 for r in rows)
    if name == "train_step":
        assert all(r["tokens_per_s"] > 0 for r in rows if r["implementation"] != "torch.matmul")


def test_worker_runs_in_a_fresh_process(tmp_path):
    """The isolated path of full runs: a worker subprocess prints its measurements as JSON."""
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    result = common.run_worker(str(BENCH / "lora_layer.py"),
                               ["--smoke", "--out", str(tmp_path), "--worker", "rlvf:0.05"])
    assert "error" not in result, result
    assert result["saved_for_backward_mib"] > 0 and set(result["times_ms"]) == {"forward", "backward", "fwd_bwd"}
