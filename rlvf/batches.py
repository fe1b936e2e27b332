"""From data rows to the method's training streams and deterministic micro-batches.

Every method trains on a *main stream* (DPO pairs, or rows scored by their NLL; rlvf/methods.py
says which), walked epoch by epoch in a seeded order, plus for methods with constraints two
*constraint streams* (near- and out-of-scope baselines) cycled alongside, ``batch_size`` items of
each per micro-batch, as the original C3PO trainer zipped one near and one out row with each
in-scope pair. Micro-batch ``i`` is a pure function of (seed, i), so a resumed run sees exactly the
batches the interrupted one would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlvf.config import Config
from rlvf.methods import METHODS
from rlvf.data import Encoded, SCOPES, encode_pair, encode_row, read_rows, scope_file, split_validation, stream_indices

MAIN, NEAR, OUT = 0, 1, 2  # stream ids for the seeded orders


@dataclass
class Streams:
    """Tokenized training data for one method (and one split: train or validation)."""

    pairs: list[tuple[Encoded, Encoded]] = field(default_factory=list)  # (chosen, rejected)
    rows: list[Encoded] = field(default_factory=list)  # SFT targets of the main stream
    near: list[Encoded] = field(default_factory=list)
    out: list[Encoded] = field(default_factory=list)

    @property
    def n_main(self) -> int:
        return len(self.pairs) or len(self.rows)


def required_fields(cfg: Config) -> dict[str, tuple[str, ...]]:
    """Fields each scope's rows must have for this method (() for a scope it does not read)."""
    m = cfg.method
    ratios = {"near_scope": m.negatives_near_ratio or 0, "out_of_scope": m.negatives_out_ratio or 0}
    return {scope: METHODS[m.name].fields(scope, ratios) for scope in SCOPES}


def load_rows(cfg: Config) -> dict[str, list[dict]]:
    """{scope: rows} over all data dirs, validated for the method; ids prefixed when several dirs."""
    rows = {}
    for scope, fields in required_fields(cfg).items():
        if scope != "in_scope" and not fields:
            continue
        rows[scope] = []
        for k, data_dir in enumerate(cfg.data.dirs):
            for row in read_rows(scope_file(data_dir, scope), fields):
                rows[scope].append({**row, "id": f"{k}/{row['id']}"} if len(cfg.data.dirs) > 1 else row)
    return rows


class _Encoder:
    def __init__(self, tokenizer, cfg: Config):
        self.tok, self.L, self.P = tokenizer, cfg.data.max_length, cfg.data.max_prompt_length
        self.dropped = 0

    def row(self, row: dict, target: str) -> list[Encoded]:
        enc = encode_row(self.tok, row["prompt"], row[target], self.L, self.P)
        self.dropped += enc is None
        return [] if enc is None else [enc]

    def pair(self, row: dict, chosen: str, rejected: str) -> list[tuple[Encoded, Encoded]]:
        enc = encode_pair(self.tok, row["prompt"], row[chosen], row[rejected], self.L, self.P)
        self.dropped += enc is None
        return [] if enc is None else [enc]


def _negatives(rows: list[dict], ratio: float, n_in: int, seed: int, stream: int) -> list[dict]:
    k = min(len(rows), int(ratio * n_in))  # int(): the original's count, rounded down
    return [rows[i] for i in stream_indices(len(rows), 0, k, seed, stream)]


def build_streams(cfg: Config, rows: dict[str, list[dict]], tokenizer) -> tuple[Streams, int]:
    """(streams, number of rows dropped because their completion vanished under truncation)."""
    m, spec, enc = cfg.method, METHODS[cfg.method.name], _Encoder(tokenizer, cfg)
    s = Streams()
    ins, near, out = rows["in_scope"], rows.get("near_scope", []), rows.get("out_of_scope", [])
    if spec.pairs:
        s.pairs = [p for r in ins for p in enc.pair(r, "revised", "baseline")]
    if spec.sft_in:
        s.rows = [e for r in ins for e in enc.row(r, "revised")]
    if spec.negatives:  # the original selects the first ratio·n_in rows of each scope's seeded shuffle
        for scope_rows, ratio, stream in ((near, m.negatives_near_ratio, NEAR), (out, m.negatives_out_ratio, OUT)):
            negs = _negatives(scope_rows, ratio or 0, len(ins), cfg.train.seed, stream)
            if spec.negatives == "pairs":
                s.pairs += [p for r in negs for p in enc.pair(r, "baseline", "revised")]
            else:
                s.rows += [e for r in negs for e in enc.row(r, "baseline")]
    if spec.constraints:
        s.near = [e for r in near for e in enc.row(r, "baseline")]
        s.out = [e for r in out for e in enc.row(r, "baseline")]
    return s, enc.dropped


def split_rows(rows: dict[str, list[dict]], fraction: float, seed: int) -> tuple[dict, dict]:
    """Seeded (train, validation) split of every scope's rows."""
    train, val = {}, {}
    for scope in SCOPES:
        if scope in rows:
            t, v = split_validation(len(rows[scope]), fraction, seed)
            train[scope] = [rows[scope][i] for i in t]
            val[scope] = [rows[scope][i] for i in v]
    return train, val


@dataclass
class MicroBatch:
    """Indices into a Streams object for one micro-batch."""

    main: list[int]
    near: list[int]
    out: list[int]


def micro_batch(s: Streams, i: int, batch_size: int, seed: int, ordered: bool = False) -> MicroBatch:
    """Micro-batch ``i``: main-stream positions i·B … i·B+B−1 (epochs follow each other), and as many
    near/out rows from their own endless streams. ``ordered`` walks validation data without shuffling.
    """
    start = i * batch_size
    if ordered:
        main = list(range(start, min(start + batch_size, s.n_main)))
        near = [(start + j) % len(s.near) for j in range(len(main))] if s.near else []
        out = [(start + j) % len(s.out) for j in range(len(main))] if s.out else []
        return MicroBatch(main, near, out)
    main = stream_indices(s.n_main, start, batch_size, seed, MAIN)
    near = stream_indices(len(s.near), start, batch_size, seed, NEAR) if s.near else []
    out = stream_indices(len(s.out), start, batch_size, seed, OUT) if s.out else []
    return MicroBatch(main, near, out)


def optimizer_steps(n_main: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """Optimizer steps of a run, counted as Hugging Face's Trainer does (the original's): an epoch of
    ceil(n / batch_size) micro-batches makes floor(· / grad_accum) steps (at least 1), and a run
    ceil(epochs · steps per epoch); micro-batches left over at the end of an epoch do not train."""
    per_epoch = max(1, math.ceil(n_main / batch_size) // grad_accum)
    return max(1, math.ceil(epochs * per_epoch))


def shard_micro_batch(mb: MicroBatch, rank: int, world_size: int) -> tuple[MicroBatch, int]:
    """This rank's contiguous slice of a global micro-batch, and how many real items it holds.

    main, near and out are sliced alike (slice sizes differ by at most one). A rank whose slice is
    empty gets the batch's first item as a stand-in with count 0 (its loss is weighted 0), so every
    rank runs the same forward and backward and FSDP's collectives stay in step.
    """
    n = len(mb.main)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    count = hi - lo
    if count == 0:
        lo, hi = 0, 1
    return MicroBatch(mb.main[lo:hi], mb.near[lo:hi], mb.out[lo:hi]), count
