"""What ``rlvf.eval`` writes: results.json, report.md and chart.png.

The report is meant to be read on its own: it states the formula, how many prompts each score is
over, what each evaluated method is, caveats for methods that say nothing about the model at hand,
and a few examples per scope (prompt, baseline, new response, verdict) so a reader sees what changed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from rlvf.atomic import write_bytes_atomic, write_text_atomic
from rlvf.data import SCOPES

SCORE_KEYS = ("S_in", "S_near", "S_general", "S_out", "S_overall")
SCOPE_LABEL = {"in_scope": "in scope", "near_scope": "near scope", "out_of_scope": "general (out of scope)"}

FORMULA = """\
For each held-out prompt, a method's response is compared with the untrained model's baseline
response: h = +1 when only the new response follows the feedback, 0 when both or neither do, −1 when
only the baseline does (the feedback's metric for quantitative feedback; the teacher's 1–5 verdict
mapped to (v − 3)/2 for qualitative feedback).

    S_in = mean h over in-scope prompts               (adherence where the feedback applies; higher is better)
    S_near = mean |h| over near-scope prompts         (unwanted change next to the scope; lower is better)
    S_general = mean |h| over general prompts         (unwanted change elsewhere; lower is better)
    S_out = (S_near + S_general) / 2                  (each set weighs the same, whatever its size)
    S_overall = (S_in + 1 − S_out) / 2                (0.5 is the untrained model)"""

METHOD_DOC = {
    "adapter": "the trained LoRA adapter, served on the base model",
    "base": "the untrained model (its own reply again; differs from the baseline only through sampling)",
    "in_context": "the untrained model with the feedback appended to the prompt, to apply if applicable",
    "cot": "the untrained model asked to reason whether and how the feedback applies, then answer",
    "revised": "the revised responses used as training targets (an upper bound of what training can copy)",
}


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def methods_of(results: dict[str, dict[str, dict]]) -> list[str]:
    return list(dict.fromkeys(m for per in results.values() for m in per))


def counts(entry: dict) -> str:
    """'15/14/15': prompts scored in scope / near scope / general."""
    h = entry.get("h")
    return "—" if h is None else "/".join(str(len(h.get(scope, []))) for scope in SCOPES)


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown table of the scores: one row per feedback × method (with n per scope), plus the mean per method."""
    lines = ["| feedback | method | n (in/near/general) | " + " | ".join(SCORE_KEYS) + " |",
             "|---|---|---:|" + "---:|" * len(SCORE_KEYS)]
    for fb_name, per in results.items():
        for method, entry in per.items():
            lines.append(f"| {fb_name} | {method} | {counts(entry)} | "
                         + " | ".join(_fmt(entry["scores"][k]) for k in SCORE_KEYS) + " |")
    if len(results) > 1:
        for method in methods_of(results):
            vals = [per[method]["scores"] for per in results.values() if method in per]
            mean = {k: _mean([v[k] for v in vals if v[k] is not None]) for k in SCORE_KEYS}
            lines.append(f"| **mean of {len(vals)}** | {method} | | "
                         + " | ".join(_fmt(mean[k]) for k in SCORE_KEYS) + " |")
    return "\n".join(lines)


def _clip(text: str, limit: int = 240) -> str:
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[:limit - 1] + "…"


def _cell(text: str) -> str:
    return _clip(text).replace("|", "\\|").replace("`", "\\`")


def examples(results: dict[str, dict[str, dict]], rows: dict[str, dict[str, list[dict]]], per_scope: int = 2) -> str:
    """A few examples per feedback, method and scope: those whose verdict is not 0 first (what changed)."""
    verdict = {1: "+1 (only the new one follows)", 0: "0 (no difference)", -1: "−1 (only the baseline follows)"}
    out = []
    for fb_name, per in results.items():
        fb_rows = rows.get(fb_name)
        if not fb_rows:
            continue
        for method, entry in per.items():
            if method == "base" or "responses" not in entry or "h" not in entry:
                continue
            lines = ["| scope | prompt | baseline | new response | h |", "|---|---|---|---|---|"]
            for scope in SCOPES:
                hs, responses, part = entry["h"].get(scope, []), entry["responses"].get(scope, []), fb_rows.get(scope, [])
                order = sorted(range(min(len(hs), len(responses), len(part))), key=lambda i: (hs[i] == 0, i))
                for i in order[:per_scope]:
                    v = hs[i]
                    label = verdict.get(int(v), f"{v:+.2f}") if float(v).is_integer() else f"{v:+.2f}"
                    lines.append(f"| {SCOPE_LABEL[scope]} | {_cell(part[i]['prompt'])} | {_cell(part[i]['baseline'])} | "
                                 f"{_cell(responses[i])} | {label} |")
            out.append(f"### {fb_name}: {method}\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def chart_title(results: dict[str, dict[str, dict]]) -> str:
    names = list(results)
    return f"C3PO evaluation: {names[0]}" if len(names) == 1 else f"C3PO evaluation (mean over {len(names)} feedbacks)"


def chart(results: dict[str, dict[str, dict]], path: Path) -> None:
    """Grouped bar chart of the (mean) scores per method; a score of exactly 0 is drawn as a marked line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods_of(results)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.6), dpi=120)
    width = 0.8 / len(SCORE_KEYS)
    for k, key in enumerate(SCORE_KEYS):
        xs = [i + (k - (len(SCORE_KEYS) - 1) / 2) * width for i in range(len(methods))]
        vals = [_mean([per[m]["scores"][key] for per in results.values()
                       if m in per and per[m]["scores"][key] is not None]) for m in methods]
        bars = ax.bar(xs, [v or 0.0 for v in vals], width, label=key)
        color = bars.patches[0].get_facecolor() if bars.patches else None
        for x, v in zip(xs, vals):  # zero-height bars are invisible: mark them (and missing scores)
            if v is None or v == 0:
                ax.plot([x - width / 2, x + width / 2], [0, 0], color=color, linewidth=3, solid_capstyle="butt")
                ax.annotate("–" if v is None else "0", (x, 0), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=6)
    ax.set_xticks(range(len(methods)), methods)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylim(-1, 1)
    ax.set_title(chart_title(results), fontsize=9)
    ax.legend(fontsize=7, ncol=len(SCORE_KEYS), loc="lower center", bbox_to_anchor=(0.5, 1.1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def markdown(results: dict[str, dict[str, dict]], rows: dict[str, dict[str, list[dict]]] | None = None,
             methods_doc: dict[str, str] | None = None, caveats: list[str] = ()) -> str:
    """The whole report.md."""
    doc = {**METHOD_DOC, **(methods_doc or {})}
    present = methods_of(results)
    parts = ["# Evaluation", FORMULA,
             "Methods:\n\n" + "\n".join(f"- `{m}`: {doc.get(m.split(':')[0], 'stored responses')}" for m in present)]
    if caveats:
        parts.append("\n".join(f"> **Caveat.** {c}" for c in caveats))
    parts += ["## Scores", table(results), "![scores](chart.png)"]
    ex = examples(results, rows or {})
    if ex:
        parts += ["## Examples", "A few held-out prompts per scope, those where the verdict is not 0 first.", ex]
    return "\n\n".join(parts) + "\n"


def write_reports(results: dict[str, dict[str, dict]], out_dir: Path,
                  rows: dict[str, dict[str, list[dict]]] | None = None,
                  methods_doc: dict[str, str] | None = None, caveats: list[str] = ()) -> str:
    """results.json, report.md and chart.png in ``out_dir``; returns the Markdown table. ``rows`` maps
    a feedback to its test rows by scope (prompt, baseline) for the examples."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out_dir / "report.md", markdown(results, rows, methods_doc, caveats))
    chart(results, out_dir / "chart.png")
    return table(results)
