"""Overgeneralization benchmark on the tiny world: does each method apply the feedback in scope and
leave everything else alone?

    python bench/overgeneralization.py [--feedbacks a,b,...] [--methods base,scd,scd_neg,dpo,c3po]
                                       [--set [METHOD:]KEY=VALUE ...] [--teacher-revision edit|rewrite]
                                       [--work DIR]

For every shipped tiny-world feedback: sample its data once (offline teacher + the shipped model,
served on loopback, as `make demo` does), train one adapter per method from the same data, the same
LoRA and the same number of steps, and evaluate each on the held-out in-scope, near-scope and
general out-of-scope prompts. Appends one JSON object per method × feedback to
bench/results/overgeneralization.jsonl (the four scores, S_general, machine, versions, date and the
command) and prints the table with the averages and the targets:

    C3PO has the highest average S_overall; its S_out ≤ ½ DPO's; its S_in ≥ 0.9 × DPO's.

In-context and chain-of-thought are left out by default: the tiny model was never taught to follow
instructions, so they are meaningful only with real models (add them with --methods).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rlvf.eval as evaluation  # noqa: E402
from rlvf import sample  # noqa: E402
from rlvf.config import load_config  # noqa: E402
from rlvf.endpoints import local_endpoints  # noqa: E402
from rlvf.feedback import FEEDBACK_DIR  # noqa: E402
from rlvf.methods import setting  # noqa: E402
from rlvf.train import train  # noqa: E402

CONFIG = ROOT / "configs" / "tinyworld-c3po.yaml"
TRAINED = ("sft", "scd", "scd_neg", "dpo", "c3po")
STORED = ("in_context", "cot", "revised")
# Equal budget for every trained method: the demo's settings with six epochs.
TRAIN_OVERRIDES = ["train.epochs=6", "train.lr=1e-3", "train.save_every=0", "train.eval_every=0",
                   "train.progress=false"]


def versions() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} CPU threads{gpu}"


def method_overrides(sets: list[str], method: str) -> list[str]:
    """The --set overrides that apply to ``method``: ``key=value`` (all) or ``method:key=value``."""
    out = []
    for item in sets:
        scope, sep, rest = item.partition(":")
        if not sep or "=" in scope:
            out.append(item)
        elif scope == method:
            out.append(rest)
    return out


def run_feedback(name: str, methods: list[str], work: Path, cmd: str, sets: list[str],
                 revision: str = "edit") -> list[dict]:
    common = [f"feedback=[{name}]", f"data.dirs=[{work / name / 'data'}]", f"serve.teacher_revision={revision}"]
    cfg = load_config(CONFIG, common + [f"output_dir={work / name / 'base'}"] + TRAIN_OVERRIDES)
    if not (work / name / "data" / "sample_meta.json").is_file():
        with local_endpoints(cfg) as (teacher, student):
            sample.run(cfg, teacher, student, progress=False)
    rows = []
    for method in methods:
        extra = method_overrides(sets, method) if method in TRAINED else []
        # adapters are reused when present: other settings train into their own directory
        tag = "-" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8] if extra else ""
        out = work / name / f"{method}{tag}"
        overrides = common + [f"output_dir={out}", f"eval.out_dir={out / 'eval'}"] + TRAIN_OVERRIDES
        if method in TRAINED:
            overrides += [f"method.name={method}", "eval.methods=[adapter]"] + extra
            cfg = load_config(CONFIG, overrides)
            if not (out / "adapter" / "adapter_config.json").is_file():
                train(cfg)
        else:
            cfg = load_config(CONFIG, overrides + [f"eval.methods=[{method}]"])
        with local_endpoints(cfg, out / "adapter" if method in TRAINED else None) as (teacher, student):
            result = evaluation.run(cfg, student, teacher, adapter_model="adapter", progress=False)
        scores = next(iter(result[name].values()))["scores"]
        m, t = cfg.method, cfg.train
        settings = {"beta": m.beta, "loss_type": m.loss_type, "constraint": m.constraint,
                    "lambda_out": m.lambda_out, "lambda_near": m.lambda_near, "lr": t.lr,
                    "epochs": t.epochs, "lora_r": cfg.lora.r,
                    "disable_dropout": setting(m, "disable_dropout")} if method in TRAINED else {}
        rows.append({"benchmark": "overgeneralization", "feedback": name, "method": method, **scores,
                     "teacher_revision": revision, "settings": settings,
                     "train_end": train_end(out) if method in TRAINED else {},
                     "machine": machine(), "versions": versions(),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": cmd})
    return rows


# What the last optimizer step logged: for the DPO family, whether the preference term saturated
# (loss/dpo near 0) while the revision is still less likely than the baseline (logps/chosen below
# logps/rejected), the failure the README's results discuss.
TRAIN_END_KEYS = ("loss", "loss/dpo", "loss/sft", "loss/near", "loss/out", "rewards/margins", "logps/chosen",
                  "logps/rejected")


def train_end(out: Path) -> dict:
    path = out / "train_summary.json"
    final = json.loads(path.read_text(encoding="utf-8")).get("final", {}) if path.is_file() else {}
    return {k: float(f"{final[k]:.4g}") for k in TRAIN_END_KEYS if k in final}


def summary(rows: list[dict]) -> str:
    """Markdown table of the mean scores per method and the target checks."""
    keys = ("S_in", "S_near", "S_general", "S_out", "S_overall")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    mean = {m: {k: sum(r[k] for r in rows if r["method"] == m) / sum(r["method"] == m for r in rows) for k in keys}
            for m in methods}
    n_fb = len({r["feedback"] for r in rows})
    lines = [f"mean over {n_fb} feedbacks", "| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {m} | " + " | ".join(f"{mean[m][k]:.3f}" for k in keys) + " |" for m in methods]
    if "c3po" in mean and "dpo" in mean:
        c, d = mean["c3po"], mean["dpo"]
        best = max(methods, key=lambda m: mean[m]["S_overall"])
        lines += ["", f"- highest mean S_overall: {best} ({'met' if best == 'c3po' else 'MISSED'})",
                  f"- C3PO S_out {c['S_out']:.3f} vs ½·DPO {d['S_out'] / 2:.3f} "
                  f"({'met' if c['S_out'] <= d['S_out'] / 2 else 'MISSED'})",
                  f"- C3PO S_in {c['S_in']:.3f} vs 0.9·DPO {0.9 * d['S_in']:.3f} "
                  f"({'met' if c['S_in'] >= 0.9 * d['S_in'] else 'MISSED'})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(p.stem for p in FEEDBACK_DIR.glob("*.yaml"))
    parser.add_argument("--feedbacks", default=",".join(shipped))
    parser.add_argument("--methods", default="base,scd,scd_neg,dpo,c3po")
    parser.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="config override for every trained method, or only for METHOD (repeatable)")
    parser.add_argument("--teacher-revision", default="edit", choices=["edit", "rewrite"],
                        help="how the offline teacher revises (serve.teacher_revision); default edit")
    parser.add_argument("--work", default=None,
                        help="data and adapters (default runs/bench-overgeneralization, -rewrite for rewrite)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overgeneralization.jsonl"))
    args = parser.parse_args(argv)
    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in (*TRAINED, *STORED, "base")]
    if unknown:
        parser.error(f"unknown method {unknown[0]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.teacher_revision == "edit" else f"-{args.teacher_revision}"
    work = Path(args.work) if args.work else ROOT / "runs" / f"bench-overgeneralization{suffix}"
    rows = []
    for name in [f for f in args.feedbacks.split(",") if f]:
        got = run_feedback(name, methods, work, cmd, args.set, args.teacher_revision)
        with open(out, "a", encoding="utf-8") as f:
            for row in got:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows += got
        print(f"{name}: " + ", ".join(f"{r['method']} {r['S_overall']:.3f}" for r in got), file=sys.stderr, flush=True)
    print(summary(rows))


if __name__ == "__main__":
    main()
