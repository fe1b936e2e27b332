"""An OpenAI-compatible chat-completions server: a local HF model with LoRA adapters, and the offline teacher.

    python -m rlvf.serve --model rlvf/tinyworld/model --lora-modules maddie=runs/maddie/adapter \\
        --teacher --port 8000
    # serving model, maddie, tinyworld-teacher at http://127.0.0.1:8000/v1

In-process (the pipeline, the tests)::

    with start_server("rlvf/tinyworld/model", {"maddie": "runs/maddie/adapter"}, teacher=True) as server:
        httpx.post(f"{server.base_url}/chat/completions", json={"model": "model", "messages": [...]})

It binds 127.0.0.1 unless told otherwise (port 0: a free port), loads everything before it listens,
and stops on SIGINT/SIGTERM (CLI) or ``close()``: it stops accepting, gives the running batch
``--shutdown-grace-s`` (default 2 s) to finish and answers it (after that it is halted between
steps and answered 503), answers queued requests with 503, joins the worker and exits 0 (a second
signal exits at once). Startup errors (model dir, adapter, feedback YAML, port in use) and bad
command-line values are one line, exit 2.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` ({"status": "ok"}),
``GET /stats`` (the counters of ``RunningServer.stats()`` but the batch sizes). HEAD works where GET
does; every other method or path, and a malformed request line or header, is answered in OpenAI's
error shape ``{"error": {message, type, param, code}}``, never an HTML page; bad client input is a
4xx, never a 5xx. The request's ``model`` picks the backend, as vLLM does with ``--lora-modules``:

* the base name (``--served-model-name``, default the model directory's name) runs the base model;
* an adapter name runs base + that adapter;
* the teacher name (``--teacher-name``) answers with ``OfflineTeacher.complete(messages, seed)``.
  Its usage counts are approximate (characters / 4, rounded up); it ignores temperature, top_p,
  top_k, repetition_penalty and max_tokens, honours ``stop``, and choice j > 0 of ``n`` uses seed
  (seed or 0) + j.

Load: the listen backlog holds ``LISTEN_BACKLOG`` connections (with the standard library's 5, a
burst of 200 clients met connection resets and SYN retransmits of 1-7 s); each connection has its
own daemon thread. A request whose client closes its connection (a client-side timeout) is
cancelled: the HF backend drops it before its batch runs or ends its rows between generation steps;
the teacher stops between choices. Cancellations and the tokens generated are counted
(``stats()``). A client that half-closes its connection while waiting for the answer looks the same
and is cancelled too (HTTP clients do not do that).

Per-request limits (``RequestLimits``; 400 naming the limit): prompt bytes (``--max-prompt-bytes``,
checked before tokenizing; prompt tokens are then bounded by the model's context), messages,
max_tokens (``--max-tokens-limit``), n (``--max-n``), and the teacher's items, COUNT × n
(``--max-teacher-items``). The teacher runs ``TEACHER_SLOTS`` requests at a time.

Batching, sampling and determinism (the HF model, its adapters): rlvf.generation; request parsing,
``stop`` and the response body: rlvf.protocol.
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import json
import logging
import math
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlvf.errors import UserError, exit_on_user_error
from rlvf.hub_models import is_hub_id
from rlvf.protocol import ApiError, Choice, Completion, RequestLimits, SamplingParams, completion_body, \
    clip, cut_at_stop, parse_chat_request, shorten, stop_error

if TYPE_CHECKING:  # torch and transformers load only when a model is served (a CLI error is instant)
    from rlvf.generation import HFBackend

log = logging.getLogger("rlvf.serve")

DEFAULT_TEACHER_NAME = "tinyworld-teacher"
MAX_BODY_BYTES = 8 * 1024 * 1024
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (Linux caps it at net.core.somaxconn)
SHUTDOWN_GRACE_S = 2.0
TEACHER_SLOTS = 2  # teacher requests computed at once (pure Python: more threads only fight for the GIL)
SLOT_POLL_S = 0.05  # how often a request waiting for a teacher slot checks that its client is there


def _never() -> bool:
    return False


# ----------------------------------------------------------------------------------------------
# The offline teacher backend


class TeacherBackend:
    """``OfflineTeacher.complete`` behind the chat protocol; runs in the request's thread, at most
    ``TEACHER_SLOTS`` at a time, and stops between choices when the client has left."""

    def __init__(self, sources, name: str, revision: str = "edit", max_items: int = RequestLimits.max_items):
        from rlvf.feedback import FEEDBACK_DIR, load_feedbacks
        from rlvf.tinyworld.teacher import OfflineTeacher

        feedbacks = load_feedbacks(FEEDBACK_DIR if sources in (True, None, []) else sources)
        try:
            self.teacher = OfflineTeacher(feedbacks, revision=revision)
        except ValueError as err:
            raise UserError(f"--teacher: {err}") from None
        self.name, self.max_items = name, max_items
        self._slots = threading.BoundedSemaphore(TEACHER_SLOTS)
        self._lock = threading.Lock()
        self.cancelled = 0  # requests whose client left before their answer was computed

    def complete(self, messages: list[dict[str, str]], params: SamplingParams,
                 client_gone=_never) -> Completion:
        from rlvf.tinyworld.teacher import TeacherError

        self._check_items(messages, params.n)
        choices = []
        with self._slot(client_gone):
            for j in range(params.n):
                if client_gone():
                    self._cancel()
                seed = params.seed if j == 0 else (params.seed or 0) + j
                try:
                    text = self.teacher.complete(messages, seed=seed)
                except TeacherError as err:
                    raise ApiError(400, str(err), "messages") from None
                text, _ = cut_at_stop(text, params.stop)
                choices.append(Choice(text, "stop", approx_tokens(text)))
        return Completion(approx_tokens("".join(m["content"] for m in messages)), choices)

    def _check_items(self, messages: list[dict[str, str]], n: int) -> None:
        """400 when the request asks for more than max_items prompts or categories (COUNT × n)."""
        from rlvf.prompts import ParseError, read_request

        try:
            count = max(1, int(read_request(messages).fields.get("COUNT", "1")))
        except (ParseError, ValueError):
            return  # not a counted request: the teacher itself says what is wrong with it
        if count * n > self.max_items:
            raise ApiError(400, f"the request asks for COUNT {count} x n {n} = {count * n} items; this server "
                                f"answers at most {self.max_items} per request (--max-teacher-items)",
                           "messages", "too_many_items")

    @contextlib.contextmanager
    def _slot(self, client_gone):
        """One of TEACHER_SLOTS; a request whose client leaves while it waits is cancelled."""
        while not self._slots.acquire(timeout=SLOT_POLL_S):
            if client_gone():
                self._cancel()
        try:
            yield
        finally:
            self._slots.release()

    def _cancel(self):
        with self._lock:
            self.cancelled += 1
        raise stop_error("client_gone")


def approx_tokens(text: str) -> int:
    """Token count estimate for the teacher's usage: characters / 4, rounded up."""
    return (len(text) + 3) // 4


# ----------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlvf-serve"
    timeout = 120  # idle keep-alive connections close after this many seconds
    server: "_HTTPServer"
    routes = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET", "/stats": "GET"}

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def __getattr__(self, name: str):
        """``do_<METHOD>`` for every method the base class looks up: all go to the router (404/405)."""
        if name.startswith("do_"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def parse_request(self) -> bool:
        """The base class's parsing, without HTTP/0.9 (a request line with no version): a 400."""
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "a request line without an HTTP version (HTTP/0.9) is not supported")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (malformed request line, bad version, header too long or too many,
        URI too long): JSON in OpenAI's shape, not its HTML page; the connection closes."""
        if self.request_version in ("", "HTTP/0.9"):
            self.request_version = "HTTP/1.1"  # nothing usable parsed: answer with a status line anyway
        code = 400 if code == 505 else code  # an HTTP version we do not speak is the client's error
        text = " ".join((message or self.responses.get(code, ("error",))[0]).split())[:300]
        log.info("%s: %d %s", self.address_string(), code, text)
        with contextlib.suppress(OSError):
            self._send(code, ApiError(code, text).body(), close=True)

    def _send(self, status: int, body: dict, close: bool = False) -> None:
        data = _json_bytes(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "POST" if self._route() == "/v1/chat/completions" else "GET, HEAD")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self) -> str:
        path = getattr(self, "path", None) or "/"
        return path.split("?", 1)[0].rstrip("/") or "/"

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        with self.server.in_flight():
            status, body = self._respond(method)
            try:
                self._send(status, body, close=status >= 400 and not self._body_consumed())
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                log.info("%s %s: the client left before its answer", method, self.path)

    def _respond(self, method: str) -> tuple[int, dict]:
        """(status, JSON body) for this request; errors in OpenAI's shape."""
        try:
            route = self._route()
            if route not in self.routes:
                raise ApiError(404, f"no route {clip(method, 20)} {clip(route)}; this server has "
                                    f"{', '.join(f'{m} {r}' for r, m in self.routes.items())}", code="not_found")
            allowed = self.routes[route]
            if method != allowed and not (method == "HEAD" and allowed == "GET"):
                raise ApiError(405, f"method {clip(method, 20)} not allowed on {route}; use {allowed}",
                               code="method_not_allowed")
            app = self.server.app
            if route == "/v1/chat/completions":
                return 200, app.chat(self._read_json(), self._client_gone)
            if route == "/v1/models":
                return 200, app.models()
            if route == "/stats":
                return 200, {k: v for k, v in app.stats().items() if k != "batch_sizes"}
            return 200, {"status": "ok"}
        except ApiError as err:
            return err.status, err.body()
        except Exception:  # a bug: logged with its traceback, answered without it
            log.exception("error handling %s %s", method, self.path)
            return 500, ApiError(500, "internal server error (see the server log)").body()

    def _client_gone(self) -> bool:
        """Whether the client closed (or reset) the connection: readable, yet nothing to read.

        Asked from the batcher's thread while this handler's thread waits for its answer.
        """
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # reset, or already closed
            return True

    def _body_consumed(self) -> bool:
        """False when an unread request body is left on the connection (then it must be closed)."""
        unread = self.headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in self.headers
        return self._body_read or not unread

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        if not length.strip().isdigit() or len(length) > 20:
            raise ApiError(400, f"bad Content-Length {shorten(length)}")
        length = int(length)
        if length > self.server.app.max_body_bytes:
            raise ApiError(413, f"request body of {length} bytes is larger than the limit of "
                                f"{self.server.app.max_body_bytes} bytes", code="request_too_large")
        return length

    def _read_json(self) -> Any:
        length = self._content_length()
        try:
            data = self.rfile.read(length)
        except OSError:  # TimeoutError included: the client sent less than it announced, then stalled
            raise ApiError(408, "timed out reading the request body", code="request_timeout") from None
        if len(data) < length:
            raise ApiError(400, f"the request body ended after {len(data)} of its {length} bytes")
        self._body_read = True
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON: {clip(str(err), 200)}") from None
        except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
            raise ApiError(400, "the request body has a number with too many digits") from None
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply") from None


def _json_bytes(body: dict) -> bytes:
    """UTF-8 JSON; ASCII escapes if a string cannot be encoded (a lone surrogate echoed in a message)."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, host: str, port: int, app: "App"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._cond = threading.Condition()
        super().__init__((host, port), _Handler, bind_and_activate=False)

    def process_request(self, request, client_address) -> None:
        """A thread for the connection, started without ``Thread.start()``'s wait until it runs.

        That wait is two GIL hand-offs per connection against the busy batcher thread; the accept
        loop then fell behind a burst, and a health check queued behind it: with 800 clients at
        once, /health took 1-2 s with Thread.start() and about 0.1 s without (2 busy cores).
        """
        _thread.start_new_thread(self.process_request_thread, (request, client_address))

    def server_bind(self) -> None:  # without HTTPServer's reverse DNS lookup (getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            (self._connections.add if add else self._connections.discard)(conn)

    @contextlib.contextmanager
    def in_flight(self):
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @property
    def active(self) -> int:
        """Requests being handled now."""
        with self._cond:
            return self._active

    def drain(self, timeout: float) -> None:
        """Wait for in-flight requests to be answered, then close every open connection."""
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0, timeout)
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class App:
    """Request routing to the backends (independent of HTTP)."""

    def __init__(self, hf: HFBackend | None, teacher: TeacherBackend | None, max_batch_size: int,
                 batch_wait_ms: float, default_max_tokens: int, max_body_bytes: int,
                 limits: RequestLimits = RequestLimits()):
        self.hf, self.teacher, self.limits = hf, teacher, limits
        self.default_max_tokens, self.max_body_bytes = default_max_tokens, max_body_bytes
        self.created = int(time.time())
        self.closing = False
        self.batcher = None
        if hf:
            from rlvf.generation import Batcher

            self.batcher = Batcher(hf.generate, max_batch_size, batch_wait_ms / 1000)

    @property
    def names(self) -> list[str]:
        return (self.hf.names if self.hf else []) + ([self.teacher.name] if self.teacher else [])

    def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "rlvf"} for name in self.names
        ]}

    def chat(self, body: Any, client_gone=_never) -> dict:
        """The chat.completion for ``body``; ``client_gone()`` says whether its client has left."""
        model, messages, params = parse_chat_request(body, self.limits)
        if self.closing:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        if self.teacher and model == self.teacher.name:
            return completion_body(model, self.teacher.complete(messages, params, client_gone))
        if not self.hf or model not in self.hf.names:
            raise ApiError(404, f"The model `{clip(model)}` does not exist.", "model", "model_not_found")
        from rlvf.chat_template import chat_format
        from rlvf.generation import Job

        asked = body.get("chat_template_kwargs")  # vLLM's per-request field: only the server's own values
        if asked is not None and asked != chat_format(self.hf.tokenizer).kwargs:
            raise ApiError(400, f"chat_template_kwargs: this server renders prompts with "
                                f"{chat_format(self.hf.tokenizer).kwargs} (--chat-template-kwargs, as training "
                                "does); a request cannot change them", "chat_template_kwargs")
        ids = self.hf.encode(messages)
        max_tokens = self.hf.resolve_max_tokens(len(ids), params.max_tokens, self.default_max_tokens)
        job = Job(model, ids, params, max_tokens, Future(), client_gone)
        self.batcher.submit(job)
        return completion_body(model, job.future.result())

    def stats(self) -> dict:
        """The batcher's counters (zeros without an HF model); ``cancelled`` adds the teacher's."""
        if self.batcher:
            stats = self.batcher.stats()
        else:
            stats = {"generate_calls": 0, "generated_tokens": 0, "cancelled": 0, "cancelled_tokens": 0,
                     "halted": 0, "running": 0, "queued": 0, "batch_sizes": []}
        stats["cancelled"] += self.teacher.cancelled if self.teacher else 0
        return stats


class RunningServer:
    """A started server: ``base_url`` (…/v1), ``port``, ``names``, ``stats()``, ``close()``; a context manager."""

    def __init__(self, httpd: _HTTPServer, app: App, host: str):
        self._httpd, self.app, self.host = httpd, app, host
        self.port = httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{self.port}/v1"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="rlvf-serve-http", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def names(self) -> list[str]:
        return self.app.names

    @property
    def address(self) -> tuple:
        """The bound socket address, (host, port)."""
        return self._httpd.socket.getsockname()

    def stats(self) -> dict:
        """Counters: generate_calls, batch_sizes (rows per generate call, the latest 10,000),
        generated_tokens (every generated row's tokens, rows cut short included), cancelled (requests
        whose client left: dropped before generation, cut between steps, or, for the teacher, between
        choices), cancelled_tokens (what the cut rows had generated), halted (cut at shutdown),
        running (1 while a batch generates), queued (jobs waiting for it), in_flight (requests being
        handled now)."""
        return {**self.app.stats(), "in_flight": self._httpd.active}

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting; give the running batch ``grace_s`` to finish, then halt it (503); queued
        requests get 503; answer, close every connection. Takes about grace_s at most. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + grace_s
        self.app.closing = True
        self._httpd.shutdown()  # the accept loop ends
        self._thread.join()
        if self.app.batcher:
            self.app.batcher.close(grace_s)
        self._httpd.drain(max(0.0, deadline - time.monotonic()) + 1.0)  # + the time to send the 503s
        self._httpd.server_close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_names(model, served_model_name, lora_modules: dict, teacher, teacher_name) -> str | None:
    """The base model's name (default: a Hub id as given, as vLLM names it, else the directory's name);
    UserError for a missing backend, clashing names or missing adapter dirs."""
    if model is None and teacher is None:
        raise UserError("nothing to serve: give --model PATH (a local Hugging Face model or a Hub id) and/or --teacher")
    if lora_modules and model is None:
        raise UserError("--lora-modules needs --model (the base model the adapters belong to)")
    default = (str(model) if is_hub_id(model) else Path(model).resolve().name) if model is not None else None
    name = served_model_name or default
    names = [n for n in (name, *lora_modules, teacher_name if teacher is not None else None) if n]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"model name {duplicates[0]!r} is used twice; give each model, adapter and the "
                        f"teacher its own name")
    for adapter, path in lora_modules.items():
        if not adapter or not Path(path).is_dir():
            raise UserError(f"--lora-modules {adapter}={path}: not a directory "
                            f"(a PEFT LoRA adapter folder is expected)")
    return name


def _check_settings(port, max_batch_size, batch_wait_ms, default_max_tokens, limits: RequestLimits) -> None:
    """UserError for a server setting out of range (the CLI checks the same before it gets here)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be a port number from 0 to 65535 (0: a free port)")
    if max_batch_size < 1 or not (math.isfinite(batch_wait_ms) and batch_wait_ms >= 0) or default_max_tokens < 1:
        raise UserError("--max-batch-size and --default-max-tokens must be >= 1, --batch-wait-ms >= 0")
    try:
        limits.check()
    except ValueError as err:
        raise UserError(f"request limits: {err}") from None
    if default_max_tokens > limits.max_tokens:
        raise UserError(f"--default-max-tokens {default_max_tokens} is above --max-tokens-limit {limits.max_tokens}")


def start_server(
    model: str | Path | None = None,
    lora_modules: dict[str, str | Path] | None = None,
    teacher: bool | str | Path | Sequence[str | Path] | None = None,
    *,
    revision: str | None = None,
    served_model_name: str | None = None,
    teacher_name: str = DEFAULT_TEACHER_NAME,
    teacher_revision: str = "edit",
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    max_batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    default_max_tokens: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: RequestLimits | None = None,
    model_key: str = "--model",
    chat_template: str | Path | None = None,
    chat_template_kwargs: dict | None = None,
) -> RunningServer:
    """Load the backends, bind ``host:port`` (0: a free port), and serve in background threads.

    ``model``: a local HF model directory or a Hub id (owner/name) at ``revision`` (rlvf.hub_models),
    its prompts rendered with ``chat_template`` (a Jinja file; default the tokenizer's) and
    ``chat_template_kwargs``, as training renders them;
    ``teacher``: None (no teacher), True (the shipped feedbacks), or feedback dirs/files;
    ``teacher_revision``: how it revises, "edit" or "rewrite" (``rlvf.tinyworld.teacher``);
    ``limits``: per-request limits (default ``RequestLimits()``); ``model_key``: what errors about
    ``model`` name (the pipeline passes its config key, model.path). Raises UserError for anything the
    user can fix (missing model dir, bad adapter or feedback, port in use, a value out of range).
    """
    lora_modules = dict(lora_modules or {})
    teacher = None if teacher is False else teacher
    limits = limits or RequestLimits()
    name = _check_names(model, served_model_name, lora_modules, teacher, teacher_name)
    _check_settings(port, max_batch_size, batch_wait_ms, default_max_tokens, limits)
    teacher_backend = (TeacherBackend(teacher, teacher_name, teacher_revision, limits.max_items)
                       if teacher is not None else None)
    httpd = _HTTPServer(host, port, None)
    try:
        httpd.server_bind()  # fails fast on a port in use; connections wait until server_activate
    except OSError as err:
        httpd.server_close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    try:
        hf = None
        if model:
            from rlvf.generation import HFBackend

            hf = HFBackend(model, name, {k: Path(v) for k, v in lora_modules.items()}, device, dtype, revision,
                           key=model_key, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs)
        httpd.app = App(hf, teacher_backend, max_batch_size, batch_wait_ms, default_max_tokens, max_body_bytes,
                        limits)
        httpd.server_activate()
    except BaseException:
        httpd.server_close()
        raise
    return RunningServer(httpd, httpd.app, host)


# ----------------------------------------------------------------------------------------------
# Command line


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH, e.g. maddie=runs/maddie/adapter")
    return name, path


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shorten(text)} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bound}")
        return value
    return parse


def _json_object(text: str) -> dict:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shorten(text)} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with rlvf's error style: one line ``error: ...`` (no usage block), exit code 2."""

    def error(self, message: str):
        print(f"error: {UserError(message)}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m rlvf.serve", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local Hugging Face model directory, or a Hub id (owner/name) resolved "
                        "through the Hugging Face cache (HF_HUB_OFFLINE=1: the cache only)")
    parser.add_argument("--revision", help="branch, tag or commit of the Hub model --model names (default: main)")
    parser.add_argument("--chat-template", metavar="FILE", help="Jinja chat template used instead of the "
                        "tokenizer's (as model.chat_template)")
    parser.add_argument("--chat-template-kwargs", type=_json_object, default={}, metavar="JSON",
                        help="extra chat-template variables as a JSON object, e.g. '{\"enable_thinking\": false}' "
                             "(as model.chat_template_kwargs)")
    parser.add_argument("--served-model-name", help="name of the base model in requests (default: the Hub id as "
                        "given, or the directory's name)")
    parser.add_argument("--lora-modules", type=_lora_module, nargs="+", action="extend", default=[],
                        metavar="NAME=PATH", help="LoRA adapters served under NAME (repeatable)")
    parser.add_argument("--teacher", nargs="*", metavar="FEEDBACK", help="serve the offline teacher with these "
                        "feedback dirs/files (none given: the shipped tiny-world feedbacks)")
    parser.add_argument("--teacher-name", default=DEFAULT_TEACHER_NAME)
    parser.add_argument("--teacher-revision", default="edit", choices=["edit", "rewrite"],
                        help="edit: the response it is given plus the feedback's edit; rewrite: a fresh "
                             "reply in the world's words, edited (default edit)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=_integer(0, 65535), default=8000, help="0 picks a free port")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--max-batch-size", type=_integer(1), default=16, help="most rows in one generate call")
    parser.add_argument("--batch-wait-ms", type=_seconds, default=5.0, help="how long to wait for a batch to fill")
    parser.add_argument("--default-max-tokens", type=_integer(1), default=256,
                        help="max_tokens when a request omits it")
    limits = RequestLimits()
    parser.add_argument("--max-prompt-bytes", type=_integer(1), default=limits.max_prompt_bytes,
                        help="most UTF-8 bytes of messages per request (checked before tokenizing)")
    parser.add_argument("--max-tokens-limit", type=_integer(1), default=limits.max_tokens,
                        help="largest max_tokens a request may ask for")
    parser.add_argument("--max-n", type=_integer(1), default=limits.max_n, help="largest n a request may ask for")
    parser.add_argument("--max-teacher-items", type=_integer(1), default=limits.max_items,
                        help="most prompts or categories (COUNT x n) one teacher request may ask for")
    parser.add_argument("--shutdown-grace-s", type=_seconds, default=SHUTDOWN_GRACE_S,
                        help="on SIGTERM/SIGINT, how long the running batch may go on before it is halted")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.chat_template or args.chat_template_kwargs) and not args.model:
        parser.error("--chat-template and --chat-template-kwargs apply to the --model being served; give --model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep stderr to the one "serving ..." line
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():  # a second signal: do not wait for the running batch
            print("stopping now", file=sys.stderr, flush=True)
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with exit_on_user_error():
        lora = dict(args.lora_modules)
        if len(lora) != len(args.lora_modules):
            raise UserError("--lora-modules: an adapter name is given twice")
        limits = RequestLimits(max_prompt_bytes=args.max_prompt_bytes, max_tokens=args.max_tokens_limit,
                               max_n=args.max_n, max_items=args.max_teacher_items)
        server = start_server(
            args.model, lora, args.teacher, revision=args.revision, served_model_name=args.served_model_name,
            chat_template=args.chat_template, chat_template_kwargs=args.chat_template_kwargs,
            teacher_name=args.teacher_name, teacher_revision=args.teacher_revision, host=args.host,
            port=args.port, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms, default_max_tokens=args.default_max_tokens, limits=limits,
        )
    print(f"serving {', '.join(server.names)} at {server.base_url}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    print("shutting down", file=sys.stderr, flush=True)
    server.close(args.shutdown_grace_s)


def _exit_without_teardown() -> None:
    """Exit 0 at once. Everything is answered and closed by now; the interpreter's teardown of
    torch's and transformers' modules would add 2-3 s on a busy 2-core machine to a SIGTERM."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    _exit_without_teardown()
