"""One optimizer step of LoRA preference training: rlvf (DPO and C3PO) vs TRL's DPOTrainer + PEFT.

    python bench/train_step.py        # Llama-shaped, 4 layers, H 512, V 32,000; 4 pairs × 512 tokens; fp32 CPU

The model is a random ``LlamaForCausalLM`` (built like rlvf/random_llama.py, same seed in every process);
LoRA r 64, α 128, dropout 0.05 on every linear layer but lm_head (the paper's defaults) in both.
Each sequence is 128 prompt + 384 completion tokens (the last one EOS), no padding; both
trainers see exactly the same token ids (TRL's tokenized dataset is checked against them).

Implementations, each in a fresh process:
- ``rlvf-dpo``: what rlvf/train.py does for one step of method dpo: ``inject_lora``, one
  concatenated chosen + rejected forward through ``rlvf.logprobs.sequence_method_loss``,
  ``rlvf.objective.method_loss`` (DPO, or C3PO with its constraints), its metrics, backward, gradient
  clipping at 1.0, ``torch.optim.AdamW`` step, ``zero_grad``. Reference log-probs precomputed
  (adapters disabled) before timing, as rlvf.train caches them.
- ``trl-dpo``: ``trl.DPOTrainer`` with a ``peft.LoraConfig`` of the same r / α / dropout / targets,
  ``precompute_ref_log_probs=True``, the same lr, clipping, batch and no gradient checkpointing
  (both trainers default it on to save memory; this benchmark compares the step without it, in
  both). Trainer construction and the reference precompute are not timed: ``trainer.train()``
  runs warm-up + timed + 1 memory steps, and a TrainerCallback times each step from
  ``on_step_begin`` (batch already collated) to ``on_step_end`` (after the optimizer step and
  zero_grad): the same span as rlvf's. Forward = ``trainer.compute_loss``.
- ``rlvf-c3po``: the full C3PO step (4 pairs + 4 near-scope + 4 out-of-scope sequences, SFT
  constraints (token-mean NLL), λ_out 0.2, λ_near 0.1): more tokens per step; shown beside, no target.
- ``torch.matmul``: the machine's fp32 matmul rate (4096³ on the CPU), measured in the same run,
  the denominator of the model-FLOP utilisation (MFU).

Timings: "forward" is the loss computation, "backward" is backward + clipping + optimizer step,
"fwd_bwd" is the whole step. Model FLOPs per step (the same formula for everyone; rlvf's
recomputation in the chunked head is not counted): forward 2·tokens·(P_linear + P_lora + V·H)
+ 4·tokens·T·H·L (attention); backward the same for the input gradients (the base is frozen),
+ 2·tokens·P_lora for the LoRA weights, attention twice the forward.

Targets (rlvf-dpo vs trl-dpo, one run): tokens/s ≥ 1.3 × TRL; peak memory ≤ 0.7 × TRL.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

NAME = "train_step"
BETA, LR, LAMBDA_OUT, LAMBDA_NEAR, MAX_GRAD_NORM = 0.1, 5e-5, 0.2, 0.1, 1.0
LORA = dict(r=64, alpha=128, dropout=0.05)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD, EOS, FIRST_WORD = 1, 2, 3  # token ids: <unk> 0, <pad> 1, </s> 2, then words


def shapes_for(args, device: torch.device) -> dict:
    if args.smoke:
        return dict(layers=1, H=32, I=64, heads=2, V=128, pairs=2, prompt=4, completion=12, r=4, alpha=8,
                    dtype="float32")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    return dict(layers=4, H=512, I=1376, heads=8, V=32000, pairs=4, prompt=128, completion=384,
                r=LORA["r"], alpha=LORA["alpha"], dtype=dtype)


# --------------------------------------------------------------------------- model and data


def build_model(s: dict, device: torch.device):
    """A random Llama-architecture model, the same weights in every process."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=s["V"], hidden_size=s["H"], intermediate_size=s["I"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["heads"], max_position_embeddings=2 * (s["prompt"] + s["completion"]),
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=getattr(torch, s["dtype"]))
    return model.to(device)


def make_examples(s: dict, n: int, seed: int = 0) -> list[dict]:
    """n examples of token ids: prompt (P,), chosen / rejected / near / out completions (C,), EOS-terminated."""
    g = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(FIRST_WORD, s["V"], (k,), generator=g).tolist()

    keys = ("chosen", "rejected", "near", "out")
    return [{"prompt": ids(s["prompt"]), **{k: ids(s["completion"] - 1) + [EOS] for k in keys},
             "near_prompt": ids(s["prompt"]), "out_prompt": ids(s["prompt"])} for _ in range(n)]


def batch_tensors(seqs: list[tuple[list[int], list[int]]], device) -> dict:
    """(prompt, completion) pairs of equal lengths → input_ids, attention_mask, labels (S, T)."""
    input_ids = torch.tensor([p + c for p, c in seqs], device=device)  # (S, T)
    labels = torch.tensor([[-100] * len(p) + c for p, c in seqs], device=device)  # prompt not scored
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def step_flops(model, s: dict, n_seqs: int) -> float:
    """Model FLOPs of one step (module doc), from the parameter counts of the LoRA-wrapped model."""
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    linear = sum(p.numel() for n, p in model.named_parameters()
                 if n.endswith(".weight") and p.dim() == 2 and "lora_" not in n and "embed" not in n and "lm_head" not in n)
    T = s["prompt"] + s["completion"]
    tokens = n_seqs * T
    head = s["V"] * s["H"]
    attention = 4 * tokens * T * s["H"] * s["layers"]
    forward = 2 * tokens * (linear + lora + head) + attention
    backward = 2 * tokens * (linear + lora + head) + 2 * tokens * lora + 2 * attention
    return float(forward + backward)


# --------------------------------------------------------------------------- rlvf


def rlvf_worker(args, s: dict, device: torch.device, case: str) -> dict:
    """Warm-up + timed + 1 memory step of rlvf's own loop (DPO or C3PO), mirroring rlvf/train.py."""
    from rlvf.config import MethodConfig
    from rlvf.logprobs import sequence_logprobs, sequence_method_loss
    from rlvf.lora import disable_adapters, inject_lora, trainable_parameters
    from rlvf.objective import Layout

    warmup, iters = _counts(args)
    P = s["pairs"]
    model = build_model(s, device)
    inject_lora(model, "all-linear", ["lm_head"], r=s["r"], alpha=s["alpha"], dropout=LORA["dropout"], seed=0)
    examples = make_examples(s, P * (warmup + iters + 1))
    batches = [_rlvf_batch(examples[k * P:(k + 1) * P], case, device) for k in range(warmup + iters + 1)]
    with torch.no_grad(), disable_adapters(model):  # reference log-probs, precomputed as rlvf.train does
        model.eval()
        refs = [sequence_logprobs(model, **{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).logps[:2 * P]
                for b in batches]
    model.train()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    step = iter(range(10**9))
    c3po = case == "c3po"
    method = MethodConfig(name="c3po" if c3po else "dpo", beta=BETA,
                          **({"lambda_out": LAMBDA_OUT, "lambda_near": LAMBDA_NEAR} if c3po else {}))
    layout = Layout(pairs=P, near=P if c3po else 0, out=P if c3po else 0)

    def forward():  # rlvf.train.compute_loss: one forward, rlvf.objective, the logged metrics
        k = next(step) % len(batches)
        b, ref = batches[k], refs[k]
        res = sequence_method_loss(model, b["input_ids"], b["attention_mask"], b["labels"], layout, method,
                                   ref[:P], ref[P:], chunk_size=1024)
        res.metrics(layout)  # the loop logs these (.item() syncs)
        return res.loss

    def backward(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = common.time_fwd_bwd(forward, backward, device, warmup, iters)
    peak = None
    if args.measure != "time":
        with common.PeakMemory(device) as mem:
            backward(forward())
        peak = mem.mib
    n_seqs = 2 * P + (2 * P if case == "c3po" else 0)
    return _result(times, peak, n_seqs, s, step_flops(model, s, n_seqs))


def _rlvf_batch(examples: list[dict], case: str, device) -> dict:
    """Chosen, rejected (and near, out for C3PO) of the examples, concatenated as rlvf.train does."""
    seqs = [(e["prompt"], e["chosen"]) for e in examples] + [(e["prompt"], e["rejected"]) for e in examples]
    if case == "c3po":
        seqs += [(e["near_prompt"], e["near"]) for e in examples] + [(e["out_prompt"], e["out"]) for e in examples]
    return batch_tensors(seqs, device)


# --------------------------------------------------------------------------- TRL


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer where the text 'w17' is token 17: TRL tokenizes text, this makes the
    token ids exactly the ones rlvf is given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": PAD, "</s>": EOS, **{f"w{i}": i for i in range(FIRST_WORD, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def _text(ids: list[int]) -> str:
    return " ".join("</s>" if i == EOS else f"w{i}" for i in ids)


def trl_worker(args, s: dict, device: torch.device) -> dict:
    """TRL DPOTrainer + PEFT LoRA, timed by a callback around each optimizer step."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    warmup, iters = _counts(args)
    P = s["pairs"]
    examples = make_examples(s, P * (warmup + iters + 1))
    rows = [{"prompt": _text(e["prompt"]), "chosen": " " + _text(e["chosen"]), "rejected": " " + _text(e["rejected"])}
            for e in examples]
    model = build_model(s, device)
    timer = step_timer(device, warmup, iters)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=P, gradient_accumulation_steps=1,
            max_steps=warmup + iters + (args.measure != "time"), learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, beta=BETA, precompute_ref_log_probs=True,
            precompute_ref_batch_size=P, max_length=None, gradient_checkpointing=False, report_to="none",
            logging_steps=10**6, save_strategy="no", use_cpu=device.type == "cpu", bf16=s["dtype"] == "bfloat16",
            dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        peft_config = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS,
                                 task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=word_tokenizer(s["V"]), peft_config=peft_config, callbacks=[timer])
        first = trainer.train_dataset[0]
        assert first["prompt_ids"] + first["chosen_ids"] in [e["prompt"] + e["chosen"] for e in examples], \
            "TRL tokenized the data differently from the token ids rlvf gets"
        timer.wrap_forward(trainer)
        trainer.train()
    times = {}
    if iters:
        times = {"forward": common.stats_ms(timer.forward[warmup:warmup + iters]),
                 "backward": common.stats_ms([t - f for t, f in zip(timer.steps, timer.forward[warmup:])]),
                 "fwd_bwd": common.stats_ms(timer.steps)}
    peak = timer.mem.mib if timer.mem is not None else None
    return _result(times, peak, 2 * P, s, step_flops(trainer.model, s, 2 * P))


def step_timer(device, warmup: int, iters: int):
    """A TrainerCallback (transformers imported only here) that is a ``_StepTimer``."""
    from transformers import TrainerCallback

    class StepTimer(_StepTimer, TrainerCallback):
        pass

    return StepTimer(device, warmup, iters)


class _StepTimer:
    """Times optimizer steps warmup … warmup+iters−1 and measures the peak memory of the next one."""

    def __init__(self, device, warmup: int, iters: int):
        self.device, self.warmup, self.iters = device, warmup, iters
        self.steps, self.forward, self.mem, self.t0 = [], [], None, 0.0

    def wrap_forward(self, trainer) -> None:
        compute_loss = trainer.compute_loss

        def timed(*a, **k):
            common.sync(self.device)
            t0 = time.perf_counter()
            out = compute_loss(*a, **k)
            common.sync(self.device)
            self.forward.append(time.perf_counter() - t0)
            return out

        trainer.compute_loss = timed

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup + self.iters:
            self.mem = common.PeakMemory(self.device).__enter__()
        common.sync(self.device)
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        common.sync(self.device)
        elapsed = time.perf_counter() - self.t0
        done = state.global_step  # already incremented for this step
        if self.mem is not None and done == self.warmup + self.iters + 1:
            self.mem.__exit__(None, None, None)
        elif done > self.warmup:
            self.steps.append(elapsed)


# --------------------------------------------------------------------------- worker and parent


def _counts(args) -> tuple[int, int]:
    return common.counts(args, 0 if args.smoke else 1, 1 if args.smoke else 3)


def _result(times: dict, peak_mib: float | None, n_seqs: int, s: dict, flops: float) -> dict:
    """The row's measurements; a memory-only worker returns the peak alone (the timing process the rest)."""
    if not times:
        return {"peak_mib": peak_mib}
    tokens = n_seqs * (s["prompt"] + s["completion"])
    step_s = times["fwd_bwd"]["median"] * 1e-3
    return {"times_ms": times, "peak_mib": peak_mib, "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
            "model_flops_per_step": flops, "model_tflops": flops / step_s / 1e12}


def worker(args) -> dict:
    common.setup_worker(args)
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    if args.worker == "torch.matmul":
        if args.measure == "memory":
            return {"peak_mib": None}
        n = 256 if args.smoke else 4096 if device.type == "cpu" else 8192
        rate = common.matmul_rate(n, n, n, getattr(torch, s["dtype"]), device, 1, 1 if args.smoke else 5)
        return {"times_ms": {"forward": rate["ms"]}, "tflops": rate["tflops"], "matmul_shape": rate["shape"]}
    if args.worker == "trl-dpo":
        return trl_worker(args, s, device)
    return rlvf_worker(args, s, device, args.worker.split("-")[1])


IMPLS = ("torch.matmul", "rlvf-dpo", "trl-dpo", "rlvf-c3po")


def report(rows: list[dict]) -> str:
    by = {r["implementation"]: r for r in rows}
    peak = by.get("torch.matmul", {}).get("tflops")
    trl = by.get("trl-dpo", {})
    table = []
    for r in rows:
        if r["implementation"] == "torch.matmul":
            continue
        t = r.get("times_ms", {})
        table.append([r["implementation"], common.median(t, "forward"), common.median(t, "backward"), common.median_range(t.get("fwd_bwd"), 0),
                      r.get("tokens_per_s"), r.get("peak_mib"), common.ratio(r.get("model_tflops"), peak),
                      common.ratio(r.get("tokens_per_s"), trl.get("tokens_per_s")),
                      common.ratio(r.get("peak_mib"), trl.get("peak_mib")), r.get("error", "")])
    sh = rows[0]["shapes"]
    gflops = common.fmt(None if peak is None else peak * 1e3)
    out = [f"{rows[0]['device']}, {rows[0]['dtype']}; {sh}; matmul peak {gflops} GFLOP/s"]
    out.append(common.markdown_table(
        ["implementation", "forward ms", "backward + optimizer ms", "step ms (p20–p80)", "tokens/s", "peak MiB", "MFU",
         "tokens/s / TRL", "memory / TRL", "note"], table))
    mine = by.get("rlvf-dpo", {})
    speed = common.ratio(mine.get("tokens_per_s"), trl.get("tokens_per_s"))
    memory = common.ratio(mine.get("peak_mib"), trl.get("peak_mib"))
    out.append(f"- rlvf-dpo tokens/s {common.fmt(speed, 2)} × TRL (≥ 1.3): {common.verdict(speed, 1.3, '>=')}")
    out.append(f"- rlvf-dpo peak memory {common.fmt(memory, 2)} × TRL (≤ 0.7): {common.verdict(memory, 0.7)}")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ", ".join(IMPLS))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = common.command_line(__file__, argv)
    if args.worker:
        common.emit(worker(args))
        return
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    rows = []
    for impl in args.impls.split(","):
        if impl == "trl-dpo" and importlib.util.find_spec("trl") is None:
            result = {"error": "trl is not installed (pip install -e '.[bench]')"}
        else:
            result = common.measure(__file__, args, impl, device, common.inline_worker(args, parse_args, worker))
        seqs = 4 * s["pairs"] if impl == "rlvf-c3po" else 2 * s["pairs"]
        shapes = {**{k: v for k, v in s.items() if k != "dtype"}, "sequences": seqs, "lora_dropout": LORA["dropout"]}
        rows.append(common.make_row(NAME, impl, device, s["dtype"], shapes, result, command))
    path = common.write_rows(args.out, NAME, rows)
    print(report(rows))
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
