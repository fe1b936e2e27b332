"""bench/memory_model.py: the analytical peak memory of a training step, piece by piece against exact
counts, and whole against measured peaks of the real training code on the CPU at small scale.

Oracles: parameter counts of the real architectures built on the meta device by transformers and
wrapped by ``rlvf.lora.inject_lora`` (and the published totals: Mistral-7B 7,241,732,096,
Llama-3-8B 8,030,261,248, Llama-3-70B 70,553,706,496); the storages autograd saves, collected with
``torch.autograd.graph.saved_tensors_hooks``; the live bytes of every allocation (``LiveBytes``).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from bench_modules import load_bench
import torch

ROOT = Path(__file__).resolve().parent.parent


mm = load_bench("memory_model")

TINY = mm.Arch("tiny", 64, 160, 2, 4, 2, 256, "mistral")  # GQA 2:1, I/H = 2.5
TINY_SETTING = mm.Setting(seq_len=32, prompt_len=8, r=4, head="torch", foreach_adam=False, chunk=32)


@pytest.mark.parametrize("key,total", [("mistral-7b", 7_241_732_096), ("llama3-8b", 8_030_261_248),
                                       ("llama3-70b", 70_553_706_496)])
def test_parameter_counts_are_the_published_ones(key, total):
    assert mm.base_params(mm.ARCHS[key]) == total


@pytest.mark.parametrize("key", ["mistral-7b", "llama3-8b"])
def test_parameter_counts_match_the_models_on_the_meta_device(key):
    """transformers builds the architecture, inject_lora wraps every linear but lm_head (r 64)."""
    from rlvf.lora import lora_modules, trainable_parameters

    a = mm.ARCHS[key]
    model = mm.meta_model(a, mm.Setting())
    n_lora = sum(p.numel() for p in trainable_parameters(model))
    assert sum(p.numel() for p in model.parameters()) - n_lora == mm.base_params(a)
    assert n_lora == mm.lora_params(a, 64) and len(lora_modules(model)) == 7 * a.layers


@pytest.mark.parametrize("base_bytes", [4, 2])
def test_saved_activations_per_layer_match_autograd(base_bytes):
    """Unique storages saved for backward while each decoder layer runs (parameters excluded; cos/sin,
    computed once and shared, counted once)."""
    from rlvf.logprobs import sequence_logprobs

    s = replace(TINY_SETTING, base_bytes=base_bytes, checkpointing=False)
    model, _ = mm.build_model(TINY, s, torch.device("cpu"))
    batch = mm.make_batch(TINY, s, torch.device("cpu"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[str, dict[int, int]] = {}
    current = ["embed"]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved.setdefault(current[0], {})[ptr] = t.untyped_storage().nbytes()
        return t

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: current.__setitem__(0, f"layer{i}"))
    model.model.norm.register_forward_pre_hook(lambda *_: current.__setitem__(0, "head"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=s.chunk)
    rope = mm.rope_bytes(TINY, s)
    assert sum(saved["layer0"].values()) == mm.layer_saved(TINY, s, first=True) + rope
    assert sum(saved["layer1"].values()) == mm.layer_saved(TINY, s) + rope


# each peaks at a different candidate: MLP-product backward, final-norm backward, recompute at
# down_proj's input and at up_proj's output, forward at down_proj's input
PEAKS = [(4, True, 0.05), (4, False, 0.05), (2, True, 0.05), (2, True, 0.0), (2, False, 0.0), (2, False, 0.05)]


@pytest.mark.parametrize("base_bytes,ckpt,dropout", PEAKS)
def test_model_matches_measured_peak_of_a_step(base_bytes, ckpt, dropout):
    """The whole step (LoRA, sequence_logprobs, loss, backward, clipping, AdamW) on real CPU tensors;
    what the model leaves out (index tensors of the head, scalars) is under 0.2 % here."""
    s = replace(TINY_SETTING, base_bytes=base_bytes, checkpointing=ckpt, dropout=dropout)
    (row,) = mm.validate(configs=[(TINY, s)])
    assert abs(row["static_error"]) < 0.01, row["static_error"]
    assert abs(row["extra_error"]) < 0.005, (row["model"]["candidates"], row["measured"])


def test_live_bytes_counts_each_storage_once_until_freed():
    tracker = mm.LiveBytes()
    kept = torch.zeros(1000)  # 4,000 bytes, existing before
    tracker.track(kept, kept[10:], kept.view(10, 100))
    assert tracker.current == 4000
    with tracker:
        a = torch.ones(500)  # + 2,000
        b = a * 2  # + 2,000
        del a, b
        c = torch.empty(250, dtype=torch.float64)  # + 2,000 after the 4,000 freed
    assert (tracker.peak, tracker.current) == (8000, 6000)
    del c
    assert tracker.current == 4000


def test_the_paper_preset_fits_a_40gb_a100_and_logits_stay_under_one_percent():
    """Issue 17's targets for Mistral-7B, 1 pair + 1 near + 1 out × 2,048 tokens, bf16 + fp32 LoRA r 64."""
    on = mm.step_memory(mm.ARCHS["mistral-7b"], mm.Setting())
    off = mm.step_memory(mm.ARCHS["mistral-7b"], mm.Setting(checkpointing=False))
    assert on["peak_bytes"] < mm.A100_40GB_USABLE - 10 * mm.GIB  # ≥ 10 GiB to spare for fragmentation
    assert off["peak_bytes"] > 40 * mm.GIB  # without checkpointing it does not fit
    assert on["logits_bytes"] == 1024 * 32000 * 2  # one bf16 chunk of the Triton path
    assert on["logits_bytes"] < 0.01 * 40 * mm.GIB
    assert on["static"]["weights"] == 7_241_732_096 * 2
    fsdp = mm.step_memory(mm.ARCHS["llama3-70b"], mm.Setting(ranks=8))
    assert fsdp["peak_bytes"] < mm.H100_80GB_USABLE


def test_cli_prints_the_table_and_writes_rows(tmp_path, capsys):
    assert mm.main(["--no-validate", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mistral-7b, 1 GPU, ckpt on" in out and "met" in out
    rows = [json.loads(line) for line in (tmp_path / "memory_model.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"machine", "versions", "date", "command"} <= set(r) for r in rows)
    assert rows[0]["command"].startswith("python bench/memory_model.py")
