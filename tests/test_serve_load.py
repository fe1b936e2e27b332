"""rlvf.serve under load and faults: 200 simultaneous clients, abandoned requests, shutdown, bad CLI values.

Everything runs against the real server (``start_server`` with the tiny random Llama, or the
``python -m rlvf.serve`` process) over loopback, with bounded loops and timeouts.

- Load: 200 requests on 200 connections opened at once are all answered, with no connection reset
  and every connection established within 1 s, while a probe on its own connections finds GET
  /health answering within 1 s throughout. With the standard library's listen backlog of 5 the
  kernel drops the connections that overflow it: depending on its settings they are reset, or wait
  for a SYN retransmit (1 s, 3 s, 7 s, ...; measured here: 15-28 s for the 200, health 1.07 s).
- Abandoned work: with a client timeout shorter than the generation, every attempt is cancelled
  server-side (counted in ``stats()``), the server is idle soon after the client gives up, and the
  tokens generated over all attempts stay within 1.2x those of the same requests fault-free (without
  cancellation they would be (1 + max_retries)x). The model's forward is slowed by a fixed sleep so
  that "shorter than the generation" holds on any machine.
- Shutdown: ``close(grace_s)`` halts a running batch after the grace (503), promptly.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rlvf.client import ChatClient, ChatRequest, EndpointConfig, Sampling
from rlvf.serve import LISTEN_BACKLOG, start_server

CONCURRENT = 200
HEALTH_LIMIT_S = 1.0
STEP_S = 0.02  # sleep added to every forward call in the abandoned-work tests
ABANDON_TIMEOUT_S = 0.25  # the impatient client's timeout: a few steps
ABANDON_TOKENS = 80  # max_tokens: generation takes >= 80 x STEP_S = 1.6 s, far over the timeout
ABANDON_RETRIES = 2


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with start_server(tiny_model_dir, teacher=True, served_model_name="tiny", device="cpu",
                      max_batch_size=16, batch_wait_ms=50) as s:
        yield s


def wait_until(predicate, timeout: float, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out waiting"
        time.sleep(step)
    return time.monotonic() - start


def slow_forward(monkeypatch, model) -> None:
    """Every forward call (one generation step) takes at least STEP_S longer."""
    forward = model.forward

    def slow(*args, **kwargs):
        time.sleep(STEP_S)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow)


def idle(server) -> bool:
    stats = server.stats()
    return stats["running"] == 0 and stats["queued"] == 0 and stats["in_flight"] == 0


# ----------------------------------------------------------------------------------------------
# 200 clients at once


LOAD_CLIENT = Path(__file__).with_name("load_client.py")


def burst(port: int, bodies: list[dict]) -> dict:
    """``bodies`` sent at once, with GET /health probed throughout, each from its own process (see
    tests/load_client.py): {"outcomes", "connect_s", "health_s"}."""
    probe = subprocess.Popen([sys.executable, str(LOAD_CLIENT), "probe", str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # a probe or two before the burst
        load = subprocess.run([sys.executable, str(LOAD_CLIENT), "burst", str(port)], input=json.dumps(bodies),
                              capture_output=True, text=True, timeout=300)
        out, _ = probe.communicate("", timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert load.returncode == 0 and probe.returncode == 0, load.stderr
    return {**json.loads(load.stdout), **json.loads(out)}


def load_bodies(count: int) -> list[dict]:
    """Varied requests: greedy and seeded sampling (two batch keys), different prompts and lengths,
    and every tenth one for the teacher (categories, which it computes in the request's thread)."""
    from rlvf import prompts as P
    from rlvf.feedback import FEEDBACK_DIR, load_feedbacks

    fb = load_feedbacks(FEEDBACK_DIR)[0]
    bodies = []
    for i in range(count):
        if i % 10 == 9:
            bodies.append({"model": "tinyworld-teacher", "seed": i, "max_tokens": 4,
                           "messages": P.categories_request(fb.content, fb.domain, 3)})
        else:
            bodies.append({"model": "tiny", "messages": [{"role": "user", "content": f"load test request {i}"}],
                           "temperature": 0 if i % 4 else 0.8, "seed": i, "max_tokens": 2 + i % 3})
    return bodies


def check_load(server, count: int) -> dict:
    """``count`` requests at once: all answered, none reset, every connect within 1 s, health within 1 s."""
    bodies = load_bodies(count)
    before = server.stats()
    start = time.monotonic()
    report = burst(server.port, bodies)
    outcomes, health = report["outcomes"], report["health_s"]
    failed = [o for o in outcomes if not isinstance(o, list) or o[0] != 200]
    numbers = {"answered": count - len(failed), "resets": outcomes.count("ConnectionResetError"),
               "failed": failed[:3], "connect_max_s": round(max(report["connect_s"], default=0), 3),
               "wall_s": round(time.monotonic() - start, 2), "health_probes": len(health),
               "health_max_s": max(health, key=lambda x: float("inf") if x is None else x),
               "health_p90_s": sorted(x for x in health if x is not None)[int(0.9 * len(health))],
               "generate_calls": server.stats()["generate_calls"] - before["generate_calls"]}
    print(f"\n{count} concurrent: {numbers}")
    assert not failed
    assert max(report["connect_s"]) < 1.0  # none waited for a SYN retransmit: the backlog held them all
    for body, (_, answer) in zip(bodies, outcomes):
        assert answer["object"] == "chat.completion" and answer["model"] == body["model"]
        assert body["model"] != "tiny" or answer["usage"]["completion_tokens"] <= body["max_tokens"]
    assert len(health) >= 3 and None not in health and max(health) < HEALTH_LIMIT_S
    return numbers


def test_200_concurrent_requests_all_answered_while_health_stays_fast(server):
    assert server._httpd.request_queue_size == LISTEN_BACKLOG >= 1024
    check_load(server, CONCURRENT)


@pytest.mark.slow
def test_500_concurrent_requests_all_answered_while_health_stays_fast(server):
    """500 connections and threads at once (800 passed too, with health up to 0.95 s on a machine
    loaded to 8 on 2 cores: too close to the bound for a test)."""
    check_load(server, 500)


# ----------------------------------------------------------------------------------------------
# Abandoned work


def abandon_requests(count: int) -> list[ChatRequest]:
    return [ChatRequest(f"a{i}", [{"role": "user", "content": f"abandoned prompt {i}"}],
                        Sampling(temperature=0, max_tokens=ABANDON_TOKENS)) for i in range(count)]


def run_client(server, requests, timeout_s: float, max_retries: int):
    endpoint = EndpointConfig(server.base_url, "tiny", api_key_env=None, max_concurrency=len(requests),
                              timeout_s=timeout_s, max_retries=max_retries)
    client = ChatClient(endpoint, cache_dir=None, progress=False, backoff_scale=0.01)
    return client.run(requests)


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in ("generated_tokens", "cancelled", "cancelled_tokens")}


def check_abandoned(server, monkeypatch, count: int, retries: int) -> dict:
    """``count`` requests fault-free, then with a client timeout shorter than their generation."""
    slow_forward(monkeypatch, server.app.hf.model)
    requests = abandon_requests(count)
    before = server.stats()
    results, failures = run_client(server, requests, timeout_s=120, max_retries=0)
    clean = delta(server.stats(), before)
    assert failures == [] and [r.finish_reasons for r in results] == [["length"]] * count
    assert clean == {"generated_tokens": count * ABANDON_TOKENS, "cancelled": 0, "cancelled_tokens": 0}

    before = server.stats()
    results, failures = run_client(server, requests, timeout_s=ABANDON_TIMEOUT_S, max_retries=retries)
    assert results == [] and [f.attempts for f in failures] == [1 + retries] * count
    assert all("timeout" in f.error for f in failures)
    idle_after = wait_until(lambda: idle(server), timeout=10)
    abandoned = delta(server.stats(), before)
    numbers = {"fault_free_tokens": clean["generated_tokens"], "abandoned_run_tokens": abandoned["generated_tokens"],
               "ratio": round(abandoned["generated_tokens"] / clean["generated_tokens"], 3),
               "attempts": count * (1 + retries), "cancelled": abandoned["cancelled"],
               "server_idle_after_s": round(idle_after, 3)}
    print(f"\nabandoned: {numbers}")
    assert abandoned["cancelled"] == count * (1 + retries)  # every attempt, before or during generation
    assert abandoned["cancelled_tokens"] == abandoned["generated_tokens"]
    assert abandoned["generated_tokens"] <= 1.2 * clean["generated_tokens"]
    assert idle_after < 2.0
    return numbers


def test_abandoned_requests_are_cancelled_and_cost_at_most_1_2x(server, monkeypatch):
    check_abandoned(server, monkeypatch, count=4, retries=ABANDON_RETRIES)


@pytest.mark.slow
def test_abandoned_requests_at_concurrency_32(server, monkeypatch):
    """32 at once, 3 retries: 128 attempts, more than two batches' worth queued behind each other."""
    check_abandoned(server, monkeypatch, count=32, retries=3)


def test_close_halts_running_work_after_the_grace(tiny_model_dir, monkeypatch):
    """A request still waiting when the grace ends is answered 503; close() returns soon after."""
    srv = start_server(tiny_model_dir, served_model_name="tiny", device="cpu")
    slow_forward(monkeypatch, srv.app.hf.model)
    answer = {}

    def request():
        answer["resp"] = httpx.post(f"{srv.base_url}/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "a long one"}], "max_tokens": 2000})

    thread = threading.Thread(target=request)
    thread.start()
    try:
        wait_until(lambda: srv.stats()["running"] == 1, timeout=30)
        start = time.monotonic()
        srv.close(grace_s=0.3)
        took = time.monotonic() - start
        thread.join(30)
    finally:
        srv.close()
    assert answer["resp"].status_code == 503 and answer["resp"].json()["error"]["code"] == "shutting_down"
    assert srv.stats()["halted"] == 1 and took < 0.3 + 2.0, took


# ----------------------------------------------------------------------------------------------
# Limits


def test_a_huge_prompt_does_not_hold_up_others(server):
    """Tokenizing a 1 MiB prompt (about a second) happens beside other requests, not before them."""
    big = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 200_000}], "max_tokens": 1}
    small = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 2}
    done = {}

    def post(name, body):
        response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
        done[name] = (time.monotonic(), response)

    big_thread = threading.Thread(target=post, args=("big", big))
    big_thread.start()
    time.sleep(0.1)
    post("small", small)
    big_thread.join(60)
    assert done["small"][1].status_code == 200
    assert done["big"][1].status_code == 400  # over the tiny model's 4096-token context, after tokenizing
    assert done["big"][1].json()["error"]["code"] == "context_length_exceeded"
    assert done["small"][0] < done["big"][0]


def test_teacher_item_limit_and_cancellation(server):
    from rlvf import prompts as P
    from rlvf.feedback import FEEDBACK_DIR, load_feedbacks
    from rlvf.protocol import ApiError, SamplingParams

    fb = load_feedbacks(FEEDBACK_DIR)[0]
    teacher = server.app.teacher
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        for count, n in ((10**8, 1), (600, 2)):
            messages = P.categories_request(fb.content, fb.domain, count)
            resp = c.post("/chat/completions", json={"model": "tinyworld-teacher", "messages": messages, "n": n})
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "too_many_items", resp.text
    before = teacher.cancelled
    with pytest.raises(ApiError) as err:
        teacher.complete(P.categories_request(fb.content, fb.domain, 3), SamplingParams(n=2), lambda: True)
    assert err.value.status == 499 and teacher.cancelled == before + 1


# ----------------------------------------------------------------------------------------------
# The command line


def run_main(argv, capsys, monkeypatch) -> tuple[int, list[str]]:
    from rlvf import serve

    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)  # keep pytest's own handlers
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve.main(argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


CLI_CASES = [  # (argv, a fragment of the one line)
    (["--port", "70000"], "--port: 70000 is out of range: must be from 0 to 65535"),
    (["--port", "-1"], "--port: -1 is out of range"),
    (["--port", "http"], "--port: 'http' is not an integer"),
    (["--max-batch-size", "0"], "--max-batch-size: 0 is out of range: must be >= 1"),
    (["--batch-wait-ms", "nan"], "--batch-wait-ms: nan must be a finite number >= 0"),
    (["--batch-wait-ms", "-5"], "--batch-wait-ms: -5.0 must be a finite number >= 0"),
    (["--default-max-tokens", "0"], "--default-max-tokens: 0 is out of range"),
    (["--max-prompt-bytes", "1" + "0" * 5000], "--max-prompt-bytes: '1000000000"),
    (["--shutdown-grace-s", "inf"], "--shutdown-grace-s: inf must be a finite number >= 0"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["--lora-modules", "maddie"], "expected NAME=PATH"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--teacher", "--default-max-tokens", "40000"], "--default-max-tokens 40000 is above --max-tokens-limit 32768"),
    (["--teacher", "--lora-modules", "a=b"], "--lora-modules needs --model"),
    (["--teacher", "--host", "192.0.2.1", "--port", "0"], "--host 192.0.2.1 --port 0: cannot listen there"),
    ([], "nothing to serve"),
]


@pytest.mark.parametrize("argv,fragment", CLI_CASES, ids=[" ".join(c[0])[:40] for c in CLI_CASES])
def test_cli_bad_values_are_one_line_exit_2(argv, fragment, capsys, monkeypatch):
    code, lines = run_main(argv, capsys, monkeypatch)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert len(lines[0]) < 300


def test_cli_port_out_of_range_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "rlvf.serve", "--port", "70000"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: argument --port: 70000 is out of range: must be from 0 to 65535"]
