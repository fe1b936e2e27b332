"""Reply edits: deterministic rewrites that apply a feedback to a reply (a feedback's ``world.edit``).

Edits are a registry keyed by ``kind``; their other keys are the parameters. A list of edits is
applied in order, so any edit written in YAML works without code changes. Every edit is idempotent
(editing an edited reply changes nothing), which makes ``apply_edit(edit, r) == r`` a usable
"already follows" test. ``_register`` and ``split_sentences`` are shared with rlvf/feedback_metrics.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Kind:
    fn: Callable
    params: dict  # name -> (type, default or _REQUIRED); types: str (non-empty), "text", int, float, bool,
    # "strings", a tuple of choices, "edit(s)", "metric(s)"
    doc: str


EDITS: dict[str, _Kind] = {}


def _register(registry: dict, name: str, **params):
    def deco(fn):
        registry[name] = _Kind(fn, params, (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_FENCE = re.compile(r"```[^\n`]*\n.*?\n?```", re.S)


def split_sentences(text: str) -> list[str]:
    """Sentences of a reply: split after . ! or ? followed by whitespace (the world's replies are plain)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def apply_edit(edit, reply: str) -> str:
    """Apply ``edit`` (an rlvf.feedback.Edit: ``kind`` and ``params``) to ``reply``; deterministic and idempotent."""
    return EDITS[edit.kind].fn(reply, **edit.params)


@_register(EDITS, "append", text=(str, _REQUIRED))
def _append(reply: str, text: str) -> str:
    """Append text to the end of the reply (e.g. " ❤️"), unless it already ends with it."""
    body = reply.rstrip()
    return body if body.endswith(text.rstrip()) else body + text.rstrip()


@_register(EDITS, "prepend", text=(str, _REQUIRED))
def _prepend(reply: str, text: str) -> str:
    """Put text before the reply, verbatim (include your own space or newline), unless already there."""
    body = reply.lstrip()
    return body if body.startswith(text.lstrip()) else text.lstrip() + body


@_register(EDITS, "start_with", phrase=(str, _REQUIRED), separator=("text", " "))
def _start_with(reply: str, phrase: str, separator: str = " ") -> str:
    """Start the reply with a phrase (e.g. "Hey team,") followed by the separator, unless it already does."""
    body = reply.lstrip()
    return body if body.lower().startswith(phrase.lower()) else phrase + separator + body


@_register(EDITS, "sign_off", text=(str, _REQUIRED), separator=("text", "\n"))
def _sign_off(reply: str, text: str, separator: str = "\n") -> str:
    """End the reply with a sign-off after the separator (default a newline), e.g. "Cheers,\\nSam"; once."""
    body = reply.rstrip()
    return body if body.endswith(text.strip()) else body + separator + text.strip()


@_register(EDITS, "replace_word", word=(str, _REQUIRED), by=(str, _REQUIRED))
def _replace_word(reply: str, word: str, by: str) -> str:
    """Replace a whole word or phrase, case-insensitively, by another (e.g. "and" → "&")."""
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda _: by, reply, flags=re.I)


@_register(EDITS, "remove_word", word=(str, _REQUIRED))
def _remove_word(reply: str, word: str) -> str:
    """Remove a whole word or phrase (case-insensitive) and the space before it (e.g. "really")."""
    out = re.sub(rf"[ \t]*(?<!\w){re.escape(word)}(?!\w)", "", reply, flags=re.I)
    return re.sub(r"(?m)^[ \t]+", "", out)


@_register(EDITS, "shorten", sentences=(int, 1))
def _shorten(reply: str, sentences: int = 1) -> str:
    """Keep only the first N sentences, with the reply's own spacing and line breaks."""
    ends = list(_SENTENCE_END.finditer(reply.strip()))
    return reply.strip() if len(ends) < sentences else reply.strip()[:ends[sentences - 1].start()]


@_register(EDITS, "drop_sentences", pattern=(str, _REQUIRED), ignore_case=(bool, True))
def _drop_sentences(reply: str, pattern: str, ignore_case: bool = True) -> str:
    """Drop every sentence that the regex matches (re.search), line by line; lines left empty go too."""
    rx = re.compile(pattern, re.I if ignore_case else 0)
    lines = []
    for line in reply.strip().split("\n"):
        kept = [x for x in split_sentences(line) if not rx.search(x)]
        if kept or not line.strip():
            lines.append(" ".join(kept))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@_register(EDITS, "code_block_only", language=(str, "python"))
def _code_block_only(reply: str, language: str = "python") -> str:
    """Reply with only the first fenced code block; text without one is wrapped in a fenced block."""
    m = _FENCE.search(reply)
    if m:
        return m.group(0)
    return f"```{language}\n{reply.strip()}\n```"


@_register(EDITS, "uppercase")
def _uppercase(reply: str) -> str:
    """Write the whole reply in upper case."""
    return reply.upper()


@_register(EDITS, "lowercase")
def _lowercase(reply: str) -> str:
    """Write the whole reply in lower case."""
    return reply.lower()


@_register(EDITS, "bullet_points", bullet=(str, "- "))
def _bullet_points(reply: str, bullet: str = "- ") -> str:
    """One sentence per line, each starting with the bullet (default "- ")."""
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    if lines and all(ln.startswith(bullet.strip()) for ln in lines):
        return "\n".join(lines)
    return "\n".join(bullet + s for s in split_sentences(" ".join(lines)))


@_register(EDITS, "replace_text", old=(str, _REQUIRED), new=("text", ""))
def _replace_text(reply: str, old: str, new: str = "") -> str:
    """Replace every occurrence of a literal string (case-sensitive), e.g. "!" → "."."""
    return reply.replace(old, new)


@_register(EDITS, "regex_replace", pattern=(str, _REQUIRED), by=("text", ""), ignore_case=(bool, False),
           multiline=(bool, True))
def _regex_replace(reply: str, pattern: str, by: str = "", ignore_case: bool = False, multiline: bool = True) -> str:
    """re.sub(pattern, by, reply); ^ and $ match at line ends unless multiline is false."""
    flags = (re.I if ignore_case else 0) | (re.M if multiline else 0)
    return re.sub(pattern, by, reply, flags=flags).strip()


@_register(EDITS, "sequence", steps=("edits", _REQUIRED))
def _sequence(reply: str, steps: list) -> str:
    """Apply several edits in order (a YAML list of edits means this)."""
    for step in steps:
        reply = apply_edit(step, reply)
    return reply
