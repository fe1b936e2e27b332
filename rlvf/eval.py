"""``python -m rlvf.eval --config X.yaml`` — adherence in scope and unwanted change out of scope.

Scores as in the paper (Stephan et al. 2024, §5): for each held-out prompt, a method's response is
compared with the baseline response of the untrained model,

    h = +1  only the new response follows the feedback,   0  both or neither,   −1  only the baseline does

— by the feedback's metric for quantitative feedback, by the teacher's 1–5 judge verdict mapped to
[−1, 1] ((v − 3)/2) for qualitative feedback. Then

    S_in = mean h (in scope)      S_near = mean |h| (near scope)      S_general = mean |h| (out of scope)
    S_out = (S_near + S_general) / 2                           S_overall = (S_in + 1 − S_out) / 2

Methods: ``adapter`` (a trained or mixed adapter, served), ``base`` (the untrained model), the
``in_context`` / ``cot`` baseline responses and the teacher's ``revised`` responses written by
rlvf.sample. Writes results.json, report.md and chart.png to ``eval.out_dir``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from rlvf import config
from rlvf import prompts as P
from rlvf.client import ChatClient, ChatRequest
from rlvf.config import Config, EndpointConfig, check_stage, load_runs, sweep_for
from rlvf.data import SCOPES, read_rows, scope_file
from rlvf.drafts import prepare_feedbacks
from rlvf.endpoints import ADAPTER_NAME, adapter_to_evaluate, local_endpoints
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback import Feedback, load_feedbacks
from rlvf.feedback_runs import Part, check_adapters, eval_parts, label, make_mix
from rlvf.report import write_reports
from rlvf.typed import Where

TINY_MODEL_DIR = Path(__file__).resolve().parent / "tinyworld" / "model"


def h_metric(fb: Feedback, new: str, baseline: str) -> float:
    """h from the feedback's metric: follows(new) − follows(baseline), each judged against the other."""
    return float(fb.follows(new, baseline)) - float(fb.follows(baseline, new))


def scores(h: dict[str, list[float]]) -> dict[str, float | None]:
    """The paper's scores from per-prompt h values by scope (None where a scope has no prompts)."""
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    s = {"S_in": mean(h.get("in_scope", [])), "S_near": mean([abs(x) for x in h.get("near_scope", [])]),
         "S_general": mean([abs(x) for x in h.get("out_of_scope", [])])}
    s["S_out"] = mean([v for v in (s["S_near"], s["S_general"]) if v is not None])  # equal weights
    s["S_overall"] = None if s["S_in"] is None or s["S_out"] is None else (s["S_in"] + 1 - s["S_out"]) / 2
    return s


class Scorer:
    """Per-prompt h for one feedback: metric for quantitative feedback, teacher judge otherwise."""

    def __init__(self, fb: Feedback, teacher: ChatClient | None, sampling):
        self.fb, self.teacher, self.sampling = fb, teacher, sampling
        if fb.type == "qualitative" and teacher is None:
            raise UserError(f"{fb.source}: qualitative feedback is scored by the teacher's judge; configure teacher")

    def h(self, rows: list[dict], responses: list[str]) -> list[float]:
        if self.fb.type == "quantitative":
            return [h_metric(self.fb, new, row["baseline"]) for row, new in zip(rows, responses)]
        requests = [ChatRequest(str(i), P.judge_request(self.fb.effect, row["prompt"], row["baseline"], new), self.sampling)
                    for i, (row, new) in enumerate(zip(rows, responses)) if new != row["baseline"]]
        verdicts = self._ask(requests, P.parse_verdict, "judge")
        return [0.0 if new == row["baseline"] else P.verdict_to_h(verdicts[str(i)])
                for i, (row, new) in enumerate(zip(rows, responses))]

    def quality_scores(self, rows: list[dict], responses: list[str]) -> list[int]:
        requests = [ChatRequest(str(i), P.quality_request(row["prompt"], new), self.sampling)
                    for i, (row, new) in enumerate(zip(rows, responses))]
        got = self._ask(requests, P.parse_quality, "quality")
        return [got[str(i)] for i in range(len(rows))]

    def _ask(self, requests: list[ChatRequest], parse, what: str) -> dict:
        results, failures = self.teacher.run(requests, desc=f"{self.fb.name}: {what}")
        if failures:
            raise UserError(f"{len(failures)} {what} requests to the teacher failed ({failures[0].error}); "
                            "re-run to retry them (completed ones are cached)")
        try:
            return {r.key: parse(r.texts[0]) for r in results}
        except P.ParseError as err:
            raise UserError(f"the teacher's {what} reply did not parse ({err}); check the teacher model") from None


EVAL_SHUFFLE_SEED = 42  # the original's evaluation: test split shuffled with seed 42, then the first n


def test_rows(data_dir: str | Path, n: int | None = None) -> dict[str, list[dict]]:
    """{scope: rows of <scope>_test.jsonl} (each row needs a baseline response); with ``n``, the
    original's selection per scope: the rows permuted by numpy's default_rng(42) (what
    ``datasets.Dataset.shuffle(seed=42)`` does), then the first n."""
    out = {}
    for scope in SCOPES:
        rows = read_rows(scope_file(data_dir, scope, "test"), ("baseline",))
        if n is not None:
            rows = [rows[i] for i in np.random.default_rng(EVAL_SHUFFLE_SEED).permutation(len(rows))[:n]]
        out[scope] = rows
    return out


def responses_for(method: str, rows: dict[str, list[dict]], student: ChatClient | None, model: str | None,
                  sampling, fb: Feedback) -> dict[str, list[str]]:
    """The method's response to every test prompt, by scope."""
    if method in ("in_context", "cot", "revised"):
        out = {}
        for scope, part in rows.items():
            missing = [r["id"] for r in part if method not in r]
            if missing:
                raise UserError(f"{fb.name}: test row {missing[0]!r} ({scope}) has no '{method}' response; "
                                f"run rlvf.sample with it in sample.baselines")
            out[scope] = [r[method] for r in part]
        return out
    if student is None:
        raise UserError(f"eval.methods: {method!r} needs a student endpoint (student or serve.student)")
    endpoint = replace(student.endpoint, model=model)
    client = ChatClient(endpoint, cache_dir=student.cache.root if student.cache else None, progress=student.progress)
    flat = [(scope, i, r) for scope, part in rows.items() for i, r in enumerate(part)]
    requests = [ChatRequest(f"{scope}/{i}", [{"role": "user", "content": r["prompt"]}], sampling) for scope, i, r in flat]
    results, failures = client.run(requests, desc=f"{fb.name}: {method} responses")
    if failures:
        raise UserError(f"{len(failures)} requests to {model!r} failed ({failures[0].error}); re-run to retry them")
    by_key = {r.key: r.texts[0].strip() for r in results}
    return {scope: [by_key[f"{scope}/{i}"] for i in range(len(part))] for scope, part in rows.items()}


def evaluate_feedback(fb: Feedback, rows: dict[str, list[dict]], methods: dict[str, str | None], cfg: Config,
                      student: ChatClient | None, teacher: ChatClient | None) -> dict:
    """{method: {"scores", "h", "responses"[, "quality"]}} for one feedback on its ``test_rows``.
    ``methods`` maps a method name to the served model name that answers for it (None for stored
    responses)."""
    scorer = Scorer(fb, teacher, cfg.sample.teacher_sampling)
    out = {}
    for method, model in methods.items():
        responses = responses_for(method.split(":")[0], rows, student, model, cfg.eval.sampling, fb)
        h = {scope: scorer.h(rows[scope], responses[scope]) for scope in SCOPES}
        entry = {"scores": scores(h), "h": h, "responses": responses}
        if cfg.eval.judge_quality and teacher is not None:
            q = [x for scope in SCOPES for x in scorer.quality_scores(rows[scope], responses[scope])]
            entry["quality"] = sum(q) / len(q)
        out[method] = entry
    return out


def methods_doc(cfg: Config, adapter_about: str | None = None) -> dict[str, str]:
    """What ``adapter`` and ``revised`` are in this run, for the report (``adapter_about``: what the
    adapter is, when it is not simply the one trained in output_dir, e.g. a mix of two)."""
    reviser = ("the teacher's revisions (an upper bound of what training can copy)" if cfg.sample.reviser == "teacher"
               else "the student's own revisions (sample.reviser student; out of scope they show how much the "
                    "revision step itself changes)")
    if adapter_about is None:
        adapter_about = (f"the LoRA adapter in {cfg.eval.adapter} (eval.adapter)" if cfg.eval.adapter else
                         f"the LoRA adapter trained with method {cfg.method.name} ({Path(cfg.output_dir) / 'adapter'})")
    return {"adapter": f"{adapter_about}, served on the base model",
            "revised": f"the revised responses written by rlvf.sample: {reviser}"}


def caveats(cfg: Config) -> list[str]:
    """Report lines for methods whose scores say nothing about the model at hand."""
    prompted = [m for m in cfg.eval.methods if m in ("in_context", "cot")]
    if not prompted or not cfg.model.path or Path(cfg.model.path).resolve() != TINY_MODEL_DIR:
        return []
    return [f"{' and '.join(prompted)} prompt the shipped tiny-world model, which was never taught to follow "
            "instructions: whatever its replies to the longer prompts change is unrelated to the feedback, "
            "so these rows measure nothing about it. They are meaningful only with a real chat model."]


def run(cfg: Config, student_ep: EndpointConfig | None, teacher_ep: EndpointConfig | None,
        adapter_model: str | None = "adapter", base_model: str | None = None, progress: bool = True,
        adapter_about: str | None = None) -> dict:
    """Evaluate ``cfg.eval.methods`` on every feedback's test data; writes and returns the results
    (``adapter_about``: the report's words for the adapter, see ``methods_doc``)."""
    feedbacks = load_feedbacks(cfg.feedback)
    out_dir = Path(cfg.eval.out_dir or Path(cfg.output_dir) / "eval")
    cache = out_dir / ".cache"
    student = ChatClient(student_ep, cache_dir=cache, progress=progress) if student_ep else None
    teacher = ChatClient(teacher_ep, cache_dir=cache, progress=progress) if teacher_ep else None
    base_model = base_model or (student_ep.model if student_ep else None)
    served = {"adapter": adapter_model, "base": base_model}
    methods = {m: served.get(m) for m in cfg.eval.methods}
    rows = {fb.name: test_rows(d, cfg.eval.prompts_per_set) for fb, d in zip(feedbacks, cfg.data.dirs)}
    results = {fb.name: evaluate_feedback(fb, rows[fb.name], methods, cfg, student, teacher) for fb in feedbacks}
    print(write_reports(results, out_dir, rows, methods_doc(cfg, adapter_about), caveats(cfg)))
    print(f"wrote {out_dir}/results.json, report.md, chart.png", file=sys.stderr)
    return results


def evaluate_parts(parts: list[tuple[str, Part]], where: Where = "", adapter_model: str = ADAPTER_NAME) -> dict | None:
    """Evaluate (sweep point, run) pairs in turn, each with its own local servers (``serve``) or the
    configured endpoints: every adapter is checked before the first evaluation, a mix is made just
    before its own. ``adapter_model``: the adapter's name on an external student server. Returns the
    last run's results."""
    check_adapters([part for _, part in parts], where, adapter_model)
    results = None
    for name, part in parts:
        cfg = part.cfg
        if label(name, part):
            print(f"{label(name, part)} -> {cfg.eval.out_dir or Path(cfg.output_dir) / 'eval'}", file=sys.stderr)
        make_mix(part)
        with local_endpoints(cfg, adapter_to_evaluate(cfg, where)) as (teacher, student):
            results = run(cfg, student, teacher, adapter_model=ADAPTER_NAME if cfg.serve.student else adapter_model,
                          adapter_about=part.about)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    parser.add_argument("--adapter-model", default="adapter",
                        help="served model name of the adapter to evaluate (vLLM --lora-modules NAME=…); "
                             "with serve.student the local server serves eval.adapter (or output_dir/adapter)")
    args = config.parse_arguments(parser, argv, "eval")
    with exit_on_user_error():
        runs = load_runs(args.config, args.overrides)
        where = config.origin(args.config, args.overrides)  # a key given by --set is blamed on it
        sweep_for(runs, ("eval",), where)
        for _, cfg in runs:
            check_stage(cfg, "eval", where)
            prepare_feedbacks(cfg, where, "eval")  # a sentence as feedback: its draft in data.dirs; select
        evaluate_parts([(name, part) for name, cfg in runs for part in eval_parts(cfg)], where, args.adapter_model)


if __name__ == "__main__":
    main()
