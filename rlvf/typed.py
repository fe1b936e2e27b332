"""Typed YAML: dataclasses as schemas, and the one engine that reads YAML into them and checks every value.

A schema is a dataclass. Each field has an annotation, a default (``REQUIRED`` when there is none)
and a docstring written under it, which ``describe`` prints as the key's help::

    lr: Annotated[float, Range(0, 10, lo_open=True)] = 5e-5
    \"\"\"Peak learning rate of AdamW.\"\"\"

Annotations are plain types (int, float, str, bool, None, Any, Literal[...], list[X], dict[str, X],
unions, nested dataclasses), optionally wrapped in ``Annotated[T, *refinements]``. A refinement
narrows the values of T: ``Range`` (numbers), ``NonEmpty``, ``Unique`` (lists), or any object with
``check(value) -> str | None`` (the problem, or None) and ``doc`` (shown by ``describe``).

A schema class may also define

* ``problems(self)``, yielding ``(key, message)`` for checks that involve several fields (keys
  relative to the section); the first one is reported;
* ``REPLACED_KEYS: ClassVar[dict[str, str]]``, keys of earlier versions and what replaced them.

``build`` turns a raw YAML mapping into the dataclass; ``check`` re-checks an instance made in code.
Every problem is one ``UserError`` line ``<where>: <dotted key>: <problem>``; ``where`` is a file
name, or an ``Origin`` that names the ``--set`` override a key came from instead of the file.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Union

import yaml

from rlvf.errors import UserError


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()
"""Default of a field the user must give."""

# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-5`` as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?=\.?[0-9])(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _construct_mapping(loader, node, deep=False):
    """A mapping whose keys are unique: YAML would silently keep the last of two equal keys. (Keys
    merged in with ``<<: *anchor`` may still be overridden, as YAML intends.)"""
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen[key]})", key_node.start_mark)
        except TypeError:  # an unhashable key: SafeLoader reports it itself
            break
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


def _construct_int(loader, node):
    """Python refuses to convert integers of over 4300 digits (a ValueError inside PyYAML)."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(node.value):,} digits is too long",
                                                node.start_mark) from None


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


MAX_YAML_NODES = 100_000  # values in a config or feedback file, aliases expanded (a real one has hundreds)


def _expanded_size(value, budget: int) -> int:
    """Number of values in ``value`` counting every alias use separately, stopping past ``budget``:
    YAML aliases share objects, so a few lines can stand for billions of values that a deep copy
    (dataclasses.asdict, yaml.safe_dump) would then build."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML file holding a mapping (YAML 1.2 floats); every problem is a one-line UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read {what} file ({err})") from None
    try:
        raw = yaml_load(text)
        size = _expanded_size(raw, MAX_YAML_NODES)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{line}: {getattr(err, 'problem', err)}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if size > MAX_YAML_NODES:
        raise UserError(f"{path}: more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded; "
                        f"a {what} file is small (is this an alias bomb?)")
    if raw is None:
        raise UserError(f"{path}: {what} file is empty")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- messages


class Origin:
    """Where values came from: a file, except the keys set by overrides, which are blamed on the
    override (``overrides``: [(dotted key, label such as '--set train.lr=abc')], later ones win)."""

    def __init__(self, file: str, overrides: Iterable[tuple[str, str]] = ()):
        self.file, self.overrides = file, list(overrides)

    def of(self, key: str) -> str:
        for set_key, label in reversed(self.overrides):
            if key == set_key or key.startswith((set_key + ".", set_key + "[")):
                return label
        return self.file

    def __str__(self) -> str:
        return self.file


Where = Union[str, Origin]


def error(where: Where, key: str, message: str) -> UserError:
    """The one-line error ``<where>: <key>: <message>`` (``where`` may be empty)."""
    place = where.of(key) if isinstance(where, Origin) else where
    return UserError(f"{place}: {key}: {message}" if place else f"{key}: {message}")


def show(value) -> str:
    """``repr(value)`` for a message, cut short: a 5000-digit number or a long string stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def hint(name: str, known: Iterable[str], prefix: str = "", everywhere: Iterable[str] = ()) -> str:
    """The did-you-mean hint for an unknown ``name`` among ``known`` (the keys beside it, each shown
    with ``prefix``): ' (did you mean 'x'?)' or ' (known: a, b, ...)'.

    ``everywhere`` (full dotted keys of the whole schema) is tried first for the same last part,
    so ``lr`` suggests ``train.lr`` rather than a look-alike beside it (``lora``), and then for a
    look-alike of the whole key (``trian.lr`` → ``train.lr``).
    """
    name, known, everywhere = str(name), [str(k) for k in known], list(everywhere)
    full = prefix + name
    same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == name and k != full]
    if same_leaf:
        return f" (did you mean {' or '.join(repr(k) for k in same_leaf[:3])}?)"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    close = difflib.get_close_matches(full, everywhere, n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known: {', '.join(known)})" if known else ""


# ----------------------------------------------------------------------------- refinements


def _num(x) -> str:
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}"
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """Numbers in [lo, hi] (``lo_open`` / ``hi_open``: the bound itself excluded).

    ``interval``: the range is the setting's meaning (a fraction in [0, 1)) and messages name it
    whole; otherwise ``hi`` is a sanity bound no real run reaches (it keeps a typo such as 1e20
    from running out of memory or overflowing a seed) and messages say "must be at most hi".
    ``why`` says where the upper bound comes from.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    interval: bool = False
    why: str = ""

    def _interval(self) -> str:
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"

    def _lower(self) -> str:
        if self.lo_open:
            return "positive" if self.lo == 0 else f"> {_num(self.lo)}"
        return f">= {_num(self.lo)}"

    def check(self, value) -> str | None:
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if self.interval and (low or high):
            return f"must be in {self._interval()}, got {show(value)}"
        if low:
            return f"must be {self._lower()}, got {show(value)}"
        if high:
            why = f" ({self.why})" if self.why else ""
            return f"must be {'below' if self.hi_open else 'at most'} {_num(self.hi)}{why}, got {show(value)}"
        return None

    @property
    def doc(self) -> str:
        if self.interval:
            return f"in {self._interval()}"
        parts = [self._lower()] if self.lo is not None else []
        if self.hi is not None:
            parts.append(f"{'below' if self.hi_open else 'at most'} {_num(self.hi)}"
                         + (f" ({self.why})" if self.why else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class NonEmpty:
    """A string with a non-blank character, or a non-empty list or mapping."""

    message: str = "must not be empty"

    def check(self, value) -> str | None:
        empty = not value.strip() if isinstance(value, str) else len(value) == 0
        return self.message if empty else None

    @property
    def doc(self) -> str:
        return "non-empty"


@dataclass(frozen=True)
class Unique:
    """A list without repeats; ``same`` maps an item to what must differ (e.g. a resolved path),
    ``why`` says what a repeat would do."""

    same: Callable[[Any], Any] = lambda v: v
    why: str = ""

    def check(self, value) -> str | None:
        seen: dict = {}
        for j, item in enumerate(value):
            i = seen.setdefault(self.same(item), j)
            if i != j:
                why = f"; {self.why}" if self.why else ""
                return f"entry {j} ({show(item)}) repeats entry {i} ({show(value[i])}){why}"
        return None

    @property
    def doc(self) -> str:
        return "no repeats"


# ----------------------------------------------------------------------------- type checking


class _Mismatch(UserError):
    """The value is not of the annotated type (a union then tries its next member)."""


def _union_args(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ()


def section_class(tp):
    """The dataclass of a section annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    found = [a for a in _union_args(tp) if dataclasses.is_dataclass(a)]
    return found[0] if len(found) == 1 else None


def type_name(tp) -> str:
    """The annotation in words, refinements included: 'an integer >= 1, at most 65,536'."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        docs = [m.doc for m in meta if getattr(m, "doc", "")]
        return type_name(base) + (" " + ", ".join(docs) if docs else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _union_args(tp):
        return " or ".join(type_name(a) for a in _union_args(tp))
    if origin is list:
        return f"a list of ({type_name(typing.get_args(tp)[0])})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value, tp, key: str, where: Where = "", everywhere: tuple[str, ...] = ()):
    """``value`` checked against annotation ``tp`` (ints widened to float); raises UserError."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = coerce(value, base, key, where, everywhere)
        for refinement in meta:
            problem = refinement.check(value)
            if problem:
                raise error(where, key, problem)
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(str(error(where, key, f"expected a mapping of {tp.__name__} fields, got {show(value)}")))
        return build(tp, value, key, where, everywhere)
    if _union_args(tp):
        return _coerce_union(value, tp, key, where, everywhere)
    bad = _Mismatch(str(error(where, key, f"expected {type_name(tp)}, got {show(value)}")))
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) or value not in choices:
            close = hint(value, [str(c) for c in choices]) if isinstance(value, str) else ""
            raise _Mismatch(str(bad) + (close if "did you mean" in close else ""))
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]", where, everywhere) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): coerce(v, item, f"{key}.{k}", where, everywhere) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float's range
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _coerce_union(value, tp, key: str, where: Where, everywhere):
    args = _union_args(tp)
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    section = section_class(tp)
    if section is not None and isinstance(value, dict):  # a section: report its own first problem
        return coerce(value, section, key, where, everywhere)
    if len(members) == 1:  # X | None: X's own message
        return coerce(value, members[0], key, where, everywhere)
    for arg in members:
        try:
            return coerce(value, arg, key, where, everywhere)
        except _Mismatch:
            pass
    raise _Mismatch(str(error(where, key, f"expected {type_name(tp)}, got {show(value)}")))


@functools.lru_cache(maxsize=None)
def hints(cls) -> dict:
    """A dataclass's field annotations, ``Annotated`` refinements kept."""
    return typing.get_type_hints(cls, include_extras=True)


def dotted_keys(cls, prefix: str = "") -> list[str]:
    """Every key of schema ``cls``: sections and their fields, dotted ('train', 'train.lr', ...)."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        section = section_class(_strip(hints(cls)[f.name]))
        if section is not None:
            keys += dotted_keys(section, key + ".")
    return keys


def _strip(tp):
    """``Annotated[T, ...]`` → T."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


# Keys that would hold a credential; a config names the environment variable instead (api_key_env).
SECRET_KEYS = frozenset({"api_key", "apikey", "api_token", "token", "access_token", "auth_token", "secret",
                         "secret_key", "password", "authorization", "bearer", "openai_api_key"})


def unknown_key(cls, key: str, where: Where, everywhere=()) -> UserError:
    """The error for ``key`` (its last part not a field of ``cls``): a credential, a replaced key, or
    an unknown key with a did-you-mean."""
    prefix, _, name = key.rpartition(".")
    prefix = prefix + "." if prefix else ""
    names = [f.name for f in dataclasses.fields(cls)]
    if name.lower().replace("-", "_") in SECRET_KEYS:
        target = f"{prefix}api_key_env" if "api_key_env" in names else "the endpoint's api_key_env"
        return error(where, key, "credentials are never written in config files (they would be copied into saved "
                                 "configs and logs); export the key in an environment variable and name that "
                                 f"variable in {target}, e.g. api_key_env: OPENAI_API_KEY")
    replaced = getattr(cls, "REPLACED_KEYS", {})
    if name in replaced:
        return error(where, key, replaced[name])
    return error(where, key, "unknown key" + hint(name, names, prefix, everywhere))


def build(cls, raw: dict, prefix: str = "", where: Where = "", everywhere: tuple[str, ...] | None = None):
    """An instance of schema ``cls`` from a raw mapping: unknown keys, types, refinements, missing
    required values and ``problems()`` checked, in that order; the first problem raised as UserError.
    A nested section given in part keeps the defaults of the keys it leaves out."""
    if everywhere is None:
        everywhere = tuple((prefix + "." if prefix else "") + k for k in dotted_keys(cls))
    names = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in names:
            raise unknown_key(cls, f"{prefix}.{name}" if prefix else str(name), where, everywhere)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints(cls)[f.name]
        if dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            given = raw.get(f.name, {})
            if not isinstance(given, dict):
                raise error(where, key, f"expected a mapping of {tp.__name__} fields, got {show(given)}")
            defaults = {k: v for k, v in shallow_dict(f.default_factory()).items() if v is not REQUIRED}
            kwargs[f.name] = build(tp, {**defaults, **given}, key, where, everywhere)
        elif f.name in raw:
            kwargs[f.name] = coerce(raw[f.name], tp, key, where, everywhere)
        elif f.default is REQUIRED:
            raise error(where, key, f"missing required value ({field_docs(cls).get(f.name, '')})")
    obj = cls(**kwargs)
    for sub, message in getattr(obj, "problems", lambda: ())():
        raise error(where, f"{prefix}.{sub}" if prefix else sub, message)
    return obj


def check(obj, key: str = "", where: Where = ""):
    """A schema instance made in code, checked by the same rules as one read from YAML; returns the
    checked copy (ints widened to float). ``key`` names it in messages, e.g. 'endpoint'."""
    return build(type(obj), shallow_dict(obj), key, where)


def shallow_dict(obj) -> dict:
    """A dataclass instance's fields as a dict, nested dataclasses as dicts."""
    return {f.name: (dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v)
            for f in dataclasses.fields(obj)}


# ----------------------------------------------------------------------------- docs


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """{field: the docstring written under it} of dataclass ``cls`` (and its bases)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cls, prefix: str = "", default=None, only: Callable[[str], bool] = lambda key: True) -> str:
    """Every key of schema ``cls`` (those ``only`` accepts): the key, its type, its default and its
    docstring, for ``--help-config``. ``default``: an instance whose values are the defaults."""
    lines, docs = [], field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints(cls)[f.name], f"{prefix}{f.name}"
        if not only(key):
            continue
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = f.default
        if default is not None:
            value = getattr(default, f.name)
        section = section_class(_strip(tp))
        if section is not None:
            optional = " (optional section; null: none)" if _union_args(_strip(tp)) else ""
            lines.append(f"{key}:{optional}  {docs.get(f.name, '')}")
            lines.append(describe(section, key + ".", value if dataclasses.is_dataclass(value) else None, only))
            continue
        shown = "required" if value is REQUIRED else repr(value)
        lines.append(f"  {key}: {type_name(tp)} = {shown}\n      {docs.get(f.name, '')}")
    return "\n".join(line for line in lines if line)
