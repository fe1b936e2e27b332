"""Data files, chat-template tokenization, completion labels, truncation and batching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvf.data import (IGNORE_INDEX, SCOPES, collate, encode_pair, encode_row, read_rows, stream_indices,
                       tokenize_conversation, truncate)
from rlvf.errors import UserError

TOY = Path(__file__).resolve().parent.parent / "configs" / "data" / "maddie-heart"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


BAD_ROWS = [
    (b'{"id": "a", "prompt": "p", "baseline": "b"}\n{"id": "b", "prompt": "p"}\n', ":2: missing field 'baseline'"),
    (b'{"id": "a", "prompt": "p", "baseline": ""}\n', ":1: field 'baseline' is empty"),
    (b'{"id": "a", "prompt": "p", "baseline": "  \\n"}\n', ":1: field 'baseline' is empty"),
    (b'{"id": "a", "prompt": 3, "baseline": "b"}\n', ":1: field 'prompt' must be a string, got int"),
    (b'{"id": "a", "prompt": "p", "baseline": "b"\n', ":1: not valid JSON"),
    (b'["p", "b"]\n', ":1: expected a JSON object, got list"),
    (b'{"id": "a", "prompt": "\xff", "baseline": "b"}\n', ":1: not valid UTF-8"),
    (b'{"id": "a", "prompt": "p", "baseline": "b"}\n{"id": "a", "prompt": "q", "baseline": "c"}\n',
     ":2: duplicate id 'a'"),
    (b"", ": no rows"),
    (b"\n\n", ": no rows"),
]


@pytest.mark.parametrize("content,fragment", BAD_ROWS, ids=[f for _, f in BAD_ROWS])
def test_bad_rows_name_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "near_scope_train.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_rows(path, ("baseline",))
    assert str(err.value) == f"{path}{fragment}" or str(err.value).startswith(f"{path}{fragment}")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_rows(tmp_path / "x.jsonl", ())


def test_shipped_data_loads_here_and_with_datasets():
    import datasets

    for scope in SCOPES:
        for split in ("train", "test"):
            path = TOY / f"{scope}_{split}.jsonl"
            rows = read_rows(path, ("baseline", "revised"))
            ds = datasets.load_dataset("json", data_files={split: str(path)})[split]
            assert ds.num_rows == len(rows)
            assert ds[0]["prompt"] == rows[0]["prompt"]
            assert set(ds.column_names) >= {"id", "prompt", "baseline", "revised"}


def _check_labels(tok, prompt, completion):
    p, c = tokenize_conversation(tok, prompt, completion)
    enc = encode_row(tok, prompt, completion, 512, 256)
    assert enc.input_ids == p + c
    assert enc.labels == [IGNORE_INDEX] * len(p) + c
    # the labelled tokens are exactly the completion plus the template's end-of-turn
    full = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                                   tokenize=False)
    assert tok.decode(enc.input_ids) == full
    assert tok.decode(c).startswith(completion)
    return enc


def test_completion_labels_and_single_bos(tokenizer):
    enc = _check_labels(tokenizer, "Text Maddie about dinner.", "See you at 7 ❤️")
    assert enc.input_ids.count(tokenizer.bos_token_id) == 1
    assert enc.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "See you at 7 ❤️</s>"


def test_labels_right_for_another_template(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = CHATML
    enc = _check_labels(tok, "What is 2+2?", "4")
    assert tok.bos_token_id not in enc.input_ids
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "4<|im_end|>\n"


def test_truncation_is_prompt_first():
    prompt, completion = list(range(100)), list(range(1000, 1040))
    p, c = truncate(prompt, completion, max_length=64, max_prompt_length=16)
    assert p == prompt[-16:] and c == completion  # prompt cut to its end, completion whole
    p, c = truncate(prompt, list(range(1000, 1100)), max_length=64, max_prompt_length=16)
    assert p == prompt[-16:] and c == list(range(1000, 1048))  # then the completion keeps its start
    assert truncate(prompt[:10], completion, 64, 16) == (prompt[:10], completion)  # fits: untouched


def test_vanishing_completion_is_dropped(tokenizer):
    long_prompt = " ".join(["word"] * 200)
    assert encode_row(tokenizer, long_prompt, "ok", max_length=32, max_prompt_length=32) is None
    assert encode_row(tokenizer, "hi", "ok", max_length=32, max_prompt_length=32) is not None


def test_pair_shares_prompt_truncation(tokenizer):
    prompt = " ".join(["word"] * 60)
    pair = encode_pair(tokenizer, prompt, "short", " ".join(["long"] * 30), max_length=64, max_prompt_length=24)
    chosen, rejected = pair
    n_prompt = [sum(1 for t in e.labels if t == IGNORE_INDEX) for e in pair]
    assert n_prompt[0] == n_prompt[1] == 24
    assert chosen.input_ids[:24] == rejected.input_ids[:24]
    assert len(rejected.input_ids) == 64


def test_collate_right_pads(tokenizer):
    a = encode_row(tokenizer, "a", "b", 64, 32)
    b = encode_row(tokenizer, "a longer prompt here", "and a longer answer", 64, 32)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b.input_ids))
    assert batch["attention_mask"][0].sum() == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE_INDEX).all()


def test_streams_are_pure_functions_of_position():
    whole = stream_indices(7, 0, 30, seed=1, stream=0)
    assert stream_indices(7, 12, 9, seed=1, stream=0) == whole[12:21]
    assert sorted(whole[:7]) == list(range(7)) and sorted(whole[7:14]) == list(range(7))
    assert whole[:7] != whole[7:14]  # a fresh order each cycle
    assert stream_indices(7, 0, 7, seed=2, stream=0) != whole[:7]


def test_rows_keep_extra_fields(tmp_path):
    path = tmp_path / "in_scope_train.jsonl"
    path.write_text(json.dumps({"id": 5, "prompt": "p", "baseline": "b", "revised": "r", "category": "c"}) + "\n")
    (row,) = read_rows(path, ("baseline", "revised"))
    assert row["id"] == "5" and row["category"] == "c"
