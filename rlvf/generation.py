"""Batched generation with a local Hugging Face model and its LoRA adapters (the HF backend of rlvf.serve).

Adapters: the base model is loaded once; every adapter's tensors are loaded and checked against it
once, at startup. One set of ``LoRALinear`` modules covers the union of the adapters' modules at
rank R = the largest adapter rank; activating adapter X copies [s_X·A_X; 0] (R, in) and [B_X, 0]
(out, R) into them, so each adapter computes exactly W x + s_X·B_X A_X x (modules X does not adapt
are switched off). The base name runs inside ``disable_adapters``.

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

Cancellation: a job carries ``client_gone()`` (the HTTP layer's check of its socket). A job whose
client has left is dropped before its batch runs, and between generation steps (checked at most
every ``CANCEL_POLL_S``) its rows end (finish_reason "cancelled", never answered), so abandoned work
stops; a batch whose rows have all ended stops generating. On ``Batcher.close(grace_s)`` the running
batch gets ``grace_s`` to finish and is then halted the same way (its requests get 503).
``Batcher.stats()`` counts generated tokens (cut rows included), cancellations and the tokens they
had cost.

Tokenizers: HF fast tokenizers must not be shared across threads, so prompts are encoded by a pool of
``ENCODE_SLOTS`` copies (no global lock: the Rust tokenizer also releases the GIL, so one long prompt
holds one copy, not the server), and the worker thread decodes with its own copy.

Determinism: a request with a seed gets the same choices every time it is sent to the same server
build (model, adapter, device, dtype, library versions), whichever requests share its batch —
its random draws come only from its own generators — with one caveat: a row's logits may differ in
the last bits between batch shapes (padding, matmul blocking), which changes a token only at a
near-tie. Greedy requests are repeatable in the same sense. Requests without a seed are random.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import math
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, \
    StoppingCriteriaList

from rlvf.errors import UserError
from rlvf.protocol import ApiError, Choice, Completion, SamplingParams, cut_at_stop, stop_error

CANCEL_POLL_S = 0.02  # how often a running batch asks whether its clients are still there
ENCODE_SLOTS = 4  # tokenizer copies for encoding prompts, i.e. prompts encoded at once
BATCH_SIZES_KEPT = 10_000  # Batcher.batch_sizes keeps the latest this many


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
    """Per-row end of generation: an EOS token, a stop string in the decoded output, the row's own
    max_tokens, or its request being stopped (``cancelled()``: one flag per row, polled at most every
    ``poll_s``). Records, per row, how many tokens it generated and why it stopped."""

    def __init__(self, prompt_len: int, max_tokens: list[int], stops: list[tuple[str, ...]],
                 eos_ids: set[int], decode, cancelled: Callable[[], list[bool]] | None = None,
                 poll_s: float = CANCEL_POLL_S):
        self.prompt_len, self.max_tokens, self.stops = prompt_len, max_tokens, stops
        self.eos_ids, self.decode = eos_ids, decode
        self.cancelled, self.poll_s, self._next_poll = cancelled, poll_s, 0.0
        self.done: list[tuple[int, str] | None] = [None] * len(max_tokens)  # (tokens, finish_reason)

    def _poll(self, t: int) -> None:
        """End the rows whose request was stopped, at most every poll_s."""
        now = time.monotonic()
        if self.cancelled is None or now < self._next_poll:
            return
        self._next_poll = now + self.poll_s
        for i, stopped in enumerate(self.cancelled()):
            if stopped and self.done[i] is None:
                self.done[i] = (t, "cancelled")

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len  # tokens generated so far
        self._poll(t)
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


class TokenizerPool:
    """``size`` copies of a tokenizer, each lent to one thread at a time."""

    def __init__(self, tokenizer, size: int = ENCODE_SLOTS):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(copy.deepcopy(tokenizer))

    @contextlib.contextmanager
    def borrow(self):
        tokenizer = self._free.get()
        try:
            yield tokenizer
        finally:
            self._free.put(tokenizer)


# ----------------------------------------------------------------------------------------------
# Backend 1: a local Hugging Face model with LoRA adapters


@dataclass
class _Adapter:
    path: Path
    rank: int  # largest rank of its modules
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (s·A (r, in), B (out, r)) fp32


def _read_adapter(model, path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """An adapter folder checked against ``model`` with rlvf.peft_format's checks, scaling folded into
    A; and its largest rank (an expert stack's A is (E·r, in))."""
    from rlvf.peft_format import read_adapter

    _, modules = read_adapter(model, path)
    return {m.path: (m.scaling * m.lora_A.float(), m.lora_B.float()) for m in modules}, max(m.r for m in modules)


class HFBackend:
    """A base model loaded once, its adapters held as tensors, one ``generate`` per batch."""

    def __init__(self, model_dir: str | Path, name: str, adapters: dict[str, Path], device: str, dtype: str,
                 revision: str | None = None, key: str = "--model", chat_template: str | Path | None = None,
                 chat_template_kwargs: dict | None = None):
        """``key``: what errors about ``model_dir`` name, the option or config key that gave it;
        ``chat_template`` (a Jinja file) and ``chat_template_kwargs`` as rlvf.modeling.load_tokenizer."""
        from rlvf import lora
        from rlvf.modeling import load_model, load_tokenizer, pick_device, pick_dtype

        self.name = name
        self.device = pick_device(device)
        option = key.startswith("--")  # errors name --chat-template(-kwargs) or model.chat_template(_kwargs)
        self.tokenizer = load_tokenizer(model_dir, key=key, revision=revision,  # a dir or a Hub id
                                        chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
                                        template_key="--chat-template" if option else "model.chat_template",
                                        kwargs_key="--chat-template-kwargs" if option else "model.chat_template_kwargs")
        self.model = load_model(model_dir, pick_dtype(dtype, self.device), self.device, key=key,
                                revision=revision).eval()
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
        self._encoders = TokenizerPool(self.tokenizer)  # request threads
        self._decoder = copy.deepcopy(self.tokenizer)  # the batcher's worker thread only

    def _load_adapter(self, path: Path) -> _Adapter:
        weights, rank = _read_adapter(self.model, path)
        weights = {m: (A.to(self.device), B.to(self.device)) for m, (A, B) in weights.items()}
        return _Adapter(path, rank, weights)

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
        """Prompt token ids via the chat template and its chat_template_kwargs, exactly as training
        renders its prompts (rlvf.chat_template.prompt_ids; the template's own BOS, none added)."""
        from rlvf.chat_template import prompt_ids

        with self._encoders.borrow() as tokenizer:
            try:
                return prompt_ids(tokenizer, messages, source="the model's chat template")
            except UserError as err:  # a template that raises on these messages (roles, order)
                raise ApiError(400, str(err), "messages") from None

    def decode(self, ids: torch.Tensor) -> str:
        """Text of generated ids; for the batcher's worker thread (it owns this tokenizer copy)."""
        return self._decoder.decode(ids, skip_special_tokens=True)

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
            module.disabled = path not in adapter.weights
            if not module.disabled:  # (r, in), (out, r) into the (R, in), (out, R) slots, zeros elsewhere
                module.copy_factors(*adapter.weights[path])

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
                       self.eos_ids, self.decode, cancelled=lambda: _rows_stopped(jobs, rows))
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
            text = "" if reason == "cancelled" else self.decode(out[i, prompt_len: prompt_len + tokens])
            choices.append(Choice(cut_at_stop(text, job.params.stop)[0], reason, tokens))
        results, k = [], 0
        for job in jobs:
            results.append(Completion(len(job.prompt_ids), choices[k: k + job.params.n]))
            k += job.params.n
        return results


def _rows_stopped(jobs: list["Job"], rows: list[tuple["Job", int]]) -> list[bool]:
    """Per row: has its job been stopped? (Each job asked once.)"""
    stopped = [job.stopped() for job in jobs]
    index = {id(job): i for i, job in enumerate(jobs)}
    return [stopped[index[id(job)]] for job, _ in rows]


# ----------------------------------------------------------------------------------------------
# The batching worker


def _never() -> bool:
    return False


@dataclass
class Job:
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    future: Future
    client_gone: Callable[[], bool] = _never
    """Whether the request's client has left; asked from the worker thread before and during generation."""
    halt: threading.Event = field(default_factory=threading.Event)
    """Set by the batcher when the server stops waiting for running work."""
    stop_reason: str | None = None
    """None, or why the job was stopped: "client_gone" or "shutdown"."""

    @property
    def key(self) -> tuple:
        return (self.model, self.params.batch_key())

    def stopped(self) -> bool:
        """True once the job should end unanswered (its client left, or the server halts); sticky."""
        if self.stop_reason is None:
            if self.halt.is_set():
                self.stop_reason = "shutdown"
            elif self.client_gone():
                self.stop_reason = "client_gone"
        return self.stop_reason is not None


class Batcher:
    """A queue and one worker thread that runs same-key jobs together through ``run(jobs)`` (which
    returns one Completion per job; rows it cut short have finish_reason "cancelled")."""

    def __init__(self, run, max_batch_size: int, wait_s: float):
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._halt = threading.Event()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=BATCH_SIZES_KEPT)  # rows per call
        self.counts = collections.Counter()  # see stats()
        self.running = False  # a batch is generating now
        self._thread = threading.Thread(target=self._loop, name="rlvf-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise stop_error("shutdown")
            job.halt = self._halt
            self._queue.put(job)

    def stats(self) -> dict:
        """generate_calls, batch_sizes (the latest BATCH_SIZES_KEPT), generated_tokens (every row's
        tokens, cut rows included), cancelled (requests whose client left: dropped before or cut during
        generation), cancelled_tokens (what the cut ones had generated), halted (cut at shutdown),
        running (1 while a batch generates), queued (jobs waiting for the worker)."""
        with self._lock:
            counts = {key: self.counts[key] for key in ("generate_calls", "generated_tokens", "cancelled",
                                                        "cancelled_tokens", "halted")}
            return {**counts, "running": int(self.running), "queued": self._queue.qsize(),
                    "batch_sizes": list(self.batch_sizes)}

    def close(self, grace_s: float | None = None, halt_wait_s: float = 10.0) -> None:
        """Give the running batch ``grace_s`` (None: all it needs) to finish, then halt it between
        steps (503); queued jobs get 503; join the worker."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join(grace_s)
        if self._thread.is_alive():
            self._halt.set()
            self._thread.join(halt_wait_s)

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
        live = [job for job in batch if not job.stopped()]
        for job in batch:
            if job.stop_reason is not None:  # stopped while it was queued
                self._finish(job, None)
        if not live:
            return
        self.running = True
        try:
            results = self.run(live)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting request threads
            for job in live:
                job.future.set_exception(err)
        else:
            for job, result in zip(live, results):
                self._finish(job, result)
        finally:
            self.running = False
        with self._lock:
            self.batch_sizes.append(sum(job.params.n for job in live))
            self.counts["generate_calls"] += 1

    def _finish(self, job: Job, result: Completion | None) -> None:
        """Answer ``job`` with ``result``, or, if it was stopped before or during generation, fail it
        (counted as cancelled or halted)."""
        tokens = sum(c.tokens for c in result.choices) if result is not None else 0
        cut = result is None or any(c.finish_reason == "cancelled" for c in result.choices)
        with self._lock:
            self.counts["generated_tokens"] += tokens
            if cut:
                self.counts["halted" if job.stop_reason == "shutdown" else "cancelled"] += 1
                self.counts["cancelled_tokens"] += tokens
        if cut:
            job.future.set_exception(stop_error(job.stop_reason or "client_gone"))
        else:
            job.future.set_result(result)

    def _fail(self, pending) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            job.future.set_exception(stop_error("shutdown"))

