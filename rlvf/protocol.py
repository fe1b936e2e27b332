"""The OpenAI chat-completions protocol of rlvf.serve: request parsing, ``stop`` cutting, the response body.

Requests: unknown fields (presence_penalty, logprobs, tools, …) are ignored; ``stream: true``, bad
JSON and missing or wrongly typed fields are 400s; bodies over 8 MiB are 413s. With temperature 0,
``n`` > 1 gives n identical choices.

Every number has a range, so no request reaches the model with a value that overflows it (a
temperature of 1e-300 divides float32 logits by zero) or that would keep the server busy for hours:

    temperature         0 (greedy) or 1e-5 … 100      repetition_penalty   0.01 … 100
    top_p               (0, 1]                         top_k                -1 … 2**31 - 1 (-1, 0: off)
    seed                -2**63 … 2**64 - 1             stop                 at most 64 strings
    max_tokens, n and the prompt: the server's ``RequestLimits`` (400 naming the limit)

Strings must be valid Unicode (a lone surrogate such as "\\ud800" is a 400).

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
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-5, 100.0  # 1e-5: vLLM's greedy threshold; logits / T stays finite
MIN_PENALTY, MAX_PENALTY = 0.01, 100.0
MAX_TOP_K = 2**31 - 1
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1  # signed or unsigned 64-bit seeds
MAX_STOP_STRINGS = 64


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


def stop_error(reason: str) -> ApiError:
    """What a request whose work was stopped is told: "shutdown" (503), or "client_gone" (499,
    nginx's "client closed request"; the client that left never reads it)."""
    if reason == "shutdown":
        return ApiError(503, "the server is shutting down", code="shutting_down")
    return ApiError(499, "the client closed the connection before its answer", code="client_closed_request")


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits of a server; a request over one is a 400 naming the limit."""

    max_prompt_bytes: int = 1 << 20
    """UTF-8 bytes of all messages' roles and contents (tokenizing 1 MiB takes about 1 s on one CPU core)."""
    max_messages: int = 4096
    """Messages in one request (the chat template renders each in Python)."""
    max_tokens: int = 32768
    """max_tokens / max_completion_tokens per choice (the model's context length may allow fewer)."""
    max_n: int = MAX_N
    """Choices per request."""
    max_items: int = 1000
    """The offline teacher's COUNT × n: prompts or categories one request may ask for."""

    def check(self) -> "RequestLimits":
        """ValueError unless every limit is a positive integer."""
        for key, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        return self


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


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters: error messages never echo a huge input."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shorten(value: Any, limit: int = 60) -> str:
    """``repr(value)``, clipped."""
    return clip(repr(value), limit)


def _number(body: dict, key: str, default, *, integer: bool = False, low=None, high=None,
            low_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise ApiError(400, f"{key} must be {'an integer' if integer else 'a number'}, got {shorten(value)}", key)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ApiError(400, f"{key} must be {' and '.join(s for s in (lo, hi) if s)}, got {shorten(value)}", key)
    return value


def _temperature(body: dict) -> float:
    """0 (greedy) or MIN_TEMPERATURE … MAX_TEMPERATURE."""
    value = float(_number(body, "temperature", 1.0, low=0, high=MAX_TEMPERATURE))
    if 0 < value < MIN_TEMPERATURE:
        raise ApiError(400, f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {value!r}",
                       "temperature")
    return value


def _is_text(value: Any) -> bool:
    """A str that encodes as UTF-8 (JSON can carry lone surrogates such as "\\ud800"; they cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(_is_text(s) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop must have at most {MAX_STOP_STRINGS} strings, got {len(stop)}", "stop")
    return tuple(s for s in stop if s)


def _messages(body: dict, limits: RequestLimits) -> list[dict[str, str]]:
    """[{role, content}] with text-part lists joined; anything else (a prompt over the limits too) is a 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"messages has {len(messages)} entries; this server takes at most "
                            f"{limits.max_messages}", "messages", "too_many_messages")
    out, size = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not _is_text(m.get("role")):
            raise ApiError(400, f"messages[{i}] must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not _is_text(content):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts "
                                f"(valid Unicode)", "messages")
        size += len(m["role"].encode("utf-8")) + len(content.encode("utf-8"))
        out.append({"role": m["role"], "content": content})
    if size > limits.max_prompt_bytes:
        raise ApiError(400, f"the messages hold {size} bytes; this server takes at most {limits.max_prompt_bytes} "
                            f"bytes of prompt per request", "messages", "prompt_too_large")
    return out


def parse_chat_request(body: Any, limits: RequestLimits = RequestLimits()) -> tuple[str, list[dict[str, str]],
                                                                                    SamplingParams]:
    """Validate a chat-completions body: (model, messages, params). Unknown fields are ignored."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("stream"):
        raise ApiError(400, "streaming is not supported", "stream")
    model = body.get("model")
    if not _is_text(model) or not model:
        raise ApiError(400, "model must be a non-empty string", "model")
    messages = _messages(body, limits)
    max_tokens = _number(body, "max_tokens", None, integer=True, low=1, high=limits.max_tokens)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, integer=True, low=1, high=limits.max_tokens)
    top_k = _number(body, "top_k", 0, integer=True, low=-1, high=MAX_TOP_K)
    params = SamplingParams(
        temperature=_temperature(body),
        top_p=float(_number(body, "top_p", 1.0, low=0, high=1, low_open=True)),
        top_k=max(top_k, 0),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, low=MIN_PENALTY, high=MAX_PENALTY)),
        max_tokens=max_tokens,
        n=_number(body, "n", 1, integer=True, low=1, high=limits.max_n),
        seed=_number(body, "seed", None, integer=True, low=MIN_SEED, high=MAX_SEED),
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
    finish_reason: str  # "stop" | "length" ("cancelled" inside the server only: never answered)
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
