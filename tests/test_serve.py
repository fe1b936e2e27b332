"""The OpenAI-compatible server: protocol shape, greedy = model.generate, batching, adapters, teacher, CLI.

The oracle for generation is Hugging Face's own ``model.generate`` (greedy, one prompt, no padding) on
the same random tiny Llama, and for adapters ``rlvf.peft_format.load_adapter`` on a fresh copy of it; the
teacher's oracle is ``OfflineTeacher.complete`` called directly.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest
import torch

from rlvf import prompts as P
from rlvf.errors import UserError
from rlvf.edits import apply_edit
from rlvf.feedback import FEEDBACK_DIR, load_feedbacks
from rlvf.serve import start_server
from rlvf.tinyworld.teacher import OfflineTeacher

HELLO = [{"role": "user", "content": "Hello! How can I help you today?"}]
PROMPTS = [  # different lengths, so a batch of them is left-padded
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain photosynthesis."}],
    [{"role": "user", "content": "Write a short text message to a friend about dinner plans tonight, please."}],
    HELLO,
]


# ----------------------------------------------------------------------------------------------
# Fixtures and oracles


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlvf.random_llama import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("serve-tiny"), seed=0)


def _make_adapter(model_dir, out, targets, r, alpha, use_rslora, seed):
    """A LoRA adapter with large random B, so it visibly changes the tiny model's greedy output."""
    from transformers import AutoModelForCausalLM

    from rlvf.lora import inject_lora, lora_modules
    from rlvf.peft_format import save_adapter

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inject_lora(model, targets, r=r, alpha=alpha, dropout=0.0, use_rslora=use_rslora, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=gen))
    return save_adapter(model, out)


@pytest.fixture(scope="module")
def adapters(model_dir, tmp_path_factory):
    """a1: r 4, α 8 on q/v; a2: rsLoRA r 8, α 16 (s = 16/√8, not a power of two) on o/up — different
    ranks and modules, so the shared LoRA modules are zero-padded and some are off per adapter."""
    root = tmp_path_factory.mktemp("serve-adapters")
    return {
        "a1": _make_adapter(model_dir, root / "a1", ["q_proj", "v_proj"], 4, 8, False, 1),
        "a2": _make_adapter(model_dir, root / "a2", ["o_proj", "up_proj"], 8, 16, True, 2),
    }


@pytest.fixture(scope="module")
def server(model_dir, adapters):
    with start_server(model_dir, adapters, teacher=True, served_model_name="tiny", device="cpu",
                      max_batch_size=8, batch_wait_ms=20) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def direct_greedy(model_dir, tokenizer, messages, max_new_tokens, adapter=None) -> tuple[str, int]:
    """(text, generated tokens incl. EOS) from HF generate on a fresh fp32 model, optionally + adapter."""
    from transformers import AutoModelForCausalLM

    from rlvf.peft_format import load_adapter

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        load_adapter(model, adapter)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, P)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def chat(client, model="tiny", messages=HELLO, **params):
    return client.post("/chat/completions", json={"model": model, "messages": messages, **params})


def check_completion(resp, model, n=1) -> dict:
    """Every required field of an OpenAI chat.completion, with its type."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["id"], str) and body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert type(body["created"]) is int and abs(body["created"] - time.time()) < 600
    assert body["model"] == model
    assert isinstance(body["choices"], list) and len(body["choices"]) == n
    for i, choice in enumerate(body["choices"]):
        assert choice["index"] == i
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert type(usage[key]) is int and usage[key] >= 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return body


def check_error(resp, status, param="unset") -> dict:
    """OpenAI's error body {"error": {message, type, param, code}}, no traceback."""
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if param != "unset":
        assert error["param"] == param
    return error


def content(resp) -> str:
    return resp.json()["choices"][0]["message"]["content"]


# ----------------------------------------------------------------------------------------------
# Protocol and generation


def test_models_lists_base_adapters_and_teacher(client):
    resp = client.get("/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny", "a1", "a2", "tinyworld-teacher"]
    for m in body["data"]:
        assert m["object"] == "model" and type(m["created"]) is int and isinstance(m["owned_by"], str)
    assert client.get(str(client.base_url).replace("/v1", "/health")).json() == {"status": "ok"}


def test_greedy_is_deterministic_and_equals_model_generate(client, model_dir, tokenizer):
    for messages in PROMPTS[:2]:
        expected, n_tokens = direct_greedy(model_dir, tokenizer, messages, 16)
        first = check_completion(chat(client, messages=messages, temperature=0, max_tokens=16), "tiny")
        second = check_completion(chat(client, messages=messages, temperature=0, max_tokens=16), "tiny")
        assert expected.strip() and first["choices"] == second["choices"]
        assert first["choices"][0]["message"]["content"] == expected
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert first["usage"]["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert first["usage"]["completion_tokens"] == n_tokens


def test_generation_uses_the_kv_cache(client, server, monkeypatch):
    """After the prompt step, each forward call sees one new token per row (the rest is cached)."""
    model, widths = server.app.hf.model, []
    forward = model.forward

    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    check_completion(chat(client, temperature=0, max_tokens=5, n=2), "tiny", n=2)
    assert widths[0][0] == 2 and widths[0][1] > 1 and widths[1:] == [torch.Size([2, 1])] * 4


def test_max_tokens_gives_length(client):
    for key in ("max_tokens", "max_completion_tokens"):
        body = check_completion(chat(client, temperature=0, **{key: 5}), "tiny")
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 5


def _ascii_window(text: str, start: int = 4) -> str:
    for i in range(start, len(text) - 3):
        if re.fullmatch(r"[A-Za-z ]{3}", text[i:i + 3]):
            return text[i:i + 3]
    raise AssertionError(f"no ASCII window in {text!r}")


def test_stop_strings_cut_the_text(client):
    full = content(chat(client, temperature=0, max_tokens=24))
    stop = _ascii_window(full)
    for value in (stop, [stop, "never-appears-zz"]):
        body = check_completion(chat(client, temperature=0, max_tokens=24, stop=value), "tiny")
        assert body["choices"][0]["message"]["content"] == full[: full.find(stop)]
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] < 24


def test_n_choices(client):
    greedy = check_completion(chat(client, temperature=0, max_tokens=6, n=2), "tiny", n=2)
    assert greedy["choices"][0]["message"] == greedy["choices"][1]["message"]
    assert greedy["usage"]["completion_tokens"] == 12
    sampled = check_completion(chat(client, temperature=1.0, max_tokens=8, n=2, seed=7), "tiny", n=2)
    assert sampled["choices"][0]["message"] != sampled["choices"][1]["message"]


def test_seeded_sampling_is_repeatable(client):
    params = dict(temperature=0.9, top_p=0.95, top_k=200, repetition_penalty=1.3, max_tokens=12)
    a, b = content(chat(client, seed=11, **params)), content(chat(client, seed=11, **params))
    c = content(chat(client, seed=12, **params))
    assert a == b != c


def test_top_k_1_and_tiny_top_p_sample_the_argmax(client):
    greedy = content(chat(client, temperature=0, max_tokens=10))
    assert content(chat(client, temperature=1.5, top_k=1, seed=3, max_tokens=10)) == greedy
    assert content(chat(client, temperature=1.5, top_p=1e-6, seed=4, max_tokens=10)) == greedy


def test_repetition_penalty_by_hand():
    """Seen tokens: positive logits ÷ p, negative × p; a token only in the left padding is unseen."""
    from rlvf.generation import RepetitionPenalty

    scores = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    input_ids = torch.tensor([[3, 3, 0, 1]])  # the first two positions are padding
    out = RepetitionPenalty(2.0, torch.tensor([2]))(input_ids, scores)
    assert out.tolist() == [[1.0, -4.0, 1.0, 4.0]]


def test_batcher_groups_by_key_caps_rows_and_fails_queued_jobs_on_close():
    """While the worker is busy with job 0, jobs of two keys queue up; they then run as one batch per
    key (at most 3 rows each, oldest first); on close the running batch finishes, queued jobs get 503."""
    from concurrent.futures import Future

    from rlvf.generation import Batcher, Job
    from rlvf.protocol import ApiError, Choice, Completion, SamplingParams

    release, batches = threading.Event(), []

    def run(jobs):
        batches.append([job.prompt_ids[0] for job in jobs])
        release.wait(10)
        return [answer(job.prompt_ids[0]) for job in jobs]

    def answer(i):
        return Completion(1, [Choice(f"answer {i}", "stop", 1)])

    def job(i, model="m", temperature=0.0, n=1):
        return Job(model, [i], SamplingParams(temperature=temperature, n=n), 4, Future())

    batcher = Batcher(run, max_batch_size=3, wait_s=0.0)
    first = job(0)
    batcher.submit(first)
    while not batches:
        time.sleep(0.001)
    jobs = [job(1), job(2, temperature=0.5), job(3, n=2), job(4), job(5, model="other")]
    for j in jobs:
        batcher.submit(j)
    release.set()
    assert [j.future.result(10) for j in [first, *jobs]] == [answer(i) for i in range(6)]
    assert batches == [[0], [1, 3], [2], [4], [5]]
    assert batcher.stats()["batch_sizes"] == [1, 3, 1, 1, 1]

    release.clear()
    running, queued = job(6), job(7, model="other")
    batcher.submit(running)
    while len(batches) < 6:
        time.sleep(0.001)
    batcher.submit(queued)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    release.set()
    closer.join(10)
    assert running.future.result(10) == answer(6)
    with pytest.raises(ApiError) as err:
        queued.future.result(10)
    assert err.value.status == 503
    with pytest.raises(ApiError):
        batcher.submit(job(8))


def test_concurrent_requests_are_batched_and_unchanged_by_batching(client, server):
    """8 threads at once (4 prompts × greedy on the base and on a1, plus a seeded sampled group):
    every answer equals the one the same request gets alone, and generate ran fewer, bigger batches."""
    sampled = dict(temperature=1.0, max_tokens=10, seed=5)
    cases = [("tiny", m, dict(temperature=0, max_tokens=8 + i)) for i, m in enumerate(PROMPTS)]
    cases += [("a1", m, dict(temperature=0, max_tokens=8)) for m in PROMPTS[:2]]
    cases += [("tiny", PROMPTS[0], sampled), ("tiny", PROMPTS[2], sampled)]
    alone = [content(chat(client, model, m, **p)) for model, m, p in cases]
    calls_before = server.stats()["generate_calls"]
    barrier, results = threading.Barrier(len(cases)), [None] * len(cases)

    def worker(i):
        model, messages, params = cases[i]
        barrier.wait()
        results[i] = chat(client, model, messages, **params)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (model, _, _), resp in zip(cases, results):
        check_completion(resp, model)
    # a seeded row draws only from its own generator, so batching does not change it
    assert [content(r) for r in results] == alone
    sizes = server.stats()["batch_sizes"][calls_before:]
    assert sum(sizes) == len(cases) and len(sizes) < len(cases) and max(sizes) > 1


# ----------------------------------------------------------------------------------------------
# Adapters


def test_adapters_match_load_adapter_and_base_matches_base(client, model_dir, tokenizer, adapters):
    expected = {name: direct_greedy(model_dir, tokenizer, HELLO, 12, adapters.get(name))[0]
                for name in ("tiny", "a1", "a2")}
    assert len(set(expected.values())) == 3  # the adapters do change the output
    for name in ("a1", "tiny", "a2", "a1", "a2", "tiny"):  # switching back and forth
        assert content(chat(client, name, temperature=0, max_tokens=12)) == expected[name], name


def test_bad_adapter_is_a_user_error(model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(UserError, match="adapter_config.json"):
        start_server(model_dir, {"bad": bad})
    with pytest.raises(UserError, match="not a directory"):
        start_server(model_dir, {"gone": tmp_path / "missing"})
    with pytest.raises(UserError, match="nothing to serve"):
        start_server()


# ----------------------------------------------------------------------------------------------
# Teacher


@pytest.fixture(scope="module")
def feedback():
    return load_feedbacks(FEEDBACK_DIR)[0]


def test_teacher_answers_its_requests(client, feedback):
    messages = P.categories_request(feedback.content, feedback.domain, 3)
    body = check_completion(chat(client, "tinyworld-teacher", messages, seed=5, temperature=0), "tinyworld-teacher")
    expected = OfflineTeacher(load_feedbacks(FEEDBACK_DIR)).complete(messages, seed=5)
    assert body["choices"][0]["message"]["content"] == expected
    assert len(P.parse_categories(expected)) == 3
    assert body["usage"]["completion_tokens"] == (len(expected) + 3) // 4  # documented estimate
    assert body["usage"]["prompt_tokens"] == (sum(len(m["content"]) for m in messages) + 3) // 4


def test_rewriting_teacher_through_the_pipeline_endpoints(tmp_path):
    """serve.teacher_revision reaches the served teacher, and a rewriting teacher never shares the
    response cache of an editing one."""
    import random

    from rlvf.config import load_config
    from rlvf.endpoints import local_endpoints
    from rlvf.tinyworld import world as tiny_world

    fbs = load_feedbacks(FEEDBACK_DIR)
    fb = next(f for f in fbs if f.name == "heart-emoji-maddie")
    req = tiny_world.sample_request(random.Random(3), "text_message", recipient="Maddie")
    messages = P.revise_request(fb.content, req.prompt, "Hi Maddie! See you at eight.")
    namespaces, replies = {}, {}
    for revision in ("edit", "rewrite"):
        cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "tinyworld-c3po.yaml",
                          ["serve.student=false", f"serve.teacher_revision={revision}"])
        with local_endpoints(cfg) as (teacher, _):
            namespaces[revision] = teacher.cache_namespace
            with httpx.Client(base_url=teacher.base_url, timeout=60) as c:
                body = check_completion(chat(c, teacher.model, messages, seed=2, temperature=0), teacher.model)
        replies[revision] = body["choices"][0]["message"]["content"]
        assert replies[revision] == OfflineTeacher([fb], revision=revision).complete(messages, seed=2)
    assert replies["edit"] == "IMPROVED_RESPONSE:\n" + apply_edit(fb.world.edit, "Hi Maddie! See you at eight.")
    assert replies["rewrite"] != replies["edit"]
    assert namespaces["rewrite"] == namespaces["edit"] + " revision=rewrite"


def test_teacher_unknown_request_is_400(client, feedback):
    error = check_error(chat(client, "tinyworld-teacher", HELLO), 400)
    assert "offline teacher" in error["message"]
    messages = P.categories_request("Some feedback nobody gave", feedback.domain, 3)
    assert "unknown feedback" in check_error(chat(client, "tinyworld-teacher", messages), 400)["message"]


# ----------------------------------------------------------------------------------------------
# Errors


def test_request_errors_have_openai_shape(client, server):
    error = check_error(chat(client, "nope"), 404, "model")
    assert error["message"] == "The model `nope` does not exist." and error["code"] == "model_not_found"
    bad_json = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    check_error(bad_json, 400)
    assert check_error(chat(client, stream=True), 400, "stream")["message"] == "streaming is not supported"
    check_error(client.post("/chat/completions", json={"messages": HELLO}), 400, "model")
    check_error(client.post("/chat/completions", json={"model": "tiny"}), 400, "messages")
    check_error(client.post("/chat/completions", json=[1, 2]), 400)
    for key, value in [("temperature", "hot"), ("max_tokens", 0), ("n", True), ("top_p", 0), ("stop", 3),
                       ("seed", 1.5), ("max_tokens", 10**9)]:
        check_error(chat(client, **{key: value}), 400, key)
    error = check_error(chat(client, max_tokens=4090), 400, "messages")  # the tiny model's context is 4096
    assert error["code"] == "context_length_exceeded"
    check_error(client.get("/chat/completions"), 405)
    check_error(client.post("/models", json={}), 405)
    check_error(client.get("/nowhere"), 404)


def test_numbers_out_of_range_are_400_and_edge_values_work(client):
    """Values that used to reach the model (a temperature of 1e-300 divides float32 logits by zero)
    and answered 500, which clients retry: each is a 400 naming the field, with a short message."""
    for key, value in [("temperature", 1e-300), ("temperature", 101), ("repetition_penalty", 1e-300),
                       ("repetition_penalty", 1000), ("top_k", 2**31), ("seed", 2**64), ("seed", -(2**63) - 1),
                       ("seed", 10**3999), ("n", 129), ("max_tokens", 32769), ("stop", ["x"] * 65)]:
        error = check_error(chat(client, **{key: value}), 400, key)
        assert len(error["message"]) < 200, error
    for key, value in [("temperature", 1e-5), ("temperature", 100), ("repetition_penalty", 0.01),
                       ("repetition_penalty", 100), ("seed", 2**64 - 1), ("seed", -(2**63)), ("top_k", 2**31 - 1)]:
        check_completion(chat(client, max_tokens=3, **{key: value}), "tiny")


def test_hostile_bodies_are_400(client):
    def post(text: str):
        return client.post("/chat/completions", content=text.encode("utf-8"),
                           headers={"content-type": "application/json"})

    hello = '"messages": [{"role": "user", "content": "hi"}]'
    digits = post('{"model": "tiny", %s, "seed": %s}' % (hello, "9" * 5000))
    assert "too many digits" in check_error(digits, 400)["message"]
    assert "nested too deeply" in check_error(post("[" * 200_000 + "]" * 200_000), 400)["message"]
    check_error(post('{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'), 400, "messages")
    check_error(post('{"model": "\\ud800", %s}' % hello), 400, "model")
    check_error(post('{"model": "tiny", "messages": [{"role": "\\udfff", "content": "hi"}]}'), 400, "messages")
    big = check_error(chat(client, messages=[{"role": "user", "content": "x" * (1 << 20)}]), 400, "messages")
    assert big["code"] == "prompt_too_large" and "1048576" in big["message"]
    many = check_error(chat(client, messages=[{"role": "user", "content": ""}] * 4097), 400, "messages")
    assert many["code"] == "too_many_messages"
    unknown = check_error(chat(client, "m" * 10_000), 404, "model")
    assert len(unknown["message"]) < 200


def _exchange(port: int, data: bytes, shut_write: bool = False) -> tuple[bytes, dict | None]:
    """(status line, JSON body) the server answers to raw bytes; read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), reply[:300]
    return head.split(b"\r\n")[0], json.loads(body) if body else None


POST_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
MALFORMED = [  # (raw request, status): none gets an HTML page or a 5xx
    (b"garbage\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET /health\r\n\r\n", 400),  # HTTP/0.9
    (b"GET /health HTTP/1.1 extra\r\n\r\n", 400),
    (b"G" * 70_000 + b"\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 120 + b"\r\n", 431),
    (b"GET /health HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", 431),
    (POST_HEAD + b"Content-Length: -5\r\n\r\n", 400),
    (POST_HEAD + b"Content-Length: 1e3\r\n\r\n", 400),
    (POST_HEAD + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n", 400),
    (POST_HEAD + b"\r\n", 411),
    (POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
]


@pytest.mark.parametrize("raw,status", MALFORMED, ids=[repr(r[:24]) for r, _ in MALFORMED])
def test_malformed_http_is_answered_in_json(server, raw, status):
    line, body = _exchange(server.port, raw)
    assert line.startswith(b"HTTP/1.1 %d " % status), line
    assert body is not None and set(body["error"]) == {"message", "type", "param", "code"}
    assert len(body["error"]["message"]) <= 300


def test_a_body_shorter_than_its_content_length_is_400(server):
    line, body = _exchange(server.port, POST_HEAD + b"Content-Length: 100\r\n\r\n{\"model\"", shut_write=True)
    assert line.startswith(b"HTTP/1.1 400 ") and "ended after 8 of its 100 bytes" in body["error"]["message"]


def test_every_method_is_answered_in_json(client, server):
    root = str(client.base_url).replace("/v1", "")
    for path in ("/health", "/v1/models", "/stats"):
        head = client.head(root + path)
        assert head.status_code == 200 and head.headers["content-type"] == "application/json"
        assert head.content == b"" and int(head.headers["content-length"]) > 0
    head = client.head("/chat/completions")
    assert head.status_code == 405 and head.headers["allow"] == "POST" and head.content == b""
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "BREW"):
        check_error(client.request(method, "/chat/completions"), 405)
        assert check_error(client.request(method, root + "/health"), 405)["code"] == "method_not_allowed"
        check_error(client.request(method, "/nowhere"), 404)
    line, body = _exchange(server.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                                        b"Connection: close\r\n\r\n")
    assert line.startswith(b"HTTP/1.1 404 ") and body["error"]["code"] == "not_found"
    stats = client.get(root + "/stats").json()
    assert {"generated_tokens", "cancelled", "cancelled_tokens", "halted", "generate_calls"} <= set(stats)


def test_a_request_whose_client_leaves_is_cut_between_steps(server):
    """RowStop asks the job between steps; once its client is gone the row ends, unanswered."""
    from rlvf.generation import Job
    from rlvf.protocol import SamplingParams

    hf, polls = server.app.hf, []

    def gone():
        polls.append(time.monotonic())
        return len(polls) > 3

    job = Job("tiny", hf.encode(HELLO), SamplingParams(temperature=0), 1000, Future(), gone)
    [completion] = hf.generate([job])
    choice = completion.choices[0]
    assert choice.finish_reason == "cancelled" and choice.text == "" and 0 < choice.tokens < 1000
    assert job.stop_reason == "client_gone" and len(polls) == 4


def test_batcher_drops_jobs_whose_client_left_and_counts_them():
    from rlvf.generation import Batcher, Job
    from rlvf.protocol import ApiError, Choice, Completion, SamplingParams

    seen = []

    def run(jobs):
        seen.extend(job.prompt_ids[0] for job in jobs)
        return [Completion(1, [Choice("x", "length", 5)]) for _ in jobs]

    batcher = Batcher(run, max_batch_size=8, wait_s=0.2)
    left = Job("m", [1], SamplingParams(), 5, Future(), client_gone=lambda: True)
    stays = Job("m", [2], SamplingParams(), 5, Future())
    batcher.submit(left)
    batcher.submit(stays)
    assert stays.future.result(10).choices[0].text == "x"
    with pytest.raises(ApiError) as err:
        left.future.result(10)
    assert err.value.status == 499 and seen == [2]
    stats = batcher.stats()
    assert (stats["cancelled"], stats["generated_tokens"], stats["cancelled_tokens"]) == (1, 5, 0)
    batcher.close()


def test_huge_body_is_413(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n{")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_a_bug_is_500_without_traceback_and_the_server_goes_on(client, server, monkeypatch):
    def broken(jobs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.app.batcher, "run", broken)
    error = check_error(chat(client, temperature=0, max_tokens=3), 500)
    assert error["type"] == "server_error" and "boom" not in error["message"]
    monkeypatch.undo()
    check_completion(chat(client, temperature=0, max_tokens=3), "tiny")


# ----------------------------------------------------------------------------------------------
# Binding, shutdown and the command line


def test_binds_loopback_by_default_and_closes_cleanly(model_dir):
    server = start_server(model_dir, device="cpu")
    assert server.address[0] == "127.0.0.1" and server.base_url == f"http://127.0.0.1:{server.port}/v1"
    result = {}

    def request():
        result["resp"] = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                                    json={"model": model_dir.name, "messages": HELLO, "max_tokens": 300})

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.app.batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.close(grace_s=30)  # the running batch finishes and is answered
    thread.join(30)
    assert time.monotonic() - start < 10
    check_completion(result["resp"], model_dir.name)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/models", timeout=5)


def test_port_in_use_is_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen"):
            start_server(teacher=True, port=taken.getsockname()[1])


def _read_ready_line(proc, timeout: float) -> str:
    """The first stderr line that says 'serving', read in a thread so a hang cannot block the test."""
    found = {}

    def read():
        for line in proc.stderr:
            if line.startswith("serving "):
                found["line"] = line.strip()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert "line" in found, "the server printed no 'serving ... at URL' line"
    return found["line"]


def _raw_post(port: int, body: dict) -> socket.socket:
    """A socket that has sent ``body`` to /v1/chat/completions (Connection: close)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_cli_serves_and_exits_0_promptly_on_sigterm_with_work_in_flight(model_dir):
    """Long generations in flight, most of them abandoned by their clients, one still awaited: on
    SIGTERM the process exits 0 within 5 s (the default 2 s grace, then the awaited one gets 503)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlvf.serve", "--model", str(model_dir), "--port", "0", "--teacher",
         "--served-model-name", "tiny", "--device", "cpu"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    socks = []
    try:
        line = _read_ready_line(proc, 120)
        match = re.fullmatch(r"serving tiny, tinyworld-teacher at (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match, line
        resp = httpx.post(f"{match[1]}/chat/completions", timeout=30,
                          json={"model": "tiny", "messages": HELLO, "temperature": 0, "max_tokens": 4})
        check_completion(resp, "tiny")
        socks = [_raw_post(int(match[2]), {"model": "tiny", "max_tokens": 3000, "temperature": 0, "messages": [
            {"role": "user", "content": f"a long answer please, number {i}"}]}) for i in range(6)]
        stats_url = match[1].replace("/v1", "/stats")
        deadline = time.monotonic() + 60
        while httpx.get(stats_url, timeout=10).json()["running"] == 0:
            assert time.monotonic() < deadline, "the long requests never started"
            time.sleep(0.05)
        for sock in socks[1:]:
            sock.close()  # abandoned
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - start
        status, body = _read_answer(socks[0])
        stderr = proc.stderr.read()
    finally:
        for sock in socks:
            sock.close()
        if proc.poll() is None:
            proc.kill()
    print(f"\nSIGTERM with 6 long generations in flight (5 abandoned): exit {code} after {took:.2f} s")
    assert code == 0 and took < 5.0
    assert status == 503 and body["error"]["code"] == "shutting_down"
    assert "Traceback" not in stderr


def test_cli_bad_lora_path_is_one_line_exit_2(model_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlvf.serve", "--model", str(model_dir), "--port", "0",
         "--lora-modules", f"x={tmp_path / 'no-such-adapter'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --lora-modules x=") and "not a directory" in lines[0]
