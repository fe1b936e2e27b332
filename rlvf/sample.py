"""``python -m rlvf.sample --config X.yaml`` — the C3PO data scheme (Stephan et al. 2024, §4), over HTTP.

For each feedback (one per entry of ``data.dirs``):

1. the teacher proposes K categories of situations inside the feedback's domain (then revises them);
2. per category, the teacher writes in-scope prompts and near-scope prompts (with a revision step);
3. out-of-scope prompts are drawn from a general prompt source;
4. each scope's prompts are split, seeded, into train and test;
5. the model being trained (the *student*, served) writes a baseline response to every prompt, and
   the in-context / chain-of-thought baseline responses to the test prompts;
6. the teacher revises the in-scope baselines (the chosen responses of the DPO pairs) — and, with
   ``sample.negatives``, applies the feedback to near/out baselines too (dpo negatives);
7. for quantitative feedback, in-scope training pairs whose revision does not beat the baseline on
   the feedback's metric are dropped and counted.

Output: ``{in_scope,near_scope,out_of_scope}_{train,test}.jsonl`` in the training format (id, prompt,
category, baseline, revised, in_context, cot) and ``sample_meta.json``: the latest run's counts,
drops, failures and usage at the top level, and the history of every run on this directory
(``runs``: each with its timestamps, counts, failures, the earlier failures it filled in and its
usage; ``totals``: usage and failures summed over the runs). Every request goes through
rlvf.client, whose disk cache (``<data dir>/.cache``) makes a re-run or a resumed run pay only for
what is missing. Replies that do not parse are asked again with another seed, then reported with
counts — never dropped silently.

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

from rlvf import prompts as P
from rlvf.atomic import write_text_atomic
from rlvf.client import ChatClient, ChatFailure, ChatRequest, EndpointConfig, Sampling
from rlvf.config import load_config
from rlvf.data import SCOPES, read_rows, scope_file
from rlvf.errors import UserError, exit_on_user_error
from rlvf.feedback import Feedback, load_feedbacks
from rlvf.tinyworld.scope import in_near_scope, in_scope
from rlvf.pipeline_config import PipelineConfig

COT_MARKER = "RESPONSE:"
META_NAME = "sample_meta.json"


# ----------------------------------------------------------------------------- student prompts


def in_context_messages(feedback: str, prompt: str) -> list[dict]:
    """The paper's in-context baseline: the feedback written before the prompt (user turn only, since
    some chat templates, e.g. Mistral's, reject a system turn)."""
    return [{"role": "user", "content": f"{feedback}\n\n{prompt}"}]


def cot_messages(feedback: str, prompt: str) -> list[dict]:
    """The chain-of-thought baseline: reason about whether the feedback applies, then answer."""
    return [{"role": "user", "content": (
        f"Here is a piece of feedback: {feedback}\n\nFirst think step by step about whether the feedback "
        f"applies to the request below and how. Then write your reply on a new line starting with "
        f"'{COT_MARKER}'.\n\nRequest: {prompt}")}]


def cot_answer(text: str) -> str:
    """The reply after the last 'RESPONSE:' (the whole text if the model skipped the marker)."""
    return text.rsplit(COT_MARKER, 1)[-1].strip() if COT_MARKER in text else text.strip()


# ----------------------------------------------------------------------------- teacher round trips


class Asker:
    """Sends teacher requests, re-asks unparseable replies with a new seed, records failures."""

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


# ----------------------------------------------------------------------------- prompt sources


def general_prompts(source: str, n: int, fb: Feedback, seed: int, exclude: set[str]) -> list[str]:
    """``n`` out-of-scope prompts: from the tiny world (outside the feedback's scope and near scope),
    a JSONL file with a 'prompt' field, or a local datasets directory with a 'prompt' column."""
    rng = random.Random(seed)
    if source == "tinyworld":
        from rlvf.tinyworld import world

        if fb.world is None:
            raise UserError(f"sample.general_prompts: 'tinyworld' needs a tiny-world feedback, {fb.name} has no world fields")
        out = []
        for _ in range(200 * max(1, n)):
            if len(out) == n:
                break
            req = world.sample_request(rng)
            if not in_scope(fb, req) and not in_near_scope(fb, req) and req.prompt not in exclude | set(out):
                out.append(req.prompt)
        return out
    path = Path(source)
    if path.is_dir():
        import datasets

        try:
            column = datasets.load_from_disk(str(path))["prompt"]
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise UserError(f"sample.general_prompts: {path}: not a datasets directory with a 'prompt' column ({err})") from None
        pool = [p for p in column if isinstance(p, str) and p.strip()]
    else:
        pool = [r["prompt"] for r in read_rows(path, ())]
    pool = [p for p in dict.fromkeys(pool) if p not in exclude]
    rng.shuffle(pool)
    return pool[:n]


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded (train, test) split with at least one test item when there are two or more."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
    test = sorted(order[:k])
    return [items[i] for i in sorted(order[k:])], [items[i] for i in test]


# ----------------------------------------------------------------------------- one feedback


def _prompts_by_scope(fb: Feedback, cfg: PipelineConfig, ask: Asker) -> dict[str, list[dict]]:
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


def _student_responses(rows: list[dict], fb: Feedback, cfg: PipelineConfig, student: ChatClient, stats: dict) -> None:
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


def _revisions(rows: list[dict], fb: Feedback, cfg: PipelineConfig, ask: Asker) -> None:
    """Teacher revisions: in scope (applied if relevant), near/out test rows (if relevant: the
    'revised' eval method), near/out train rows with ``negatives`` (always applied)."""
    requests = {}
    for i, row in enumerate(rows):
        if "baseline" not in row:
            continue
        always = cfg.sample.negatives and row["scope"] != "in_scope" and row["split"] == "train"
        if row["scope"] == "in_scope" or row["split"] == "test" or always:
            requests[f"revise/{i}"] = P.revise_request(fb.content, row["prompt"], row["baseline"], always=always)
    got = ask.ask(requests, P.parse_revision, f"{fb.name}: revisions")
    for key, text in got.items():
        rows[int(key.split("/")[1])]["revised"] = text


def _keep(row: dict, fb: Feedback, cfg: PipelineConfig, stats: dict) -> bool:
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


def sample_feedback(fb: Feedback, out_dir: Path, cfg: PipelineConfig, teacher: ChatClient,
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
    _revisions(rows, fb, cfg, ask)
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


def run(cfg: PipelineConfig, teacher_ep: EndpointConfig, student_ep: EndpointConfig, progress: bool = True) -> list[dict]:
    """Sample every feedback of ``cfg`` into its data directory; UserError at the end if requests failed."""
    feedbacks = load_feedbacks(cfg.feedback)
    for endpoint in (teacher_ep, student_ep):
        endpoint.api_key()  # a missing or malformed key stops the run here, before any request or file
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
              + (f"; {unparsed} teacher replies did not parse (see sample_meta.json)" if unparsed else ""),
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


def endpoints(cfg: PipelineConfig) -> tuple[EndpointConfig, EndpointConfig]:
    if cfg.teacher is None or cfg.student is None:
        missing = "teacher" if cfg.teacher is None else "student"
        raise UserError(f"{missing}: no endpoint configured (give base_url and model, or use python -m rlvf.pipeline "
                        f"with serve.{missing}: true)")
    return cfg.teacher, cfg.student


def check_ready(cfg: PipelineConfig, where: str) -> None:
    """Errors a user can cause, before anything is written."""
    if not cfg.feedback:
        raise UserError(f"{where}: feedback: missing required value (one feedback name or YAML path per data.dirs entry)")
    s = cfg.sample
    if s.general_prompts != "tinyworld" and not Path(s.general_prompts).exists():
        raise UserError(f"{where}: sample.general_prompts: {s.general_prompts} not found (give 'tinyworld', a JSONL "
                        "file with a 'prompt' field per line, or a datasets directory with a 'prompt' column)")
    for fb in load_feedbacks(cfg.feedback):  # reads (and so checks) the general-prompt source up front
        general_prompts(s.general_prompts, 1, fb, s.seed, set())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        cfg = load_config(args.config, args.overrides, PipelineConfig)
        check_ready(cfg, args.config)
        teacher_ep, student_ep = endpoints(cfg)
        run(cfg, teacher_ep, student_ep)


if __name__ == "__main__":
    main()
