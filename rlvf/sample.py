"""``python -m rlvf.sample --config X.yaml`` — the C3PO data scheme (Stephan et al. 2024, §4), over HTTP.

For each feedback (one per entry of ``data.dirs``):

1. the teacher proposes K categories of situations inside the feedback's domain (then revises them);
2. per category, the teacher writes in-scope prompts and near-scope prompts (with a revision step);
3. out-of-scope prompts are drawn from a general prompt source;
4. each scope's prompts are split, seeded, into train and test;
5. the model being trained (the *student*, served) writes a baseline response to every prompt, and
   the in-context / chain-of-thought baseline responses to the test prompts;
6. the reviser (``sample.reviser``) revises the in-scope baselines (the chosen responses of the DPO
   pairs), the near/out test baselines (eval method ``revised``) and, with ``sample.negatives``, the
   near/out train baselines (dpo negatives): by default the student itself, given the feedback's
   effect, as the original does; or the teacher, given the feedback, applied where it applies;
7. for quantitative feedback, in-scope training pairs whose revision does not beat the baseline on
   the feedback's metric are dropped and counted.

Output: ``{in_scope,near_scope,out_of_scope}_{train,test}.jsonl`` in the training format (id, prompt,
category, baseline, revised, in_context, cot) and ``sample_meta.json``: the latest run's counts,
drops, failures and usage at the top level, and the history of every run on this directory
(``runs``: each with its timestamps, counts, failures, the earlier failures it filled in and its
usage; ``totals``: usage and failures summed over the runs). Every request goes through
rlvf.client, whose disk cache (``<data dir>/.cache``) makes a re-run or a resumed run pay only for
what is missing. Replies that do not parse (the teacher's, and the student's revisions) are asked
again with another seed, then reported with counts — never dropped silently.

A request that runs out of retries leaves its rows out (counted as incomplete in sample_meta.json,
which lists it); the run goes on with everything else, then names the failed requests on one line
and exits with code 2. Re-running the same command sends only those requests (and any that depend
on their replies): everything that completed is in the cache.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from rlvf import config
from rlvf import prompts as P
from rlvf.atomic import write_text_atomic
from rlvf.client import ChatClient, ChatFailure, ChatRequest, api_key
from rlvf.config import Config, EndpointConfig, Sampling, check_stage, load_runs, samplings, sweep_for
from rlvf.data import META_NAME, SCOPES, data_owner, scope_file
from rlvf.drafts import prepare_feedbacks
from rlvf.endpoints import local_endpoints, need
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback import Feedback, load_feedbacks
from rlvf.general_prompts import general_prompts  # out-of-scope sources and draw (callers import it from here too)
from rlvf.typed import error

COT_MARKER = "RESPONSE:"
TINY_MODEL_DIR = Path(__file__).resolve().parent / "tinyworld" / "model"  # the shipped model (rlvf.eval has it too)


# ----------------------------------------------------------------------------- student prompts


def in_context_messages(feedback: str, prompt: str) -> list[dict]:
    """The in-context baseline as the original builds it: the request, then the feedback with the
    instruction to apply it where it applies (user turn only: some chat templates, e.g. Mistral's,
    reject a system turn)."""
    return [{"role": "user", "content": f"{prompt} (Apply this feedback if it is relevant here: {feedback})"}]


def cot_messages(feedback: str, prompt: str) -> list[dict]:
    """The chain-of-thought baseline, the original's two steps: reason whether and how the feedback
    applies to the request, then answer after the marker, applying it only where it applies."""
    return [{"role": "user", "content": (
        "You will get a request and a piece of feedback that may or may not apply to it. First, on a line "
        "starting with 'EXPLANATION:', reason step by step in two or three sentences about whether the "
        "feedback applies to this request and, if it does, how to apply it. Then, on a new line starting "
        f"with '{COT_MARKER}', write your complete reply to the request, applying the feedback only if it "
        "applies. Write nothing after the reply.\n\n"
        f"REQUEST: {prompt}\nFEEDBACK: {feedback}\nEXPLANATION:")}]


def cot_answer(text: str) -> str:
    """The reply after the last 'RESPONSE:' (the whole text if the model skipped the marker)."""
    return text.rsplit(COT_MARKER, 1)[-1].strip() if COT_MARKER in text else text.strip()


# ----------------------------------------------------------------------------- teacher round trips


class Asker:
    """Sends requests whose replies must parse (the teacher's; the student's revisions), re-asks
    unparseable replies with a new seed, records failures."""

    def __init__(self, client: ChatClient, sampling: Sampling, retries: int, seed: int, stats: dict):
        self.client, self.sampling, self.retries, self.seed, self.stats = client, sampling, retries, seed, stats

    def ask(self, requests: dict[str, list[dict]], parse, desc: str) -> dict:
        """{key: parsed reply} for every key that parsed within the retries; the rest are counted."""
        done, pending = {}, dict(requests)
        for attempt in range(self.retries + 1):
            sampling = replace(self.sampling, seed=self.seed + attempt)
            batch = [ChatRequest(k, m, sampling) for k, m in pending.items()]
            results, failures = self.client.run(batch, desc=desc if attempt == 0 else f"{desc} (re-ask {attempt})")
            for r in results:
                try:
                    done[r.key] = parse(r.texts[0])
                    del pending[r.key]
                except P.ParseError:
                    pass
            for f in failures:  # retries exhausted at the HTTP level: reported, resumable
                self.stats["request_failures"].append(_failure(f))
                pending.pop(f.key, None)
            if not pending:
                break
        for key in pending:
            self.stats["unparsed"].append({"key": key, "task": desc})
        return done


# ----------------------------------------------------------------------------- train/test split


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded (train, test) split with at least one test item when there are two or more."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
    test = sorted(order[:k])
    return [items[i] for i in sorted(order[k:])], [items[i] for i in test]


# ----------------------------------------------------------------------------- one feedback


def _prompts_by_scope(fb: Feedback, cfg: Config, ask: Asker) -> dict[str, list[dict]]:
    """{scope: [{"prompt", "category"}]} from the teacher (in/near) and the general source (out)."""
    s = cfg.sample
    if fb.categories:
        cats = list(fb.categories)[: s.categories]
    else:
        got = ask.ask({"categories": P.categories_request(fb.content, fb.domain, s.categories)},
                      P.parse_categories, f"{fb.name}: categories")
        cats = got.get("categories", [])[: s.categories]
    if not cats:
        raise UserError(f"{fb.source}: {_no_categories(ask)}; nothing was written")
    in_req = {f"in/{i}": P.in_scope_prompts_request(fb.content, fb.domain, c, s.in_scope_per_category)
              for i, c in enumerate(cats)}
    near_req = {f"near/{i}": P.near_scope_prompts_request(fb.content, fb.domain, c, s.near_scope_per_category)
                for i, c in enumerate(cats)}
    got = ask.ask({**in_req, **near_req}, P.parse_prompts, f"{fb.name}: prompts")
    rows = {scope: [] for scope in SCOPES}
    seen: set[str] = set()
    for prefix, scope in (("in", "in_scope"), ("near", "near_scope")):
        for i, cat in enumerate(cats):
            for prompt in got.get(f"{prefix}/{i}", []):
                if prompt not in seen:
                    seen.add(prompt)
                    rows[scope].append({"prompt": prompt, "category": cat})
    for prompt in general_prompts(s.general_prompts, s.out_of_scope, fb, s.seed, seen):
        rows["out_of_scope"].append({"prompt": prompt, "category": "general"})
    return rows


def _student_responses(rows: list[dict], fb: Feedback, cfg: Config, student: ChatClient, stats: dict) -> None:
    """Fill 'baseline' (every row) and the in-context / CoT baselines (test rows) in place."""
    sampling = replace(cfg.sample.student_sampling, seed=cfg.sample.seed)
    builders = {"baseline": lambda p: [{"role": "user", "content": p}],
                "in_context": lambda p: in_context_messages(fb.content, p),
                "cot": lambda p: cot_messages(fb.content, p)}
    requests = []
    for i, row in enumerate(rows):
        for kind in ["baseline"] + (list(cfg.sample.baselines) if row["split"] == "test" else []):
            requests.append(ChatRequest(f"{kind}/{i}", builders[kind](row["prompt"]), sampling))
    results, failures = student.run(requests, desc=f"{fb.name}: student responses")
    for r in results:
        kind, i = r.key.split("/")
        text = r.texts[0].strip()
        rows[int(i)][kind] = cot_answer(text) if kind == "cot" else text
    stats["request_failures"] += [_failure(f) for f in failures]


def _no_categories(ask: Asker) -> str:
    """Why the teacher's categories request gave nothing: its HTTP failure, unparsed replies, or an empty list."""
    failed = [f for f in ask.stats["request_failures"] if f["key"] == "categories"]
    if failed:
        f = failed[-1]
        return (f"the teacher's categories request to {ask.client.base_url} failed after {f['attempts']} attempts "
                f"({f['error']}); re-run the same command once the teacher answers")
    if any(u["key"] == "categories" for u in ask.stats["unparsed"]):
        return (f"the teacher's replies to the categories request did not parse after {ask.retries + 1} tries "
                "(is teacher.model a capable chat model?)")
    return "the teacher gave no usable categories for this feedback"


def _failure(f: ChatFailure) -> dict:
    return {"key": f.key, "error": f.error, "attempts": f.attempts}


def _revisions(rows: list[dict], fb: Feedback, cfg: Config, ask: Asker) -> None:
    """Fill 'revised' in place, asking ``ask``'s endpoint (the reviser's) for the rows that need one:
    every in-scope row (the chosen responses; the test rows for eval method 'revised'), the near/out
    test rows ('revised' in every scope) and, with ``negatives``, the near/out train rows (dpo's
    negatives). Near/out train rows without ``negatives`` are skipped: nothing reads their revision.

    ``sample.reviser: student`` (default) is the original's scheme (src/sample.py sample_completions):
    the model being trained revises its own baseline from the feedback's *effect* (prompts.
    student_revise_request), with the student's sampling. The original revises every prompt of every
    scope, train and test alike, and its revisions always apply the effect, so here too near/out
    revisions apply it unconditionally. ``teacher`` asks the teacher with the feedback's content,
    applied only where relevant (always for the negatives).
    """
    student = cfg.sample.reviser == "student"
    requests = {}
    for i, row in enumerate(rows):
        if "baseline" not in row:
            continue
        always = cfg.sample.negatives and row["scope"] != "in_scope" and row["split"] == "train"
        if row["scope"] == "in_scope" or row["split"] == "test" or always:
            requests[f"revise/{i}"] = (P.student_revise_request(fb.effect, row["prompt"], row["baseline"]) if student
                                       else P.revise_request(fb.content, row["prompt"], row["baseline"], always=always))
    got = ask.ask(requests, P.parse_revision, f"{fb.name}: {cfg.sample.reviser} revisions")
    for key, text in got.items():
        rows[int(key.split("/")[1])]["revised"] = text


def _keep(row: dict, fb: Feedback, cfg: Config, stats: dict) -> bool:
    """Rows missing a field they need (failed or unparsed requests) are left out, counted in stats."""
    need = ["baseline"] + (["revised"] if row["scope"] == "in_scope" else [])
    if row["split"] == "test":
        need += list(cfg.sample.baselines)
    if cfg.sample.negatives and row["split"] == "train" and row["scope"] != "in_scope":
        need.append("revised")
    if any(k not in row for k in need):
        stats["incomplete_rows"] += 1
        return False
    quantitative = fb.type == "quantitative" and fb.metric is not None
    if (cfg.sample.filter_revisions and quantitative and row["scope"] == "in_scope" and row["split"] == "train"
            and not (fb.follows(row["revised"], row["baseline"]) and not fb.follows(row["baseline"], row["revised"]))):
        stats["filtered_pairs"] += 1
        return False
    return True


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def sample_feedback(fb: Feedback, out_dir: Path, cfg: Config, teacher: ChatClient,
                    student: ChatClient) -> dict:
    """Generate one feedback's data into ``out_dir``; returns the stats written to sample_meta.json."""
    started = _now()
    stats = {"request_failures": [], "unparsed": [], "incomplete_rows": 0, "filtered_pairs": 0}
    s = cfg.sample
    ask = Asker(teacher, s.teacher_sampling, s.max_parse_retries, s.seed, stats)
    by_scope = _prompts_by_scope(fb, cfg, ask)
    rows = []
    for k, scope in enumerate(SCOPES):
        train, test = split(by_scope[scope], s.test_fraction, s.seed + k)
        for part, name in ((train, "train"), (test, "test")):
            rows += [{**r, "scope": scope, "split": name} for r in part]
    _student_responses(rows, fb, cfg, student, stats)
    reviser = ask if s.reviser == "teacher" else Asker(student, s.student_sampling, s.max_parse_retries, s.seed, stats)
    _revisions(rows, fb, cfg, reviser)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for scope in SCOPES:
        for name in ("train", "test"):
            part = [r for r in rows if r["scope"] == scope and r["split"] == name and _keep(r, fb, cfg, stats)]
            out = [{"id": f"{scope}-{name}-{j}", **{k: v for k, v in r.items() if k not in ("scope", "split")}}
                   for j, r in enumerate(part)]
            _write_jsonl(scope_file(out_dir, scope, name), out)
            counts[f"{scope}_{name}"] = len(out)
    meta = {"feedback": fb.to_dict(), "counts": counts, **stats,
            "teacher": teacher.summary(), "student": student.summary(),
            "requests": {"teacher": asdict(teacher.stats), "student": asdict(student.stats)}}
    runs = read_runs(out_dir / META_NAME)
    runs.append(_run_record(meta, fb.name, started, _now(), runs[-1] if runs else None))
    meta.update(runs=runs, totals=totals(runs))
    write_text_atomic(out_dir / META_NAME, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


# ----------------------------------------------------------------------------- sample_meta.json history

_RUN_KEYS = ("counts", "request_failures", "unparsed", "incomplete_rows", "filtered_pairs", "teacher", "student",
             "requests")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_runs(path: Path) -> list[dict]:
    """The runs recorded in ``path`` (sample_meta.json), oldest first; [] if there is none.

    A file written before runs were recorded becomes one run without timestamps; an unreadable
    one is reported on stderr and its history starts afresh.
    """
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        print(f"{path}: unreadable ({err}); its run history starts afresh", file=sys.stderr)
        return []
    if not isinstance(old, dict):
        return []
    if isinstance(old.get("runs"), list):
        return [r for r in old["runs"] if isinstance(r, dict)]
    name = old.get("feedback", {}).get("name") if isinstance(old.get("feedback"), dict) else None
    return [_run_record(old, name, None, None, None)]


def _run_record(meta: dict, feedback: str | None, started: str | None, finished: str | None,
                previous: dict | None) -> dict:
    """One run for the history: its timestamps, outcome and usage, and the failures of the
    previous run that it filled in (requests that failed then and did not fail now)."""
    failed_now = {f.get("key") for f in meta.get("request_failures", [])}
    failed_before = [f.get("key") for f in (previous or {}).get("request_failures", []) if isinstance(f, dict)]
    return {"started": started, "finished": finished, "feedback": feedback,
            **{k: meta[k] for k in _RUN_KEYS if k in meta},
            "filled_in": [k for k in dict.fromkeys(failed_before) if k not in failed_now]}


def _add(total: dict, part: dict) -> None:
    """total += part, field by field, for numbers and nested {reason: count} maps."""
    for key, value in part.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            _add(total.setdefault(key, {}), value)


def totals(runs: list[dict]) -> dict:
    """Sums over ``runs``: request usage per endpoint, failures, fill-ins."""
    requests: dict = {"teacher": {}, "student": {}}
    for run in runs:
        for role, stats in (run.get("requests") or {}).items():
            if isinstance(stats, dict):
                _add(requests.setdefault(role, {}), stats)
    return {"runs": len(runs), "requests": requests,
            "request_failures": sum(len(r.get("request_failures") or []) for r in runs),
            "filled_in": sum(len(r.get("filled_in") or []) for r in runs)}


def run(cfg: Config, teacher_ep: EndpointConfig, student_ep: EndpointConfig, progress: bool = True) -> list[dict]:
    """Sample every feedback of ``cfg`` into its data directory; UserError at the end if requests failed."""
    feedbacks = load_feedbacks(cfg.feedback)
    for endpoint in (teacher_ep, student_ep):
        api_key(endpoint)  # a missing or malformed key stops the run here, before any request or file
    metas = []
    for fb, data_dir in zip(feedbacks, cfg.data.dirs):
        out = Path(data_dir)
        teacher = ChatClient(teacher_ep, cache_dir=out / ".cache", progress=progress)
        student = ChatClient(student_ep, cache_dir=out / ".cache", progress=progress)
        meta = sample_feedback(fb, out, cfg, teacher, student)
        failed, unparsed = len(meta["request_failures"]), len(meta["unparsed"])
        print(f"{fb.name}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
              + f"; {meta['filtered_pairs']} pairs filtered by the metric, {meta['incomplete_rows']} rows incomplete"
              + (f"; {failed} requests failed (a re-run retries them)" if failed else "")
              + (f"; {unparsed} replies did not parse (see 'unparsed' in sample_meta.json)" if unparsed else ""),
              file=sys.stderr)
        print(f"  teacher: {meta['teacher']}\n  student: {meta['student']}", file=sys.stderr)
        metas.append(meta)
    failed = [(fb, d, meta) for fb, d, meta in zip(feedbacks, cfg.data.dirs, metas) if meta["request_failures"]]
    if failed:
        raise failures_error(failed)
    return metas


def failures_error(failed: list[tuple[Feedback, str, dict]], show: int = 5) -> UserError:
    """One line: how many requests failed (out of retries, or refused), the first ``show`` of them, what to do."""
    count = sum(len(meta["request_failures"]) for _, _, meta in failed)
    parts, left = [], show
    for fb, _, meta in failed:
        keys = [f["key"] for f in meta["request_failures"][:left]]
        left -= len(keys)
        if keys:
            parts.append(f"{fb.name}: {', '.join(keys)}")
    more = f" and {count - show} more" if count > show else ""
    last = failed[-1][2]["request_failures"][-1]
    dirs = ", ".join(str(d) for _, d, _ in failed)
    return UserError(f"{count} request{'s' if count > 1 else ''} failed ({'; '.join(parts)}{more}; last "
                     f"error after {last['attempts']} attempts: {last['error']}): the data in {dirs} is incomplete "
                     "(sample_meta.json lists them); re-run the same command to send only these, the completed "
                     "requests are cached")


def check_ready(cfg: Config, where: str) -> None:
    """Errors a user can cause, before anything is written."""
    if not cfg.feedback:
        raise UserError(f"{where}: feedback: missing required value (one feedback name or YAML path per data.dirs entry)")
    s = cfg.sample
    if s.reviser == "student" and cfg.serve.student and is_shipped_tiny_model(cfg.model.path):
        raise error(where, "sample.reviser", f"student would have the served {cfg.model.path} revise its own replies, "
                    "but the shipped tiny-world model cannot follow instructions; set sample.reviser: teacher")
    for role in ("teacher", "student"):  # keys first: reading the general-prompt source may be a download
        if getattr(cfg, role) is not None and not getattr(cfg.serve, role):
            api_key(getattr(cfg, role))
    for i, (fb, data_dir) in enumerate(zip(load_feedbacks(cfg.feedback), cfg.data.dirs)):
        general_prompts(s.general_prompts, s.out_of_scope, fb, s.seed, set())  # all it must give, up front
        owner = data_owner(Path(data_dir))
        if owner is not None and owner != fb.name:
            raise UserError(f"{where}: data.dirs[{i}]: {data_dir} holds the data of feedback {owner!r} "
                            f"({META_NAME}); give {fb.name!r} a directory of its own")


def is_shipped_tiny_model(path: str | None) -> bool:
    """Whether ``path`` is the shipped tiny-world model (rlvf/tinyworld/model) or a copy of it (same build_stats.json)."""
    if not path:
        return False
    here = Path(path)
    if here.resolve() == TINY_MODEL_DIR.resolve():
        return True
    try:
        return (here / "build_stats.json").read_bytes() == (TINY_MODEL_DIR / "build_stats.json").read_bytes()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    args = config.parse_arguments(parser, argv, "sample")
    with exit_on_user_error():
        runs = load_runs(args.config, args.overrides)
        where = config.origin(args.config, args.overrides)  # a key given by --set is blamed on it
        sweep_for(runs, ("sample",), where)
        distinct = samplings(runs, where)  # sweep points with the same sampling settings share one
        for cfg in distinct:
            check_stage(cfg, "sample", where)
            prepare_feedbacks(cfg, where, "sample", draft=True)  # sentences drafted into data.dirs; select
            check_ready(cfg, where)
        for cfg in distinct:
            with local_endpoints(cfg) as (teacher, student):  # serve.teacher / serve.student: rlvf's own server
                run(cfg, need(teacher, "teacher", "sample"), need(student, "student", "sample"))


if __name__ == "__main__":
    main()
