"""OpenAI chat-completions client on httpx: bounded concurrency, rate limits, retries, a disk cache.

One ``ChatClient`` per endpoint (the teacher, the student's server). ``run`` sends a batch of
``ChatRequest``s and returns the ``ChatResult``s in input order, plus a ``ChatFailure`` for each
request that ran out of retries (reported, not raised: a later run fills them in from the cache):

    client = ChatClient(EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="tiny"), cache_dir=out / "cache")
    results, failures = client.run(requests, on_result=append_to_jsonl)
    print(client.summary())

The protocol facts follow the OpenAI API and the retry behaviour documented by openai-python:

- Retried: connect errors, timeouts, dropped connections, malformed or truncated 200 bodies, 408,
  409, 429 and >= 500. A response header ``x-should-retry: true|false`` overrides the status.
- Delay before retry n (0-based): the server's ``retry-after-ms``, else ``retry-after`` (seconds or
  an HTTP date) when 0 < delay <= 60 s; otherwise min(0.5 * 2**n, 8) s * (1 - 0.25 * U[0, 1)).
- The user's to fix, raised as ``UserError`` (the rest of the batch is cancelled; everything already
  completed is in the cache): 401/403 (the key), 404 (the model or the URL), redirects; a server
  still unreachable after a request's last retry when no other request succeeded meanwhile (at
  the start of a run, or a server that died: the rest would only retry in vain); and, while no
  request has succeeded yet, any other 4xx. Once requests succeed, a 4xx is about that one request
  (e.g. a prompt over the context length) and becomes a ChatFailure without retries.

The disk cache holds one file per completed request, keyed by sha256 of the canonical JSON of
``{"base_url": <namespace>, "body": <the full request body>}``. The body carries the model name,
the messages and every sampling field; the *namespace* names the endpoint whose answers these are:

- ``EndpointConfig.cache_namespace`` when set, else the base_url (without a trailing slash; the
  JSON field keeps the name ``base_url`` so that caches written before namespaces stay valid).
- rlvf's embedded servers (rlvf.pipeline ``serve:``) bind a new free port on every run, so the
  pipeline sets the namespace to what determines their answers instead of the URL: a fingerprint
  (names, sizes, mtimes) of the served model directory, adapter and feedback files
  (``rlvf.endpoints.served_namespace``). A re-run through a new port is then all cache hits, and a
  retrained model or adapter is a miss, never a stale hit.
- Set it yourself when a remote model moves to another URL (a vLLM server restarted on another
  port) and you want to keep its answers; change it to start afresh.

A re-run or a run resumed after a kill therefore sends only what is not cached: the requests that
failed or were in flight. ``ChatClient.stats`` counts what was sent, retried (by reason) and failed.

The API key is read (``api_key``) from the environment variable named by ``EndpointConfig.api_key_env`` and is
sent in the Authorization header only: it is not part of any cache key, file, repr or message
(server messages that echo it are redacted).
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ipaddress
import json
import math
import os
import random
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import httpx
from tqdm import tqdm

from rlvf.atomic import write_text_atomic
from rlvf.config import EndpointConfig, Sampling, check
from rlvf.errors import UserError

RETRY_STATUSES = frozenset({408, 409, 429})
MAX_SERVER_DELAY_S = 60.0  # a longer retry-after is ignored in favour of the backoff
CONNECT_TIMEOUT_S = 10.0  # connecting never waits the full timeout_s


def is_loopback(base_url: str) -> bool:
    """True for http(s)://localhost…, 127.x.x.x and [::1] URLs (local servers need no API key)."""
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- configuration
# EndpointConfig and Sampling are sections of the one config schema (rlvf/config.py), which checks
# them; a client re-checks the ones it is handed with the same rules (rlvf.typed.check).


def api_key(endpoint: EndpointConfig) -> str | None:
    """The key in ``$api_key_env``, read now; None for no key. UserError if a remote server lacks one."""
    if endpoint.api_key_env is None:
        return None
    key = os.environ.get(endpoint.api_key_env, "").strip()
    if key:
        check_key(key, endpoint.api_key_env)
    if key or is_loopback(endpoint.base_url):
        return key or None
    raise UserError(f"environment variable {endpoint.api_key_env} is not set: export the API key for "
                    f"{endpoint.base_url} in it (endpoint.api_key_env names the variable; null sends no key)")


def check_key(key: str, variable: str) -> None:
    """UserError naming ``variable`` (never the key) if ``key`` cannot be sent in an HTTP header.

    API keys are printable ASCII without spaces; a line break (a key pasted with its newline, or
    two keys) or a non-ASCII character (a curly quote, a non-breaking space) would make httpx fail
    mid-request with a traceback that shows the key.
    """
    problems = (("a line break", lambda c: c in "\r\n"), ("a non-ASCII character", lambda c: not c.isascii()),
                ("a space or control character", lambda c: not c.isprintable() or c.isspace()))
    for what, bad in problems:
        if any(bad(c) for c in key):
            raise UserError(f"environment variable {variable}: the API key in it contains {what}, which no API key "
                            f"has; set {variable} to the key alone (one line, no spaces, no quotes)")


@dataclass
class ChatRequest:
    key: str
    """The caller's id for this request; results and failures carry it."""
    messages: list[dict]
    """Chat messages [{role, content}]."""
    sampling: Sampling
    """Sampling parameters."""


@dataclass
class ChatResult:
    key: str
    texts: list[str]
    """choices[i].message.content, one per choice (n of them)."""
    finish_reasons: list[str]
    """choices[i].finish_reason: stop, length, …"""
    usage: dict
    """The response's usage {prompt_tokens, completion_tokens, total_tokens} ({} if the server sent none)."""
    cached: bool
    """Served from the disk cache, without a request."""
    attempts: int
    """HTTP attempts it took (0 when cached)."""


@dataclass
class ChatFailure:
    key: str
    error: str
    """Why the last attempt failed."""
    attempts: int


@dataclass
class ClientStats:
    """Counts over every ``run`` of one client."""

    requests: int = 0
    """Chat requests finished: results (cached ones included) and failures."""
    cache_hits: int = 0
    sent: int = 0
    """HTTP requests sent, retries included."""
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    """Retries by reason: 'HTTP 503', 'read timeout', 'connection reset', 'connection closed', 'malformed body', …"""
    failures: int = 0
    """Requests that ran out of retries or were refused (ChatFailure)."""
    prompt_tokens: int = 0
    """Reported by the server for the requests sent (cache hits cost nothing)."""
    completion_tokens: int = 0
    cost_usd: float = 0.0


# ----------------------------------------------------------------------------- protocol helpers


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date)."""
    try:
        return float(headers.get("retry-after-ms") or "") / 1000
    except ValueError:
        pass
    value = headers.get("retry-after") or ""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def retry_delay(retry: int, headers: Mapping[str, str] | None = None,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``retry`` (0-based): the server's wish if 0 < it <= 60 s, else backoff with jitter."""
    wish = retry_after(headers or {})
    if wish is not None and 0 < wish <= MAX_SERVER_DELAY_S:
        return wish
    return min(0.5 * 2.0 ** retry, 8.0) * (1 - 0.25 * rand())


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """408, 409, 429 and >= 500 are retried unless the header ``x-should-retry`` says otherwise."""
    override = (headers.get("x-should-retry") or "").lower()
    if override in ("true", "false"):
        return override == "true"
    return status in RETRY_STATUSES or status >= 500


def _one_line(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def error_message(response: httpx.Response) -> str:
    """The server's error message, from any body shape.

    {"error": {"message", "type", "param", "code"}} (OpenAI), flat {"object": "error", "message", …}
    (vLLM), {"error": "…"} (Ollama), {"detail": …} (FastAPI) or plain text.
    """
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return _one_line(err["message"])
        if isinstance(err, str) and err:
            return _one_line(err)
        for key in ("message", "detail"):
            if data.get(key):
                return _one_line(data[key])
    return _one_line(response.text) or response.reason_phrase or f"HTTP {response.status_code}"


def parse_completion(data: Any) -> tuple[list[str], list[str], dict]:
    """(texts, finish_reasons, usage) of a chat.completion body; ValueError if it has no choices or content."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError("the response has no choices")
    texts, reasons = [], []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ValueError("a choice has no message content")
        texts.append(content)
        reasons.append(str(choice.get("finish_reason") or ""))
    usage = data.get("usage")
    return texts, reasons, usage if isinstance(usage, dict) else {}


def estimate_tokens(body: dict) -> int:
    """Tokens a request may use, as rate limiters count them: prompt chars / 4 + n · max_tokens."""
    chars = sum(len(str(m.get("content", ""))) for m in body["messages"])
    return chars // 4 + body.get("n", 1) * body.get("max_tokens", 0)


def describe(err: httpx.HTTPError) -> str:
    """A short reason for a transport error: 'connection refused', 'read timeout', 'connection closed: …'."""
    chain = [err]
    while len(chain) < 10 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for cause, reason in ((ConnectionRefusedError, "connection refused"), (ConnectionResetError, "connection reset"),
                          (socket.gaierror, "unknown host")):
        if any(isinstance(e, cause) for e in chain):
            return reason
    label = {httpx.ConnectTimeout: "connect timeout", httpx.ReadTimeout: "read timeout",
             httpx.WriteTimeout: "write timeout", httpx.PoolTimeout: "pool timeout",
             httpx.RemoteProtocolError: "connection closed"}.get(type(err), type(err).__name__)
    detail = "" if isinstance(err, httpx.TimeoutException) else _one_line(err, 120)
    return f"{label}: {detail}" if detail else label


def key_rejected(base_url: str, api_key_env: str | None, sent_key: bool, status: int, message: str) -> UserError:
    """The one-line error for a 401/403."""
    if sent_key:
        return UserError(f"{base_url} rejected the API key from ${api_key_env} ({status}): {message}; check the key")
    where = f"export it as ${api_key_env}" if api_key_env else "name its environment variable in endpoint.api_key_env"
    return UserError(f"{base_url} requires an API key ({status}): {message}; {where}")


def _count(usage: dict, key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# ----------------------------------------------------------------------------- rate limits and cache


class Pacer:
    """Spaces events so that at most ``per_minute`` units are spent per minute (0: no limit).

    A token bucket holding a single event (GCRA): each event books ``units`` worth of time and the
    next one starts when that has elapsed, so the server never sees a burst. ``refund`` corrects a
    booking once the real cost is known (a negative refund books more).
    """

    def __init__(self, per_minute: float):
        self.seconds_per_unit = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0

    async def acquire(self, units: float = 1.0) -> None:
        if not self.seconds_per_unit:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + units * self.seconds_per_unit
        await asyncio.sleep(start - now)

    def refund(self, units: float) -> None:
        self._next -= units * self.seconds_per_unit


def cache_key(namespace: str, body: dict) -> str:
    """sha256 of the canonical JSON of the endpoint's namespace and the full request body (no API key).

    The field is named base_url because the namespace is the base_url unless configured otherwise,
    and keys written before namespaces existed stay the same.
    """
    canonical = json.dumps({"base_url": namespace.rstrip("/"), "body": body},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per completed request, ``root/ab/abcd….json``.

    Each file is written to a temporary name, fsynced and renamed into place, so a kill mid-write
    leaves either no entry or a whole one (a stray ``.tmp`` file at worst); a missing or unreadable
    entry is a miss. Several processes may share a cache.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "texts" in entry and "finish_reasons" in entry else None

    def put(self, key: str, entry: dict) -> None:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(entry, ensure_ascii=False))  # the umask's mode, not 0600
        except OSError as err:
            raise UserError(f"{self.root}: cannot write the response cache ({err})") from None


# ----------------------------------------------------------------------------- the client


class _Retryable(Exception):
    """An attempt failed in a way a retry may fix; ``str()`` says how."""

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.headers = headers or {}
        self.unreachable = unreachable
        self.kind = reason.split(":")[0]  # 'HTTP 503', 'read timeout', 'connection closed', …


class _Failed(Exception):
    """The request failed and a retry would not help: reported as a ChatFailure."""


class ChatClient:
    """Sends chat requests to one endpoint; see the module docstring.

    ``backoff_scale`` multiplies every retry delay (server-requested or backoff): tests set it to
    0.01 to run retries in milliseconds. ``stats`` accumulates over every ``run``.
    """

    def __init__(self, endpoint: EndpointConfig, cache_dir: str | Path | None = None, progress: bool = True,
                 backoff_scale: float = 1.0):
        check(endpoint, "endpoint")
        self.endpoint = endpoint
        self._api_key = api_key(endpoint)  # only ever placed in the Authorization header
        self.base_url = endpoint.base_url.rstrip("/")
        self.namespace = endpoint.namespace()
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.backoff_scale = backoff_scale
        self.stats = ClientStats()
        self._request_pacer = Pacer(endpoint.requests_per_minute)
        self._token_pacer = Pacer(endpoint.tokens_per_minute)
        self._rng = random.Random()
        self._succeeded = 0  # HTTP successes; until the first, any 4xx is fatal
        self._last_success = -math.inf  # time.monotonic() of the latest success

    def __repr__(self) -> str:
        return f"ChatClient({self.base_url!r}, model={self.endpoint.model!r})"

    def request_body(self, request: ChatRequest) -> dict:
        """The JSON body sent for ``request``: extra_body, then every sampling field, model and messages."""
        check(request.sampling, "sampling", f"request {request.key!r}")  # kept as given: the body is a cache key
        sampling = request.sampling.body()
        return {**self.endpoint.extra_body, **sampling, "model": self.endpoint.model, "messages": request.messages}

    def run(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None] | None = None,
            desc: str = "requests") -> tuple[list[ChatResult], list[ChatFailure]]:
        """``arun`` for callers without an event loop (inside one, await ``arun`` instead)."""
        return asyncio.run(self.arun(requests, on_result, desc))

    async def arun(self, requests: list[ChatRequest], on_result: Callable[[ChatResult], None] | None = None,
                   desc: str = "requests") -> tuple[list[ChatResult], list[ChatFailure]]:
        """Complete ``requests``: (results in input order, failures). Raises UserError for fatal errors.

        ``on_result`` is called with every result as it completes, cache hits first, after the
        result is in the cache: an output file appended to there loses at most the requests in
        flight when the process is killed.
        """
        outcomes: dict[int, ChatResult | ChatFailure] = {}
        with tqdm(total=len(requests), desc=desc, unit="req", file=sys.stderr, disable=not self.progress,
                  dynamic_ncols=True) as bar:
            jobs = []
            for i, request in enumerate(requests):
                body = self.request_body(request)
                hit = self._from_cache(request, body)
                if hit is None:
                    jobs.append((i, request, body))
                else:
                    outcomes[i] = hit
                    self._finish(hit, on_result, bar)
            if jobs:
                await self._send_all(jobs, outcomes, on_result, bar)
        ordered = [outcomes[i] for i in sorted(outcomes)]
        return ([o for o in ordered if isinstance(o, ChatResult)], [o for o in ordered if isinstance(o, ChatFailure)])

    def summary(self) -> str:
        """One line: requests, cache hits, retries (by reason), failures, tokens and the estimated cost."""
        s = self.stats
        reasons = sorted(s.retry_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        why = f" ({', '.join(f'{n:,} {reason}' for reason, n in reasons)})" if reasons else ""
        text = (f"{s.requests:,} requests ({s.cache_hits:,} cached), {s.retries:,} retries{why}, "
                f"{s.failures:,} failed; {s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion tokens")
        if self.endpoint.price_per_1m_input or self.endpoint.price_per_1m_output:
            text += f" ≈ ${s.cost_usd:,.2f}"
        return text

    # -- internals

    def _from_cache(self, request: ChatRequest, body: dict) -> ChatResult | None:
        entry = self.cache.get(cache_key(self.namespace, body)) if self.cache is not None else None
        if entry is None:
            return None
        self.stats.cache_hits += 1
        return ChatResult(request.key, entry["texts"], entry["finish_reasons"], entry.get("usage", {}),
                          cached=True, attempts=0)

    def _finish(self, outcome: ChatResult | ChatFailure, on_result, bar: tqdm) -> None:
        self.stats.requests += 1
        if isinstance(outcome, ChatFailure):
            self.stats.failures += 1
        elif on_result is not None:
            on_result(outcome)
        bar.update(1)
        self._show(bar)

    def _show(self, bar: tqdm) -> None:
        s = self.stats
        bar.set_postfix_str(f"cached {s.cache_hits}, retries {s.retries}, failed {s.failures}", refresh=False)

    async def _send_all(self, jobs: list[tuple[int, ChatRequest, dict]], outcomes: dict, on_result, bar) -> None:
        """``max_concurrency`` workers draining ``jobs``; the first exception cancels the rest."""
        queue = deque(jobs)
        width = min(self.endpoint.max_concurrency, len(jobs))
        timeout = httpx.Timeout(self.endpoint.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.endpoint.timeout_s))
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
        async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as http:

            async def worker() -> None:
                while queue:
                    i, request, body = queue.popleft()
                    outcomes[i] = await self._complete(http, request, body, bar)
                    self._finish(outcomes[i], on_result, bar)

            tasks = [asyncio.create_task(worker()) for _ in range(width)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _complete(self, http: httpx.AsyncClient, request: ChatRequest, body: dict,
                        bar: tqdm) -> ChatResult | ChatFailure:
        """One request and its retries."""
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            try:
                texts, reasons, usage = await self._attempt(http, request.key, body)
            except _Failed as err:
                return ChatFailure(request.key, str(err), attempt)
            except _Retryable as err:
                if attempt > self.endpoint.max_retries:
                    return self._give_up(request.key, err, attempt, started)
                self.stats.retries += 1
                self.stats.retry_reasons[err.kind] = self.stats.retry_reasons.get(err.kind, 0) + 1
                self._show(bar)
                await asyncio.sleep(self.backoff_scale * retry_delay(attempt - 1, err.headers, self._rng.random))
                continue
            self._succeeded += 1
            self._last_success = time.monotonic()
            self._account(body, usage)
            if self.cache is not None:
                entry = {"model": body["model"], "texts": texts, "finish_reasons": reasons, "usage": usage}
                self.cache.put(cache_key(self.namespace, body), entry)
            return ChatResult(request.key, texts, reasons, usage, cached=False, attempts=attempt)

    async def _attempt(self, http: httpx.AsyncClient, key: str, body: dict) -> tuple[list[str], list[str], dict]:
        """One POST: (texts, finish_reasons, usage), or raises _Retryable / _Failed / UserError."""
        await self._request_pacer.acquire(1)
        await self._token_pacer.acquire(estimate_tokens(body))
        self.stats.sent += 1
        try:
            response = await http.post(f"{self.base_url}/chat/completions", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise _Retryable(describe(err), unreachable=True) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as err:
            raise _Retryable(describe(err)) from None
        if not response.is_success:
            raise self._http_error(response, key)
        try:
            texts, reasons, usage = parse_completion(response.json())
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise _Retryable(f"malformed body: {_one_line(err, 120)}") from None
        if len(texts) != body["n"]:
            raise _Failed(f"the server returned {len(texts)} choices for n={body['n']}; it may not support n > 1")
        return texts, reasons, usage

    def _http_error(self, response: httpx.Response, key: str) -> Exception:
        """The exception for a non-2xx response."""
        status, message = response.status_code, self._redact(error_message(response))
        if should_retry(status, response.headers):
            return _Retryable(f"HTTP {status}: {message}", response.headers)
        if 300 <= status < 400:
            where = response.headers.get("location", "elsewhere")
            return UserError(f"{self.base_url} redirects to {where} ({status}); set endpoint.base_url to the final URL")
        if status in (401, 403):
            return key_rejected(self.base_url, self.endpoint.api_key_env, self._api_key is not None, status, message)
        if status == 404:
            return UserError(f"model '{self.endpoint.model}' not found at {self.base_url} (404): {message}; "
                             "check endpoint.model (and that base_url ends with the API root, e.g. /v1)")
        if 400 <= status < 500 and self._succeeded == 0:
            return UserError(f"{self.base_url} rejected request '{key}' ({status}): {message}; "
                             "check the sampling parameters and endpoint.extra_body")
        return _Failed(f"HTTP {status}: {message}")

    def _give_up(self, key: str, err: _Retryable, attempts: int, started: float) -> ChatFailure:
        """A ChatFailure; or, if the server stayed unreachable while nothing else succeeded, UserError."""
        if err.unreachable and self._last_success < started:  # down, not unlucky: stop the run
            raise UserError(f"cannot reach {self.base_url} ({err}) after {attempts} attempts; is the server running?")
        return ChatFailure(key, str(err), attempts)

    def _account(self, body: dict, usage: dict) -> None:
        prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        price_in, price_out = self.endpoint.price_per_1m_input, self.endpoint.price_per_1m_output
        self.stats.cost_usd += (prompt * price_in + completion * price_out) / 1e6
        if prompt or completion:
            self._token_pacer.refund(estimate_tokens(body) - prompt - completion)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


def check_endpoint(endpoint: EndpointConfig) -> list[str]:
    """GET {base_url}/models: the model ids served ([] if the server does not list them).

    Raises UserError when the server is unreachable, rejects the key, or lists models but not
    ``endpoint.model``.
    """
    check(endpoint, "endpoint")
    base, key = endpoint.base_url.rstrip("/"), api_key(endpoint)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(endpoint.timeout_s, connect=min(CONNECT_TIMEOUT_S, endpoint.timeout_s))
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
    except httpx.TransportError as err:
        raise UserError(f"cannot reach {base} ({describe(err)}); is the server running?") from None
    if response.status_code in (401, 403):
        message = error_message(response).replace(key, "[redacted]") if key else error_message(response)
        raise key_rejected(base, endpoint.api_key_env, key is not None, response.status_code, message)
    try:
        ids = [str(m["id"]) for m in response.json()["data"]] if response.is_success else []
    except (ValueError, KeyError, TypeError):
        ids = []
    if ids and endpoint.model not in ids:
        listed = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise UserError(f"model '{endpoint.model}' not found at {base}, which serves {listed}; check endpoint.model")
    return ids
