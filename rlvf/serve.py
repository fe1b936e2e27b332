"""An OpenAI-compatible chat-completions server: a local HF model with LoRA adapters, and the offline teacher.

    python -m rlvf.serve --model rlvf/tinyworld/model --lora-modules maddie=runs/maddie/adapter \\
        --teacher --port 8000
    # serving model, maddie, tinyworld-teacher at http://127.0.0.1:8000/v1

In-process (the pipeline, the tests)::

    with start_server("rlvf/tinyworld/model", {"maddie": "runs/maddie/adapter"}, teacher=True) as server:
        httpx.post(f"{server.base_url}/chat/completions", json={"model": "model", "messages": [...]})

It binds 127.0.0.1 unless told otherwise (port 0: a free port), loads everything before it listens,
and stops on SIGINT/SIGTERM (CLI) or ``close()``: it stops accepting, lets the running batch finish
and answers it, answers queued requests with 503, joins the worker and exits 0 (a second signal
exits at once). Startup errors (model dir, adapter, feedback YAML, port in use) are one line, exit 2.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. The request's ``model``
picks the backend, as vLLM does with ``--lora-modules``:

* the base name (``--served-model-name``, default the model directory's name) runs the base model;
* an adapter name runs base + that adapter;
* the teacher name (``--teacher-name``) answers with ``OfflineTeacher.complete(messages, seed)``.
  Its usage counts are approximate (characters / 4, rounded up); it ignores temperature, top_p,
  top_k, repetition_penalty and max_tokens, honours ``stop``, and choice j > 0 of ``n`` uses seed
  (seed or 0) + j.

Batching, sampling and determinism (the HF model, its adapters): rlvf.generation; request parsing,
``stop`` and the response body: rlvf.protocol.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

from rlvf.errors import UserError, exit_on_user_error
from rlvf.generation import Batcher, HFBackend, Job
from rlvf.protocol import ApiError, Choice, Completion, SamplingParams, completion_body, cut_at_stop, \
    parse_chat_request

log = logging.getLogger("rlvf.serve")

DEFAULT_TEACHER_NAME = "tinyworld-teacher"
MAX_BODY_BYTES = 8 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Backend 2: the offline teacher


class TeacherBackend:
    """``OfflineTeacher.complete`` behind the chat protocol; runs in the request's thread."""

    def __init__(self, sources, name: str, revision: str = "edit"):
        from rlvf.feedback import FEEDBACK_DIR, load_feedbacks
        from rlvf.tinyworld.teacher import OfflineTeacher

        feedbacks = load_feedbacks(FEEDBACK_DIR if sources in (True, None, []) else sources)
        try:
            self.teacher = OfflineTeacher(feedbacks, revision=revision)
        except ValueError as err:
            raise UserError(f"--teacher: {err}") from None
        self.name = name

    def complete(self, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        from rlvf.tinyworld.teacher import TeacherError

        choices = []
        for j in range(params.n):
            seed = params.seed if j == 0 else (params.seed or 0) + j
            try:
                text = self.teacher.complete(messages, seed=seed)
            except TeacherError as err:
                raise ApiError(400, str(err), "messages") from None
            text, _ = cut_at_stop(text, params.stop)
            choices.append(Choice(text, "stop", approx_tokens(text)))
        return Completion(approx_tokens("".join(m["content"] for m in messages)), choices)


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

    def _send(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "POST" if self._route() == "/v1/chat/completions" else "GET")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

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
        routes = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}
        try:
            route = self._route()
            if route not in routes:
                raise ApiError(404, f"no route {method} {route}; this server has "
                                    f"POST /v1/chat/completions, GET /v1/models, GET /health", code="not_found")
            if routes[route] != method:
                raise ApiError(405, f"method {method} not allowed on {route}; use {routes[route]}",
                               code="method_not_allowed")
            if route == "/v1/chat/completions":
                return 200, self.server.app.chat(self._read_json())
            if route == "/v1/models":
                return 200, self.server.app.models()
            return 200, {"status": "ok"}
        except ApiError as err:
            return err.status, err.body()
        except Exception:  # a bug: logged with its traceback, answered without it
            log.exception("error handling %s %s", method, self.path)
            return 500, ApiError(500, "internal server error (see the server log)").body()

    def _body_consumed(self) -> bool:
        """False when an unread request body is left on the connection (then it must be closed)."""
        unread = self.headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in self.headers
        return self._body_read or not unread

    def _read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        try:
            length = int(length)
        except ValueError:
            raise ApiError(400, f"bad Content-Length {length!r}") from None
        if length < 0 or length > self.server.app.max_body_bytes:
            raise ApiError(413, f"request body of {length} bytes is larger than the limit of "
                                f"{self.server.app.max_body_bytes} bytes", code="request_too_large")
        data = self.rfile.read(length)
        self._body_read = True
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from None

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, app: "App"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._cond = threading.Condition()
        super().__init__((host, port), _Handler, bind_and_activate=False)

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
                 batch_wait_ms: float, default_max_tokens: int, max_body_bytes: int):
        self.hf, self.teacher = hf, teacher
        self.default_max_tokens, self.max_body_bytes = default_max_tokens, max_body_bytes
        self.created = int(time.time())
        self.closing = False
        self.batcher = Batcher(hf.generate, max_batch_size, batch_wait_ms / 1000) if hf else None

    @property
    def names(self) -> list[str]:
        return (self.hf.names if self.hf else []) + ([self.teacher.name] if self.teacher else [])

    def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "rlvf"} for name in self.names
        ]}

    def chat(self, body: Any) -> dict:
        model, messages, params = parse_chat_request(body)
        if self.closing:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        if self.teacher and model == self.teacher.name:
            return completion_body(model, self.teacher.complete(messages, params))
        if not self.hf or model not in self.hf.names:
            raise ApiError(404, f"The model `{model}` does not exist.", "model", "model_not_found")
        ids = self.hf.encode(messages)
        max_tokens = self.hf.resolve_max_tokens(len(ids), params.max_tokens, self.default_max_tokens)
        job = Job(model, ids, params, max_tokens, Future())
        self.batcher.submit(job)
        return completion_body(model, job.future.result())


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
        """{"generate_calls": int, "batch_sizes": [rows per generate call]} of the HF backend."""
        sizes = list(self.app.batcher.batch_sizes) if self.app.batcher else []
        return {"generate_calls": len(sizes), "batch_sizes": sizes}

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the running batch (queued requests get 503), answer, close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.app.closing = True
        self._httpd.shutdown()  # the accept loop ends
        self._thread.join()
        if self.app.batcher:
            self.app.batcher.close(timeout)
        self._httpd.drain(timeout)
        self._httpd.server_close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_names(model, served_model_name, lora_modules: dict, teacher, teacher_name) -> str | None:
    """The base model's name; UserError for a missing backend, clashing names or missing adapter dirs."""
    if model is None and teacher is None:
        raise UserError("nothing to serve: give --model PATH (a local Hugging Face model) and/or --teacher")
    if lora_modules and model is None:
        raise UserError("--lora-modules needs --model (the base model the adapters belong to)")
    name = (served_model_name or Path(model).resolve().name) if model is not None else None
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


def start_server(
    model: str | Path | None = None,
    lora_modules: dict[str, str | Path] | None = None,
    teacher: bool | str | Path | Sequence[str | Path] | None = None,
    *,
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
) -> RunningServer:
    """Load the backends, bind ``host:port`` (0: a free port), and serve in background threads.

    ``teacher``: None (no teacher), True (the shipped feedbacks), or feedback dirs/files;
    ``teacher_revision``: how it revises, "edit" or "rewrite" (``rlvf.tinyworld.teacher``). Raises
    UserError for anything the user can fix (missing model dir, bad adapter or feedback, port in use).
    """
    lora_modules = dict(lora_modules or {})
    teacher = None if teacher is False else teacher
    name = _check_names(model, served_model_name, lora_modules, teacher, teacher_name)
    if max_batch_size < 1 or batch_wait_ms < 0 or default_max_tokens < 1:
        raise UserError("--max-batch-size and --default-max-tokens must be >= 1, --batch-wait-ms >= 0")
    teacher_backend = TeacherBackend(teacher, teacher_name, teacher_revision) if teacher is not None else None
    httpd = _HTTPServer(host, port, None)
    try:
        httpd.server_bind()  # fails fast on a port in use; connections wait until server_activate
    except OSError as err:
        httpd.server_close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    try:
        hf = HFBackend(model, name, {k: Path(v) for k, v in lora_modules.items()}, device, dtype) if model else None
        httpd.app = App(hf, teacher_backend, max_batch_size, batch_wait_ms, default_max_tokens, max_body_bytes)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local Hugging Face model directory")
    parser.add_argument("--served-model-name", help="name of the base model in requests (default: the dir name)")
    parser.add_argument("--lora-modules", type=_lora_module, nargs="+", action="extend", default=[],
                        metavar="NAME=PATH", help="LoRA adapters served under NAME (repeatable)")
    parser.add_argument("--teacher", nargs="*", metavar="FEEDBACK", help="serve the offline teacher with these "
                        "feedback dirs/files (none given: the shipped tiny-world feedbacks)")
    parser.add_argument("--teacher-name", default=DEFAULT_TEACHER_NAME)
    parser.add_argument("--teacher-revision", default="edit", choices=["edit", "rewrite"],
                        help="edit: the response it is given plus the feedback's edit; rewrite: a fresh "
                             "reply in the world's words, edited (default edit)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--max-batch-size", type=int, default=16, help="most rows in one generate call")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long to wait for a batch to fill")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request omits it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        server = start_server(
            args.model, lora, args.teacher, served_model_name=args.served_model_name,
            teacher_name=args.teacher_name, teacher_revision=args.teacher_revision, host=args.host,
            port=args.port, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
            default_max_tokens=args.default_max_tokens,
        )
    print(f"serving {', '.join(server.names)} at {server.base_url}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    print("shutting down", file=sys.stderr, flush=True)
    server.close()


if __name__ == "__main__":
    main()
