"""Load for tests: a burst of chat requests on simultaneous connections, and a health probe (stdlib only).

    python tests/load_client.py burst PORT < bodies.json    # {"outcomes": [...], "connect_s": [...]}
    python tests/load_client.py probe PORT                  # until stdin closes: {"health_s": [...]}

``burst`` opens one connection per body at once, POSTs each to /v1/chat/completions (``Connection:
close``) and reads the answer: outcomes are [status, body] or the name of the error that ended it
("ConnectionResetError", ...). ``probe`` GETs /health on a fresh connection every 50 ms; a latency
is null for a failure. Each runs in its own process, so neither competes with the server under test,
nor with the other, for a GIL: in the server's process the burst added up to 0.5 s to the measured
health latency, and a probe beside 800 connections in one process measures that process's own
stalls. Every wait is bounded (TIMEOUT_S).
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time

TIMEOUT_S = 120.0
PROBE_EVERY_S = 0.05


def http_request(port: int, method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


def parse_response(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def post_all(port: int, bodies: list[dict]) -> tuple[list, list[float]]:
    """Per body (status, answer) or the name of the error that ended it; the seconds each connect took."""
    connect_s = []

    async def one(body):
        try:
            start = time.monotonic()
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT_S)
            connect_s.append(time.monotonic() - start)
            try:
                writer.write(http_request(port, "POST", "/v1/chat/completions", body))
                await writer.drain()
                return parse_response(await asyncio.wait_for(reader.read(), TIMEOUT_S))
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, ValueError, IndexError) as err:
            return type(err).__name__

    return list(await asyncio.gather(*(one(body) for body in bodies))), connect_s


class HealthProbe(threading.Thread):
    """GET /health on a fresh connection every PROBE_EVERY_S until stopped; each latency in seconds,
    None for a failure."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.latencies, self.stop = port, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(PROBE_EVERY_S):
            start = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(http_request(self.port, "GET", "/health"))
                    raw = b""
                    while chunk := sock.recv(4096):
                        raw += chunk
                ok = parse_response(raw) == (200, {"status": "ok"})
            except (OSError, ValueError, IndexError):
                ok = False
            self.latencies.append(time.monotonic() - start if ok else None)


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "burst":
        outcomes, connect_s = asyncio.run(post_all(port, json.load(sys.stdin)))
        json.dump({"outcomes": outcomes, "connect_s": connect_s}, sys.stdout)
        return
    probe = HealthProbe(port)
    probe.start()
    sys.stdin.read()  # until the test closes it
    probe.stop.set()
    probe.join(15)
    json.dump({"health_s": probe.latencies}, sys.stdout)


if __name__ == "__main__":
    main()
