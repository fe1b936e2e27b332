"""Build the tiny world's tokenizer and chat model: ``python -m rlvf.tinyworld.build``.

Generates the world's corpus (seeded), trains a byte-level BPE tokenizer with a chat template on it,
then trains a small Llama-architecture model from scratch on the assistant turns (completion-only
loss) with AdamW and a warmup + cosine schedule, evaluates it (held-out loss, greedy on-topic rate
judged by the world's checker, sample diversity) and writes a normal Hugging Face model directory
with a model card. The default output is the copy shipped inside the package,
``rlvf/tinyworld/model``. Reproducible from ``--seed`` on a given machine and torch build; runs on
CPU (≈ 20 min on 2 cores) or on a GPU if one is present.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlvf.data import collate, encode_row
from rlvf.random_llama import build_tokenizer
from rlvf.tinyworld import styles
from rlvf.tinyworld import world as tiny_world

MODEL_DIR = Path(__file__).resolve().parent / "model"


@dataclass
class BuildConfig:
    seed: int = 0
    corpus_size: int = 64_000      # (request, reply) pairs; each is seen about once
    style_rate: float = tiny_world.STYLE_RATE  # share of replies in a rare style (rlvf.tinyworld.styles)
    vocab_size: int = 2048
    hidden_size: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    intermediate_size: int = 688
    max_length: int = 160
    batch_size: int = 32
    steps: int = 2000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    eval_prompts: int = 200


def build_model_config(cfg: BuildConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def encode_corpus(tokenizer, pairs, max_length: int):
    out = []
    for req, reply in pairs:
        enc = encode_row(tokenizer, req.prompt, reply, max_length, max_length // 2)
        if enc is not None:
            out.append(enc)
    return out


def train_model(model, data, cfg: BuildConfig, pad_id: int, device, log=print) -> float:
    """Completion-only next-token training; returns wall seconds."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, t / cfg.steps))))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = [order[(step * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
        batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], pad_id).items()}
        loss = model(**batch, use_cache=False).loss  # mean over completion tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}/{cfg.steps}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s")
    return time.perf_counter() - t0


@torch.no_grad()
def held_out_loss(model, data, pad_id: int, device, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for k in range(0, len(data), batch_size):
        batch = {kk: v.to(device) for kk, v in collate(data[k:k + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch, use_cache=False).loss.item() * n
        count += n
    return total / count


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], device, sample: bool = False, seed: int = 0,
             max_new_tokens: int = 96, batch_size: int = 50) -> list[str]:
    """Greedy (or temperature-0.7 sampled) replies, left-padded batches with a KV cache."""
    model.eval()
    tokenizer.padding_side = "left"
    replies = []
    torch.manual_seed(seed)
    for k in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[k:k + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample, temperature=0.7 if sample else None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return [r.strip() for r in replies]


def evaluate(model, tokenizer, cfg: BuildConfig, corpus_prompts: set[str], device) -> dict:
    """On-topic rate of greedy replies on held-out prompts, and diversity of sampled replies."""
    requests = tiny_world.held_out_requests(cfg.seed + 1, cfg.eval_prompts, exclude=corpus_prompts)
    greedy = generate(model, tokenizer, [r.prompt for r in requests], device)
    on_topic = [tiny_world.on_topic(r, g) for r, g in zip(requests, greedy)]
    per_scenario = {}
    for r, ok in zip(requests, on_topic):
        per_scenario.setdefault(r.scenario, []).append(ok)
    probe = [r.prompt for r in requests[:20]]
    s1 = generate(model, tokenizer, probe, device, sample=True, seed=1)
    s2 = generate(model, tokenizer, probe, device, sample=True, seed=2)
    return {
        "held_out_prompts": len(requests),
        "greedy_on_topic": sum(on_topic) / len(on_topic),
        "greedy_on_topic_by_scenario": {k: sum(v) / len(v) for k, v in sorted(per_scenario.items())},
        "sampled_pairs_differing": sum(a != b for a, b in zip(s1, s2)) / len(probe),
        "greedy_styled": sum(styles.detect(g) is not None for g in greedy) / len(greedy),
        "samples": [{"prompt": r.prompt, "greedy": g} for r, g in list(zip(requests, greedy))[:8]],
    }


def write_card(out: Path, cfg: BuildConfig, stats: dict) -> None:
    samples = "\n".join(f"- **{s['prompt']}**\n  {s['greedy']}" for s in stats["eval"]["samples"])
    by_scen = ", ".join(f"{k} {v:.0%}" for k, v in stats["eval"]["greedy_on_topic_by_scenario"].items())
    (out / "README.md").write_text(f"""# rlvf tiny-world chat model

A {stats['parameters'] / 1e6:.2f}M-parameter Llama-architecture chat model trained from scratch by
`python -m rlvf.tinyworld.build --seed {cfg.seed}` on the synthetic chat world of `rlvf.tinyworld.world`
(texting and emailing named people, Slack DMs, Python questions, science for children, recipes,
travel tips, poems, history facts, product descriptions). It is the embedded default of rlvf: tests
and the offline demo run the whole C3PO pipeline on it without a GPU, a network or a model hub.

It is a stand-in, not a language model of general use: it only knows its world, and it was never
taught to follow instructions or feedback written into the prompt, so the in-context and
chain-of-thought baselines of the paper are meaningful only with real models.

| | |
|---|---|
| architecture | Llama: {cfg.layers} layers, hidden {cfg.hidden_size}, {cfg.heads} heads ({cfg.kv_heads} KV), MLP {cfg.intermediate_size}, tied embeddings |
| parameters | {stats['parameters']:,} |
| tokenizer | byte-level BPE, {stats['vocab_size']} tokens, chat template with `{{% generation %}}` markers |
| corpus | {stats['train_examples']:,} (request, reply) pairs ({stats['train_tokens']:,} tokens), seed {cfg.seed}; {cfg.style_rate:.0%} of replies in a rare style (`rlvf.tinyworld.styles`) |
| training | {cfg.steps} steps × {cfg.batch_size} rows, AdamW lr {cfg.lr}, warmup {cfg.warmup}, cosine, completion-only loss |
| machine | {stats['machine']} |
| training time | {stats['train_seconds'] / 60:.1f} min |
| held-out loss | {stats['held_out_loss']:.4f} (per completion token, {stats['held_out_examples']} unseen rows) |
| greedy on-topic | {stats['eval']['greedy_on_topic']:.1%} of {stats['eval']['held_out_prompts']} held-out prompts (world checker) |
| by scenario | {by_scen} |
| greedy replies in a rare style | {stats['eval']['greedy_styled']:.1%} of the held-out prompts |
| sampled replies differ | {stats['eval']['sampled_pairs_differing']:.0%} of prompt pairs (temperature 0.7, two seeds) |

## Sample greedy replies (held-out prompts)

{samples}
""", encoding="utf-8")


def build(out: Path, cfg: BuildConfig, log=print) -> dict:
    from transformers import LlamaForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    pairs = tiny_world.corpus(cfg.seed, cfg.corpus_size, cfg.style_rate)
    texts = [t for req, reply in pairs for t in (req.prompt, reply)]
    tokenizer = build_tokenizer(texts, vocab_size=cfg.vocab_size)
    data = encode_corpus(tokenizer, pairs, cfg.max_length)
    held = tiny_world.corpus(cfg.seed + 1000, 600, cfg.style_rate)
    corpus_prompts = {req.prompt for req, _ in pairs}
    held_data = encode_corpus(tokenizer, [(r, a) for r, a in held if r.prompt not in corpus_prompts][:500], cfg.max_length)
    model = LlamaForCausalLM(build_model_config(cfg, tokenizer)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params:,} parameters, {len(data):,} training rows, vocab {len(tokenizer)}, device {device}")
    seconds = train_model(model, data, cfg, tokenizer.pad_token_id, device, log)
    stats = {
        "parameters": n_params, "vocab_size": len(tokenizer), "train_examples": len(data),
        "train_tokens": sum(len(e.input_ids) for e in data), "train_seconds": seconds,
        "held_out_loss": held_out_loss(model, held_data, tokenizer.pad_token_id, device),
        "held_out_examples": len(held_data),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}",
        "config": asdict(cfg),
    }
    stats["eval"] = evaluate(model, tokenizer, cfg, corpus_prompts, device)
    log(f"held-out loss {stats['held_out_loss']:.4f}, greedy on-topic {stats['eval']['greedy_on_topic']:.1%}")
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "build_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    write_card(out, cfg, stats)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.tinyworld.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(MODEL_DIR), help=f"output directory (default: {MODEL_DIR})")
    for f in BuildConfig.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = BuildConfig(**{k: getattr(args, k) for k in BuildConfig.__dataclass_fields__})
    build(Path(args.out), cfg, log=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    main()
