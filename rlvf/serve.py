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
* an adapter name runs base + that adapter. The base model is loaded once; every adapter's tensors
  are loaded and checked against it once, at startup. One set of ``LoRALinear`` modules covers the
  union of the adapters' modules at rank R = the largest adapter rank; activating adapter X copies
  [s_X·A_X; 0] (R, in) and [B_X, 0] (out, R) into them, so each adapter computes exactly
  W x + s_X·B_X A_X x (modules X does not adapt are switched off). The base name runs inside
  ``disable_adapters``;
* the teacher name (``--teacher-name``) answers with ``OfflineTeacher.complete(messages, seed)``.
  Its usage counts are approximate (characters / 4, rounded up); it ignores temperature, top_p,
  top_k, repetition_penalty and max_tokens, honours ``stop``, and choice j > 0 of ``n`` uses seed
  (seed or 0) + j.

Batching: requests for the HF model are queued; one worker thread takes the oldest, waits up to
``batch_wait_ms`` for more, and runs every queued request with the same (model name, temperature,
top_p, top_k, repetition_penalty) — up to ``max_batch_size`` rows, a request counting ``n`` rows — as
one left-padded ``model.generate`` call with a KV cache. ``max_tokens`` and ``stop`` are per row
(a stopping criterion), so they do not split batches.

Sampling: temperature 0 is greedy (argmax, ties to the lowest token id, as ``generate`` does).
Otherwise logits ÷ temperature, then top-k, then top-p, then one draw per row from that row's own
``torch.Generator``, seeded from (seed, choice index) when the request has a seed, else from fresh
OS randomness. repetition_penalty (CTRL / vLLM style: positive logits ÷ p, negative × p, over the
prompt and output tokens, padding excluded) applies to greedy and sampled rows. Unset parameters take
the OpenAI defaults (temperature 1, top_p 1, no top_k, repetition_penalty 1); the model's
generation_config.json sampling defaults are ignored (its EOS ids are kept); max_tokens defaults to
``default_max_tokens``, capped by the context length.

Determinism: a request with a seed gets the same choices every time it is sent to the same server
build (model, adapter, device, dtype, library versions), whichever requests share its batch —
its random draws come only from its own generators — with one caveat: a row's logits may differ in
the last bits between batch shapes (padding, matmul blocking), which changes a token only at a
near-tie. Greedy requests are repeatable in the same sense. Requests without a seed are random.

Requests: unknown fields (presence_penalty, logprobs, tools, …) are ignored; ``stream: true``, bad
JSON and missing or wrongly typed fields are 400s; bodies over 8 MiB are 413s. With temperature 0,
``n`` > 1 gives n identical choices.

``stop`` strings (a string or a list) cut the text before the earliest match, finish_reason
"stop"; an EOS token also gives "stop"; reaching max_tokens gives "length". completion_tokens
counts the generated tokens, up to and including the EOS token or the token completing a stop
string, summed over the ``n`` choices.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, \
    StoppingCriteriaList

from rlvf.errors import UserError, exit_on_user_error

log = logging.getLogger("rlvf.serve")

DEFAULT_TEACHER_NAME = "tinyworld-teacher"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_N = 128


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


def _number(body: dict, key: str, default, *, integer: bool = False, low=None, high=None,
            low_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise ApiError(400, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ApiError(400, f"{key} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}", key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    return tuple(s for s in stop if s)


def _messages(body: dict) -> list[dict[str, str]]:
    """[{role, content}] with text-part lists joined; anything else is a 400."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_chat_request(body: Any) -> tuple[str, list[dict[str, str]], SamplingParams]:
    """Validate a chat-completions body: (model, messages, params). Unknown fields are ignored."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("stream"):
        raise ApiError(400, "streaming is not supported", "stream")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model must be a non-empty string", "model")
    messages = _messages(body)
    max_tokens = _number(body, "max_tokens", None, integer=True, low=1)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, integer=True, low=1)
    top_k = _number(body, "top_k", 0, integer=True, low=-1)
    params = SamplingParams(
        temperature=float(_number(body, "temperature", 1.0, low=0)),
        top_p=float(_number(body, "top_p", 1.0, low=0, high=1, low_open=True)),
        top_k=max(top_k, 0),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, low=0, low_open=True)),
        max_tokens=max_tokens,
        n=_number(body, "n", 1, integer=True, low=1, high=MAX_N),
        seed=_number(body, "seed", None, integer=True),
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
    finish_reason: str  # "stop" | "length"
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


# ----------------------------------------------------------------------------------------------
# Sampling inside model.generate (which itself runs greedy: our processors pick the token)


class RepetitionPenalty(LogitsProcessor):
    """Tokens seen in a row's prompt or output: logit ÷ p if positive, × p if negative (CTRL,
    Keskar et al. 2019; vLLM's repetition_penalty). Left padding is not counted as seen."""

    def __init__(self, penalty: float, pad_lengths: torch.Tensor):
        self.penalty, self.pad_lengths = penalty, pad_lengths  # (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        real = (positions[None, :] >= self.pad_lengths[:, None]).to(scores.dtype)  # (B, L)
        seen = torch.zeros_like(scores).scatter_add_(1, input_ids, real) > 0  # (B, V)
        penalised = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen, penalised, scores)


class RowSampler(LogitsProcessor):
    """Temperature, top-k, top-p, then one draw per row from that row's generator; returns logits
    that are -inf except at the drawn token, so generate's argmax takes it."""

    def __init__(self, temperature: float, top_k: int, top_p: float, generators: list[torch.Generator]):
        self.temperature, self.top_k, self.top_p, self.generators = temperature, top_k, top_p, generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature  # (B, V)
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
        if self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs >= self.top_p  # mass before the token already ≥ top_p
            logits = logits.masked_fill(drop.scatter(1, order, drop), -math.inf)
        probs = logits.softmax(-1)  # (B, V)
        picks = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        return torch.full_like(scores, -math.inf).scatter_(1, picks[:, None], 0.0)


class RowStop(StoppingCriteria):
    """Per-row end of generation: an EOS token, a stop string in the decoded output, or the row's own
    max_tokens. Records, per row, how many tokens it generated and why it stopped."""

    def __init__(self, prompt_len: int, max_tokens: list[int], stops: list[tuple[str, ...]],
                 eos_ids: set[int], decode):
        self.prompt_len, self.max_tokens, self.stops = prompt_len, max_tokens, stops
        self.eos_ids, self.decode = eos_ids, decode
        self.done: list[tuple[int, str] | None] = [None] * len(max_tokens)  # (tokens, finish_reason)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        last = input_ids[:, -1].tolist()
        for i, token in enumerate(last):
            if self.done[i] is not None:
                continue
            if token in self.eos_ids:
                self.done[i] = (t, "stop")
            elif self.stops[i] and cut_at_stop(self.decode(input_ids[i, self.prompt_len:]), self.stops[i])[1]:
                self.done[i] = (t, "stop")
            elif t >= self.max_tokens[i]:
                self.done[i] = (t, "length")
        return torch.tensor([d is not None for d in self.done], device=input_ids.device)


def row_generator(seed: int | None, choice: int, device: torch.device) -> torch.Generator:
    """The generator of choice ``choice`` of a request: seeded from (seed, choice), or at random."""
    if seed is None:
        value = secrets.randbits(63)
    else:
        value = int.from_bytes(hashlib.sha256(f"{seed}:{choice}".encode()).digest()[:8], "big") >> 1
    return torch.Generator(device=device).manual_seed(value)


# ----------------------------------------------------------------------------------------------
# Backend 1: a local Hugging Face model with LoRA adapters


@dataclass
class _Adapter:
    path: Path
    rank: int  # largest rank of its modules
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (s·A (r, in), B (out, r)) fp32


def _read_adapter(model, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An adapter folder checked against ``model`` with rlvf.lora's checks; scaling folded into A."""
    from rlvf import lora

    _, modules = lora.read_adapter(model, path)
    return {m.path: (m.scaling * m.lora_A.float(), m.lora_B.float()) for m in modules}


class HFBackend:
    """A base model loaded once, its adapters held as tensors, one ``generate`` per batch."""

    def __init__(self, model_dir: str | Path, name: str, adapters: dict[str, Path], device: str, dtype: str):
        from rlvf import lora
        from rlvf.modeling import load_model, load_tokenizer, pick_device, pick_dtype

        self.name = name
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(model_dir, key="--model")
        self.model = load_model(model_dir, pick_dtype(dtype, self.device), self.device, key="--model").eval()
        self.eos_ids = self._clean_generation_config()
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.adapters = {n: self._load_adapter(Path(p)) for n, p in adapters.items()}
        self.active: str | None = None
        if self.adapters:
            union = sorted({m for a in self.adapters.values() for m in a.weights})
            rank = max(a.rank for a in self.adapters.values())
            lora.inject_lora(self.model, union, exclude_modules=(), r=rank, alpha=rank, dropout=0.0)  # s = 1
            self.model.requires_grad_(False)
        self._lora = lora
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads

    def _load_adapter(self, path: Path) -> _Adapter:
        weights = {m: (A.to(self.device), B.to(self.device)) for m, (A, B) in _read_adapter(self.model, path).items()}
        return _Adapter(path, max(A.shape[0] for A, _ in weights.values()), weights)

    def _clean_generation_config(self) -> set[int]:
        """Drop the model's sampling defaults (requests are explicit); keep its EOS ids."""
        old = self.model.generation_config
        eos = old.eos_token_id if old is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        eos_ids.discard(None)
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=sorted(eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return eos_ids

    @property
    def names(self) -> list[str]:
        return [self.name, *self.adapters]

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids via the chat template (its own BOS, so no special tokens added again)."""
        import jinja2

        with self._tokenizer_lock:
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except jinja2.TemplateError as err:
                raise ApiError(400, f"the model's chat template rejected the messages: {err}", "messages") from None
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: torch.Tensor) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def resolve_max_tokens(self, prompt_len: int, requested: int | None, default: int) -> int:
        """max_tokens for a prompt: the request's, else ``default``; 400 if it overflows the context."""
        if self.context is None:
            return requested or default
        room = self.context - prompt_len
        if requested is None and room > 0:
            return min(default, room)
        if requested is None or requested > room:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                f"requested {prompt_len + (requested or 1)} tokens ({prompt_len} in the messages, "
                                f"{requested or 1} in the completion). Please reduce the length of the messages "
                                f"or completion.", "messages", "context_length_exceeded")
        return requested

    @contextlib.contextmanager
    def _use(self, name: str):
        """Run the base model (adapters off) or one adapter (copied into the LoRA modules if needed)."""
        if name == self.name:
            with (self._lora.disable_adapters(self.model) if self.adapters else contextlib.nullcontext()):
                yield
            return
        if self.active != name:
            self._activate(self.adapters[name])
            self.active = name
        yield

    @torch.no_grad()
    def _activate(self, adapter: _Adapter) -> None:
        for path, module in self._lora.lora_modules(self.model).items():
            module.lora_A.weight.zero_()  # (R, in)
            module.lora_B.weight.zero_()  # (out, R)
            module.disabled = path not in adapter.weights
            if not module.disabled:
                A, B = adapter.weights[path]  # (r, in), (out, r)
                module.lora_A.weight[: A.shape[0]].copy_(A)
                module.lora_B.weight[:, : B.shape[1]].copy_(B)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask, (B, P), prompts aligned to the right."""
        prompt_len = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), prompt_len), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), prompt_len), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, prompt_len - len(p):] = torch.tensor(p)
            attention_mask[i, prompt_len - len(p):] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def generate(self, jobs: list["Job"]) -> list[Completion]:
        """One left-padded generate call for ``jobs`` (same model and batch key); n rows per job."""
        rows = [(job, j) for job in jobs for j in range(job.params.n)]
        input_ids, attention_mask = self._left_pad([job.prompt_ids for job, _ in rows])  # (B, P)
        prompt_len, params = input_ids.shape[1], jobs[0].params
        processors = []
        if params.repetition_penalty != 1:
            pad_lengths = prompt_len - attention_mask.sum(1)  # (B,)
            processors.append(RepetitionPenalty(params.repetition_penalty, pad_lengths))
        if params.temperature > 0:
            generators = [row_generator(job.params.seed, j, self.device) for job, j in rows]
            processors.append(RowSampler(params.temperature, params.top_k, params.top_p, generators))
        stop = RowStop(prompt_len, [job.max_tokens for job, _ in rows], [job.params.stop for job, _ in rows],
                       self.eos_ids, self.decode)
        config = GenerationConfig(max_new_tokens=max(job.max_tokens for job in jobs), do_sample=False,
                                  num_beams=1, use_cache=True, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=sorted(self.eos_ids))
        with self._use(jobs[0].model), torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                      logits_processor=LogitsProcessorList(processors),
                                      stopping_criteria=StoppingCriteriaList([stop]))  # (B, P + T)
        choices = []
        for i, (job, _) in enumerate(rows):
            tokens, reason = stop.done[i] or (out.shape[1] - prompt_len, "length")
            text, _ = cut_at_stop(self.decode(out[i, prompt_len: prompt_len + tokens]), job.params.stop)
            choices.append(Choice(text, reason, tokens))
        results, k = [], 0
        for job in jobs:
            results.append(Completion(len(job.prompt_ids), choices[k: k + job.params.n]))
            k += job.params.n
        return results


# ----------------------------------------------------------------------------------------------
# The batching worker


@dataclass
class Job:
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    future: Future

    @property
    def key(self) -> tuple:
        return (self.model, self.params.batch_key())


class Batcher:
    """A queue and one worker thread that runs same-key jobs together through ``run(jobs)``."""

    def __init__(self, run, max_batch_size: int, wait_s: float):
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.batch_sizes: list[int] = []  # rows of each generate call, in order
        self.running = False  # a batch is generating now
        self._thread = threading.Thread(target=self._loop, name="rlvf-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            self._queue.put(job)

    def close(self, timeout: float | None = None) -> None:
        """Finish the running batch, fail queued jobs with 503, join the worker."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        pending: collections.deque[Job] = collections.deque()
        while not self._closed:
            if not pending:
                job = self._queue.get()
                if job is None:
                    break
                pending.append(job)
            if not self._collect(pending):
                break
            batch, pending = self._take(pending)
            self._run(batch)
        self._fail(pending)

    def _collect(self, pending: collections.deque) -> bool:
        """Add queued jobs, waiting up to wait_s while the front job's group is not full; False on close."""
        key, deadline = pending[0].key, time.monotonic() + self.wait_s
        while sum(j.params.n for j in pending if j.key == key) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return False
            pending.append(job)
        return True

    def _take(self, pending: collections.deque) -> tuple[list[Job], collections.deque]:
        """The front job's group, oldest first, up to max_batch_size rows (the front job always)."""
        key, batch, rows, rest = pending[0].key, [], 0, collections.deque()
        for job in pending:
            if job.key == key and (not batch or rows + job.params.n <= self.max_batch_size):
                batch.append(job)
                rows += job.params.n
            else:
                rest.append(job)
        return batch, rest

    def _run(self, batch: list[Job]) -> None:
        self.running = True
        try:
            results = self.run(batch)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting request threads
            for job in batch:
                job.future.set_exception(err)
        else:
            for job, result in zip(batch, results):
                job.future.set_result(result)
        finally:
            self.running = False
        with self._lock:
            self.batch_sizes.append(sum(job.params.n for job in batch))

    def _fail(self, pending) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            job.future.set_exception(ApiError(503, "the server is shutting down", code="shutting_down"))


# ----------------------------------------------------------------------------------------------
# Backend 2: the offline teacher


class TeacherBackend:
    """``OfflineTeacher.complete`` behind the chat protocol; runs in the request's thread."""

    def __init__(self, sources, name: str):
        from rlvf.feedback import FEEDBACK_DIR, load_feedbacks
        from rlvf.tinyworld.teacher import OfflineTeacher

        feedbacks = load_feedbacks(FEEDBACK_DIR if sources in (True, None, []) else sources)
        try:
            self.teacher = OfflineTeacher(feedbacks)
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

    ``teacher``: None (no teacher), True (the shipped feedbacks), or feedback dirs/files. Raises
    UserError for anything the user can fix (missing model dir, bad adapter or feedback, port in use).
    """
    lora_modules = dict(lora_modules or {})
    teacher = None if teacher is False else teacher
    name = _check_names(model, served_model_name, lora_modules, teacher, teacher_name)
    if max_batch_size < 1 or batch_wait_ms < 0 or default_max_tokens < 1:
        raise UserError("--max-batch-size and --default-max-tokens must be >= 1, --batch-wait-ms >= 0")
    teacher_backend = TeacherBackend(teacher, teacher_name) if teacher is not None else None
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
            teacher_name=args.teacher_name, host=args.host, port=args.port, device=args.device,
            dtype=args.dtype, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
            default_max_tokens=args.default_max_tokens,
        )
    print(f"serving {', '.join(server.names)} at {server.base_url}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    print("shutting down", file=sys.stderr, flush=True)
    server.close()


if __name__ == "__main__":
    main()
