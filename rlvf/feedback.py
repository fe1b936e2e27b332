"""Feedback specs as data: one YAML file per feedback, the reply edits and the metrics that check them.

A feedback carries the paper's fields (content, domain, effect, scope, type; C3PO §3 and the
``Feedback`` records of the original code) plus, for quantitative feedback, the metric that decides
whether a response follows it. For the offline tiny world it may also carry ``world``: the selector of
in-scope requests, selectors of near-scope requests, and the reply edit that applies the feedback.
A real GPT-4-class teacher needs only the paper's fields.

    # rlvf/tinyworld/feedbacks/heart-emoji-maddie.yaml — a comment saying what the feedback is
    content: Always use some heart or kiss emoji when texting my girlfriend Maddie   # the sentence
    domain: writing text messages to my girlfriend Maddie   # where it applies (the teacher's DOMAIN)
    effect: use some heart or kiss emoji                    # what changes
    scope: regional                  # global | regional | local, as in the paper; global has no near scope
    type: quantitative               # quantitative needs a metric; qualitative is judged (metric optional)
    metric: {kind: regex, pattern: "❤|💕|😘"}      # a list of metrics means all must hold
    categories: [dinner plans, running late]       # optional; otherwise the teacher proposes them
    world:                           # optional: the tiny world's offline simulation
      selector: {scenarios: [text_message], recipients: [Maddie]}   # in scope; keys: scenarios,
                                     # topics, recipients, relations, channels; each a list
      near:                          # near scope: looks related, never in scope (checked on load)
        - {scenarios: [email], recipients: [Maddie]}
        - {scenarios: [text_message], relations: [mom, friend]}
      edit: {kind: append, text: " ❤️"}           # a list of edits is applied in order

The reply edits and the metrics are registries keyed by ``kind`` (rlvf/edits.py, rlvf/feedback_metrics.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from rlvf.config import read_yaml
from rlvf.edits import _REQUIRED, EDITS, apply_edit
from rlvf.errors import UserError
from rlvf.feedback_metrics import METRICS
from rlvf.tinyworld.scope import SELECTOR_KEYS, check_near, copy_selector, world_values

SCOPES = ("global", "regional", "local")
TYPES = ("quantitative", "qualitative")


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


# ----------------------------------------------------------------------------- edit and metric specs


def _check_value(value, tp, where: str, key: str):
    """Validate (and normalise) one parameter value against its declared type."""
    bad = UserError(f"{where}: {key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if isinstance(tp, tuple):  # a choice among fixed strings
        if value not in tp:
            raise UserError(f"{where}: {key}: expected one of {', '.join(tp)}, got {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp in (int, float):  # every numeric parameter is a count or a ratio: positive
        if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int):
            raise bad
        if not 0 < value < float("inf"):
            raise UserError(f"{where}: {key}: expected a positive {tp.__name__}, got {value!r}")
        value = tp(value)
    elif tp == "text":  # any string, empty included
        if not isinstance(value, str):
            raise UserError(f"{where}: {key}: expected a string, got {value!r}")
    elif tp is str:
        if not isinstance(value, str) or not value:
            raise UserError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    elif tp == "strings":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
            raise UserError(f"{where}: {key}: expected a non-empty list of non-empty strings, got {value!r}")
        value = list(value)
    elif tp in ("edit", "metric"):
        value = (Edit if tp == "edit" else Metric).parse(value, where, key)
    elif tp in ("edits", "metrics"):
        cls = Edit if tp == "edits" else Metric
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: {key}: expected a non-empty list of {tp}, got {value!r}")
        value = [cls.parse(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _check_params(registry: dict, what: str, kind: str, params: dict, where: str, key: str) -> dict:
    if kind not in registry:
        raise UserError(f"{where}: {key}.kind: unknown {what} kind '{kind}'{_hint(kind, registry)}")
    spec = registry[kind].params
    for name in params:
        if name not in spec:
            known = ", ".join(spec) or "none"
            close = difflib.get_close_matches(str(name), list(spec), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"{kind} takes: {known}"
            raise UserError(f"{where}: {key}.{name}: unknown parameter of {what} '{kind}' ({hint})")
    out = {}
    for name, (tp, default) in spec.items():
        if name in params:
            out[name] = _check_value(params[name], tp, where, f"{key}.{name}")
        elif default is _REQUIRED:
            raise UserError(f"{where}: {key}.{name}: missing required parameter of {what} '{kind}'")
        else:
            out[name] = default
    return out


def _check_regex(params: dict, where: str, key: str) -> None:
    """Every parameter named ``pattern`` is a regular expression."""
    if "pattern" in params:
        try:
            re.compile(params["pattern"])
        except re.error as err:
            raise UserError(f"{where}: {key}.pattern: invalid regular expression ({err})") from None


def _check_replacement(pattern: str, by: str, where: str, key: str) -> None:
    """A bad group reference in a replacement only shows when it is expanded: expand it on an empty match."""
    try:
        always = re.compile(f"(?:{pattern})|")  # same groups, and matches the empty string
    except re.error:
        return  # e.g. global inline flags, which must stay first; re.sub reports a bad template itself
    try:
        always.sub(by, "")
    except (re.error, IndexError) as err:
        raise UserError(f"{where}: {key}.by: invalid replacement ({err})") from None


def _parse_kind(cls, raw, where: str, key: str, combine: str):
    """YAML → Edit/Metric: a mapping ``{kind: ..., **params}`` or a list (combined by ``combine``)."""
    if isinstance(raw, cls):
        return raw
    if isinstance(raw, list):  # shorthand: children are named key[i], as the user wrote them
        if not raw:
            raise UserError(f"{where}: {key}: expected a mapping with 'kind' or a non-empty list of them, got []")
        children = [cls.parse(v, where, f"{key}[{i}]") for i, v in enumerate(raw)]
        return cls(combine, {"of" if combine == "all" else "steps": children}, where=where, key=key)
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {key}: expected a mapping with 'kind' (or a list of them), got {raw!r}")
    if "kind" not in raw:
        raise UserError(f"{where}: {key}.kind: missing (one of: {', '.join(cls.registry())})")
    if not isinstance(raw["kind"], str):
        raise UserError(f"{where}: {key}.kind: expected a string, got {raw['kind']!r}")
    params = {k: v for k, v in raw.items() if k != "kind"}
    return cls(raw["kind"], params, where=where, key=key)


def _params_to_dict(params: dict) -> dict:
    def conv(v):
        if isinstance(v, (Edit, Metric)):
            return v.to_dict()
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return {k: conv(v) for k, v in params.items()}


@dataclass
class Edit:
    """A deterministic reply edit: ``kind`` names an entry of ``EDITS``, ``params`` its parameters."""

    kind: str
    params: dict = field(default_factory=dict)
    where: dataclasses.InitVar[str] = "Edit"
    key: dataclasses.InitVar[str] = "edit"

    def __post_init__(self, where: str, key: str):
        self.params = _check_params(EDITS, "edit", self.kind, dict(self.params), where, key)
        _check_regex(self.params, where, key)
        if self.kind == "regex_replace":
            _check_replacement(self.params["pattern"], self.params["by"], where, key)

    @staticmethod
    def registry() -> dict:
        return EDITS

    @classmethod
    def parse(cls, raw, where: str = "Edit", key: str = "edit") -> "Edit":
        return _parse_kind(cls, raw, where, key, "sequence")

    def __call__(self, reply: str) -> str:
        return apply_edit(self, reply)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **_params_to_dict(self.params)}


@dataclass
class Metric:
    """A quantitative check "does this response follow the feedback?" (the original code's metric kinds)."""

    kind: str
    params: dict = field(default_factory=dict)
    where: dataclasses.InitVar[str] = "Metric"
    key: dataclasses.InitVar[str] = "metric"

    def __post_init__(self, where: str, key: str):
        self.params = _check_params(METRICS, "metric", self.kind, dict(self.params), where, key)
        _check_regex(self.params, where, key)

    @staticmethod
    def registry() -> dict:
        return METRICS

    @classmethod
    def parse(cls, raw, where: str = "Metric", key: str = "metric") -> "Metric":
        return _parse_kind(cls, raw, where, key, "all")

    @property
    def needs_baseline(self) -> bool:
        """Length metrics compare with the baseline response."""
        if self.kind in ("all", "any"):
            return any(m.needs_baseline for m in self.params["of"])
        if self.kind == "not":
            return self.params["metric"].needs_baseline
        return self.kind in ("shorter_than_baseline", "longer_than_baseline")

    def follows(self, response: str, baseline: str | None = None) -> bool:
        """Does ``response`` follow the feedback? Length metrics need the ``baseline`` response."""
        if self.needs_baseline and baseline is None:
            raise ValueError(f"metric '{self.kind}' compares with the baseline response; pass baseline=")
        return bool(METRICS[self.kind].fn(response, baseline, **self.params))

    def to_dict(self) -> dict:
        return {"kind": self.kind, **_params_to_dict(self.params)}


# ----------------------------------------------------------------------------- feedback specs


@dataclass
class WorldSpec:
    """Tiny-world fields of a feedback: which requests it applies to and the edit that applies it."""

    selector: dict
    """In-scope requests: a world selector ({scenarios, topics, recipients, relations, channels} → lists)."""
    edit: Edit
    """The reply edit that applies the feedback (the offline teacher's revision)."""
    near: list = field(default_factory=list)
    """Selectors of near-scope requests: related-looking but out of scope; none may select an in-scope request."""

    def to_dict(self) -> dict:
        return {"selector": copy_selector(self.selector), "near": [copy_selector(s) for s in self.near],
                "edit": self.edit.to_dict()}


@dataclass
class Feedback:
    """One piece of verbal feedback (C3PO §3): the paper's fields, its metric, and optional world fields."""

    content: str
    """The feedback sentence, e.g. "Always use a heart emoji when texting my girlfriend Maddie"."""
    domain: str
    """Where it applies, in words, e.g. "writing text messages to my girlfriend Maddie" (the teacher's DOMAIN)."""
    effect: str
    """What changes, in words, e.g. "use some heart or kiss emoji"."""
    scope: str
    """global | regional | local, as in the paper; global feedback has no near scope."""
    type: str
    """quantitative (checked by ``metric``) or qualitative (checked by a judge)."""
    metric: Metric | None = None
    """Does a response follow the feedback? Required for quantitative feedback."""
    world: WorldSpec | None = None
    """Tiny-world selector, near selectors and edit; optional for real use."""
    categories: list | None = None
    """Hand-written categories; None lets the teacher propose them."""
    name: str = ""
    """File stem, e.g. "heart-emoji-maddie"."""
    source: str = ""
    """Path of the YAML file it was loaded from ("" when built in code)."""

    def __post_init__(self):
        where = self.source or "Feedback"
        for key in ("content", "domain", "effect"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise UserError(f"{where}: {key}: expected a non-empty string, got {getattr(self, key)!r}")
        if self.scope not in SCOPES:
            raise UserError(f"{where}: scope: expected one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.type not in TYPES:
            raise UserError(f"{where}: type: expected one of {', '.join(TYPES)}, got {self.type!r}")
        if self.type == "quantitative" and self.metric is None:
            raise UserError(f"{where}: metric: quantitative feedback needs a metric "
                            f"(kinds: {', '.join(METRICS)}), or set type: qualitative")

    def follows(self, response: str, baseline: str | None = None) -> bool:
        """Metric verdict for quantitative feedback; without a metric, whether the world edit leaves it unchanged."""
        if self.metric is not None:
            return self.metric.follows(response, baseline)
        if self.world is not None:
            return apply_edit(self.world.edit, response).strip() == response.strip()
        raise ValueError(f"feedback '{self.name or self.content}' has neither a metric nor a world edit: use a judge")

    def to_dict(self) -> dict:
        """JSON-ready dict in the YAML schema, plus name and source."""
        out = {"name": self.name, "source": self.source, "content": self.content, "domain": self.domain,
               "effect": self.effect, "scope": self.scope, "type": self.type,
               "metric": self.metric.to_dict() if self.metric else None,
               "categories": list(self.categories) if self.categories is not None else None,
               "world": self.world.to_dict() if self.world else None}
        return out


_FEEDBACK_KEYS = ("content", "domain", "effect", "scope", "type", "metric", "categories", "world")
_WORLD_KEYS = ("selector", "near", "edit")
FEEDBACK_DIR = Path(__file__).parent / "tinyworld" / "feedbacks"
"""The feedbacks shipped with the tiny world."""


def _check_keys(raw: dict, known, where: str, prefix: str) -> None:
    for k in raw:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            raise UserError(f"{where}: {prefix}{k}: unknown key{hint}")


def load_feedback(path: str | Path) -> Feedback:
    """Read and validate one feedback YAML file; every problem is a one-line UserError naming file and key."""
    path = Path(path)
    where = str(path)
    raw = read_yaml(path, "feedback")
    _check_keys(raw, _FEEDBACK_KEYS, where, "")
    for key in ("content", "domain", "effect", "scope", "type"):
        if key not in raw:
            raise UserError(f"{where}: {key}: missing required value ({_field_doc(key)})")
        if not isinstance(raw[key], str):
            raise UserError(f"{where}: {key}: expected a string, got {raw[key]!r}")
    metric = Metric.parse(raw["metric"], where, "metric") if raw.get("metric") is not None else None
    categories = raw.get("categories")
    if categories is not None:
        categories = _check_value(categories, "strings", where, "categories")
    world = _parse_world(raw["world"], where) if raw.get("world") is not None else None
    fb = Feedback(raw["content"], raw["domain"], raw["effect"], raw["scope"], raw["type"], metric=metric,
                  world=world, categories=categories, name=path.stem, source=where)
    if world is not None:
        check_near(fb, where)
    return fb


def _field_doc(name: str) -> str:
    return {"content": "the feedback sentence", "domain": "where it applies, in words",
            "effect": "what changes, in words", "scope": f"one of {', '.join(SCOPES)}",
            "type": f"one of {', '.join(TYPES)}"}[name]


def load_feedbacks(sources) -> list[Feedback]:
    """Load feedbacks from a directory (its *.yaml files, sorted), a file, a shipped name, or a list of those."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise UserError(f"{p}: no feedback files (*.yaml) in this directory")
            paths += found
        elif p.exists():
            paths.append(p)
        elif (FEEDBACK_DIR / f"{src}.yaml").exists():
            paths.append(FEEDBACK_DIR / f"{src}.yaml")
        else:
            shipped = sorted(q.stem for q in FEEDBACK_DIR.glob("*.yaml"))
            raise UserError(f"{src}: no such feedback file or shipped feedback{_hint(str(src), shipped)}")
    feedbacks = [load_feedback(p) for p in paths]
    seen: dict[str, str] = {}
    for fb in feedbacks:
        if fb.name in seen:
            raise UserError(f"{fb.source}: feedback name '{fb.name}' already used by {seen[fb.name]}; rename one file")
        seen[fb.name] = fb.source
    return feedbacks


# ----------------------------------------------------------------------------- world selectors


def _parse_world(raw, where: str) -> WorldSpec:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: world: expected a mapping with {', '.join(_WORLD_KEYS)}, got {raw!r}")
    _check_keys(raw, _WORLD_KEYS, where, "world.")
    for key in ("selector", "edit"):
        if key not in raw:
            raise UserError(f"{where}: world.{key}: missing required value ({_world_doc(key)})")
    selector = _parse_selector(raw["selector"], where, "world.selector")
    near_raw = raw.get("near") or []
    if not isinstance(near_raw, list):
        raise UserError(f"{where}: world.near: expected a list of selectors, got {near_raw!r}")
    near = [_parse_selector(s, where, f"world.near[{i}]") for i, s in enumerate(near_raw)]
    edit = Edit.parse(raw["edit"], where, "world.edit")
    return WorldSpec(selector=selector, edit=edit, near=near)


def _world_doc(name: str) -> str:
    return {"selector": "the world selector of in-scope requests, e.g. {scenarios: [email], recipients: [Alan]}",
            "edit": f"the reply edit that applies the feedback, e.g. {{kind: append, text: ' ❤️'}}; "
                    f"kinds: {', '.join(EDITS)}"}[name]


def _parse_selector(raw, where: str, key: str) -> dict:
    """Validate a selector: known keys, each a list of values the world knows."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {key}: expected a mapping of {', '.join(SELECTOR_KEYS)} to lists, got {raw!r}")
    _check_keys(raw, SELECTOR_KEYS, where, f"{key}.")
    known = world_values()
    out = {}
    for k, values in raw.items():
        values = _check_value(values, "strings", where, f"{key}.{k}")
        for v in values:
            if v not in known[k]:
                what = SELECTOR_KEYS[k][1]
                hint = _hint(v, sorted(known[k]))
                raise UserError(f"{where}: {key}.{k}: unknown {what} '{v}' in the tiny world{hint}")
        out[k] = values
    return out
