"""Soak: many requests at concurrency 32 through a server that injects mixed faults (seeded).

Every fault kind of fake_openai.py is in the mix. The run must end exactly as a fault-free run does
(same results, same cache files), with each request answered once, and with every retry accounted
for: the client's retry counters, by reason, equal the faults the server injected, and each
request's attempts are 1 + the faults its body met, never more than max_retries + 1.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest

from fake_openai import FakeOpenAI, Fault, _canonical, random_faults
from rlvf.client import ChatClient, ChatRequest, EndpointConfig, Sampling

TIMEOUT_S = 2.5  # far above a normal reply on a loaded 2-core machine: a timeout here is a hang or a stall
MAX_RETRIES = 3
CONCURRENCY = 32

# (weight, fault, the reason the client retries it for; None: slow but a success)
MIX = [
    (3, Fault.error(500), "HTTP 500"),
    (3, Fault.error(502, "Bad Gateway", shape="text"), "HTTP 502"),
    (3, Fault.error(503, "overloaded", shape="flat"), "HTTP 503"),
    (3, Fault.rate_limited(retry_after="1"), "HTTP 429"),  # 1 s x backoff_scale 0.01
    (2, Fault.rate_limited(retry_after_ms="300"), "HTTP 429"),
    (1, Fault.hang(60), "read timeout"),
    (2, Fault.truncated_json(), "malformed body"),
    (2, Fault.malformed_json(), "malformed body"),
    (1, Fault.no_choices(), "malformed body"),
    (2, Fault.cut_body(), "connection closed"),
    (2, Fault.drop(), "connection closed"),
    (2, Fault.reset(), "connection reset"),
    (1, Fault.slow_body(3 * TIMEOUT_S, pieces=2), "read timeout"),  # half the body, then a stall
    (2, Fault.slow_body(0.2), None),  # trickles in well within the timeout
    (1, Fault.delay(0.1), None),
]
REASON = {fault: reason for _, fault, reason in MIX}


def soak_requests(count: int) -> list[ChatRequest]:
    """Distinct requests of varied shape (n of 1 or 2, some with stop strings)."""
    return [ChatRequest(f"q{i}", [{"role": "user", "content": f"soak prompt {i}"}],
                        Sampling(temperature=0.7, seed=i, n=1 + i % 2, max_tokens=32 + i % 7,
                                 stop=["\n\n"] if i % 5 == 0 else None)) for i in range(count)]


class CountingClient(ChatClient):
    """A ChatClient that records the most HTTP attempts it had in flight at once (the server cannot
    tell: it goes on serving a hung request the client has abandoned)."""

    in_flight = max_in_flight = 0

    async def _attempt(self, *args):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super()._attempt(*args)
        finally:
            self.in_flight -= 1


def run_batch(server: FakeOpenAI, requests: list[ChatRequest], cache_dir) -> tuple[ChatClient, list, list, list]:
    """(client, results, failures, every result passed to on_result) of one run."""
    endpoint = EndpointConfig(server.base_url, "fake-model", api_key_env=None, max_concurrency=CONCURRENCY,
                              timeout_s=TIMEOUT_S, max_retries=MAX_RETRIES, cache_namespace="soak")
    client = CountingClient(endpoint, cache_dir, progress=False, backoff_scale=0.01)
    seen = []
    results, failures = client.run(requests, on_result=seen.append)
    return client, results, failures, seen


def cache_files(root) -> dict[str, str]:
    return {p.name: p.read_text() for p in root.rglob("*") if p.is_file()}


def soak(count: int, tmp_path, seed: int = 0) -> dict:
    """Run ``count`` requests faulty and fault-free; check everything; return the numbers."""
    requests = soak_requests(count)
    with FakeOpenAI() as clean:
        _, expected, _, _ = run_batch(clean, requests, tmp_path / "clean")
    plan = random_faults(seed, rate=0.4, faults=[(w, f) for w, f, _ in MIX], max_per_request=MAX_RETRIES)
    with FakeOpenAI(plan=plan, max_lifetime_s=300) as server:
        t0 = time.monotonic()
        client, results, failures, seen = run_batch(server, requests, tmp_path / "faulty")
        wall = time.monotonic() - t0
    records = server.chat_requests

    # identical to the fault-free run: results in input order, and the cache file for file
    assert failures == []
    assert [(r.key, r.texts, r.finish_reasons, r.usage) for r in results] == \
           [(r.key, r.texts, r.finish_reasons, r.usage) for r in expected]
    assert cache_files(tmp_path / "faulty") == cache_files(tmp_path / "clean")  # no .tmp left, none twice
    assert len(cache_files(tmp_path / "faulty")) == count
    # each request answered exactly once, to the caller and by the server
    assert sorted(r.key for r in seen) == sorted(r.key for r in requests)
    by_body: dict[bytes, list] = {}
    for record in records:
        by_body.setdefault(_canonical(record.body), []).append(record)
    assert len(by_body) == count
    failing = [r for r in records if r.fault is not None and REASON[r.fault] is not None]
    for result, request in zip(results, requests):
        arrivals = by_body[_canonical(client.request_body(request))]
        answered = [r for r in arrivals if r.fault is None or REASON[r.fault] is None]
        assert len(answered) == 1 and answered[0] is arrivals[-1]
        assert [r.attempt for r in arrivals] == list(range(len(arrivals)))
        assert result.attempts == len(arrivals) <= MAX_RETRIES + 1
    # retries bounded and counted: the client's counters are the injected faults, by reason
    injected = Counter(REASON[r.fault] for r in failing)
    assert client.stats.retries == len(failing) == sum(r.attempts - 1 for r in results)
    assert client.stats.retry_reasons == dict(injected)
    assert client.stats.sent == len(records) == count + len(failing)
    assert (client.stats.requests, client.stats.failures, client.stats.cache_hits) == (count, 0, 0)
    assert client.max_in_flight == min(CONCURRENCY, count)
    assert len(failing) >= 0.3 * count  # the brief: at least 30% faults
    numbers = {"requests": count, "http_attempts": len(records), "faults_by_kind": server.faults_injected(),
               "retries": client.stats.retries, "retries_by_reason": client.stats.retry_reasons,
               "requests_with_a_fault": sum(1 for arr in by_body.values() if any(r.fault for r in arr)),
               "at_the_retry_bound": sum(1 for r in results if r.attempts == MAX_RETRIES + 1),
               "max_in_flight": client.max_in_flight, "wall_s": round(wall, 2)}
    print(f"\nsoak {numbers}")
    return numbers


def test_soak_100_requests(tmp_path):
    numbers = soak(100, tmp_path)
    assert len(numbers["faults_by_kind"]) >= 8  # a mix, not one kind


@pytest.mark.slow
def test_soak_1000_requests(tmp_path):
    numbers = soak(1000, tmp_path, seed=1)
    assert len(numbers["faults_by_kind"]) == len(MIX)  # every kind met at least once
    assert numbers["at_the_retry_bound"] > 0
