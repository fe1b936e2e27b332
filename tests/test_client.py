"""rlvf.client against the fault-injecting loopback server in fake_openai.py.

Delays are scaled: clients run with backoff_scale=0.01 (0.1 where a delay is measured), timeouts
of 0.5 s, so the whole file runs in a few seconds.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time

import httpx
import pytest

from fake_openai import FakeOpenAI, Fault, by_index, expected_texts, fail_first, first_of, random_faults
from rlvf.client import (ChatClient, ChatFailure, ChatRequest, EndpointConfig, Pacer, Sampling, api_key, cache_key,
                         check_endpoint, error_message, retry_delay)
from rlvf.errors import UserError
from rlvf.typed import check

SECRET = "sk-test-SECRET-0123456789"
ENV = "RLVF_TEST_API_KEY"


def make_client(server: FakeOpenAI, cache_dir=None, backoff_scale=0.01, **endpoint) -> ChatClient:
    fields = dict(base_url=server.base_url, model="fake-model", api_key_env=None, timeout_s=0.5, max_retries=3)
    return ChatClient(EndpointConfig(**{**fields, **endpoint}), cache_dir, progress=False, backoff_scale=backoff_scale)


def make_requests(count: int, marker_at: dict[int, str] | None = None, sampling: Sampling | None = None):
    marker_at = marker_at or {}
    return [ChatRequest(f"r{i}", [{"role": "user", "content": f"prompt {i} {marker_at.get(i, '')}".strip()}],
                        sampling or Sampling(temperature=0.7, seed=i)) for i in range(count)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def secret_env(monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    return ENV


# ----------------------------------------------------------------------------- request and response


def test_every_sampling_parameter_is_sent_explicitly(secret_env):
    sampling = Sampling(temperature=0.3, top_p=0.9, max_tokens=64, seed=7, n=2, stop=["\n\n"], top_k=40,
                        repetition_penalty=1.1)
    with FakeOpenAI(api_key=SECRET) as server:
        client = make_client(server, api_key_env=ENV, extra_body={"min_p": 0.05, "temperature": 9.0})
        results, failures = client.run([ChatRequest("a", [{"role": "user", "content": "hi"}], sampling),
                                        ChatRequest("b", [{"role": "user", "content": "yo"}], Sampling(0.0))])
    result = results[0]
    # the two requests are in flight together, so they may arrive in either order
    first, second = sorted(server.chat_requests, key=lambda rec: rec.body["messages"][0]["content"] != "hi")
    assert first.body == {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
                          "top_p": 0.9, "max_tokens": 64, "seed": 7, "n": 2, "stop": ["\n\n"], "top_k": 40,
                          "repetition_penalty": 1.1, "min_p": 0.05}
    # defaults are explicit too; unset seed/stop go as null, unset top_k/repetition_penalty are left out
    assert second.body == {"model": "fake-model", "messages": [{"role": "user", "content": "yo"}], "temperature": 0.0,
                           "top_p": 1.0, "max_tokens": 512, "seed": None, "n": 1, "stop": None, "min_p": 0.05}
    assert first.headers["Authorization"] == f"Bearer {SECRET}"
    assert result.texts == expected_texts(first.body) and len(result.texts) == 2
    assert result.finish_reasons == ["stop", "stop"] and result.usage["total_tokens"] > 0
    assert (result.cached, result.attempts) == (False, 1)


def test_no_authorization_header_without_a_key():
    with FakeOpenAI() as server:
        make_client(server).run(make_requests(1))
    assert "Authorization" not in server.chat_requests[0].headers


RETRYABLE = {  # id: (fault, the reason the client counts the retry under)
    "500": (Fault.error(500), "HTTP 500"), "502-text-body": (Fault.error(502, "Bad Gateway", shape="text"), "HTTP 502"),
    "503-flat-body": (Fault.error(503, "overloaded", shape="flat"), "HTTP 503"), "408": (Fault.error(408), "HTTP 408"),
    "409": (Fault.error(409), "HTTP 409"), "429": (Fault.error(429), "HTTP 429"),
    "hang-past-timeout": (Fault.hang(10), "read timeout"),
    "body-stalled-past-timeout": (Fault.slow_body(10, pieces=2), "read timeout"),
    "truncated-json": (Fault.truncated_json(), "malformed body"), "cut-body": (Fault.cut_body(), "connection closed"),
    "malformed-json": (Fault.malformed_json(), "malformed body"), "no-choices": (Fault.no_choices(), "malformed body"),
    "connection-reset": (Fault.reset(), "connection reset"), "connection-dropped": (Fault.drop(), "connection closed"),
    "400-x-should-retry-true": (Fault.error(400, x_should_retry="true"), "HTTP 400"),
}


@pytest.mark.parametrize("fault,reason", RETRYABLE.values(), ids=RETRYABLE.keys())
def test_retryable_fault_is_retried_then_succeeds(fault, reason):
    with FakeOpenAI(plan=fail_first(1, fault)) as server:
        client = make_client(server)
        (result,), failures = client.run(make_requests(1))
    assert failures == [] and result.attempts == 2
    assert result.texts == expected_texts(server.chat_requests[1].body)
    assert (client.stats.retries, client.stats.sent, server.chat_count) == (1, 2, 2)
    assert client.stats.retry_reasons == {reason: 1}
    assert [r.fault for r in server.chat_requests] == [fault, None]


def test_slow_body_is_not_a_failure():
    with FakeOpenAI(plan=fail_first(1, Fault.slow_body(0.3))) as server:
        (result,), _ = make_client(server).run(make_requests(1))
    assert result.attempts == 1


@pytest.mark.parametrize("header,value,seconds", [("retry_after", "3", 3.0), ("retry_after_ms", "4000", 4.0)])
def test_retry_after_headers_are_honoured(header, value, seconds):
    scale = 0.1  # the backoff alone would wait at most 0.5 s * 0.1 = 0.05 s
    with FakeOpenAI(plan=fail_first(1, Fault.rate_limited(**{header: value}))) as server:
        (result,), _ = make_client(server, backoff_scale=scale).run(make_requests(1))
    first, second = server.chat_requests
    assert result.attempts == 2
    assert seconds * scale <= second.start - first.start < seconds * scale + 1.0


def test_retry_delay_rules():
    assert retry_delay(0, {}, rand=lambda: 0.0) == 0.5
    assert retry_delay(2, {}, rand=lambda: 0.0) == 2.0
    assert retry_delay(9, {}, rand=lambda: 0.0) == 8.0  # capped
    assert retry_delay(0, {}, rand=lambda: 1.0) == 0.375  # jitter takes off up to a quarter
    assert retry_delay(0, {"retry-after-ms": "1500", "retry-after": "9"}) == 1.5  # ms first
    assert retry_delay(0, {"retry-after": "2.5"}) == 2.5
    for ignored in ("0", "-1", "61", "soon"):  # out of (0, 60] or unparsable: backoff
        assert retry_delay(1, {"retry-after": ignored}, rand=lambda: 0.0) == 1.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_delay(0, httpx.Headers({"Retry-After": date})) <= 30


def test_x_should_retry_false_stops_retrying():
    with FakeOpenAI(plan=fail_first(9, Fault.error(500, "no luck", x_should_retry="false"))) as server:
        client = make_client(server)
        results, failures = client.run(make_requests(1))
    assert results == [] and failures == [ChatFailure("r0", "HTTP 500: no luck", 1)]
    assert server.chat_count == 1 and client.stats.retries == 0


# ----------------------------------------------------------------------------- errors the user fixes


def test_400_before_any_success_is_fatal_and_not_retried():
    with FakeOpenAI(plan=fail_first(9, Fault.error(400, "Unrecognized request argument supplied: top_k"))) as server:
        with pytest.raises(UserError) as err:
            make_client(server, max_concurrency=1).run(make_requests(3))
    assert str(err.value) == (f"{server.base_url} rejected request 'r0' (400): Unrecognized request argument "
                              "supplied: top_k; check the sampling parameters and endpoint.extra_body")
    assert server.chat_count == 1


def test_400_after_a_success_fails_that_request_only():
    plan = fail_first(9, Fault.error(400, "maximum context length exceeded", shape="flat"), marker="LONG")
    with FakeOpenAI(plan=plan) as server:
        client = make_client(server, max_concurrency=1)
        results, failures = client.run(make_requests(4, {2: "LONG"}))
    assert [r.key for r in results] == ["r0", "r1", "r3"]
    assert failures == [ChatFailure("r2", "HTTP 400: maximum context length exceeded", 1)]
    assert server.chat_count == 4 and client.stats.retries == 0


def test_401_names_the_variable_and_never_shows_the_key(secret_env, tmp_path):
    with FakeOpenAI(api_key="the-right-key") as server:  # echoes the wrong key in its message
        with pytest.raises(UserError) as err:
            make_client(server, cache_dir=tmp_path, api_key_env=ENV).run(make_requests(2))
    assert str(err.value) == (f"{server.base_url} rejected the API key from ${ENV} (401): Incorrect API key "
                              "provided: [redacted]; check the key")
    assert server.chat_count <= 2 and list(tmp_path.rglob("*")) == []


def test_401_without_a_key_says_how_to_give_one():
    with FakeOpenAI(api_key="k") as server:
        with pytest.raises(UserError, match=r"requires an API key \(401\).*endpoint.api_key_env"):
            make_client(server).run(make_requests(1))


def test_403_is_fatal(secret_env):
    with FakeOpenAI(plan=fail_first(9, Fault.error(403, "Project does not have access"))) as server:
        with pytest.raises(UserError, match=r"\(403\): Project does not have access; check the key"):
            make_client(server, api_key_env=ENV).run(make_requests(1))


@pytest.mark.parametrize("shape", ["nested", "flat", "text"])
def test_404_names_the_model_for_every_error_body_shape(shape):
    with FakeOpenAI(plan=fail_first(9, Fault.error(404, "no such model here", shape=shape))) as server:
        with pytest.raises(UserError) as err:
            make_client(server).run(make_requests(1))
    assert str(err.value).startswith(f"model 'fake-model' not found at {server.base_url} (404): no such model here; "
                                     "check endpoint.model")
    assert server.chat_count == 1


def test_wrong_model_name_is_a_user_error():
    with FakeOpenAI(models=["other-model"]) as server:
        with pytest.raises(UserError, match=r"model 'fake-model' not found .*\(404\): The model `fake-model` does not"):
            make_client(server).run(make_requests(1))


def test_error_message_reads_every_body_shape():
    def message(status, content):
        return error_message(httpx.Response(status, content=content))
    assert message(400, b'{"error": {"message": "bad", "type": "x", "param": null, "code": null}}') == "bad"
    assert message(400, b'{"object": "error", "message": "flat", "type": "BadRequestError", "code": 400}') == "flat"
    assert message(400, b'{"error": "ollama style"}') == "ollama style"
    assert message(422, b'{"detail": "fastapi style"}') == "fastapi style"
    assert message(502, b"<html>\n  Bad   Gateway\n</html>") == "<html> Bad Gateway </html>"
    assert message(503, b"") == "Service Unavailable"


def test_unreachable_server_is_a_user_error():
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    client = ChatClient(EndpointConfig(base_url, "m", api_key_env=None, max_retries=2), progress=False,
                        backoff_scale=0.01)
    with pytest.raises(UserError) as err:
        client.run(make_requests(3))
    assert str(err.value) == f"cannot reach {base_url} (connection refused) after 3 attempts; is the server running?"


def test_a_fatal_error_cancels_the_rest_and_keeps_what_completed(tmp_path):
    plan = first_of(fail_first(9, Fault.error(401, "key revoked"), marker="REVOKED"), lambda i, b, a: Fault.delay(0.05))
    with FakeOpenAI(plan=plan) as server:
        with pytest.raises(UserError, match="key revoked"):
            make_client(server, cache_dir=tmp_path, max_concurrency=2).run(make_requests(20, {3: "REVOKED"}))
    assert server.chat_count < 10
    completed = list(tmp_path.rglob("*.json"))
    assert 2 <= len(completed) < server.chat_count


# ----------------------------------------------------------------------------- failures, cache, resuming


def test_exhausted_retries_are_reported_then_a_rerun_sends_only_those(tmp_path):
    requests = make_requests(4, {2: "DOOMED"})
    with FakeOpenAI(plan=fail_first(99, Fault.error(503, "overloaded"), marker="DOOMED")) as server:
        client = make_client(server, cache_dir=tmp_path, max_retries=2)
        results, failures = client.run(requests)
        assert [r.key for r in results] == ["r0", "r1", "r3"]
        assert failures == [ChatFailure("r2", "HTTP 503: overloaded", 3)]
        assert (client.stats.failures, client.stats.retries, server.chat_count) == (1, 2, 6)
        server.plan = None  # the server recovers
        again = make_client(server, cache_dir=tmp_path, max_retries=2)
        results, failures = again.run(requests)
    assert failures == [] and [(r.key, r.cached) for r in results] == [("r0", True), ("r1", True), ("r2", False),
                                                                          ("r3", True)]
    assert server.chat_count == 7 and "DOOMED" in server.chat_requests[-1].body["messages"][0]["content"]


def test_cache_hit_sends_nothing_and_returns_identical_results(tmp_path, secret_env):
    requests = make_requests(5)
    with FakeOpenAI() as server:
        first, _ = make_client(server, cache_dir=tmp_path, api_key_env=ENV).run(requests)
        sent = server.chat_count
        client = make_client(server, cache_dir=tmp_path, api_key_env=ENV)
        seen = []
        second, failures = client.run(requests, on_result=seen.append)
    assert sent == 5 and server.chat_count == 5 and failures == []
    assert [(r.key, r.texts, r.finish_reasons, r.usage) for r in second] == \
           [(r.key, r.texts, r.finish_reasons, r.usage) for r in first]
    assert all(r.cached and r.attempts == 0 for r in second) and seen == second
    assert (client.stats.cache_hits, client.stats.sent, client.stats.prompt_tokens) == (5, 0, 0)
    assert client.summary() == "5 requests (5 cached), 0 retries, 0 failed; 0 prompt + 0 completion tokens"


def test_cache_key_depends_on_every_request_field(tmp_path):
    with FakeOpenAI(models=None) as server:
        make_client(server, cache_dir=tmp_path).run(make_requests(1, sampling=Sampling(0.7)))
        make_client(server, cache_dir=tmp_path).run(make_requests(1, sampling=Sampling(0.7, top_k=5)))
        make_client(server, cache_dir=tmp_path, extra_body={"min_p": 0.1}).run(make_requests(1, sampling=Sampling(0.7)))
        make_client(server, cache_dir=tmp_path, model="other").run(make_requests(1, sampling=Sampling(0.7)))
    assert server.chat_count == 4 and len(list(tmp_path.rglob("*.json"))) == 4


def test_cache_namespace_replaces_the_url_in_cache_keys(tmp_path, secret_env):
    """By default a server on another port is another endpoint; one namespace shares the answers."""
    requests = make_requests(3)
    with FakeOpenAI() as first, FakeOpenAI() as second:
        make_client(first, cache_dir=tmp_path / "url").run(requests)
        make_client(second, cache_dir=tmp_path / "url").run(requests)  # default: the base_url
        make_client(first, cache_dir=tmp_path / "ns", cache_namespace="my-model").run(requests)
        moved = make_client(second, cache_dir=tmp_path / "ns", cache_namespace="my-model", api_key_env=ENV)
        results, _ = moved.run(requests)
    assert (first.chat_count, second.chat_count) == (6, 3)
    assert moved.stats.sent == 0 and all(r.cached for r in results)
    body = moved.request_body(requests[0])
    assert (tmp_path / "ns" / cache_key("my-model", body)[:2] / f"{cache_key('my-model', body)}.json").is_file()
    assert cache_key(first.base_url, body) == cache_key(first.base_url + "/", body)  # the form used before namespaces
    with pytest.raises(UserError, match="endpoint.cache_namespace: must be a non-empty string"):
        check(EndpointConfig(first.base_url, "m", cache_namespace=" "), "endpoint")


def test_killed_run_resumes_with_only_the_missing_requests(tmp_path):
    class Killed(Exception):
        pass

    seen = []

    def die_after_three(result):
        seen.append(result)
        if len(seen) == 3:
            raise Killed

    requests = make_requests(10)
    with FakeOpenAI(plan=lambda i, b, a: Fault.delay(0.02)) as server:
        with pytest.raises(Killed):
            make_client(server, cache_dir=tmp_path, max_concurrency=2).run(requests, on_result=die_after_three)
        kept = len(list(tmp_path.rglob("*.json")))
        time.sleep(0.1)  # let a request cancelled mid-send reach the server before counting
        before = server.chat_count
        client = make_client(server, cache_dir=tmp_path, max_concurrency=2)
        results, failures = client.run(requests)
    assert 3 <= kept < 10
    assert server.chat_count - before == 10 - kept == client.stats.sent
    assert client.stats.cache_hits == kept and failures == [] and [r.key for r in results] == [r.key for r in requests]


def test_a_server_that_dies_mid_run_stops_the_run(tmp_path):
    with FakeOpenAI() as server:
        def kill_after_r1(result):
            if result.key == "r1":
                server.close()
        client = make_client(server, cache_dir=tmp_path, max_concurrency=1, max_retries=2)
        with pytest.raises(UserError, match=r"cannot reach .* after 3 attempts; is the server running\?"):
            client.run(make_requests(6), on_result=kill_after_r1)
    assert len(list(tmp_path.rglob("*.json"))) == 2 and client.stats.sent == 5


def test_the_key_is_in_no_file_message_or_repr(tmp_path, secret_env):
    plan = fail_first(99, Fault.error(500, "boom"), marker="BROKEN")
    with FakeOpenAI(plan=plan, api_key=SECRET) as server:
        client = make_client(server, cache_dir=tmp_path, api_key_env=ENV, max_retries=1)
        results, failures = client.run(make_requests(3, {1: "BROKEN"}))
    assert len(results) == 2 and len(failures) == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(SECRET not in p.read_text() for p in files)
    assert all("model" in json.loads(p.read_text()) for p in files)
    for shown in (client, client.summary(), client.endpoint, client.stats, failures, results):
        assert SECRET not in repr(shown)


# ----------------------------------------------------------------------------- concurrency and rate limits


def test_concurrency_is_bounded():
    with FakeOpenAI(plan=lambda i, b, a: Fault.delay(0.1)) as server:
        results, _ = make_client(server, max_concurrency=3).run(make_requests(12))
    assert len(results) == 12 and server.max_in_flight == 3


def test_requests_per_minute_spaces_requests():
    with FakeOpenAI() as server:
        t0 = time.monotonic()
        make_client(server, max_concurrency=6, requests_per_minute=1200).run(make_requests(6))  # 0.05 s apart
        elapsed = time.monotonic() - t0
    starts = sorted(r.start for r in server.chat_requests)
    assert elapsed >= 0.25  # the sixth request cannot leave before 5 intervals
    assert starts[-1] - starts[0] >= 0.2  # and the server saw them spread out (with slack for jitter)


def test_pacer_books_tokens_and_takes_refunds():
    pacer = Pacer(per_minute=6000)  # 0.01 s per unit

    async def two_bookings():
        await pacer.acquire(10)  # immediate; books 0.1 s
        await pacer.acquire(10)  # waits for the first booking
    t0 = time.monotonic()
    asyncio.run(two_bookings())
    assert time.monotonic() - t0 >= 0.09
    booked = pacer._next
    pacer.refund(8)  # the second request used 2 tokens, not 10
    assert booked - pacer._next == pytest.approx(0.08)
    assert Pacer(per_minute=0).seconds_per_unit == 0  # unlimited


# ----------------------------------------------------------------------------- accounting, config, check_endpoint


def test_usage_and_cost_are_accounted():
    with FakeOpenAI(plan=by_index({0: Fault.error(503)})) as server:
        client = make_client(server, price_per_1m_input=2.0, price_per_1m_output=10.0)
        results, _ = client.run(make_requests(3))
    prompt = sum(r.usage["prompt_tokens"] for r in results)
    completion = sum(r.usage["completion_tokens"] for r in results)
    assert (client.stats.prompt_tokens, client.stats.completion_tokens) == (prompt, completion)
    assert client.stats.cost_usd == pytest.approx((prompt * 2 + completion * 10) / 1e6)
    assert client.summary() == (f"3 requests (0 cached), 1 retries (1 HTTP 503), 0 failed; "
                                f"{prompt} prompt + {completion} completion tokens ≈ $0.00")
    client.stats.prompt_tokens, client.stats.completion_tokens, client.stats.cost_usd = 51200, 9800, 0.2048
    assert client.summary().endswith("51,200 prompt + 9,800 completion tokens ≈ $0.20")


@pytest.mark.parametrize("field,value,message", [
    ("base_url", "api.openai.com/v1", r"endpoint.base_url: must be an http\(s\) URL"),
    ("model", "", "endpoint.model: must name a model"),
    ("max_concurrency", 0, "endpoint.max_concurrency: must be >= 1, got 0"),
    ("requests_per_minute", -1, "endpoint.requests_per_minute: must be >= 0"),
    ("timeout_s", 0, "endpoint.timeout_s: must be positive"),
    ("max_retries", -1, "endpoint.max_retries: must be >= 0"),
])
def test_endpoint_validation(field, value, message):
    fields = dict(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=None)
    with pytest.raises(UserError, match=message):
        check(EndpointConfig(**{**fields, field: value}), "endpoint")


def test_sampling_validation():
    with pytest.raises(UserError, match=r"request 'k': sampling.top_p: must be in \(0, 1\]"):
        with FakeOpenAI() as server:
            make_client(server).run([ChatRequest("k", [], Sampling(0.5, top_p=0))])
    assert server.chat_count == 0


def test_missing_key_variable(monkeypatch):
    monkeypatch.delenv("RLVF_NO_SUCH_KEY", raising=False)
    remote = EndpointConfig("https://api.example.com/v1", "m", api_key_env="RLVF_NO_SUCH_KEY")
    with pytest.raises(UserError, match="environment variable RLVF_NO_SUCH_KEY is not set"):
        ChatClient(remote, progress=False)
    for local in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert api_key(EndpointConfig(local, "m", api_key_env="RLVF_NO_SUCH_KEY")) is None


MALFORMED_KEYS = {  # a key that cannot go into an HTTP header: one line naming the variable, never the key
    "newline inside": ("sk-live-AAAA1111\nsk-live-BBBB2222", "contains a line break"),
    "carriage return": ("sk-live-AAAA1111\rBBBB2222", "contains a line break"),
    "curly quote": ("\u201csk-live-AAAA1111BBBB2222\u201d", "contains a non-ASCII character"),
    "non-breaking space": ("sk-live-AAAA1111\u00a0BBBB2222", "contains a non-ASCII character"),
    "space": ("Bearer sk-live-AAAA1111BBBB2222", "contains a space or control character"),
    "control": ("sk-live-AAAA1111\x07BBBB2222", "contains a space or control character"),
}


@pytest.mark.parametrize("case", list(MALFORMED_KEYS))
def test_malformed_key_is_one_line_naming_the_variable(monkeypatch, case):
    key, fragment = MALFORMED_KEYS[case]
    monkeypatch.setenv(ENV, key)
    with FakeOpenAI() as server:
        with pytest.raises(UserError) as err:
            make_client(server, api_key_env=ENV).run(make_requests(1))
    message = str(err.value)
    assert message.startswith(f"environment variable {ENV}: the API key in it {fragment}"), message
    assert "\n" not in message and "AAAA1111" not in message and "BBBB2222" not in message
    assert server.chat_count == 0  # refused before any request


def test_key_with_surrounding_whitespace_is_fine(monkeypatch):
    monkeypatch.setenv(ENV, f"  {SECRET}\n")  # as $(cat keyfile) or an editor leaves it
    assert api_key(EndpointConfig("https://api.example.com/v1", "m", api_key_env=ENV)) == SECRET


def test_check_endpoint(secret_env):
    with FakeOpenAI(models=["fake-model", "other"], api_key=SECRET) as server:
        endpoint = EndpointConfig(server.base_url, "fake-model", api_key_env=ENV)
        assert check_endpoint(endpoint) == ["fake-model", "other"]
        with pytest.raises(UserError, match=r"model 'nope' not found at .*, which serves fake-model, other; check"):
            check_endpoint(EndpointConfig(server.base_url, "nope", api_key_env=ENV))
    with FakeOpenAI(models=None, api_key="another-key") as server:
        with pytest.raises(UserError, match=rf"rejected the API key from \${ENV} \(401\).*\[redacted\]; check the key"):
            check_endpoint(EndpointConfig(server.base_url, "fake-model", api_key_env=ENV))
    with FakeOpenAI(models=None) as server:  # lists no models: nothing to check
        assert check_endpoint(EndpointConfig(server.base_url, "anything", api_key_env=None)) == []
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(UserError, match=r"cannot reach .* \(connection refused\); is the server running\?"):
        check_endpoint(EndpointConfig(base_url, "m", api_key_env=None))


# ----------------------------------------------------------------------------- the fake server itself


def test_fake_server_stops_promptly_while_a_request_hangs():
    server = FakeOpenAI(plan=fail_first(99, Fault.hang(30))).start()
    results, failures = make_client(server, timeout_s=0.2, max_retries=0).run(make_requests(1))
    assert results == [] and failures[0].error == "read timeout"
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 < 1.0


def test_random_faults_depend_on_the_request_not_the_arrival_order():
    faults = [(1, Fault.error(500)), (1, Fault.reset())]
    plan = random_faults(seed=3, rate=0.5, faults=faults, max_per_request=2)
    bodies = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(200)]
    drawn = [[plan(i, body, attempt) for attempt in range(3)] for i, body in enumerate(bodies)]
    assert drawn == [[plan(0, body, attempt) for attempt in range(3)] for body in bodies]
    assert all(row[2] is None for row in drawn)  # max_per_request: later attempts succeed
    hits = [f for row in drawn for f in row[:2] if f is not None]
    assert 150 < len(hits) < 250 and {f.kind for f in hits} == {"error", "reset"}  # about half of 400
    other = random_faults(seed=4, rate=0.5, faults=faults, max_per_request=2)
    assert [[other(i, body, a) for a in range(3)] for i, body in enumerate(bodies)] != drawn  # the seed matters


def test_fake_server_stops_by_itself():
    server = FakeOpenAI(max_lifetime_s=0.1).start()
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/models", timeout=1)
