"""Shared helpers for the microbenchmarks: timing, peak memory, machine and versions, result rows.

Each benchmark measures every implementation in a fresh subprocess (``run_worker``): allocator
caches, torch.compile state and the process's memory high-water mark then start clean for each
one. A worker prints one JSON object (its measurements) as its last stdout line; the parent adds
machine, versions, date and command, writes JSON lines and prints the table with the targets.

Peak memory (``PeakMemory``):
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus what was
  allocated before the measured call (inputs, weights): the extra memory the call needed at its peak.
  Measured in the timing process, after the timed iterations.
- CPU: torch keeps no CPU allocator statistics, so the process's resident set is used, in a second
  fresh process per implementation (``measure``): one warm-up iteration (lazy initialisation,
  optimizer state, torch.compile), ``gc.collect()``, then the current RSS (VmRSS) is the baseline,
  the kernel's high-water mark is reset to it (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0),
  one measured iteration runs, and the peak is VmHWM − baseline. That process runs with glibc's
  mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): every block of 128 KiB or more
  is mapped when allocated and unmapped when freed, so memory freed during warm-up is not silently
  reused, and RSS follows the live tensors. (By default glibc raises the threshold up to 32 MiB
  after frees, and then the peak of blocks up to that size would be missed.) Timings come from
  the first process, which runs with glibc's defaults, since mapping every block costs time.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PACKAGES = ("torch", "transformers", "triton", "peft", "trl", "liger-kernel")


# --------------------------------------------------------------------------- machine and versions


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that matter here (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (or platform.processor()), e.g. 'AMD EPYC'."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' on CUDA, else 'AMD EPYC, 2 threads' (torch's intra-op threads)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def pick_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- timing


def stats_ms(samples: list[float]) -> dict[str, float]:
    """Median, p20 and p80 of durations in seconds, in ms."""
    ms = sorted(s * 1e3 for s in samples)
    if len(ms) == 1:
        return {"median": ms[0], "p20": ms[0], "p80": ms[0]}
    q = statistics.quantiles(ms, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return {"median": statistics.median(ms), "p20": q[1], "p80": q[7]}


def time_fwd_bwd(forward: Callable, backward: Callable | None, device: torch.device, warmup: int,
                 iters: int) -> dict[str, dict[str, float]]:
    """Time ``out = forward()`` then ``backward(out)`` per iteration, after ``warmup`` untimed ones.

    Returns {"forward": stats, "backward": stats, "fwd_bwd": stats} (ms); backward stats are
    absent when ``backward`` is None.
    """
    for _ in range(warmup):
        out = forward()
        if backward is not None:
            backward(out)
        del out
    sync(device)
    if iters == 0:
        return {}
    fwd, bwd, tot = [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = forward()
        sync(device)
        t1 = time.perf_counter()
        if backward is not None:
            backward(out)
            sync(device)
        t2 = time.perf_counter()
        del out
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        tot.append(t2 - t0)
    result = {"forward": stats_ms(fwd), "fwd_bwd": stats_ms(tot)}
    if backward is not None:
        result["backward"] = stats_ms(bwd)
    return result


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, warmup: int = 1,
                iters: int = 5) -> dict:
    """Measured rate of torch.matmul (m, k) @ (k, n) in TFLOP/s (2mkn FLOPs per product)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    times = time_fwd_bwd(lambda: a @ b, None, device, warmup, iters)["forward"]
    return {"shape": [m, k, n], "ms": times, "tflops": 2 * m * k * n / (times["median"] * 1e-3) / 1e12}


# --------------------------------------------------------------------------- memory


def _proc_status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


class PeakMemory:
    """Extra memory (MiB) a block needed at its peak, over what was resident before it (see module doc)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _proc_status_mib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.mib = _proc_status_mib("VmHWM") - self.base
        return False


def saved_tensor_mib(fn: Callable, exclude: list[torch.Tensor] = ()) -> tuple[object, float]:
    """Run ``fn()`` and sum the unique storages autograd saves for backward, in MiB.

    Storages of ``exclude`` (parameters, which exist anyway) are not counted; the input is.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values()) / 2**20


# --------------------------------------------------------------------------- workers and rows


def run_worker(script: str, args: list[str], inline: Callable | None = None, timeout: float = 1800,
               env: dict[str, str] | None = None) -> dict:
    """Run ``python script *args`` in a fresh process; return the JSON object on its last stdout line.

    A worker that fails returns {"error": "..."} (its last stderr line), so one broken peer does
    not stop the benchmark. With ``inline`` (the smoke tests), ``inline(args)`` runs in this
    process instead: faster, but without the isolation that the memory numbers need.
    """
    if inline is not None:
        try:
            return inline(args)
        except Exception as err:  # noqa: BLE001 - a peer failing is a result, not a crash
            return {"error": f"{type(err).__name__}: {err}"[:500]}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    return {"error": (err[-1] if err else f"exit code {proc.returncode}")[:500]}


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # fixed threshold: no dynamic raise (module doc)


def measure(script: str, args, impl: str, device: torch.device, inline: Callable | None) -> dict:
    """Measurements of one implementation: in process (``inline``), one process (CUDA), or on the
    CPU a timing process and a memory process (module doc), merged."""
    argv = worker_args(args, impl)
    setup_worker(args)  # the parent labels rows with its thread count (device_name): make it the workers'
    if inline is not None or device.type == "cuda":
        return run_worker(script, argv, inline)
    result = run_worker(script, argv + ["--measure", "time"])
    if "error" in result:
        return result
    memory = run_worker(script, argv + ["--measure", "memory"], env=MALLOC_ENV)
    result["peak_mib"] = memory.get("peak_mib")
    if "error" in memory:
        result["memory_error"] = memory["error"]
    return result


def counts(args, warmup: int, iters: int) -> tuple[int, int]:
    """(warm-up, timed iterations) for a worker: --warmup/--iters override the defaults given;
    a memory-only worker (--measure memory) warms up once and times nothing."""
    if args.measure == "memory":
        return 1, 0
    return (warmup if args.warmup is None else args.warmup), (args.iters or iters)


def emit(result: dict) -> None:
    """A worker's result: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that produced the rows: ``python bench/<script> <argv or sys.argv[1:]>``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + shlex.join([os.path.relpath(script, ROOT), *args])


def make_row(benchmark: str, implementation: str, device: torch.device, dtype: str, shapes: dict,
             result: dict, command: str) -> dict:
    """One JSON-lines row: what was measured, where, with what, and the worker's measurements."""
    return {
        "benchmark": benchmark,
        "implementation": implementation,
        "device": device_name(device),
        "dtype": dtype,
        "shapes": shapes,
        **result,
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def write_rows(out_dir: Path, name: str, rows: list[dict]) -> Path:
    """Append rows to ``out_dir/<name>.jsonl``; return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl"
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def verdict(value: float | None, limit: float, op: str = "<=") -> str:
    """'met' / 'MISSED' for ``value op limit``; 'n/a' when value is None."""
    if value is None:
        return "n/a"
    ok = value <= limit if op == "<=" else value < limit if op == "<" else value >= limit
    return "met" if ok else "MISSED"


def median(times: dict | None, key: str | None = None) -> float | None:
    """The median ms of ``times[key]`` (or of ``times`` itself when key is None); None if absent."""
    stats = (times or {}).get(key) if key is not None else times
    return stats["median"] if stats else None


def median_range(stats: dict | None, digits: int = 1) -> str:
    """'median (p20–p80)' of a stats_ms dict, or '—'."""
    if not stats:
        return "—"
    return f"{stats['median']:.{digits}f} ({stats['p20']:.{digits}f}–{stats['p80']:.{digits}f})"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def common_args(parser) -> None:
    """--smoke, --out, --iters, --warmup, --device, --threads and the internal --worker."""
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 iteration (for tests/test_bench.py)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.jsonl (default bench/results)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the implementations in this process (default with --smoke; memory not isolated)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="both", choices=("both", "time", "memory"), help=argparse.SUPPRESS)


def worker_args(args, impl: str) -> list[str]:
    """The argv a worker gets: the parent's own options plus --worker IMPL."""
    argv = ["--out", str(args.out), "--device", args.device, "--worker", impl]
    if args.smoke:
        argv.append("--smoke")
    for name in ("iters", "warmup", "threads"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return argv


def inline_worker(args, parse: Callable, worker: Callable) -> Callable | None:
    """``run_worker``'s ``inline`` argument: in-process workers for --smoke / --in-process, else None."""
    if not (args.smoke or args.in_process):
        return None
    return lambda argv: worker(parse(argv))


def setup_worker(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
