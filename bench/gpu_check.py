"""One prepared GPU check: every check that needs a GPU, in one command, under 8 minutes on one H100/H200.

    bench/gpu_check.sh                   # = python bench/gpu_check.py run   (on the GPU machine)
    bench/gpu_check.sh --dry-run         # the same steps on the CPU with tiny shapes (tests/test_gpu_check.py)
    python bench/gpu_check.py summary --out DIR      # the table again, from DIR/gpu_check.jsonl

Prerequisites on the GPU machine: a CUDA build of torch and ``pip install -e '.[test,bench]'`` (triton
comes with CUDA torch; trl, peft and liger-kernel are the peers, each skipped when absent).

Steps, in this order (each a subprocess with its own time limit; the run stops starting steps when its
budget, 460 s by default, would be exceeded, and says so), with their expected time on one H100:

1. ``pytest -m cuda``: the CUDA tests (full-shape Triton kernels against the references). ~60 s:
   collection of the suite, a dozen Triton JIT compiles, a few hundred ms of kernels.
2. the memory model's 7B step (``step --arch mistral-7b --ckpt on``): a random-weight
   Mistral-7B-Instruct-v0.2 shape (bf16 base, fp32 LoRA r 64 on every linear but lm_head, 1 pair +
   1 near + 1 out × 2,048 tokens, checkpointing on), one warm micro-batch + AdamW step, then one
   measured micro-batch + step: ``torch.cuda.max_memory_allocated`` against bench/memory_model.py
   (target: within 10 %; and < 38.9 GiB, i.e. it fits a 40 GB A100). ~25 s: building the model on
   the GPU, 3 × ~4·10¹⁴ FLOP.
3. ``bench/logprob_loss.py --device cuda``: Llama-3-8B head shapes (2,048 tokens, H 4096, V 128,256,
   bf16); the target is rlvf's model-FLOP rate ≥ 60 % of cuBLAS's (torch.matmul) rate. ~150 s:
   nine fresh processes of ~10 s (imports, CUDA init, JIT) and Liger's torch.compile (~40 s).
4. ``bench/train_step.py --device cuda``: rlvf vs TRL (when installed), same run. ~60 s.
5. ``bench/lora_layer.py --device cuda``: rlvf's LoRA layer vs PEFT. ~35 s.
6. the 7B step with checkpointing off, when the GPU holds the modelled 63 GiB (H100/H200). ~20 s.
7. an FSDP2 step when more than one GPU is present (``torchrun``, one rank per GPU; the model is
   built on the meta device and sharded before it is materialised; Llama-3-70B on ≥ 8 GPUs of
   ≥ 80 GB, Mistral-7B otherwise): measured peak per rank against the model. ~90 s.

Sum of the estimates on one GPU: ~350 s. Rows: ``OUT/gpu_check.jsonl`` (one per step: command, exit
code, wall time, device name, the step's key numbers), ``OUT/gpu_step.jsonl`` (the measured steps)
and the bench scripts' own rows under OUT; OUT defaults to bench/results/gpu/<UTC time>/ (a
temporary folder with --dry-run). The run ends with one summary table.

``--dry-run``: the same steps and parsing on the CPU: pytest -m cuda on the kernel tests (all
skipped without a GPU), the bench scripts with --smoke, the step on a tiny model against the model
in its CPU settings (torch head, LiveBytes measurement); FSDP2 only with --fsdp-cpu (two gloo ranks).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import memory_model as mm  # noqa: E402

NAME = "gpu_check"
BUDGET_S = 460  # whole run, under the 8 minutes asked for
STEP_TOLERANCE = 0.10  # measured peak within 10 % of the model on the GPU
TINY = mm.Arch("tiny Mistral-like (dry run)", 64, 224, 2, 4, 2, 512, "mistral")
TINY_SETTING = mm.Setting(seq_len=64, prompt_len=32, r=8, head="torch", foreach_adam=False, chunk=64)


# --------------------------------------------------------------------------- the measured steps


def _cuda():
    import torch

    return torch.cuda.is_available()


def step_setting(arch: mm.Arch, ckpt: bool, dry: bool, ranks: int = 1) -> mm.Setting:
    """The paper preset on CUDA (Triton head, foreach AdamW); the CPU path's settings in a dry run."""
    base = replace(TINY_SETTING, base_bytes=4) if dry else mm.Setting()
    return replace(base, checkpointing=ckpt, ranks=ranks)


def run_step(args) -> dict:
    """One measured micro-batch (+ optimizer step) of ``args.arch`` against the model: a row."""
    import torch

    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    arch = TINY if dry else mm.ARCHS[args.arch]
    setting = step_setting(arch, args.ckpt == "on", dry)
    measured = mm.measure_step(arch, setting, device)
    model = mm.step_memory(arch, setting)
    error = model["peak_bytes"] / measured["peak_bytes"] - 1
    row = {"step": f"{arch.name}, ckpt {args.ckpt}", "arch": asdict(arch), "setting": asdict(setting),
           "device": common.device_name(device), "measured_peak_gib": measured["peak_bytes"] / mm.GIB,
           "measured_static_gib": measured["static_bytes"] / mm.GIB, "model_peak_gib": model["peak_bytes"] / mm.GIB,
           "model_static_gib": model["static_bytes"] / mm.GIB, "model_peak_at": model["peak_at"], "error": error,
           "step_s": measured["step_s"], "tokens_per_s": setting.tokens / measured["step_s"],
           "fits_a100_40gb": measured["peak_bytes"] < mm.A100_40GB_USABLE}
    return row


def run_fsdp(args) -> dict | None:
    """An FSDP2 step under torchrun: the model built on meta, sharded by rlvf.distributed.shard_model,
    materialised; one warm micro-batch + step, one measured. Rank 0 returns the row."""
    import torch

    from rlvf import distributed as D
    from rlvf.lora import trainable_parameters

    dry = args.dry_run
    ranks = D.init_distributed(torch.device("cpu" if dry else "cuda"))
    device = D.local_device(torch.device("cpu" if dry else "cuda"), ranks)
    arch = TINY if dry else mm.ARCHS[args.arch]
    s = step_setting(arch, args.ckpt == "on", dry, ranks.size)
    model = mm.meta_model(arch, s)
    D.shard_model(model, ranks, device)
    mm.materialise(model, device, seed=ranks.rank)
    model.train()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=1e-5, **({} if s.foreach_adam else {"foreach": False}))
    batch = mm.make_batch(arch, s, device, seed=ranks.rank)

    def micro_batch(last: bool) -> None:
        cuda = device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):  # as rlvf.train on CUDA
            loss = D.run_forward(model, mm.micro_batch_loss, model, batch, s.chunk)
        loss.backward()
        if last:
            D.clip_grad_norm(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    micro_batch(last=False)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    micro_batch(last=True)
    peak = torch.tensor([torch.cuda.max_memory_allocated(device) if device.type == "cuda" else -1],
                        dtype=torch.int64, device=device)  # NCCL reduces CUDA tensors only
    step_s = time.perf_counter() - t0
    if ranks.distributed:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    model_mem = mm.step_memory(arch, s)
    measured = int(peak.item())
    row = {"step": f"{arch.name}, FSDP2 × {ranks.size}, ckpt {args.ckpt}", "arch": asdict(arch), "setting": asdict(s),
           "device": common.device_name(device), "ranks": ranks.size, "step_s": step_s,
           "model_peak_gib": model_mem["peak_bytes"] / mm.GIB, "model_peak_at": model_mem["peak_at"],
           "measured_peak_gib": measured / mm.GIB if measured >= 0 else None,
           "error": model_mem["peak_bytes"] / measured - 1 if measured > 0 else None}
    D.barrier(ranks)
    D.shutdown()
    return row if ranks.main else None


# --------------------------------------------------------------------------- steps of the run


@dataclass
class Step:
    name: str
    argv: list[str]  # after the Python interpreter
    timeout_s: int
    summarise: Callable[[Path, str, bool], dict]
    skip: str | None = None  # why the step is not run here


def _rows(out: Path, name: str) -> list[dict]:
    path = out / f"{name}.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


def sum_pytest(out: Path, stdout: str, dry: bool) -> dict:
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", stdout)}
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    ok = bad == 0 and (dry or counts.get("passed", 0) > 0)
    return {"result": ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary line",
            "target": "all CUDA tests pass", "verdict": "met" if ok else "MISSED"}


def sum_logprob(out: Path, stdout: str, dry: bool) -> dict:
    rows = [r for r in _rows(out, "logprob_loss") if r.get("shapes", {}).get("case") == "dpo"]
    by = {r["implementation"]: r for r in rows}
    rate = common.ratio(by.get("rlvf", {}).get("tflops"), by.get("torch.matmul", {}).get("tflops"))
    mem = common.ratio(by.get("rlvf", {}).get("peak_mib"), by.get("naive", {}).get("peak_mib"))
    return {"result": f"rlvf {common.fmt(rate, 2)} × cuBLAS rate, memory {common.fmt(mem, 3)} × naive (dpo)",
            "target": "model-FLOP rate ≥ 0.6 × matmul", "rate": rate,
            "verdict": "n/a (CPU)" if dry else common.verdict(rate, 0.6, ">=")}


def sum_lora(out: Path, stdout: str, dry: bool) -> dict:
    rows = _rows(out, "lora_layer")
    by = {(r["implementation"], r["shapes"]["dropout"]): r for r in rows}
    parts, ratios = [], []
    for dropout in sorted({d for _, d in by}):
        mine, peft = by.get(("rlvf", dropout), {}), by.get(("peft", dropout), {})
        t = common.ratio(common.median(mine.get("times_ms", {}), "fwd_bwd"),
                         common.median(peft.get("times_ms", {}), "fwd_bwd"))
        ratios.append(t)
        parts.append(f"p {dropout:g}: {common.fmt(t, 2)} × PEFT")
    worst = None if None in ratios or not ratios else max(ratios)
    return {"result": "; ".join(parts) or "no rows", "target": "fwd+bwd ≤ 1.0 × PEFT",
            "verdict": "n/a (CPU)" if dry else common.verdict(worst, 1.0)}


def sum_train(out: Path, stdout: str, dry: bool) -> dict:
    by = {r["implementation"]: r for r in _rows(out, "train_step")}
    mine, trl = by.get("rlvf-dpo", {}), by.get("trl-dpo", {})
    speed = common.ratio(mine.get("tokens_per_s"), trl.get("tokens_per_s"))
    memory = common.ratio(mine.get("peak_mib"), trl.get("peak_mib"))
    note = "" if trl and "error" not in trl else " (TRL absent)"
    return {"result": f"rlvf-dpo {common.fmt(mine.get('tokens_per_s'), 0)} tokens/s, {common.fmt(speed, 2)} × TRL, "
                      f"memory {common.fmt(memory, 2)} × TRL{note}",
            "target": "tokens/s ≥ 1.3 × TRL", "verdict": "n/a (CPU)" if dry else common.verdict(speed, 1.3, ">=")}


def sum_step(label: str):
    def summarise(out: Path, stdout: str, dry: bool) -> dict:
        rows = [r for r in _rows(out, "gpu_step") if r.get("label") == label]
        if not rows:
            return {"result": "no row", "target": "", "verdict": "MISSED"}
        r = rows[-1]
        err, tolerance = r.get("error"), mm.TRACKER_TOLERANCE if dry else STEP_TOLERANCE
        result = (f"measured {_size(r.get('measured_peak_gib'))}, model {_size(r['model_peak_gib'])} "
                  f"({'—' if err is None else f'{100 * err:+.1f} %'}), {common.fmt(r.get('step_s'), 2)} s")
        single_ckpt = r["setting"]["checkpointing"] and r["setting"]["ranks"] == 1
        target = f"model within {100 * tolerance:.0f} %" + ("; fits 40 GB A100" if single_ckpt else "")
        if err is None:
            return {"result": result, "target": target, "verdict": "n/a (CPU)" if dry else "MISSED"}
        ok = abs(err) <= tolerance and (r.get("fits_a100_40gb", True) or not single_ckpt)
        return {"result": result, "target": target, "verdict": "met" if ok else "MISSED"}
    return summarise


def _size(gib: float | None) -> str:
    if gib is None:
        return "—"
    return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.2f} MiB"


def gpu_info(python: str) -> dict:
    """Name, memory and count of the GPUs, from a subprocess (no CUDA context kept in this process)."""
    code = ("import json, torch\n"
            "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
            "p = torch.cuda.get_device_properties(0) if n else None\n"
            "print(json.dumps({'count': n, 'name': p.name if p else None, 'memory': p.total_memory if p else 0}))")
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return {"count": 0, "name": None, "memory": 0}


def plan(args, out: Path, gpu: dict) -> list[Step]:
    """The steps of this run (see the module doc), with the dry-run variants."""
    dry, o = args.dry_run, ["--out", str(out)]
    bench = lambda name: str(Path(__file__).parent / f"{name}.py")  # noqa: E731
    me = str(Path(__file__))
    if dry:
        smoke = ["--smoke", "--device", "cpu", *o]
        steps = [Step("pytest -m cuda", ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                         "tests/test_triton_kernels.py"], 120, sum_pytest),
                 Step("model step (ckpt on)", [me, "step", "--dry-run", "--ckpt", "on", *o], 120, sum_step("ckpt on")),
                 Step("logprob_loss", [bench("logprob_loss"), *smoke], 120, sum_logprob),
                 Step("train_step", [bench("train_step"), *smoke], 180, sum_train),
                 Step("lora_layer", [bench("lora_layer"), *smoke, "--dropouts", "0.05"], 120, sum_lora),
                 Step("model step (ckpt off)", [me, "step", "--dry-run", "--ckpt", "off", *o], 120,
                      sum_step("ckpt off"))]
        fsdp = Step("FSDP2 step", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", me, "fsdp",
                                   "--dry-run", *o], 240, sum_step("fsdp"))
        if not args.fsdp_cpu:
            fsdp.skip = "one device (--fsdp-cpu runs it on two gloo ranks)"
        return steps + [fsdp]
    no_ckpt_fits = gpu["memory"] > 1.1 * mm.step_memory(mm.ARCHS["mistral-7b"], step_setting(
        mm.ARCHS["mistral-7b"], False, False))["peak_bytes"]
    big = gpu["count"] >= 8 and gpu["memory"] >= 75 * mm.GIB
    steps = [Step("pytest -m cuda", ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], 150, sum_pytest),
             Step("model step (ckpt on)", [me, "step", "--arch", "mistral-7b", "--ckpt", "on", *o], 120,
                  sum_step("ckpt on")),
             Step("logprob_loss", [bench("logprob_loss"), "--device", "cuda", *o], 200, sum_logprob),
             Step("train_step", [bench("train_step"), "--device", "cuda", *o], 150, sum_train),
             Step("lora_layer", [bench("lora_layer"), "--device", "cuda", *o], 90, sum_lora),
             Step("model step (ckpt off)", [me, "step", "--arch", "mistral-7b", "--ckpt", "off", *o], 90,
                  sum_step("ckpt off")),
             Step("FSDP2 step", ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpu['count']}", me,
                                 "fsdp", "--arch", "llama3-70b" if big else "mistral-7b", *o], 240, sum_step("fsdp"))]
    if not no_ckpt_fits:
        steps[5].skip = f"{gpu['memory'] / mm.GIB:.0f} GiB < 1.1 × the modelled peak without checkpointing"
    if gpu["count"] < 2:
        steps[6].skip = f"{gpu['count']} GPU"
    return steps


def execute(step: Step, python: str, deadline: float, dry: bool, out: Path, device: str) -> dict:
    """Run one step as a subprocess (time limit: its own or what is left of the budget); its row."""
    cmd = [python, *step.argv]
    row = {"benchmark": NAME, "step": step.name, "command": " ".join(cmd), "device": device, "dry_run": dry,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    left = deadline - time.monotonic()
    if step.skip or left < 10:
        return {**row, "status": "skipped", "reason": step.skip or "time budget spent", "wall_s": 0.0}
    limit = int(min(step.timeout_s, left))
    t0 = time.monotonic()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if dry:
        env.setdefault("OMP_NUM_THREADS", "1")
    else:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU, whatever the caller's shell says
    try:
        proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = 124, _text(err.stdout), _text(err.stderr)
    row.update(rc=rc, wall_s=time.monotonic() - t0, timeout_s=limit)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = out / "logs" / f"{re.sub(r'[^A-Za-z0-9]+', '_', step.name).strip('_')}.log"
    log.write_text(stdout + "\n--- stderr ---\n" + stderr)
    summary = step.summarise(out, stdout, dry)
    status = "timeout" if rc == 124 else "ok" if rc == 0 else "FAILED"
    if rc not in (0, 124):
        summary["error"] = (stderr.strip().splitlines() or ["?"])[-1][:300]
    return {**row, "status": status, "summary": {k: v for k, v in summary.items() if k in
                                                 ("result", "target", "verdict", "error")}}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def summary_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        s = r.get("summary", {})
        body.append([r["step"], r["status"], f"{r.get('wall_s', 0):.0f}", s.get("result", r.get("reason", "")),
                     s.get("target", ""), s.get("verdict", "—")])
    return common.markdown_table(["step", "status", "s", "result", "target", "verdict"], body)


def run_all(args) -> int:
    """The whole check; 0 when every step that ran finished and met its target (n/a allowed)."""
    python = args.python or sys.executable
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.dry_run
                       else common.RESULTS / "gpu" / stamp)
    out.mkdir(parents=True, exist_ok=True)
    gpu = {"count": 0, "name": None, "memory": 0} if args.dry_run else gpu_info(python)
    if not args.dry_run and gpu["count"] == 0:
        print("gpu_check: no CUDA GPU visible to torch (a CUDA build of torch is needed); "
              "use --dry-run to check the plumbing on the CPU", file=sys.stderr)
        return 2
    import torch

    device = gpu["name"] or common.device_name(torch.device("cpu"))
    deadline = time.monotonic() + args.budget_s
    print(f"gpu_check{' (dry run)' if args.dry_run else ''}: {device}, {gpu['count']} GPU(s); "
          f"budget {args.budget_s} s; rows in {out}", flush=True)
    steps = [s for s in plan(args, out, gpu) if not args.only or s.name in args.only.split(",")]
    jobs = args.jobs or (2 if args.dry_run else 1)  # on the GPU one at a time: they share it, and time it

    def one(step: Step) -> dict:
        row = {**execute(step, python, deadline, args.dry_run, out, device), "versions": common.versions()}
        print(f"  {row['step']}: {row['status']} ({row.get('wall_s', 0):.0f} s) "
              f"{row.get('summary', {}).get('result', row.get('reason', ''))}", flush=True)
        return row

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = list(pool.map(one, steps))
    common.write_rows(out, NAME, rows)
    print(summary_table(rows))
    bad = [r for r in rows if r["status"] in ("FAILED", "timeout") or r.get("summary", {}).get("verdict") == "MISSED"]
    print(f"{len(rows)} steps, {len(bad)} failed or missed; rows appended to {out / (NAME + '.jsonl')}")
    return 1 if bad else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every step, then the summary table")
    run.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (seconds)")
    run.add_argument("--fsdp-cpu", action="store_true", help="with --dry-run: the FSDP2 step on two gloo ranks")
    run.add_argument("--budget-s", type=int, default=BUDGET_S, help="stop starting steps after this many seconds")
    run.add_argument("--only", default=None, help="comma-separated step names")
    run.add_argument("--jobs", type=int, default=None, help="steps at a time (default 1; 2 with --dry-run)")
    run.add_argument("--python", default=None, help="interpreter for the steps (default: this one)")
    run.add_argument("--out", type=Path, default=None)
    for name in ("step", "fsdp"):
        p = sub.add_parser(name, help=f"one measured {'training step' if name == 'step' else 'FSDP2 step (torchrun)'}")
        p.add_argument("--arch", default="mistral-7b", choices=sorted(mm.ARCHS))
        p.add_argument("--ckpt", default="on", choices=("on", "off"))
        p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
        p.add_argument("--out", type=Path, default=common.RESULTS)
    summary = sub.add_parser("summary", help="the table of a finished run")
    summary.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "run":
        return run_all(args)
    if args.command == "summary":
        print(summary_table(_rows(args.out, NAME)))
        return 0
    row = run_step(args) if args.command == "step" else run_fsdp(args)
    if row is not None:
        label = "fsdp" if args.command == "fsdp" else f"ckpt {args.ckpt}"
        row = {"benchmark": "gpu_step", "label": label, **row, "versions": common.versions(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": common.command_line(__file__, argv)}
        common.write_rows(args.out, "gpu_step", [row])
        common.emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
