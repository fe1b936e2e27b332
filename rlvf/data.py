"""Training data: JSONL records, chat-template tokenization, completion-only labels, batching.

On disk (written by data generation, or by hand): one directory per feedback with one JSON Lines
file per scope and split::

    in_scope_train.jsonl      {"id", "prompt", "baseline", "revised", ...}
    near_scope_train.jsonl    {"id", "prompt", "baseline", ["revised"], ...}
    out_of_scope_train.jsonl  {"id", "prompt", "baseline", ["revised"], ...}
    *_test.jsonl              the same, held out for evaluation

``baseline`` is the model's own response, ``revised`` its revision applying the feedback (by the student itself or the teacher: ``sample.reviser``).
Extra fields are kept and ignored. The files load with
``datasets.load_dataset("json", data_files=...)``; this module reads them line by line instead so
that a bad row is reported with its file and line before any work starts.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvf import chat_template
from rlvf.errors import UserError
from rlvf.kernels import IGNORE_INDEX

# The data scopes, one file each per split (a feedback's own scope is rlvf.feedback.FEEDBACK_SCOPES).
SCOPES = ("in_scope", "near_scope", "out_of_scope")
META_NAME = "sample_meta.json"  # what rlvf.sample records beside the data: counts, usage, each run


def scope_file(data_dir: str | Path, scope: str, split: str = "train") -> Path:
    return Path(data_dir) / f"{scope}_{split}.jsonl"


MAX_LINE_BYTES = 16 * 1024 * 1024  # one row; a longer line is refused before it is read whole


def _read_lines(f, path: Path):
    """(line number, bytes) of a binary file, refusing a line longer than MAX_LINE_BYTES without
    reading the rest of it into memory."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise UserError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB; one JSON object "
                            "per line is expected (is this really a JSON Lines file?)")
        yield lineno, raw


def _check_text(row: dict, key: str, where: str) -> None:
    if key not in row:
        raise UserError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: field '{key}' is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{where}: field '{key}' holds an unpaired surrogate escape (e.g. \\ud800); "
                        "not valid Unicode text") from None


def _row_id(row: dict, lineno: int, where: str) -> str:
    if "id" not in row:
        return str(lineno)
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: field 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def read_rows(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSONL file; each must have non-empty string ``prompt`` and ``required`` fields.

    Raises UserError('<file>:<line>: ...') for a missing file, bad UTF-8/JSON, a non-object row,
    a missing field, a non-string, empty or invalid text, a bad or duplicate id, a line over
    MAX_LINE_BYTES, or an empty file. A UTF-8 byte-order mark at the start is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    try:
        return _parse_rows(path, required)
    except OSError as err:  # unreadable (permissions, a directory named *.jsonl, I/O error)
        raise UserError(f"{path}: cannot read data file ({err.strerror or err})") from None


def _parse_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows, seen = [], set()
    with open(path, "rb") as f:
        for lineno, raw in _read_lines(f, path):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            except RecursionError:
                raise UserError(f"{where}: not valid JSON (nested too deeply)") from None
            except ValueError:  # an integer past Python's 4300-digit limit (a 5000-digit id)
                raise UserError(f"{where}: not valid JSON (holds an integer of more than "
                                f"{sys.get_int_max_str_digits():,} digits; write long ids as strings)") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("prompt", *required):
                _check_text(row, key, where)
            row_id = _row_id(row, lineno, where)
            if row_id in seen:
                raise UserError(f"{where}: duplicate id {row_id!r}")
            seen.add(row_id)
            rows.append({**row, "id": row_id})
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


# ----------------------------------------------------------------------------- tokenization


@dataclass
class Encoded:
    """One tokenized (prompt, completion): labels are -100 on the prompt, token ids on the completion."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_completion(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def tokenize_conversation(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids): the inference prompt (the user turn rendered with
    ``add_generation_prompt=True`` and the tokenizer's ``chat_template_kwargs``, token for token what
    the server feeds the model) and the reply plus the template's end-of-turn.

    Found by rendering, with no model-specific strings: rlvf.chat_template explains how templates
    whose inference prompt differs from a rendered conversation (thinking templates) and tokenizers
    whose merges cross the prompt/reply boundary are handled.
    """
    p, c, _ = chat_template.split(tokenizer, prompt, completion)
    return p, c


def truncate(prompt_ids: list[int], completion_ids: list[int], max_length: int, max_prompt_length: int,
             longest_completion: int | None = None) -> tuple[list[int], list[int]]:
    """Fit prompt + completion into ``max_length``, cutting the prompt first.

    If too long, the prompt keeps its last ``max_prompt_length`` tokens (the end holds the
    generation prompt); if still too long, the completion keeps its first tokens. For a pair,
    ``longest_completion`` makes the prompt cut the same for chosen and rejected.
    """
    longest = max(len(completion_ids), longest_completion or 0)
    if len(prompt_ids) + longest > max_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
    return prompt_ids, completion_ids[: max(0, max_length - len(prompt_ids))]


def encode(prompt_ids: list[int], completion_ids: list[int]) -> Encoded | None:
    """None when the completion vanished (nothing to train on)."""
    if not completion_ids:
        return None
    return Encoded(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids))


def encode_row(tokenizer, prompt: str, completion: str, max_length: int, max_prompt_length: int) -> Encoded | None:
    p, c = tokenize_conversation(tokenizer, prompt, completion)
    return encode(*truncate(p, c, max_length, max_prompt_length))


def encode_pair(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int,
                max_prompt_length: int) -> tuple[Encoded, Encoded] | None:
    """Chosen and rejected with one shared prompt truncation; None if either completion vanished."""
    p, c = tokenize_conversation(tokenizer, prompt, chosen)
    p2, r = tokenize_conversation(tokenizer, prompt, rejected)
    longest = max(len(c), len(r))
    ec = encode(*truncate(p, c, max_length, max_prompt_length, longest))
    er = encode(*truncate(p2, r, max_length, max_prompt_length, longest))
    return None if ec is None or er is None else (ec, er)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item: input_ids, attention_mask, labels, each (B, T)."""
    T = max(len(x.input_ids) for x in items)
    input_ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    labels = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), T), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x.input_ids)
        input_ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ----------------------------------------------------------------------------- sampling


def permutation(n: int, seed: int, stream: int, cycle: int) -> list[int]:
    """A seeded permutation of range(n) that depends only on (seed, stream, cycle)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + cycle)
    return torch.randperm(n, generator=g).tolist()


def stream_indices(n: int, start: int, count: int, seed: int, stream: int) -> list[int]:
    """Items start..start+count of an endless stream that walks a fresh permutation every cycle.

    A pure function of its arguments, so a resumed run draws exactly the same items.
    """
    out, perm_cache = [], {}
    for pos in range(start, start + count):
        cycle = pos // n
        if cycle not in perm_cache:
            perm_cache[cycle] = permutation(n, seed, stream, cycle)
        out.append(perm_cache[cycle][pos % n])
    return out


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a seeded split, at least one row each when fraction > 0."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    perm = permutation(n, seed, stream=99, cycle=0)
    k = min(n - 1, max(1, math.floor(n * fraction)))
    return sorted(perm[k:]), sorted(perm[:k])


def data_owner(data_dir: str | Path) -> str | None:
    """The feedback whose data ``data_dir`` holds, by the name its sample_meta.json records for the
    latest run (None: no data yet, or no readable record)."""
    try:
        meta = json.loads((Path(data_dir) / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    runs = meta.get("runs") if isinstance(meta.get("runs"), list) else []
    names = [r["feedback"] for r in runs if isinstance(r, dict) and isinstance(r.get("feedback"), str)]
    if names:
        return names[-1]
    feedback = meta.get("feedback")  # written before runs were recorded
    return feedback.get("name") if isinstance(feedback, dict) and isinstance(feedback.get("name"), str) else None
