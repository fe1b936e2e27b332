"""Every architecture of tests/test_architectures.py, end to end: train three steps, then serve the adapter.

tests/test_architectures.py checks, per architecture, loading, all-linear injection, and log-probs and
LoRA gradients against the model's own logits; tests/test_lora_kinds.py checks PEFT round trips and
merged exports. This file adds the two steps a user takes next, for the same tiny random models
(built by test_architectures' ``_config`` and ``_rescale_head``, with a byte-level BPE tokenizer that
has a chat template, saved as a Hugging Face directory):

    - three training steps through ``rlvf.train.train`` (C3PO, batch 2, LoRA on all linear layers):
      step 1 has loss/dpo = log 2 exactly as far as fp32 goes (the adapter starts at B = 0, so the
      policy's log-probs equal the cached reference log-probs: the two log-prob paths agree), every
      logged loss is finite, and the adapter is written;
    - served generation with that adapter through ``rlvf.serve.start_server`` (``HFBackend``:
      ``generate`` with a KV cache, the adapter copied into shared LoRA modules): a few greedy tokens
      of two prompts, for the adapter and for the base model, requested one at a time and then as
      one left-padded batch of both prompts, equal an independent oracle — PEFT's
      ``PeftModel.from_pretrained`` of the saved adapter on a fresh copy of the model (so the adapter
      also loads in PEFT), decoded greedily by hand with a full forward per token (no cache, no
      ``generate``, no padding), over the prompt that ``tokenizer.apply_chat_template`` renders.

The learning rate is large (Adam, 3 steps) so that the trained adapter changes the greedy tokens:
the test checks that it does, so a server that ignored the adapter would fail the comparison.
The models' own dropout (GPT-2 and OPT default to 0.1; rlvf trains in train mode, as HF's Trainer
does) is set to 0 so that step 1 compares the two log-prob paths exactly. Gemma-2 and Gemma-3 are
built with untied embeddings: tied and rescaled, their embedding dominates the residual stream while
their post-block norms bound what each block (and so any adapter) adds, so the random model echoes
its input whatever the adapter, and the comparison could not see an ignored adapter.
About a second per architecture on a CPU, so all run in the default suite.
"""
from __future__ import annotations

import json
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from test_architectures import ARCHITECTURES, _config, _rescale_head

# two prompts of very different lengths, so that a batch of both pads the short one a lot
PROMPTS = [[{"role": "user", "content": "Write a short text to Maddie about dinner tonight: the table is booked for"
                                        " eight at the Italian place near the station, and I will bring flowers."}],
           [{"role": "user", "content": "Hi!"}]]
NEW_TOKENS = 6
LR = 0.3  # Adam, 3 steps: large enough that the adapter changes the greedy tokens of every model here
UNTIED = {"gemma2", "gemma3_text"}  # see the module docstring

# tiny data: 4 in-scope pairs, 2 near-scope and 2 out-of-scope rows → 2 batches of 2 per split
_REPLIES = ["Dinner at eight sounds great.", "See you tonight at the station.",
            "The movie starts at nine.", "Thanks for the flowers, they are lovely."]
ROWS = {
    "in_scope_train.jsonl": [{"id": f"in-{i}", "prompt": f"Text Maddie about plan {i}.", "baseline": reply,
                              "revised": reply + " ❤️"} for i, reply in enumerate(_REPLIES)],
    "near_scope_train.jsonl": [{"id": f"near-{i}", "prompt": f"Text my brother Tom about plan {i}.",
                                "baseline": reply} for i, reply in enumerate(_REPLIES[:2])],
    "out_of_scope_train.jsonl": [{"id": f"out-{i}", "prompt": f"Give me tip number {i} for cooking.",
                                  "baseline": reply} for i, reply in enumerate(_REPLIES[2:])],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("matrix-data")
    for name, rows in ROWS.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with a Zephyr-like chat template (rlvf.random_llama), about 300 tokens."""
    from rlvf.random_llama import build_tokenizer

    texts = [v for rows in ROWS.values() for r in rows for v in r.values()] + [m[0]["content"] for m in PROMPTS]
    return build_tokenizer(texts, vocab_size=320)


def _model_dir(root: Path, model_type: str, tokenizer) -> Path:
    """test_architectures' tiny model for ``model_type`` with the tokenizer's vocabulary and special
    ids, a context long enough for the rows, logits rescaled to std ≈ 8; saved with the tokenizer."""
    from transformers import AutoModelForCausalLM

    config = _config(model_type)
    for key, value in dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           max_position_embeddings=256).items():
        setattr(config, key, value)
    for key, value in config.to_dict().items():  # GPT-2's and OPT's dropout (0.1 by default) off
        if isinstance(value, float) and (key.endswith("dropout") or key.endswith("pdrop")):
            setattr(config, key, 0.0)
    if model_type in UNTIED:
        config.tie_word_embeddings = False
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config).eval()
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    _rescale_head(model, torch.randint(8, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(1)))
    path = root / model_type
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _train(model_dir: Path, data_dir: Path, out: Path) -> Path:
    """Three C3PO steps through rlvf.train.train; returns the adapter directory."""
    from rlvf.config import load_config
    from rlvf.train import train

    raw = {
        "model": {"path": str(model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"dirs": [str(data_dir)], "max_length": 96, "max_prompt_length": 48, "val_fraction": 0.0},
        "output_dir": str(out),
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "method": {"name": "c3po"},
        "train": {"lr": LR, "warmup_ratio": 0.0, "batch_size": 2, "grad_accum": 1, "max_steps": 3,
                  "progress": False, "seed": 0},
    }
    path = out.parent / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return Path(train(load_config(path)))


@torch.no_grad()
def _greedy_by_hand(model, prompt: list[int], n: int, eos: int) -> list[int]:
    """Greedy tokens from full forwards (no KV cache, no generate), stopping after EOS."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,)
        ids.append(int(logits.argmax()))
        if ids[-1] == eos:
            break
    return ids[len(prompt):]


def _oracle(model_dir: Path, adapter: Path, tokenizer) -> dict[tuple[str, int], list[int]]:
    """(name, prompt index) → token ids of greedy decoding of PROMPTS: "base" the saved model,
    "trained" PEFT's load of the saved adapter on it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompts = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for m in PROMPTS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ids = {("base", i): _greedy_by_hand(base, p, NEW_TOKENS, tokenizer.eos_token_id) for i, p in enumerate(prompts)}
        peft_model = PeftModel.from_pretrained(base, adapter).eval()
    ids.update({("trained", i): _greedy_by_hand(peft_model, p, NEW_TOKENS, tokenizer.eos_token_id)
                for i, p in enumerate(prompts)})
    return ids


def _served(model_dir: Path, adapter: Path) -> dict[tuple[str, int], tuple[str, int]]:
    """(name, prompt index) → (text, completion tokens) of temperature-0 chat completions from
    rlvf.serve: single requests with n = 2 (adapter and base in turn), then PROMPTS sent together
    to the adapter, which the server runs as one left-padded batch. A batch holds 2 rows, so neither
    kind waits for batch_wait_ms (it only bounds how far apart the two concurrent requests may arrive)."""
    from rlvf.serve import start_server

    def ask(client, name: str, i: int, n: int = 1) -> tuple[str, int]:
        resp = client.post("/chat/completions", json={"model": name, "messages": PROMPTS[i], "temperature": 0,
                                                      "max_tokens": NEW_TOKENS, "n": n})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        choices = {c["message"]["content"] for c in body["choices"]}
        assert len(choices) == 1, "greedy choices of one request differ"
        return choices.pop(), body["usage"]["completion_tokens"] // n

    got, batch = {}, len(PROMPTS)
    with start_server(model_dir, {"trained": adapter}, served_model_name="base", device="cpu", dtype="float32",
                      max_batch_size=batch, batch_wait_ms=5000) as server, \
            httpx.Client(base_url=server.base_url, timeout=120) as client:
        for name, i in [("trained", 0), ("base", 0), ("trained", 1), ("base", 1)]:  # switching back and forth
            got[name, i] = ask(client, name, i, n=batch)
        singles = len(server.stats()["batch_sizes"])
        with ThreadPoolExecutor(batch) as pool:
            together = list(pool.map(lambda i: ask(client, "trained", i), range(batch)))
        assert server.stats()["batch_sizes"][singles:] == [batch], "the requests were not batched"
    assert together == [got["trained", i] for i in range(batch)], "a left-padded batch changed the tokens"
    return got


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_train_three_steps_and_serve_the_adapter(model_type, tokenizer, data_dir, tmp_path):
    from rlvf.metrics_log import read_metrics

    model_dir = _model_dir(tmp_path, model_type, tokenizer)
    adapter = _train(model_dir, data_dir, tmp_path / "run")
    assert (adapter / "adapter_model.safetensors").is_file()
    steps = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at B = 0
    assert all(math.isfinite(v) for r in steps for k, v in r.items() if k.startswith("loss"))

    expected = _oracle(model_dir, adapter, tokenizer)
    assert any(expected["trained", i] != expected["base", i] for i in range(len(PROMPTS))), \
        "the trained adapter does not change the greedy tokens: the comparison would not see it ignored"
    assert _served(model_dir, adapter) == {key: (tokenizer.decode(ids, skip_special_tokens=True), len(ids))
                                           for key, ids in expected.items()}
