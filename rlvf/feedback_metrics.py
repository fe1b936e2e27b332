"""Quantitative metrics: checks that decide whether a response follows a feedback (its ``metric``).

Metrics are a registry keyed by ``kind``; their other keys are the parameters. A list of metrics
must all hold, so any metric written in YAML works without code changes.
"""
from __future__ import annotations

import re

from rlvf.edits import _FENCE, _REQUIRED, _Kind, _register, split_sentences

METRICS: dict[str, _Kind] = {}


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


@_register(METRICS, "shorter_than_baseline", ratio=(float, 1.0), unit=(("chars", "words"), "chars"))
def _shorter(response, baseline, ratio=1.0, unit="chars"):
    """len(response) < ratio · len(baseline), in chars or words (the paper's "be more concise")."""
    return _length(response, unit) < ratio * _length(baseline, unit)


@_register(METRICS, "longer_than_baseline", ratio=(float, 1.0), unit=(("chars", "words"), "chars"))
def _longer(response, baseline, ratio=1.0, unit="chars"):
    """len(response) > ratio · len(baseline), in chars or words (the paper's "be more detailed")."""
    return _length(response, unit) > ratio * _length(baseline, unit)


def _fold(text: str, ignore_case: bool) -> str:
    return text.lower() if ignore_case else text


@_register(METRICS, "contains_any", strings=("strings", _REQUIRED), ignore_case=(bool, True))
def _contains_any(response, _baseline, strings, ignore_case=True):
    """At least one of the strings occurs in the response."""
    return any(_fold(s, ignore_case) in _fold(response, ignore_case) for s in strings)


@_register(METRICS, "contains_all", strings=("strings", _REQUIRED), ignore_case=(bool, True))
def _contains_all(response, _baseline, strings, ignore_case=True):
    """Every one of the strings occurs in the response."""
    return all(_fold(s, ignore_case) in _fold(response, ignore_case) for s in strings)


@_register(METRICS, "contains_none", strings=("strings", _REQUIRED), ignore_case=(bool, True))
def _contains_none(response, _baseline, strings, ignore_case=True):
    """None of the strings occurs in the response."""
    return not any(_fold(s, ignore_case) in _fold(response, ignore_case) for s in strings)


@_register(METRICS, "starts_with", text=(str, _REQUIRED), ignore_case=(bool, True))
def _starts_with(response, _baseline, text, ignore_case=True):
    """The stripped response starts with the text."""
    return _fold(response.strip(), ignore_case).startswith(_fold(text.strip(), ignore_case))


@_register(METRICS, "ends_with", text=(str, _REQUIRED), ignore_case=(bool, True))
def _ends_with(response, _baseline, text, ignore_case=True):
    """The stripped response ends with the text."""
    return _fold(response.strip(), ignore_case).endswith(_fold(text.strip(), ignore_case))


@_register(METRICS, "regex", pattern=(str, _REQUIRED), ignore_case=(bool, False), multiline=(bool, False))
def _regex(response, _baseline, pattern, ignore_case=False, multiline=False):
    """re.search(pattern, response) finds a match."""
    flags = (re.I if ignore_case else 0) | (re.M if multiline else 0)
    return re.search(pattern, response, flags) is not None


@_register(METRICS, "uppercase")
def _is_upper(response, _baseline):
    """The response has letters and none of them is lower case."""
    return response.isupper()


@_register(METRICS, "lowercase")
def _is_lower(response, _baseline):
    """The response has letters and none of them is upper case."""
    return response.islower()


@_register(METRICS, "only_code_block")
def _only_code_block(response, _baseline):
    """The response is exactly one fenced code block, with nothing before or after it."""
    m = _FENCE.fullmatch(response.strip())
    return m is not None and response.count("```") == 2


@_register(METRICS, "no_code_fence")
def _no_code_fence(response, _baseline):
    """The response contains no ``` fence."""
    return "```" not in response


@_register(METRICS, "max_sentences", sentences=(int, _REQUIRED))
def _max_sentences(response, _baseline, sentences):
    """The response has at most N sentences."""
    return len(split_sentences(response)) <= sentences


@_register(METRICS, "lines_start_with", prefix=(str, _REQUIRED))
def _lines_start_with(response, _baseline, prefix):
    """Every non-empty line starts with the prefix (e.g. "- " for bullet points)."""
    lines = [ln.strip() for ln in response.strip().splitlines() if ln.strip()]
    return bool(lines) and all(ln.startswith(prefix.strip()) for ln in lines)


@_register(METRICS, "all", of=("metrics", _REQUIRED))
def _all(response, baseline, of):
    """Every listed metric holds (a YAML list of metrics means this)."""
    return all(m.follows(response, baseline) for m in of)


@_register(METRICS, "any", of=("metrics", _REQUIRED))
def _any(response, baseline, of):
    """At least one listed metric holds."""
    return any(m.follows(response, baseline) for m in of)


@_register(METRICS, "not", metric=("metric", _REQUIRED))
def _not(response, baseline, metric):
    """The given metric does not hold."""
    return not metric.follows(response, baseline)
