"""Ahead-of-time compile of every Triton kernel specialisation rlvf launches, for real GPU targets, on a CPU.

    python bench/kernel_aot.py                     # every specialisation × sm_80, sm_89, sm_90 (~1 min, 2 cores)
    python bench/kernel_aot.py --subset            # the default test suite's subset (tests/test_kernel_aot.py)
    python bench/kernel_aot.py --targets 90 --vocabs 128256

Under ``TRITON_INTERPRET=1`` the kernels of kernels/linear_logprob_triton.py are checked for their
maths only: the interpreter runs programs that would fail to compile, spill registers or exceed
shared memory on a GPU. This script compiles them as the GPU would, without one:

1. What is compiled is what the launch code asks for. The host functions the autograd Functions
   call (``linear_logprob_forward`` / ``_backward``, ``linear_kl_forward`` / ``_backward``) run on
   small CPU tensors of each dtype (fp32, bf16, fp16), with and without softcap, with the
   vocabulary sizes of real models (32,000 Mistral-7B, 128,256 Llama-3, 151,936 Qwen2, 256,000
   Gemma), while the four ``@triton.jit`` kernels are swapped for recorders. Each recorded launch
   (its arguments and its ``_launch_meta``: HAS_SOFTCAP, BLOCK_V, num_warps) goes through Triton's
   own argument binder for the target, which assigns the types and the 16-byte alignment
   specialisations a real launch would get.
2. Each distinct specialisation is compiled with ``triton.compile(ASTSource(fn, signature,
   constexprs, attrs), target=GPUTarget("cuda", cc, 32), options)``: TTIR → TTGIR → LLVM IR → PTX →
   cubin, with the ptxas Triton bundles (triton/backends/nvidia/bin/ptxas).
3. ptxas is re-run with ``-v`` and Triton's own flags on the PTX (Triton discards that log); the
   cubin it writes is compared with Triton's byte for byte, so the registers, spill stores/loads
   and stack reported are those of the binary Triton built.

Limits checked per kernel and target (NVIDIA CUDA C++ Programming Guide, "Technical
Specifications per Compute Capability"; the Ampere, Ada and Hopper tuning guides):
- shared memory per block (Triton's dynamic allocation + ptxas' static smem) ≤ the opt-in maximum:
  163 KiB (166,912 B) on sm_80 (A100), 99 KiB (101,376 B) on sm_89 (L4), 227 KiB (232,448 B) on
  sm_90 (H100/H200);
- no spill stores or loads, and registers × threads per block ≤ 65,536 (the register file per SM
  and per block on all three), at most 255 registers per thread.

Rows go to ``bench/results/kernel_aot.jsonl`` (one per specialisation and target) with machine,
versions, date and command. Needs TRITON_INTERPRET unset (the interpreter replaces @jit kernels
when the module is imported); the test suite runs this script in a subprocess for that reason.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

NAME = "kernel_aot"
KERNELS = ("_logprob_fwd_kernel", "_logprob_grad_kernel", "_kl_fwd_kernel", "_kl_grad_kernel")
VOCABS = (32000, 128256, 151936, 256000)  # Mistral-7B, Llama-3, Qwen2, Gemma
DTYPES = ("float32", "bfloat16", "float16")
SOFTCAPS = (None, 30.0)  # 30: Gemma-2's final_logit_softcapping; any value gives the same program
# compute capability → (name, GPUs, shared memory per block, opt-in maximum, bytes)
TARGETS = {
    80: ("sm_80", "A100", 163 * 1024),
    89: ("sm_89", "L4", 99 * 1024),
    90: ("sm_90", "H100/H200", 227 * 1024),
}
REGISTERS_PER_BLOCK = 65536  # 64 K 32-bit registers per SM and per block on sm_80, sm_89, sm_90
MAX_REGISTERS_PER_THREAD = 255


# --------------------------------------------------------------------------- the launches rlvf makes


@dataclass
class Launch:
    """One kernel launch as the host code made it, and the cases (vocab, dtype, softcap) that made it."""

    kernel: str
    args: tuple
    kwargs: dict
    cases: list = field(default_factory=list)


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, name: str, sink: list):
        self.name, self.sink = name, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append(Launch(self.name, args, kwargs))


def _triton_module():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_aot: unset TRITON_INTERPRET (the interpreter replaces the @jit kernels at import)")
    from rlvf.kernels import linear_logprob_triton as tk

    return tk


def record_launches(tk, vocab: int, dtype: torch.dtype, softcap: float | None) -> list[Launch]:
    """Run the host side of both ops (forward with the frozen-head directions, backward for hidden and
    weight) on CPU tensors (2 rows, H 4, V ``vocab``) with the kernels replaced by recorders."""
    sink: list[Launch] = []
    saved = {name: getattr(tk, name) for name in KERNELS}
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, generator=g).to(dtype)  # (n, H)
    weight = torch.randn(vocab, 4, generator=g).to(dtype)  # (V, H)
    targets = torch.randint(0, vocab, (2,), generator=g)  # (n,)
    mask = torch.ones(2, dtype=torch.bool)
    try:
        for name in KERNELS:
            setattr(tk, name, _Recorder(name, sink))
        _, lse, _ = tk.linear_logprob_forward(hidden, weight, targets, -100, 1024, softcap, True)
        tk.linear_logprob_backward(torch.ones(2), hidden, weight, targets, lse, -100, 1024, softcap, True, True)
        _, lse, ref_lse, _ = tk.linear_kl_forward(hidden, hidden, weight, weight, mask, 1.0, 1024, softcap, True)
        tk.linear_kl_backward(torch.ones(2), hidden, hidden, weight, weight, mask, lse, ref_lse, 1.0, 1024, softcap,
                              True, True)
    finally:
        for name, fn in saved.items():
            setattr(tk, name, fn)
    return sink


def specialise(fn, launch: Launch, cc: int) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) of ``launch`` on target ``cc``, from Triton's own binder:
    the argument types and the divisibility-by-16 specialisations a real launch gets."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, "debug": fn.debug or knobs.runtime.debug}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options.__dict__


def _variant_key(kernel: str, signature: dict, constexprs: dict, attrs: dict, options: dict) -> str:
    return repr((kernel, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                 options["num_warps"]))


def enumerate_launches(vocabs=VOCABS, dtypes=DTYPES, softcaps=SOFTCAPS) -> list[Launch]:
    """Every distinct launch (per specialisation on sm_90) with the cases that make it."""
    tk = _triton_module()
    unique: dict[str, Launch] = {}
    for vocab in vocabs:
        for dtype in dtypes:
            for softcap in softcaps:
                for launch in record_launches(tk, vocab, getattr(torch, dtype), softcap):
                    key = _variant_key(launch.kernel, *specialise(getattr(tk, launch.kernel), launch, 90))
                    unique.setdefault(key, launch).cases.append((vocab, dtype, softcap))
    return list(unique.values())


def describe(launch: Launch) -> dict:
    """kernel, dtype, softcap, BLOCK_V, num_warps and vocabularies of a launch (for rows and tables)."""
    dtypes = sorted({c[1] for c in launch.cases})
    return {"kernel": launch.kernel, "dtype": dtypes[0] if len(dtypes) == 1 else ",".join(dtypes),
            "softcap": bool(launch.kwargs["HAS_SOFTCAP"]), "BLOCK_V": launch.kwargs["BLOCK_V"],
            "num_warps": launch.kwargs["num_warps"], "vocabs": sorted({c[0] for c in launch.cases})}


def representative_subset(launches: list[Launch], targets=tuple(TARGETS)) -> list[tuple[Launch, int]]:
    """One compile per kernel × dtype × target × distinct (BLOCK_V, num_warps), softcap alternating
    over the dtype × target grid, so each kernel meets both softcap flags on every dtype and target."""
    groups: dict[tuple, dict[bool, Launch]] = {}
    for launch in launches:
        d = describe(launch)
        groups.setdefault((d["kernel"], d["dtype"], d["BLOCK_V"], d["num_warps"]), {})[d["softcap"]] = launch
    picked = []
    for (kernel, dtype, _, _), by_cap in groups.items():
        for j, cc in enumerate(targets):
            want = (DTYPES.index(dtype) + j) % 2 == 1 if dtype in DTYPES else False
            picked.append((by_cap.get(want) or next(iter(by_cap.values())), cc))
    return picked


# --------------------------------------------------------------------------- compile and inspect


PTXAS_LINE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "static_smem": re.compile(r"(\d+) bytes smem"),
}


def ptxas_report(ptx: str, cc: int, fp_fusion: bool) -> tuple[dict, bytes]:
    """ptxas -v on ``ptx`` with Triton 3.9's flags (backends/nvidia/compiler.py ``make_cubin``):
    registers, spill stores/loads, stack and static smem in bytes, and the cubin it wrote."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        cmd = [get_ptxas(cc).path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(cc)}", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log = proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas -v failed ({proc.returncode}): {log.strip()[-300:]}")
        report = {k: int(m.group(1)) if (m := rx.search(log)) else 0 for k, rx in PTXAS_LINE.items()}
        return report, out.read_bytes()


def compile_one(item: tuple[Launch, int]) -> dict:
    """Compile one launch for one target; a row with the resources used and any problem found."""
    launch, cc = item
    tk = _triton_module()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(tk, launch.kernel)
    name, gpus, smem_limit = TARGETS[cc]
    from triton.backends.nvidia.compiler import get_ptxas

    row = {**describe(launch), "target": name, "gpus": gpus, "ptxas": get_ptxas(cc).version}
    t0 = time.perf_counter()
    try:
        signature, constexprs, attrs, options = specialise(fn, launch, cc)
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32),
                                options=options)
        report, cubin = ptxas_report(kernel.asm["ptx"], cc, kernel.metadata.enable_fp_fusion)
    except Exception as err:  # noqa: BLE001 - a failed compile is a result (the test fails on it)
        last = (str(err).strip().splitlines() or [""])[-1]
        return {**row, "error": f"{type(err).__name__}: {last}"[:400], "compile_s": time.perf_counter() - t0}
    smem = kernel.metadata.shared + report["static_smem"]
    row.update(report, dynamic_smem=kernel.metadata.shared, smem=smem, smem_limit=smem_limit,
               threads=32 * kernel.metadata.num_warps, cubin_matches=cubin == kernel.asm["cubin"],
               compile_s=time.perf_counter() - t0)
    row["problems"] = problems(row)
    return row


def problems(row: dict) -> list[str]:
    """What would fail or slow down on the GPU: empty when the kernel is fine."""
    out = []
    if row.get("error"):
        out.append(f"compile error: {row['error']}")
        return out
    if row["spill_stores"] or row["spill_loads"]:
        out.append(f"register spills: {row['spill_stores']} B stored, {row['spill_loads']} B loaded")
    if row["smem"] > row["smem_limit"]:
        out.append(f"shared memory {row['smem']} B > {row['smem_limit']} B per block on {row['target']}")
    if row["registers"] > MAX_REGISTERS_PER_THREAD or row["registers"] * row["threads"] > REGISTERS_PER_BLOCK:
        out.append(f"{row['registers']} registers × {row['threads']} threads exceed the register file")
    if not row["cubin_matches"]:
        out.append("ptxas re-run did not reproduce Triton's cubin: the reported resources may not be its")
    return out


_ITEMS: list = []  # what forked workers compile, by index (the recorded tensors stay where they were made)


def _compile_index(i: int) -> dict:
    return compile_one(_ITEMS[i])


def compile_all(items: list[tuple[Launch, int]], jobs: int) -> list[dict]:
    """``compile_one`` over ``items``, in ``jobs`` forked processes (compilation is CPU-bound). Workers
    get indices, not pickled copies, so the recorded tensors keep the addresses (alignment) they had."""
    if jobs <= 1 or len(items) <= 1:
        return [compile_one(item) for item in items]
    _ITEMS[:] = items
    try:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            return pool.map(_compile_index, range(len(items)), chunksize=1)
    finally:
        _ITEMS.clear()


# --------------------------------------------------------------------------- table and main


def table(rows: list[dict]) -> str:
    """Markdown: one line per kernel × dtype × softcap, one column per target: regs / spills / smem."""
    targets = [t for t in (v[0] for v in TARGETS.values()) if any(r["target"] == t for r in rows)]
    lines: dict[tuple, dict] = {}
    for r in rows:
        key = (KERNELS.index(r["kernel"]), DTYPES.index(r["dtype"]) if r["dtype"] in DTYPES else 9, r["softcap"],
               r["BLOCK_V"], r["num_warps"])
        cell = f"error: {r['error'][:40]}" if r.get("error") else \
            f"{r['registers']} / {r['spill_stores'] + r['spill_loads']} / {r['smem']}"
        lines.setdefault(key, {"row": r})[r["target"]] = cell
    body = []
    for key in sorted(lines):
        r = lines[key]["row"]
        body.append([r["kernel"], r["dtype"], "on" if r["softcap"] else "off", str(r["BLOCK_V"]), str(r["num_warps"]),
                     *(lines[key].get(t, "—") for t in targets)])
    header = ["kernel", "dtype", "softcap", "BLOCK_V", "warps", *(f"{t} regs / spill B / smem B" for t in targets)]
    return common.markdown_table(header, body)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", action="store_true",
                        help="one softcap flag per kernel × dtype × target × (BLOCK_V, warps), alternating")
    parser.add_argument("--vocabs", default=",".join(map(str, VOCABS)), help="comma-separated vocabulary sizes")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities: 80,89,90")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for kernel_aot.jsonl")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    targets = [int(t) for t in args.targets.split(",")]
    t0 = time.perf_counter()
    launches = enumerate_launches([int(v) for v in args.vocabs.split(",")])
    items = representative_subset(launches, targets) if args.subset else [(l, cc) for l in launches for cc in targets]
    rows = compile_all(items, args.jobs)
    wall = time.perf_counter() - t0
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    command = common.command_line(__file__, argv)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ptxas = ", ".join(sorted({f"{get_ptxas(cc).version} ({TARGETS[cc][0]})" for cc in targets}))
    machine = f"{common.cpu_name()}, {os.cpu_count()} cores"
    full = [{"benchmark": NAME, **r, "machine": machine, "versions": common.versions(), "date": date,
             "command": command} for r in rows]
    path = common.write_rows(args.out, NAME, full)
    print(f"{len(launches)} distinct launches × {len(targets)} targets → {len(rows)} compiles in {wall:.1f} s "
          f"({args.jobs} processes), triton {triton.__version__}, ptxas {ptxas}; {machine}")
    print(table(rows))
    bad = [(r, p) for r in rows for p in (r.get("problems") or problems(r))]
    for r, p in bad:
        print(f"PROBLEM {r['kernel']} {r['dtype']} softcap={r['softcap']} {r['target']}: {p}")
    verdict = f"all {len(rows)} compiles fit" if not bad else f"{len(bad)} problems"
    print(f"{verdict}; rows appended to {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
