"""The shipped tiny-world model: a normal HF directory, loaded like any model, meeting the quality bar."""
from __future__ import annotations

import json

import pytest
import torch

from rlvf.modeling import load_model, load_tokenizer
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.build import MODEL_DIR, BuildConfig, generate


@pytest.fixture(scope="module")
def shipped():
    tokenizer = load_tokenizer(MODEL_DIR)
    model = load_model(MODEL_DIR, torch.float32, torch.device("cpu"))
    return model, tokenizer


def test_is_a_small_normal_hf_directory():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) <= 20 * 2**20
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama"


def test_model_card_reports_the_build(shipped):
    model, _ = shipped
    stats = json.loads((MODEL_DIR / "build_stats.json").read_text())
    card = (MODEL_DIR / "README.md").read_text()
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())
    assert f"{stats['parameters']:,}" in card and "held-out loss" in card and "training time" in card
    assert stats["eval"]["greedy_on_topic"] >= 0.9
    assert stats["config"] == {**BuildConfig().__dict__, **stats["config"]}


def test_tokenizer_round_trips_and_chat_template(shipped):
    _, tok = shipped
    texts = [reply for _, reply in tiny_world.corpus(5, 200)] + ["Hi Maddie ❤️ 😂 — café & naïve 100%", "```python\nx = [1, 2]\n```"]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    msgs = [{"role": "user", "content": "Text Maddie about dinner."}, {"role": "assistant", "content": "See you at 7."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    labelled = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(labelled) == "See you at 7.</s>"


def test_quality_bar_on_held_out_prompts(shipped):
    """≥ 90% of greedy replies to 200 unseen prompts are on topic (world checker); samples vary."""
    model, tok = shipped
    cfg = BuildConfig()
    seen = {req.prompt for req, _ in tiny_world.corpus(cfg.seed, cfg.corpus_size)}
    requests = tiny_world.held_out_requests(cfg.seed + 7, 200, exclude=seen)
    assert not seen & {r.prompt for r in requests}
    greedy = generate(model, tok, [r.prompt for r in requests], torch.device("cpu"))
    on_topic = sum(tiny_world.on_topic(r, g) for r, g in zip(requests, greedy)) / len(requests)
    assert on_topic >= 0.9, on_topic
    # Sampling at temperature 0.7 varies the replies. Not every pair differs: the world itself has a
    # single answer for some requests (each Python topic has one snippet), and the model learnt that.
    probe = [r.prompt for r in requests[:20]]
    a = generate(model, tok, probe, torch.device("cpu"), sample=True, seed=1)
    b = generate(model, tok, probe, torch.device("cpu"), sample=True, seed=2)
    assert sum(x != y for x, y in zip(a, b)) >= 14
