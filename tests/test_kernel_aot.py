"""The Triton kernels compile for real GPU targets on this CPU: every specialisation the launch code
picks, for sm_80 (A100), sm_89 (L4) and sm_90 (H100/H200), without register spills and within each
target's shared memory per block (bench/kernel_aot.py has the method and the cited limits).

The compile runs in a subprocess: tests/conftest.py sets TRITON_INTERPRET=1 for this session, and
the interpreter replaces the @jit kernels when their module is imported. The default suite compiles
one softcap flag per kernel × dtype × target × (BLOCK_V, num_warps) (36 compiles, ~20 s on 2 cores
from an empty cache); the full matrix (72) is the slow test.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
try:  # the Triton 3.x pieces bench/kernel_aot.py drives
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
    from triton.runtime.jit import create_function_from_signature  # noqa: F401
except ImportError as err:  # pragma: no cover - other Triton versions
    pytest.skip(f"this Triton lacks an API bench/kernel_aot.py uses: {err}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("bench_kernel_aot", ROOT / "bench" / "kernel_aot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


aot = _load()


def run_aot(out: Path, *args: str, cache: Path | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python bench/kernel_aot.py ARGS --out OUT`` without the interpreter; Triton's cache in ``cache``
    (default: under OUT), never in $HOME."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_HOME=str(out / "triton"), TRITON_CACHE_DIR=str(cache or out / "triton" / "cache"),
               OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "bench/kernel_aot.py", *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    path = out / "kernel_aot.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return proc, rows


@pytest.fixture(scope="module")
def subset(tmp_path_factory, request):
    """The default-suite compiles. Triton's cache lives in pytest's cache folder (.pytest_cache, git-
    ignored) so that re-runs skip unchanged kernels (its key covers source, options and versions);
    ptxas -v always re-runs on the PTX. The slow test below compiles from an empty cache."""
    cache = request.config.cache.mkdir("triton-aot") if request.config.cache is not None else None
    proc, rows = run_aot(tmp_path_factory.mktemp("aot"), "--subset", "--jobs", "2", cache=cache)
    assert rows, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, rows


def _assert_fit(rows: list[dict]) -> None:
    for r in rows:
        what = f"{r['kernel']} {r['dtype']} softcap={r['softcap']} on {r['target']}"
        assert not r.get("error"), f"{what} does not compile: {r['error']}"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{what} spills registers: {r}"
        assert r["smem"] <= r["smem_limit"], f"{what} needs {r['smem']} B of shared memory > {r['smem_limit']}"
        assert r["registers"] * r["threads"] <= aot.REGISTERS_PER_BLOCK and r["registers"] <= 255, what
        assert r["cubin_matches"], f"{what}: the ptxas re-run is not Triton's binary, its report may not apply"
        assert r["problems"] == []


def test_subset_compiles_without_spills_within_shared_memory(subset):
    proc, rows = subset
    assert proc.returncode == 0, proc.stdout[-3000:]
    _assert_fit(rows)


def test_subset_covers_every_kernel_dtype_target_and_launch_choice(subset):
    _, rows = subset
    targets = [name for name, _, _ in aot.TARGETS.values()]
    covered = {(r["kernel"], r["dtype"], r["target"]) for r in rows}
    assert covered == set(itertools.product(aot.KERNELS, aot.DTYPES, targets))
    for kernel, dtype in itertools.product(aot.KERNELS, aot.DTYPES):  # both softcap programs on every pair
        assert {r["softcap"] for r in rows if r["kernel"] == kernel and r["dtype"] == dtype} == {False, True}
    for kernel in aot.KERNELS:  # every vocabulary's launch went into some compiled specialisation
        assert set().union(*(r["vocabs"] for r in rows if r["kernel"] == kernel)) == set(aot.VOCABS)
    assert {r["ptxas"] for r in rows}, "the ptxas version is recorded"


def test_recorded_launches_are_what_the_launchers_choose():
    """The recorder saw the launch meta of kernels/linear_logprob_triton.py (``_launch_meta``) for each
    vocabulary; both are read here on CPU tensors (the launcher's choice needs no GPU)."""
    from rlvf.kernels import linear_logprob_triton as tk

    launches = aot.record_launches(tk, 151936, torch.bfloat16, 30.0)
    assert {l.kernel for l in launches} == set(aot.KERNELS)
    for vocab in aot.VOCABS:
        want = tk._launch_meta(torch.empty(2, vocab), 30.0)
        got = [l.kwargs for l in aot.record_launches(tk, vocab, torch.float32, 30.0)]
        assert all(k == want for k in got), (vocab, got, want)


def test_problems_names_spills_shared_memory_and_registers():
    ok = {"spill_stores": 0, "spill_loads": 0, "smem": 32, "smem_limit": 99 * 1024, "registers": 40,
          "threads": 256, "cubin_matches": True, "target": "sm_89"}
    assert aot.problems(ok) == []
    assert "spills" in aot.problems({**ok, "spill_stores": 8, "spill_loads": 8})[0]
    assert "shared memory" in aot.problems({**ok, "smem": 99 * 1024 + 1})[0]
    assert "register file" in aot.problems({**ok, "registers": 255, "threads": 512})[0]
    assert "compile error" in aot.problems({"error": "CompilationError: boom"})[0]


@pytest.mark.slow
def test_every_specialisation_compiles_for_every_target(tmp_path):
    proc, rows = run_aot(tmp_path, "--jobs", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(rows) == len(aot.KERNELS) * len(aot.DTYPES) * 2 * len(aot.TARGETS)
    _assert_fit(rows)
