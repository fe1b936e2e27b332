"""The OpenAI chat-completions protocol of rlvf.serve: request parsing, ``stop`` cutting, the response body.

Requests: unknown fields (presence_penalty, logprobs, tools, …) are ignored; ``stream: true``, bad
JSON and missing or wrongly typed fields are 400s; bodies over 8 MiB are 413s. With temperature 0,
``n`` > 1 gives n identical choices.

``stop`` strings (a string or a list) cut the text before the earliest match, finish_reason
"stop"; an EOS token also gives "stop"; reaching max_tokens gives "length". completion_tokens
counts the generated tokens, up to and including the EOS token or the token completing a stop
string, summed over the ``n`` choices.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

MAX_N = 128


# ----------------------------------------------------------------------------------------------
# Requests


class ApiError(Exception):
    """An error answered in OpenAI's body shape {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling parameters (OpenAI defaults; max_tokens None = server default)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (vLLM's -1 is read as 0)
    repetition_penalty: float = 1.0
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def batch_key(self) -> tuple:
        """Requests with equal keys (and model) can share one generate call."""
        if self.temperature == 0:  # greedy: top_p / top_k do not matter
            return (0.0, 1.0, 0, self.repetition_penalty)
        return (self.temperature, self.top_p, self.top_k, self.repetition_penalty)


def _number(body: dict, key: str, default, *, integer: bool = False, low=None, high=None,
            low_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise ApiError(400, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ApiError(400, f"{key} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}", key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    return tuple(s for s in stop if s)


def _messages(body: dict) -> list[dict[str, str]]:
    """[{role, content}] with text-part lists joined; anything else is a 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_chat_request(body: Any) -> tuple[str, list[dict[str, str]], SamplingParams]:
    """Validate a chat-completions body: (model, messages, params). Unknown fields are ignored."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("stream"):
        raise ApiError(400, "streaming is not supported", "stream")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model must be a non-empty string", "model")
    messages = _messages(body)
    max_tokens = _number(body, "max_tokens", None, integer=True, low=1)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, integer=True, low=1)
    top_k = _number(body, "top_k", 0, integer=True, low=-1)
    params = SamplingParams(
        temperature=float(_number(body, "temperature", 1.0, low=0)),
        top_p=float(_number(body, "top_p", 1.0, low=0, high=1, low_open=True)),
        top_k=max(top_k, 0),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, low=0, low_open=True)),
        max_tokens=max_tokens,
        n=_number(body, "n", 1, integer=True, low=1, high=MAX_N),
        seed=_number(body, "seed", None, integer=True),
        stop=_stop(body),
    )
    return model, messages, params


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int


@dataclass
class Completion:
    prompt_tokens: int
    choices: list[Choice]


def completion_body(model: str, completion: Completion) -> dict:
    """The OpenAI chat.completion response object."""
    completion_tokens = sum(c.tokens for c in completion.choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
             "finish_reason": c.finish_reason}
            for i, c in enumerate(completion.choices)
        ],
        "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": completion.prompt_tokens + completion_tokens},
    }
