"""Feedback specs drafted by the teacher from one sentence: the C3PO pipeline's real starting point.

A user has one sentence of feedback; the pipeline needs its domain, effect, scope, type and, for
quantitative feedback, a metric (C3PO §3). The original code had GPT-4 draft these fields
(notebooks/gpt_feedback_gen.ipynb); here the teacher drafts them on request:

    python -m rlvf.feedback new "Always use a heart emoji when texting my girlfriend Maddie" [--out FILE]

or a config names the feedback by its sentence and ``rlvf.sample`` drafts it into the data directory,
where later stages (and the user, to review it) read it:

    feedback: ["Always use a heart emoji when texting my girlfriend Maddie"]   # → data.dirs[0]/<slug>.yaml

The teacher answers ``prompts.draft_feedback_request`` with a YAML mapping after ``SPEC:`` (or a
``PROBLEM:`` line); the draft is validated by the same loader as every feedback file
(``rlvf.feedback.load_feedback``), so an invalid draft is asked again and never written. The offline
tiny-world teacher drafts specs, world fields included, for sentences about the tiny world
(rlvf/tinyworld/drafting.py).
"""
from __future__ import annotations

import contextlib
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from rlvf import prompts as P
from rlvf.atomic import write_text_atomic
from rlvf.client import ChatClient, ChatRequest
from rlvf.edits import _REQUIRED
from rlvf.data import data_owner
from rlvf.errors import UserError
from rlvf.feedback import FEEDBACK_DIR, Feedback, load_feedback, to_yaml
from rlvf.feedback_metrics import METRICS
from rlvf.typed import error

DRAFT_KEYS = ("domain", "effect", "scope", "type", "metric", "categories", "world")
_STOP = frozenset("a an the my our your me i you to when whenever in of for with and or always please any some "
                  "every all it its is be on at by as".split())


# ----------------------------------------------------------------------------- sentences and names


def slug(sentence: str, words: int = 6) -> str:
    """A file stem for a sentence: its first ``words`` content words, lower case, joined by '-'."""
    kept = [w for w in re.findall(r"[a-z0-9]+", sentence.lower()) if w not in _STOP]
    return "-".join(kept[:words]) or "feedback"


def is_sentence(entry: str) -> bool:
    """A config ``feedback`` entry that is a sentence: not a file, not a shipped name, not a path-like string."""
    if Path(entry).exists() or (FEEDBACK_DIR / f"{entry}.yaml").exists():
        return False
    if entry.endswith((".yaml", ".yml")) or "/" in entry or "\\" in entry:
        return False
    return len(entry.split()) >= 3


def draft_path(sentence: str, data_dir: str | Path) -> Path:
    """Where a config's sentence is drafted: beside its data, ``<data dir>/<slug>.yaml``."""
    return Path(data_dir) / f"{slug(sentence)}.yaml"


# ----------------------------------------------------------------------------- YAML


def metric_lines() -> list[str]:
    """One line per metric kind of the registry, for the teacher: ``kind(param: type = default): doc``."""
    lines = []
    for kind, spec in METRICS.items():
        params = []
        for name, (tp, default) in spec.params.items():
            tname = "|".join(tp) if isinstance(tp, tuple) else (tp if isinstance(tp, str) else tp.__name__)
            params.append(f"{name}: {tname}" + ("" if default is _REQUIRED else f" = {json.dumps(default, ensure_ascii=False)}"))
        lines.append(f"{kind}({', '.join(params)}): {spec.doc}")
    return lines


def spec_text(sentence: str, spec: dict, model: str) -> str:
    """The feedback file the draft becomes: a header saying how it was made, the sentence, the teacher's fields."""
    body = {"content": sentence, **{k: v for k, v in spec.items() if k != "content"}}
    shown = sentence.replace('"', '\\"')
    return (f"# Drafted by the teacher ({model}) from one sentence: python -m rlvf.feedback new \"{shown}\"\n"
            "# Review it before sampling: domain and effect steer every teacher request, scope and type are the\n"
            "# paper's, and the metric decides whether a response follows quantitative feedback (its kinds are\n"
            "# in rlvf/feedback_metrics.py).\n" + to_yaml(body))


def validate(text: str, name: str) -> Feedback:
    """The feedback ``text`` holds, through the loader of feedback files; UserError names 'the teacher's draft'."""
    with tempfile.TemporaryDirectory(prefix="rlvf-draft-") as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            fb = load_feedback(path)
        except UserError as err:
            raise UserError(str(err).replace(str(path), "the teacher's draft")) from None
    return replace(fb, source="")


# ----------------------------------------------------------------------------- asking the teacher


def draft_spec(sentence: str, client: ChatClient, sampling, retries: int = 3, name: str | None = None,
               where: str = "") -> tuple[str, Feedback]:
    """(YAML text, Feedback) drafted by the teacher behind ``client`` from ``sentence``.

    A reply that does not parse or does not validate is asked again with the next seed, up to
    ``retries`` times; a PROBLEM answer stops at once. Every failure is one UserError line quoting the
    teacher's problem (or the last validation problem); nothing is written here.
    """
    name = name or slug(sentence)
    messages = P.draft_feedback_request(sentence, metric_lines())
    seed = sampling.seed or 0
    problems = []
    lead = f"{where}: " if where else ""
    for attempt in range(retries + 1):
        request = ChatRequest("draft", messages, replace(sampling, seed=seed + attempt))
        results, failures = client.run([request], desc="drafting the feedback spec")
        if failures:
            raise UserError(f"{lead}the teacher at {client.base_url} did not answer the drafting request "
                            f"after {failures[0].attempts} attempts ({failures[0].error}); nothing was written")
        try:
            draft = P.parse_draft(results[0].texts[0])
        except P.ParseError as err:
            problems.append(f"reply did not parse ({err})")
            continue
        if draft.problem is not None:
            raise UserError(f"{lead}the teacher cannot draft a feedback spec from {sentence!r}: {draft.problem}; "
                            "nothing was written")
        text = spec_text(sentence, draft.spec, client.endpoint.model)
        try:
            return text, validate(text, name)
        except UserError as err:
            problems.append(str(err))
    raise UserError(f"{lead}the teacher's {retries + 1} drafts from {sentence!r} were not valid feedback specs; "
                    f"the last: {problems[-1]}; nothing was written")


@contextlib.contextmanager
def teacher_client(cfg=None, progress: bool = False):
    """A ChatClient for drafting: the config's teacher, or rlvf's offline tiny-world teacher on loopback
    (no config, or ``serve.teacher``)."""
    from rlvf.config import EndpointConfig

    if cfg is not None and not cfg.serve.teacher:
        if cfg.teacher is None:
            raise UserError("teacher: drafting a feedback spec from a sentence needs a teacher endpoint "
                            "(teacher: {base_url, model}) or serve.teacher: true")
        yield ChatClient(cfg.teacher, progress=progress)
        return
    from rlvf.endpoints import TEACHER_NAME
    from rlvf.serve import start_server

    with start_server(teacher=True, teacher_name=TEACHER_NAME) as srv:
        yield ChatClient(EndpointConfig(base_url=srv.base_url, model=TEACHER_NAME, api_key_env=None),
                         progress=progress)


def _draft_sampling(cfg):
    from rlvf.config import SampleConfig

    s = cfg.sample if cfg is not None else SampleConfig()
    return replace(s.teacher_sampling, seed=s.seed), s.max_parse_retries


# ----------------------------------------------------------------------------- the two ways in


def new(sentence: str, out: str | None = None, overwrite: bool = False, cfg=None, progress: bool = False) -> Path:
    """``python -m rlvf.feedback new``: draft ``sentence`` and write it to ``out`` (default ./<slug>.yaml)."""
    if not isinstance(sentence, str) or not sentence.strip():
        raise UserError("new: give the feedback sentence, e.g. \"Always use a heart emoji when texting my girlfriend Maddie\"")
    sentence = " ".join(sentence.split())
    path = Path(out) if out else Path(f"{slug(sentence)}.yaml")
    if path.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out {path}: a feedback file name ends in .yaml")
    if path.is_dir() or (path.exists() and not overwrite):
        what = "is a directory" if path.is_dir() else "exists"
        raise UserError(f"--out {path}: {what}; choose another file" + ("" if path.is_dir() else " or pass --overwrite"))
    sampling, retries = _draft_sampling(cfg)
    with teacher_client(cfg, progress) as client:
        text, _ = draft_spec(sentence, client, sampling, retries, name=path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


def resolve_sentences(cfg, where="", draft: bool = True, progress: bool = True) -> None:
    """Replace each ``feedback`` entry of ``cfg`` that is a sentence by its drafted file in data.dirs[i].

    A draft already there is read (it must be of the same sentence). With ``draft`` the missing ones
    are drafted by the config's teacher (rlvf.sample and the pipeline's sample stage); without it
    (eval) a missing draft is one line saying to sample first. ``cfg.feedback`` is updated in place.
    """
    pending = []
    for i, entry in enumerate(cfg.feedback):
        if not is_sentence(entry) or i >= len(cfg.data.dirs):  # a count mismatch is the config's own error
            continue
        path = draft_path(entry, cfg.data.dirs[i])
        if path.is_file():
            fb = load_feedback(path)
            if " ".join(fb.content.split()) != " ".join(entry.split()):
                raise error(where, f"feedback[{i}]", f"{path} was drafted from another sentence ({fb.content!r}); "
                                                     "give its path as the feedback, or delete it to draft afresh")
            cfg.feedback[i] = str(path)
        elif not draft:
            raise error(where, f"feedback[{i}]", f"{entry!r} is a sentence not yet drafted into {path}; run "
                                                 "python -m rlvf.sample (it drafts it there) or draft it with "
                                                 "python -m rlvf.feedback new")
        else:
            _check_owner(cfg.data.dirs[i], path.stem, where, i)
            pending.append((i, " ".join(entry.split()), path))
    if not pending:
        return
    sampling, retries = _draft_sampling(cfg)
    with teacher_client(cfg, progress=False) as client:
        for i, sentence, path in pending:
            text, _ = draft_spec(sentence, client, sampling, retries, name=path.stem, where=f"feedback[{i}]")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
            cfg.feedback[i] = str(path)
            if progress:
                print(f"feedback[{i}]: the teacher drafted {path} from the sentence; review it (later stages "
                      "read it)", file=sys.stderr)


SELECT_KEYS = ("prefix", "category", "scope", "type", "second_feedback")


def selection(cfg) -> dict:
    """The feedback selection a config asks for (its ``select`` section, once the config has one)."""
    section = getattr(cfg, "select", None)
    return {k: getattr(section, k, None) for k in SELECT_KEYS if getattr(section, k, None)}


def prepare_feedbacks(cfg, where="", stage: str = "sample", draft: bool = False, progress: bool = True) -> None:
    """What every entry point does with a config's feedbacks before its stage runs, in place:

    1. sentences become their drafts in data.dirs (``resolve_sentences``; drafted if ``draft``), for
       the stages that read feedbacks (sample, eval) or when a selection needs them;
    2. a ``select`` section keeps only the feedbacks it selects, with their data.dirs entries
       (``rlvf.feedback.select_pairs``): by sentence or name prefix, category, scope and type, plus
       one ``second_feedback`` (kept last), which rlvf.feedback_runs then splits into one run per
       selected feedback.
    """
    chosen = selection(cfg)
    if stage in ("sample", "eval") or chosen:
        resolve_sentences(cfg, where, draft=draft, progress=progress)
    if not chosen:
        return
    if not cfg.feedback:
        raise error(where, "select", "selects among the config's feedback entries; give feedback: one per data.dirs entry")
    from rlvf.feedback import load_feedbacks, select_pairs

    try:
        keep = select_pairs(load_feedbacks(cfg.feedback), chosen.get("prefix"), chosen.get("category"),
                            chosen.get("scope"), chosen.get("type"), chosen.get("second_feedback"))
    except UserError as err:
        raise error(where, "select", str(err)) from None
    if len(keep) < len(cfg.feedback) and progress:
        print(f"select: {len(keep)} of {len(cfg.feedback)} feedbacks: "
              + ", ".join(Path(cfg.feedback[i]).stem for i in keep), file=sys.stderr)
    cfg.feedback[:] = [cfg.feedback[i] for i in keep]
    cfg.data.dirs[:] = [cfg.data.dirs[i] for i in keep]


def _check_owner(data_dir: str, name: str, where, i: int) -> None:
    """Refuse to draft into a data directory holding another feedback's data (before any request)."""
    owner = data_owner(Path(data_dir))
    if owner is not None and owner != name:
        raise error(where, f"data.dirs[{i}]", f"{data_dir} holds the data of feedback {owner!r}; give the "
                                              "sentence a data directory of its own")
