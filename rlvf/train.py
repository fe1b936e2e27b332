"""``python -m rlvf.train --config configs/<file>.yaml`` — the training loop, written out.

    L = L_DPO(in-scope pairs) + λ_out·L_c(out-of-scope rows) + λ_near·L_c(near-scope rows)   (paper eq. 5)

Steps: validate the config and data (nothing is written before that), load the model, wrap it with
LoRA, precompute the DPO reference log-probs once (adapters disabled, cached in the run directory),
then AdamW over the adapter parameters with gradient accumulation, clipping, a warmup + cosine
schedule, periodic validation and atomic checkpoints. The final adapter is saved in PEFT format
under ``<output_dir>/adapter``. ``--resume`` continues exactly where a run stopped.

Under ``torchrun --nproc_per_node N -m rlvf.train ...`` the same loop runs data-parallel with FSDP2
(rlvf.distributed): each rank takes its slice of every micro-batch, so the global batch and the
loss are those of one process; rank 0 logs and writes metrics; checkpoints are sharded (DCP).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from rlvf import checkpoint as ckpt
from rlvf import config
from rlvf import distributed as D
from rlvf.atomic import write_bytes_atomic, write_text_atomic
from rlvf.batches import (MicroBatch, Streams, build_streams, load_rows, micro_batch, optimizer_steps,
                          shard_micro_batch, split_rows)
from rlvf.config import Config, read_yaml, save_config, to_dict
from rlvf.data import Encoded, collate
from rlvf.errors import UserError, exit_on_user_error
from rlvf.logprobs import SequenceLogps, backbone_hidden, sequence_logprobs, sequence_method_loss
from rlvf.lora import describe_adapters, disable_adapters, inject_lora, trainable_parameters
from rlvf.methods import METHODS, setting, summary
from rlvf.metrics_log import MetricsWriter, check_reporter
from rlvf.chat_template import chat_format
from rlvf.modeling import check_logprobs, load_model, load_tokenizer, pick_device, pick_dtype
from rlvf.objective import Layout
from rlvf.peft_format import load_adapter, save_adapter

# Keys whose change makes a checkpoint meaningless for the resumed run.
_RESUME_FREE = {"train.stop_at_step", "train.progress", "train.report_to", "train.eval_every",
                "train.save_every", "train.save_total_limit", "train.log_every", "train.device"}


_COUNT = "#count"  # an item count travelling with the metric sums through all_reduce_sums

# The config sections a training run depends on (a pipeline config adds others, e.g. eval).
_TRAINING_SECTIONS = ("model", "data", "lora", "method", "train")


@dataclass
class RefLogps:
    """Reference-policy log-probs of every DPO pair, summed over completion tokens: (n_pairs,) each."""

    chosen: torch.Tensor
    rejected: torch.Tensor


@dataclass(frozen=True)
class RunContext:
    """What the forwards, collectives and log lines of one run share, fixed when ``train`` starts.

    ``RunContext(cfg, pad_id, device)`` is a single process computing in the model's fp32 (no
    autocast): what the tests use to call the loop's functions directly.
    """

    cfg: Config
    pad_id: int  # the tokenizer's; pads every micro-batch (rlvf.data.collate)
    device: torch.device  # this rank's
    dtype: torch.dtype = torch.float32  # the model's; on CUDA a bf16/fp16 model runs under autocast to it
    ranks: D.Ranks = D.SINGLE

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def autocast(self):
        """Mixed precision on CUDA for a bf16/fp16 model; a no-op otherwise."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def log(self, msg: str) -> None:
        """One line on stderr, from rank 0 only."""
        if self.ranks.main:
            print(msg, file=sys.stderr)


# ----------------------------------------------------------------------------- forward passes


def _device_batch(items: list[Encoded], run: RunContext) -> dict[str, torch.Tensor]:
    return {k: v.to(run.device) for k, v in collate(items, run.pad_id).items()}


def _logps(model, items: list[Encoded], run: RunContext) -> SequenceLogps:
    b = _device_batch(items, run)
    return sequence_logprobs(model, b["input_ids"], b["attention_mask"], b["labels"],
                             chunk_size=run.cfg.train.logprob_chunk_size)


def compute_loss(model, s: Streams, mb: MicroBatch, ref: RefLogps | None,
                 run: RunContext) -> tuple[torch.Tensor, dict[str, float], int]:
    """The method's loss on one micro-batch: (loss, metrics, number of tokens processed).

    Every sequence goes through one concatenated forward in rlvf.objective.Layout order (as TRL's
    concatenated_forward does for chosen + rejected); constraint: kd adds a no-grad forward of the
    near and out rows with adapters off for the KL's reference. rlvf.objective assembles the loss.
    """
    m = run.cfg.method
    pairs = [s.pairs[i] for i in mb.main] if s.pairs else []
    rows = [s.rows[i] for i in mb.main] if s.rows else []
    near, out = [s.near[i] for i in mb.near], [s.out[i] for i in mb.out]
    layout = Layout(len(pairs), len(rows), len(near), len(out))
    seqs = [c for c, _ in pairs] + [r for _, r in pairs] + rows + near + out
    b = _device_batch(seqs, run)
    n_tokens = sum(len(x.input_ids) for x in seqs)
    ref_c = ref_r = ref_hidden = None
    if pairs:
        idx = torch.tensor(mb.main, device=run.device)
        ref_c, ref_r = ref.chosen[idx].to(run.device), ref.rejected[idx].to(run.device)
    if m.constraint == "kd" and (near or out):
        c = layout.constraint_rows
        with torch.no_grad(), disable_adapters(model):
            ref_hidden = backbone_hidden(model, b["input_ids"][c], b["attention_mask"][c])
        n_tokens += sum(len(x.input_ids) for x in near + out)
    res = sequence_method_loss(model, b["input_ids"], b["attention_mask"], b["labels"], layout, m, ref_c, ref_r,
                               ref_hidden, chunk_size=run.cfg.train.logprob_chunk_size)
    return res.loss, res.metrics(layout), n_tokens


# ----------------------------------------------------------------------------- reference log-probs


def _fingerprint(cfg: Config, s: Streams) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cfg.model.path, cfg.model.dtype, cfg.lora.init_from, cfg.method.reference]
                        + ([cfg.model.revision] if cfg.model.revision else [])).encode())
    for c, r in s.pairs:
        h.update(json.dumps([c.input_ids, c.labels, r.input_ids, r.labels]).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_reference(model, s: Streams, run: RunContext) -> RefLogps:
    """log π_ref(y|x) for every pair. π_ref is the base model (adapters disabled), also when training
    continues from ``lora.init_from`` as the original does; ``method.reference: init_adapter`` makes
    it base + that adapter (dropout off) instead.

    Under torchrun each rank computes a contiguous shard of the pairs and the shards are gathered.
    """
    cfg, ranks = run.cfg, run.ranks
    was_training = model.training
    model.eval()
    reference = contextlib.nullcontext() if cfg.method.reference == "init_adapter" else disable_adapters(model)
    chosen, rejected, B = [], [], cfg.train.batch_size
    mine, sizes = list(D.shard_range(len(s.pairs), ranks)), D.shard_sizes(len(s.pairs), ranks)
    with reference, run.autocast():
        for k in range(math.ceil(max(sizes) / B)):  # as many forwards on every rank: FSDP gathers in step
            idx = mine[k * B:(k + 1) * B]
            batch = [s.pairs[i] for i in idx or [0]]  # a rank with no pairs left redoes pair 0, then drops it
            seqs = [c for c, _ in batch] + [r for _, r in batch]
            lp = D.run_forward(model, _logps, model, seqs, run).logps.float().cpu()
            chosen.append(lp[:len(idx)])
            rejected.append(lp[len(batch):len(batch) + len(idx)])
    model.train(was_training)
    empty = torch.zeros(0)
    local = [torch.cat(x) if x else empty for x in (chosen, rejected)]  # (sizes[rank],) each
    return RefLogps(*(D.all_gather_rows(t, sizes, ranks) for t in local))


def _read_reference(path: Path, fingerprint: str) -> RefLogps | None:
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                t = load_file(str(path))
                return RefLogps(t["chosen"], t["rejected"])
    return None


def cached_reference(path: Path, model, s: Streams, run: RunContext) -> RefLogps:
    """Load the reference log-probs from ``path`` if computed for the same model and tokens, else compute
    and save them (atomically; rank 0 writes)."""
    fp = _fingerprint(run.cfg, s)
    ref = _read_reference(path, fp)
    if D.all_true(ref is not None, run.ranks):
        return ref
    ref = compute_reference(model, s, run)
    if run.ranks.main:
        tensors = {"chosen": ref.chosen.contiguous(), "rejected": ref.rejected.contiguous()}
        write_bytes_atomic(path, safetensors_bytes(tensors, metadata={"fingerprint": fp}))
    return ref


# ----------------------------------------------------------------------------- loop helpers


def lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    """Multiplier of the peak lr at step t: linear warmup from 0, then cosine / linear decay to 0 or
    constant; the schedules of transformers' get_{cosine,linear,constant}_schedule_with_warmup, which
    the original's Trainer uses (so its first step, t = 0, has lr 0 when there is a warmup)."""

    def f(t: int) -> float:
        if t < warmup_steps:
            return t / max(1, warmup_steps)
        progress = (t - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return f


def _optimizer(params: list, t, n_main: int):
    """AdamW over the adapter parameters and its warmup + decay schedule (``t``: cfg.train; ``n_main``:
    training items per epoch): (optimizer, scheduler, total optimizer steps)."""
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    total_steps = t.max_steps or optimizer_steps(n_main, t.batch_size, t.grad_accum, t.epochs)
    warmup = math.ceil(t.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, t.scheduler))
    return optimizer, scheduler, total_steps


@torch.no_grad()
def validation_loss(model, s: Streams, ref: RefLogps | None, run: RunContext) -> dict[str, float]:
    """Mean loss and metrics over the whole validation split (dropout off), keys prefixed 'eval/'.
    Under torchrun each rank scores its slice of every micro-batch and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    sums, n = {}, 0
    B, ranks = run.cfg.train.batch_size, run.ranks
    for i in range(math.ceil(s.n_main / B)):
        mb = micro_batch(s, i, B, run.cfg.train.seed, ordered=True)
        mb, count = shard_micro_batch(mb, ranks.rank, ranks.size)
        with run.autocast():
            loss, metrics, _ = D.run_forward(model, compute_loss, model, s, mb, ref, run)
        for k, v in {"loss": loss.item(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v * count
        n += count
    model.train(was_training)
    sums = D.all_reduce_sums({**sums, _COUNT: n}, ranks)
    n = sums.pop(_COUNT)
    return {f"eval/{k}": v / n for k, v in sums.items()}


def _diverged(step: int, what: str, run_dir: Path) -> UserError:
    last = ckpt.latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return UserError(f"non-finite {what} at step {step}; stopped, {kept}. "
                     "Lower train.lr or check the data (see metrics.jsonl).")


def _check_resume_config(cfg: Config, run_dir: Path) -> None:
    saved = read_yaml(run_dir / "config.yaml")
    now = to_dict(cfg)
    for section in _TRAINING_SECTIONS:
        values = now[section]
        for key, value in values.items():
            dotted = f"{section}.{key}"
            old = saved.get(section, {}).get(key)
            if dotted not in _RESUME_FREE and old != value:
                raise UserError(f"{run_dir / 'config.yaml'}: {dotted} was {old!r}, now {value!r}; "
                                "a run can only be resumed with the same settings")


def _restore(run: RunContext, model, optimizer, scheduler, total_steps: int) -> int:
    """``--resume``: the step to continue from, with model, optimizer, schedule and RNG restored from the
    latest checkpoint (0 without one); metrics logged after that checkpoint are dropped."""
    run_dir = run.run_dir
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        if run.ranks.main:
            _truncate_metrics(run_dir, -1)  # rows of a run killed before its first checkpoint
        run.log(f"resume: no checkpoint in {run_dir}, starting from scratch")
        return 0
    step = ckpt.load_checkpoint(last, model, optimizer, scheduler, run.ranks)["step"]
    if run.ranks.main:
        _truncate_metrics(run_dir, step)
    run.log(f"resuming {run_dir} from {last.name} (step {step}/{total_steps})")
    return step


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint being resumed (they will be logged again)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = [(l, _parse_row(l)) for l in path.read_text(encoding="utf-8").splitlines()]
        keep = [l for l, row in rows if row is not None and row["step"] <= step]
        write_text_atomic(path, "".join(l + "\n" for l in keep))


def _parse_row(line: str) -> dict | None:
    """A metrics row, or None for a blank line or one cut short by a killed run."""
    try:
        return json.loads(line) if line.strip() else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the run


def prepare(cfg: Config, resume: bool):
    """Everything that can fail because of the user, before anything is written."""
    run_dir = Path(cfg.output_dir)
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"output_dir: {run_dir} already holds a run; pass --resume to continue it "
                        "or choose another output_dir")
    if resume and (run_dir / "config.yaml").is_file():
        _check_resume_config(cfg, run_dir)
    check_reporter(cfg.train.report_to)
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.model.path, revision=cfg.model.revision, chat_template=cfg.model.chat_template,
                               chat_template_kwargs=cfg.model.chat_template_kwargs)
    rows = load_rows(cfg)
    train_rows, val_rows = split_rows(rows, cfg.data.val_fraction, cfg.train.seed)
    train_s, dropped = build_streams(cfg, train_rows, tokenizer)
    val_s, val_dropped = build_streams(cfg, val_rows, tokenizer) if cfg.data.val_fraction > 0 else (Streams(), 0)
    if train_s.n_main == 0:
        raise UserError(f"data.dirs: no trainable in-scope rows left for method {cfg.method.name} "
                        f"({dropped} dropped by data.max_length={cfg.data.max_length})")
    if METHODS[cfg.method.name].constraints and not (train_s.near and train_s.out):
        raise UserError("data.dirs: method needs near-scope and out-of-scope rows, but none are left after truncation")
    return run_dir, device, tokenizer, train_s, val_s, dropped + val_dropped


def _build_model(run: RunContext):
    """The model with LoRA on ``run.device``: (model, LoRA module paths). Under torchrun it is loaded on
    the CPU and sharded with FSDP2, which moves each rank's shards to ``run.device``."""
    cfg, ranks = run.cfg, run.ranks
    model = load_model(cfg.model.path, run.dtype, torch.device("cpu") if ranks.distributed else run.device,
                       cfg.model.attn_implementation, revision=cfg.model.revision)
    if cfg.lora.init_from:
        wrapped = load_adapter(model, cfg.lora.init_from, dropout=cfg.lora.dropout, trainable=True)
    else:
        wrapped = inject_lora(model, cfg.lora.target_modules, cfg.lora.exclude_modules, r=cfg.lora.r,
                              alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, use_rslora=cfg.lora.use_rslora,
                              seed=cfg.train.seed)
    if setting(cfg.method, "disable_dropout"):  # as TRL 0.7.10's DPOTrainer does to the original's dpo / lcdpo
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    run.log(check_logprobs(model))  # rlvf's log-probs = the model's own, adapters on and off; else exit 2
    if cfg.model.gradient_checkpointing:
        # transformers 5.24 renamed the method (the old name warns and goes in v6); setup.py allows 4.46+
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ranks.distributed:
        D.shard_model(model, ranks, run.device)
    else:
        model.to(run.device)
    return model, wrapped


class _NoMetrics:
    """The metrics writer of ranks other than 0."""

    def write(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def train(cfg: Config, resume: bool = False) -> Path:
    """Run one training job; returns the final adapter directory. Under torchrun every rank calls it."""
    ranks = D.init_distributed(pick_device(cfg.train.device))
    run_dir, device, tokenizer, train_s, val_s, dropped = prepare(cfg, resume)
    device = D.local_device(device, ranks)
    D.barrier(ranks)  # every rank has checked output_dir before rank 0 writes into it
    run = RunContext(cfg, tokenizer.pad_token_id, device, pick_dtype(cfg.model.dtype, device), ranks)
    model, wrapped = _build_model(run)
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.yaml").is_file():
            save_config(cfg, run_dir / "config.yaml", sections=("output_dir",) + _TRAINING_SECTIONS)
    ref = cached_reference(run_dir / "ref_logps.safetensors", model, train_s, run) if train_s.pairs else None
    val_ref = cached_reference(run_dir / "ref_logps_val.safetensors", model, val_s, run) if val_s.pairs else None

    t = cfg.train
    params = trainable_parameters(model)
    optimizer, scheduler, total_steps = _optimizer(params, t, train_s.n_main)
    torch.manual_seed(t.seed + ranks.rank)  # dropout stream (per rank); restored from the checkpoint on resume
    step = _restore(run, model, optimizer, scheduler, total_steps) if resume else 0

    n_base = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in params)
    fsdp = f" × {ranks.size} ranks (FSDP2)" if ranks.distributed else ""
    run.log(f"method {summary(cfg.method)}")
    run.log(chat_format(tokenizer).summary)  # how rows are labelled (rlvf/chat_template.py)
    run.log(f"{cfg.method.name}: {describe_adapters(model)}; {sum(p.numel() for p in params):,} trainable / "
            f"{n_base:,} frozen parameters; {train_s.n_main} train items ({len(train_s.near)} near, "
            f"{len(train_s.out)} out), {val_s.n_main} validation; {dropped} rows dropped by truncation; "
            f"{total_steps} optimizer steps on {device}{fsdp}")
    writer = (MetricsWriter(run_dir, t.report_to, run_name=run_dir.name, config=to_dict(cfg)) if ranks.main
              else _NoMetrics())
    bar = _progress(t.progress and ranks.main, total_steps, step)
    row: dict = {}
    first_eval = last_eval = None
    try:
        if val_s.n_main and step == 0:  # the starting point, for comparison
            first_eval = validation_loss(model, val_s, val_ref, run)
            writer.write(0, first_eval)
        model.train()
        while step < total_steps:
            t0, sums, tokens = time.perf_counter(), {}, 0
            for a in range(t.grad_accum):
                mb, count = shard_micro_batch(micro_batch(train_s, step * t.grad_accum + a, t.batch_size, t.seed),
                                              ranks.rank, ranks.size)
                share = count / t.batch_size  # of the global micro-batch (1 in a single process)
                D.set_gradient_sync(model, a == t.grad_accum - 1)
                with run.autocast():
                    loss, metrics, n = D.run_forward(model, compute_loss, model, train_s, mb, ref, run)
                if not D.all_true(bool(torch.isfinite(loss)), ranks):
                    raise _diverged(step + 1, "loss", run_dir)
                (loss * share / t.grad_accum).backward()  # FSDP sums the ranks' shares of the global mean
                tokens += n if count else 0
                for k, v in {"loss": loss.item(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v * share / t.grad_accum
            sums = D.all_reduce_sums({**sums, _COUNT: tokens}, ranks)
            tokens = sums.pop(_COUNT)
            grad_norm = D.clip_grad_norm(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
            if not torch.isfinite(grad_norm):
                raise _diverged(step + 1, "gradient norm", run_dir)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            row = {**sums, "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_s": tokens / dt,
                   "epoch": step * t.grad_accum * t.batch_size / train_s.n_main}
            if step % t.log_every == 0 or step == total_steps:
                writer.write(step, row)
            if val_s.n_main and ((t.eval_every and step % t.eval_every == 0) or step == total_steps):
                last_eval = validation_loss(model, val_s, val_ref, run)
                writer.write(step, last_eval)
            bar.update(1)
            bar.set_postfix(_postfix(row), refresh=False)
            stopping = t.stop_at_step and step == t.stop_at_step and step < total_steps
            if (t.save_every and step % t.save_every == 0) or stopping or step == total_steps:
                ckpt.save_checkpoint(run_dir, step, model, optimizer, scheduler,
                                     {"step": step, "micro_batch": step * t.grad_accum, "total_steps": total_steps,
                                      "metrics": row}, cfg.model.path, t.save_total_limit, ranks,
                                     revision=cfg.model.revision)
            if stopping:
                run.log(f"stopped after step {step} (train.stop_at_step); continue with --resume")
                return run_dir / "checkpoints"
    finally:
        bar.close()
        writer.close()
    out = run_dir / "adapter"
    full = D.full_adapter_state(model, ranks)  # collective: the whole adapter on rank 0
    if ranks.main:
        save_adapter(model, out, base_model_name_or_path=cfg.model.path, revision=cfg.model.revision, tensors=full)
        (run_dir / "train_summary.json").write_text(json.dumps(
            {"steps": step, "dropped_rows": dropped, "train_items": train_s.n_main, "world_size": ranks.size,
             "final": row}, indent=2) + "\n")
    D.barrier(ranks)  # the adapter is in place before any rank returns its path
    if first_eval and last_eval:
        run.log(_eval_summary(first_eval, last_eval))
    hint = saturation_hint(last_eval or row, cfg)
    if hint:
        run.log(hint)
    run.log(f"saved adapter to {out}")
    return out


# loss/dpo below this is −log σ(β·margin) with β·margin above ~4.6: the sigmoid's gradient, β·σ(−β·margin),
# is under 1% of its starting value.
SATURATED_DPO_LOSS = 0.01


def saturation_hint(metrics: dict, cfg: Config) -> str | None:
    """A note when the sigmoid DPO term has saturated while the revisions are still, on average, less
    likely than the baselines: the loss then no longer pushes, and greedy decoding keeps writing the
    baseline (the failure bench/README.md measures on the tiny ranks). ``metrics``: the last
    validation row (``eval/`` keys) or, without validation, the last training row."""
    m = cfg.method
    if not METHODS[m.name].pairs or m.loss_type != "sigmoid" or m.label_smoothing:
        return None
    p = "eval/" if "eval/loss/dpo" in metrics else ""
    keys = [p + k for k in ("loss/dpo", "rewards/margins", "logps/chosen", "logps/rejected")]
    if not all(k in metrics for k in keys):
        return None
    loss, margin, chosen, rejected = (metrics[k] for k in keys)
    if loss >= SATURATED_DPO_LOSS or chosen >= rejected:
        return None
    where = "validation" if p else "last batch"
    return (f"note: the DPO term has saturated ({where}: loss/dpo {loss:.2g}, β·margin {margin:.3g}) while the "
            f"revisions are still less likely than the baselines (mean log π {chosen:.4g} against {rejected:.4g}): "
            f"it no longer pushes, and greedy replies may stay the baseline's; a smaller method.beta or "
            f"method.loss_type: ipo keeps the preference signal (see bench/README.md)")


def _eval_summary(before: dict, after: dict) -> str:
    """'validation (step 0 → end): loss 27.1 → 22.7, loss/dpo 0.693 → 0.676, ...'"""
    keys = ["eval/loss", "eval/loss/dpo", "eval/loss/sft", "eval/loss/near", "eval/loss/out",
            "eval/rewards/margins", "eval/rewards/accuracies"]
    parts = [f"{k[5:]} {before[k]:.4g} → {after[k]:.4g}" for k in keys if k in before and k in after]
    return "validation (start → end): " + ", ".join(parts)


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def _postfix(row: dict) -> dict:
    keys = {"loss": "loss", "rewards/margins": "margin", "lr": "lr", "tokens_per_s": "tok/s"}
    return {short: f"{row[k]:.3g}" for k, short in keys.items() if k in row}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    args = config.parse_arguments(parser, argv, "train")
    with exit_on_user_error():
        from rlvf.drafts import prepare_feedbacks
        from rlvf.feedback_runs import label, train_parts

        runs = config.load_runs(args.config, args.overrides)
        where = config.origin(args.config, args.overrides)  # a key given by --set is blamed on it
        config.sweep_for(runs, ("train",), where)
        for _, run_cfg in runs:
            config.check_stage(run_cfg, "train", where)
            prepare_feedbacks(run_cfg, where, "train")  # a select section keeps its feedbacks' data.dirs
        parts = [(name, part) for name, run_cfg in runs for part in train_parts(run_cfg)]  # one per selected feedback
        try:
            for name, part in parts:
                if label(name, part) and os.environ.get("RANK", "0") == "0":
                    print(f"{label(name, part)} -> {part.cfg.output_dir}", file=sys.stderr)
                train(part.cfg, resume=args.resume)
        finally:
            D.shutdown()


if __name__ == "__main__":
    main()
