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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from rlvf.edits import _REQUIRED, EDITS, apply_edit
from rlvf.errors import UserError
from rlvf.feedback_metrics import METRICS
from rlvf.tinyworld.scope import SELECTOR_KEYS, check_near, copy_selector, world_values
from rlvf.typed import NonEmpty, Range, coerce, hint, read_yaml, show

# A feedback's own scope and type (the paper's fields); not the data scopes in/near/out (rlvf.data.SCOPES).
FEEDBACK_SCOPES = ("global", "regional", "local")
FEEDBACK_TYPES = ("quantitative", "qualitative")


# ----------------------------------------------------------------------------- edit and metric specs


class _Strings:
    """The registry's "strings": a non-empty list of non-empty strings (one string is its shorthand)."""

    doc = "non-empty strings"

    def check(self, value) -> str | None:
        if isinstance(value, list) and value and all(isinstance(s, str) and s for s in value):
            return None
        return f"expected a non-empty list of non-empty strings, got {show(value)}"


# The parameter types of the edit and metric registries (rlvf/edits.py) as annotations of the one
# config engine (rlvf/typed.py). Every numeric parameter is a count or a ratio: positive, and far
# below the bounds (a million) that keep a typo from running away.
PARAM_TYPES = {
    bool: bool,
    int: Annotated[int, Range(0, 1_000_000, lo_open=True)],
    float: Annotated[float, Range(0, 1e6, lo_open=True)],
    "text": str,  # any string, empty included
    str: Annotated[str, NonEmpty("expected a non-empty string")],
    "strings": Annotated[Any, _Strings()],
}


def _check_value(value, tp, where: str, key: str):
    """One parameter value checked (and normalised) against its declared registry type."""
    if tp in ("edit", "metric"):
        return (Edit if tp == "edit" else Metric).parse(value, where, key)
    if tp in ("edits", "metrics"):
        cls = Edit if tp == "edits" else Metric
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: {key}: expected a non-empty list of {tp}, got {show(value)}")
        return [cls.parse(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp == "strings" and isinstance(value, str):
        value = [value]
    annotation = Literal[tp] if isinstance(tp, tuple) else PARAM_TYPES[tp]
    return coerce(value, annotation, key, where)


def _check_params(registry: dict, what: str, kind: str, params: dict, where: str, key: str) -> dict:
    if kind not in registry:
        raise UserError(f"{where}: {key}.kind: unknown {what} kind '{kind}'{hint(kind, registry)}")
    spec = registry[kind].params
    for name in params:
        if name not in spec:
            takes = hint(name, spec) or f" ({kind} takes no parameters)"
            raise UserError(f"{where}: {key}.{name}: unknown parameter of {what} '{kind}'{takes}")
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
class TinyWorldSpec:
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
    world: TinyWorldSpec | None = None
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
        if self.scope not in FEEDBACK_SCOPES:
            raise UserError(f"{where}: scope: expected one of {', '.join(FEEDBACK_SCOPES)}, got {self.scope!r}")
        if self.type not in FEEDBACK_TYPES:
            raise UserError(f"{where}: type: expected one of {', '.join(FEEDBACK_TYPES)}, got {self.type!r}")
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
FEEDBACK_DIR = Path(__file__).resolve().parent.parent / "tinyworld" / "feedbacks"
"""The feedbacks shipped with the tiny world."""


def _check_keys(raw: dict, known, where: str, prefix: str) -> None:
    for k in raw:
        if k not in known:
            raise UserError(f"{where}: {prefix}{k}: unknown key{hint(k, known, prefix)}")


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
            "effect": "what changes, in words", "scope": f"one of {', '.join(FEEDBACK_SCOPES)}",
            "type": f"one of {', '.join(FEEDBACK_TYPES)}"}[name]


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
            raise UserError(f"{src}: no such feedback file or shipped feedback{hint(str(src), shipped)}")
    feedbacks = [load_feedback(p) for p in paths]
    seen: dict[str, str] = {}
    for fb in feedbacks:
        if fb.name in seen:
            raise UserError(f"{fb.source}: feedback name '{fb.name}' already used by {seen[fb.name]}; rename one file")
        seen[fb.name] = fb.source
    return feedbacks


# ----------------------------------------------------------------------------- world selectors


def _parse_world(raw, where: str) -> TinyWorldSpec:
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
    return TinyWorldSpec(selector=selector, edit=edit, near=near)


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
                what, close = SELECTOR_KEYS[k][1], hint(v, sorted(known[k]))
                raise UserError(f"{where}: {key}.{k}: unknown {what} '{v}' in the tiny world{close}")
        out[k] = values
    return out


# ----------------------------------------------------------------------------- selecting feedbacks


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def matches_prefix(fb: Feedback, prefix: str) -> bool:
    """The original CLI's ``--feedback_prefix`` (the sentence starts with it), or the file name starts with it."""
    return fb.content.startswith(prefix) or fb.name.startswith(prefix)


def select_feedbacks(feedbacks: list[Feedback], prefix: str | None = None, category=None, scope=None,
                     type=None) -> list[Feedback]:
    """The feedbacks that pass every filter given, in their order, as the original code selects them
    (src/modal/app.py: ``feedback_prefix``, ``feedback_category``; src/sample.py: ``scope``, ``type``).

    ``prefix``: the sentence or the file name starts with it; ``category``: one of the feedback's
    ``categories`` (case-insensitive; a list: any of them); ``scope`` / ``type``: a value or a list of
    values of the feedback's own scope (global, regional, local) and type (quantitative, qualitative).
    """
    scopes, types, cats = _as_list(scope), _as_list(type), [c.lower() for c in _as_list(category)]
    for value in scopes:
        if value not in FEEDBACK_SCOPES:
            raise UserError(f"scope: expected one of {', '.join(FEEDBACK_SCOPES)}, got {value!r}")
    for value in types:
        if value not in FEEDBACK_TYPES:
            raise UserError(f"type: expected one of {', '.join(FEEDBACK_TYPES)}, got {value!r}")
    return [fb for fb in feedbacks
            if (prefix is None or matches_prefix(fb, prefix))
            and (not cats or any(c.lower() in cats for c in fb.categories or []))
            and (not scopes or fb.scope in scopes) and (not types or fb.type in types)]


def describe_selection(prefix=None, category=None, scope=None, type=None) -> str:
    """The filters given, as words: "prefix 'heart', scope regional"."""
    parts = [f"prefix {prefix!r}" if prefix is not None else "",
             f"category {', '.join(_as_list(category))}" if category else "",
             f"scope {', '.join(_as_list(scope))}" if scope else "", f"type {', '.join(_as_list(type))}" if type else ""]
    return ", ".join(p for p in parts if p) or "no filter"


def pick_second(feedbacks: list[Feedback], prefix: str, exclude: list[Feedback] = (),
                label: str = "--second-feedback") -> Feedback:
    """The second feedback (combined training, mixed-adapter evaluation): exactly one feedback whose
    name is ``prefix`` or whose sentence or name starts with it (the original's ``second_feedback_prefix``)."""
    exact = [fb for fb in feedbacks if fb.name == prefix]
    found = exact or [fb for fb in feedbacks if matches_prefix(fb, prefix)]
    if len(found) != 1:
        names = ", ".join(fb.name for fb in found[:5]) or "none"
        raise UserError(f"{label} {prefix!r}: must select exactly one feedback, selects "
                        f"{len(found)} ({names})")
    if any(found[0] is fb or found[0].name == fb.name for fb in exclude):
        raise UserError(f"{label} {prefix!r}: selects {found[0].name}, which is already a first feedback")
    return found[0]


def select_pairs(feedbacks: list[Feedback], prefix=None, category=None, scope=None, type=None,
                 second: str | None = None) -> list[int]:
    """Indices of ``feedbacks`` (aligned with a config's data.dirs) that a selection keeps: those passing
    the filters, then the ``second`` feedback (kept whatever the filters), which must not be one of them.
    With no filter at all every feedback but the second is a first one."""
    chosen = select_feedbacks(feedbacks, prefix, category, scope, type)
    if second and not any((prefix is not None, category, scope, type)):
        other = pick_second(feedbacks, second, label="second_feedback")
        chosen = [fb for fb in chosen if fb is not other]
    if not chosen:
        shown = ", ".join(fb.name for fb in feedbacks[:6]) + (", …" if len(feedbacks) > 6 else "")
        raise UserError(f"no feedback matches {describe_selection(prefix, category, scope, type)} among the "
                        f"{len(feedbacks)} given ({shown})")
    keep = [i for i, fb in enumerate(feedbacks) if any(fb is c for c in chosen)]
    if second:
        other = pick_second(feedbacks, second, chosen, label="second_feedback")
        keep.append(next(i for i, fb in enumerate(feedbacks) if fb is other))
    return keep


# ----------------------------------------------------------------------------- writing specs


class _Dumper(yaml.SafeDumper):
    """Block YAML for people to review: no &anchors, multi-line strings double-quoted with \\n."""

    def ignore_aliases(self, data):
        return True


def _str(dumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)


_Dumper.add_representer(str, _str)


def to_yaml(data) -> str:
    """``data`` as YAML: lists and mappings of scalars in flow style ({kind: regex, ...}), the rest in block style."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
