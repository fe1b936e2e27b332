"""A fault-injecting OpenAI-compatible server for tests: stdlib only, loopback only, bounded lifetime.

    with FakeOpenAI(plan=fail_first(1, Fault.error(503))) as server:
        client = ChatClient(EndpointConfig(base_url=server.base_url, model="fake-model"))
        ...
        assert server.max_in_flight <= 8

Routes: POST /v1/chat/completions and GET /v1/models. Replies are deterministic: choice i of a
request reads ``echo <12 hex of sha256(body)>-<i>: <last message's content>`` (``expected_texts``
computes them), with usage of chars/4 tokens; ``respond=`` replaces the texts (e.g. by a real
offline teacher's replies).

The fault plan is a function ``plan(index, body, attempt) -> Fault | None`` called (under a lock, so
it may keep state) for each chat request before it is answered: ``index`` counts chat requests
from 0 in arrival order, ``attempt`` counts earlier arrivals of the identical body (0 the first
time, 1 on its first retry, …); a fault replaces the whole answer, auth and model checks included.
``fail_first``, ``by_index``, ``first_of`` and ``random_faults`` (seeded, mixed kinds, for soak
tests) build common plans.
Every request is recorded (method, path, headers, body, arrival and end times, and for chat requests
the index, the attempt and the fault injected); ``max_in_flight`` is the most chat requests being
handled at once.

Faults cover what real APIs do: error statuses with any body shape (5xx, 429 with ``retry-after``
or ``retry-after-ms``, 4xx), hangs past the client's timeout, bodies that are truncated, malformed,
cut mid-transfer, trickled slowly or stalled past the timeout, and connections reset or dropped.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

Plan = Callable[[int, dict, int], Optional["Fault"]]
Respond = Callable[[dict], list[str]]


@dataclass(frozen=True)
class Fault:
    """What to do instead of a normal reply. Build with the class methods."""

    kind: str
    status: int = 200
    message: str = "injected fault"
    shape: str = "nested"  # error body: nested {"error": {...}}, flat (vLLM), text
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    pieces: int = 8  # slow_body only

    @classmethod
    def error(cls, status: int, message: str = "injected fault", shape: str = "nested", **headers: str) -> Fault:
        """An error response; header names use _ for - (x_should_retry="false")."""
        return cls("error", status, message, shape, tuple((k.replace("_", "-"), v) for k, v in headers.items()))

    @classmethod
    def rate_limited(cls, retry_after: str | None = None, retry_after_ms: str | None = None) -> Fault:
        """429 with Retry-After (seconds or HTTP date) and/or retry-after-ms."""
        headers = {"retry_after": retry_after, "retry_after_ms": retry_after_ms}
        return cls.error(429, "Rate limit reached", **{k: v for k, v in headers.items() if v is not None})

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Say nothing for ``seconds`` (or until the server stops), then close the connection."""
        return cls("hang", seconds=seconds)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Reply normally after ``seconds`` (a slow model)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def slow_body(cls, seconds: float, pieces: int = 8) -> Fault:
        """Reply normally, the body trickling out in ``pieces`` pieces over ``seconds`` (a client reading
        with a timeout below seconds / (pieces - 1) gives up mid-body: a stalled body)."""
        return cls("slow_body", seconds=seconds, pieces=max(2, pieces))

    @property
    def label(self) -> str:
        """A short name for reports: 'error 503', 'error 429 retry-after-ms', 'hang', 'slow_body/2', …"""
        if self.kind == "error":
            return " ".join([f"error {self.status}", *(name for name, _ in self.headers)])
        return f"slow_body/{self.pieces}" if self.kind == "slow_body" else self.kind

    @classmethod
    def truncated_json(cls) -> Fault:
        """200 whose body is the first half of the JSON reply, with a matching Content-Length."""
        return cls("truncated_json")

    @classmethod
    def cut_body(cls) -> Fault:
        """200 announcing the full Content-Length, then half the body and a closed connection."""
        return cls("cut_body")

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls("malformed_json")

    @classmethod
    def no_choices(cls) -> Fault:
        """200 with valid JSON but an empty choices list."""
        return cls("no_choices")

    @classmethod
    def reset(cls) -> Fault:
        """Close the socket with a TCP reset, without a response."""
        return cls("reset")

    @classmethod
    def drop(cls) -> Fault:
        """Close the socket cleanly, without a response."""
        return cls("drop")


# ----------------------------------------------------------------------------- plans


def fail_first(times: int, fault: Fault, marker: str | None = None) -> Plan:
    """The first ``times`` attempts of every request (containing ``marker``, if given) get ``fault``."""
    return lambda index, body, attempt: fault if attempt < times and has_marker(body, marker) else None


def first_of(*plans: Plan) -> Plan:
    """The first plan that returns a fault wins."""
    def plan(index: int, body: dict, attempt: int) -> Fault | None:
        return next((f for f in (p(index, body, attempt) for p in plans) if f is not None), None)
    return plan


def by_index(faults: dict[int, Fault]) -> Plan:
    """Chat request number i (0-based, in arrival order) gets faults[i]."""
    return lambda index, body, attempt: faults.get(index)


def random_faults(seed: int, rate: float, faults: list[tuple[float, Fault]], max_per_request: int) -> Plan:
    """Each of the first ``max_per_request`` attempts of a request gets, with probability ``rate``, a
    fault drawn from ``faults`` [(weight, fault)]; later attempts always succeed.

    The draw depends only on (seed, body, attempt), not on arrival order, so a run at any
    concurrency meets the same faults.
    """
    weights, choices = zip(*faults)

    def plan(index: int, body: dict, attempt: int) -> Fault | None:
        rng = random.Random(f"{seed}:{hashlib.sha256(_canonical(body)).hexdigest()}:{attempt}")
        if attempt >= max_per_request or rng.random() >= rate:
            return None
        return rng.choices(choices, weights)[0]
    return plan


def has_marker(body: dict, marker: str | None) -> bool:
    return marker is None or any(marker in str(m.get("content", "")) for m in body.get("messages", []))


# ----------------------------------------------------------------------------- replies


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def expected_texts(body: dict) -> list[str]:
    """The texts of the server's normal reply to ``body``."""
    digest = hashlib.sha256(_canonical(body)).hexdigest()[:12]
    last = str(body["messages"][-1].get("content", "")) if body.get("messages") else ""
    return [f"echo {digest}-{i}: {last}" for i in range(int(body.get("n") or 1))]


def completion(body: dict, respond: Respond | None = None) -> dict:
    """The chat.completion reply to ``body``: texts from ``respond`` (default ``expected_texts``)."""
    texts = (respond or expected_texts)(body)
    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
    done = sum(len(t) for t in texts) // 4 + 1
    return {
        "id": "chatcmpl-" + hashlib.sha256(_canonical(body)).hexdigest()[:16], "object": "chat.completion",
        "created": 0, "model": body.get("model"),
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                     "logprobs": None} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done},
    }


def error_body(shape: str, status: int, message: str) -> bytes:
    if shape == "text":
        return message.encode()
    if shape == "flat":  # older vLLM
        return _canonical({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                           "code": status})
    kind = {401: "invalid_request_error", 404: "invalid_request_error", 429: "requests"}.get(status, "server_error")
    return _canonical({"error": {"message": message, "type": kind, "param": None, "code": None}})


# ----------------------------------------------------------------------------- the server


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    start: float
    end: float | None = None
    index: int | None = None  # chat requests only
    attempt: int | None = None  # earlier arrivals of the same body (chat requests only)
    fault: Fault | None = None  # what the plan injected instead of a normal reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, ValueError):  # the client hung up, or a fault closed the socket
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def do_GET(self) -> None:
        fake = self.server.fake
        if fake._stop.is_set():  # closed: kept-alive connections end too
            return self._close(reset=False)
        fake._record(self, None)
        if self.path != "/v1/models":
            return self._send(404, b'{"detail":"Not Found"}')
        if not fake._authorized(self.headers):
            return self._send(401, error_body("nested", 401, fake._bad_key_message(self.headers)))
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in fake.models or ()]
        self._send(200, _canonical({"object": "list", "data": data}))

    def do_POST(self) -> None:
        fake = self.server.fake
        if fake._stop.is_set():
            return self._close(reset=False)
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = fake._record(self, body)
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"detail":"Not Found"}')
        if not isinstance(body, dict):
            return self._send(400, error_body("flat", 400, "request body is not a JSON object"))
        fault = fake._begin(record, body)
        try:
            self._answer(fake, body, fault)
        finally:
            fake._end(record)

    def _answer(self, fake: FakeOpenAI, body: dict, fault: Fault | None) -> None:
        if fault is not None:
            return self._fault(fake, body, fault)
        if not fake._authorized(self.headers):
            return self._send(401, error_body("nested", 401, fake._bad_key_message(self.headers)))
        if fake.models is not None and body.get("model") not in fake.models:
            return self._send(404, error_body("nested", 404, f"The model `{body.get('model')}` does not exist"))
        self._send(200, _canonical(completion(body, fake.respond)))

    def _fault(self, fake: FakeOpenAI, body: dict, fault: Fault) -> None:
        reply = _canonical(completion(body, fake.respond))
        if fault.kind == "error":
            self._send(fault.status, error_body(fault.shape, fault.status, fault.message), dict(fault.headers))
        elif fault.kind == "hang":
            fake._stop.wait(fault.seconds)
            self._close(reset=False)
        elif fault.kind == "delay":
            fake._stop.wait(fault.seconds)
            self._send(200, reply)
        elif fault.kind == "slow_body":
            self._send(200, reply, pieces=fault.pieces, seconds=fault.seconds, stop=fake._stop)
        elif fault.kind == "truncated_json":
            self._send(200, reply[: len(reply) // 2])
        elif fault.kind == "cut_body":
            self._send(200, reply, length=len(reply), cut=len(reply) // 2)
        elif fault.kind == "malformed_json":
            self._send(200, b'{"id": "chatcmpl-x", "choices": [oops]}')
        elif fault.kind == "no_choices":
            self._send(200, _canonical({"id": "chatcmpl-x", "object": "chat.completion", "choices": []}))
        elif fault.kind in ("reset", "drop"):
            self._close(reset=fault.kind == "reset")
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None, *, length: int | None = None,
              cut: int | None = None, pieces: int = 1, seconds: float = 0.0,
              stop: threading.Event | None = None) -> None:
        """Send a response; ``length`` overrides Content-Length, ``cut`` stops after that many bytes and
        closes, ``pieces`` > 1 trickles the body out over ``seconds``."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if data[:1] in (b"{", b"[") else "text/plain")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            return self._close(reset=False)
        step = -(-len(data) // pieces)
        for k in range(0, len(data), step):
            if k and stop is not None and stop.wait(seconds / (pieces - 1)):
                return self._close(reset=False)
            self.wfile.write(data[k:k + step])
            self.wfile.flush()

    def _close(self, reset: bool) -> None:
        if reset:  # SO_LINGER with timeout 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of new connections (soak tests, retries after resets) is not refused
    fake: FakeOpenAI

    def handle_error(self, request, client_address) -> None:
        self.fake.handler_errors += 1  # broken pipes from clients that timed out; counted, not printed


class FakeOpenAI:
    """The server; a context manager (``start``/``close`` otherwise).

    ``models``: ids listed by GET /v1/models and accepted by chat requests (None: accept any model,
    list none). ``api_key``: the Bearer token required (None: no check); a wrong key is echoed in
    the 401 message, as a careless server would, to test redaction. ``max_lifetime_s``: the server
    stops by itself after this long; hangs end when it stops. ``respond``: body -> the n reply texts
    (default ``expected_texts``). ``plan`` may be replaced while the server runs.
    """

    def __init__(self, plan: Plan | None = None, models: list[str] | None = ("fake-model",),
                 api_key: str | None = None, max_lifetime_s: float = 60.0, respond: Respond | None = None):
        self.plan = plan
        self.respond = respond
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self.max_lifetime_s = max_lifetime_s
        self.records: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.handler_errors = 0
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._chat_index = 0
        self._stop = threading.Event()
        self._httpd: _Server | None = None

    # -- lifecycle

    def start(self) -> FakeOpenAI:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._watchdog = threading.Timer(self.max_lifetime_s, self.close)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._watchdog.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what happened

    @property
    def chat_requests(self) -> list[Recorded]:
        """Recorded POST /v1/chat/completions requests, in arrival order."""
        with self._lock:
            return sorted((r for r in self.records if r.index is not None), key=lambda r: r.index)

    @property
    def chat_count(self) -> int:
        return len(self.chat_requests)

    def faults_injected(self) -> dict[str, int]:
        """{fault label: how many chat requests got it}."""
        counts: dict[str, int] = {}
        for record in self.chat_requests:
            if record.fault is not None:
                counts[record.fault.label] = counts.get(record.fault.label, 0) + 1
        return counts

    # -- used by the handler

    def _record(self, handler: _Handler, body: Any) -> Recorded:
        record = Recorded(handler.command, handler.path, dict(handler.headers), body, time.monotonic())
        with self._lock:
            self.records.append(record)
        return record

    def _begin(self, record: Recorded, body: dict) -> Fault | None:
        with self._lock:
            record.index, self._chat_index = self._chat_index, self._chat_index + 1
            digest = hashlib.sha256(_canonical(body)).hexdigest()
            attempt = self._attempts.get(digest, 0)
            self._attempts[digest] = attempt + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            record.attempt = attempt
            record.fault = self.plan(record.index, body, attempt) if self.plan is not None else None
            return record.fault

    def _end(self, record: Recorded) -> None:
        with self._lock:
            self.in_flight -= 1
            record.end = time.monotonic()

    def _authorized(self, headers) -> bool:
        return self.api_key is None or headers.get("Authorization") == f"Bearer {self.api_key}"

    def _bad_key_message(self, headers) -> str:
        given = (headers.get("Authorization") or "").removeprefix("Bearer ")
        return f"Incorrect API key provided: {given or '(none)'}"
