"""rlvf's training loss equals the original research code's, config by config (README, "Faithful").

The oracle re-derives what austrian-code-wizard/c3po computes (``src/lcdpo.py``, ``src/sft_weighted.py``
with TRL 0.7.10 and the HF Trainer) from the tiny model's full logits, one row per forward and no
padding, exactly as the original runs at ``per_device_train_batch_size: 1``:

- DPO (TRL 0.7.10 ``get_batch_logps`` with ``average_log_prob=False``): log π(y|x) = Σ over the
  completion tokens of log_softmax(logits[t−1])[y_t]; L = −log σ(β·((π_w − ref_w) − (π_l − ref_l))),
  the reference being the same model with its adapters disabled (TRL's ``null_ref_context``).
- NLL terms: Hugging Face's own ``model(input_ids, labels=labels).loss`` (``student_output.loss``).
- KD (``masked_dl_div``): Σ_t Σ_v p_ref(v)·(log p_ref(v) − log p(v)) at temperature T from full
  logits, summed per sequence (``use_avg_kl`` false) or divided by its token count (true), ×T².
- C3PO: L = L_DPO + σ_soft·KD(out) + σ_hard·KD(near), with ``use_l2``: + σ·½·KD² instead.
- Gradient accumulation (HF Trainer): each micro-batch's loss divided by the accumulation count.

rlvf's side is the real training path: ``rlvf.train.compute_loss`` on ``Streams`` / ``MicroBatch``
(one concatenated, right-padded forward, the fused log-prob path, ``rlvf.objective``), with the
reference log-probs from ``rlvf.train.compute_reference``. Compared: the loss and every LoRA
gradient, fp32, ≤ 1e-5 relative; at micro-batch 1 (the original's setting) and, for invariance, at
micro-batch 3 with unequal lengths against the original's three micro-batches of 1 accumulated.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlvf.batches import MicroBatch, Streams
from rlvf.config import config_from_dict
from rlvf.data import encode_pair, encode_row
from rlvf.lora import disable_adapters, inject_lora
from rlvf.modeling import load_model, load_tokenizer
from rlvf.train import RunContext, compute_loss, compute_reference

# Three in-scope rows, three near and three out, of unequal prompt and completion lengths.
IN = [("text Maddie about dinner", "see you at eight ❤️", "see you at eight"),
      ("write a short text to Maddie saying I will be late tonight because of the train",
       "running late, the train is stuck, sorry ❤️ ❤️", "running late because the train is stuck, sorry"),
      ("hi", "hello ❤️", "hello there, how are you doing today")]
NEAR = [("email Maddie the meeting notes", "here are the notes from today"),
        ("text my mom good night", "good night mom, sleep well and see you soon"),
        ("text Sam", "ok")]
OUT = [("what is the capital of France", "Paris"),
       ("write a haiku about autumn leaves falling slowly in the park",
        "red leaves drift and fall, the park grows quiet and cold, autumn says goodbye"),
       ("explain recursion briefly", "a function that calls itself on a smaller input")]

PAD = 0  # padding id of the right-padded rlvf batches (masked, so any id works)

# The original configs as rlvf method sections (the json's training_args in the comment).
CONFIGS = {
    "lcdpo": {"name": "c3po"},  # dpo_beta 0.1, lcdpo_sigma_soft 0.2, lcdpo_sigma_hard 0.1, lcdpo_lambda 0, lcdpo_temp 1
    "lcdpo_kl": {"name": "c3po", "constraint": "kd"},  # lcdpo_lambda 1, lcdpo_temp 1, use_avg_kl false
    "lcdpo_kl_avg_mix": {"name": "c3po", "constraint": "kd", "kd_kappa": 0.5, "kd_temperature": 2.0,
                         "kl_reduction": "token_mean"},  # lcdpo_lambda 0.5, lcdpo_temp 2, lcdpo_avg_kl true
    "lcdpo_no_hard": {"name": "c3po", "lambda_near": 0.0},  # lcdpo_sigma_hard 0
    "lcdpo_no_soft": {"name": "c3po", "lambda_out": 0.0},  # lcdpo_sigma_soft 0
    "use_l2": {"name": "c3po", "constraint_squared": True},  # use_l2 true
    "use_l2_kl": {"name": "c3po", "constraint": "kd", "constraint_squared": True},  # use_l2 with lcdpo_kl
    "dpo": {"name": "dpo"},  # algo dpo, negative/general_prompt_ratio 0
    "sft_weighted": {"name": "scd_neg"},  # algo sft_weighted, lcdpo_sigma_soft 0.5, lcdpo_sigma_hard 0.5
    "scd": {"name": "scd"},  # algo sft (config_sft.json)
}

# What each original config computes (lcdpo.py / sft_weighted.py / TRL's DPOTrainer / SFTTrainer).
ORIGINAL = {
    "lcdpo": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.1, kd_lambda=0.0, temp=1.0),
    "lcdpo_kl": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.1, kd_lambda=1.0, temp=1.0),
    "lcdpo_kl_avg_mix": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.1, kd_lambda=0.5, temp=2.0,
                             avg_kl=True),
    "lcdpo_no_hard": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.0, kd_lambda=0.0, temp=1.0),
    "lcdpo_no_soft": dict(algo="lcdpo", beta=0.1, sigma_soft=0.0, sigma_hard=0.1, kd_lambda=0.0, temp=1.0),
    "use_l2": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.1, kd_lambda=0.0, temp=1.0, use_l2=True),
    "use_l2_kl": dict(algo="lcdpo", beta=0.1, sigma_soft=0.2, sigma_hard=0.1, kd_lambda=1.0, temp=1.0, use_l2=True),
    "dpo": dict(algo="dpo", beta=0.1),
    "sft_weighted": dict(algo="sft_weighted", sigma_soft=0.5, sigma_hard=0.5),
    "scd": dict(algo="sft"),
}


# --------------------------------------------------------------------------- the original, re-derived


def _tensors(enc):
    return torch.tensor([enc.input_ids]), torch.tensor([enc.labels])  # (1, T) each, no padding


def trl_logps(model, enc) -> torch.Tensor:
    """TRL 0.7.10 ``get_batch_logps(average_log_prob=False)`` of one sequence: (1,)."""
    ids, labels = _tensors(enc)
    logits = model(input_ids=ids).logits[:, :-1]  # (1, T-1, V)
    labels = labels[:, 1:].clone()  # (1, T-1)
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1)


def hf_nll(model, enc) -> torch.Tensor:
    """``student_output.loss``: the model's own causal-LM loss on one sequence."""
    ids, labels = _tensors(enc)
    return model(input_ids=ids, labels=labels).loss


def masked_kl(model, enc, temp: float, avg: bool, shift: bool = True) -> torch.Tensor:
    """``masked_dl_div`` on the student's and the adapters-off teacher's logits at temperature T.

    shift=True scores the positions that predict a completion token (rlvf's mask); shift=False the
    positions *of* the completion tokens, as the original's unshifted ``attention_mask * (labels != −100)``.
    """
    ids, labels = _tensors(enc)
    student = model(input_ids=ids).logits / temp  # (1, T, V)
    with torch.no_grad(), disable_adapters(model):
        teacher = model(input_ids=ids).logits / temp
    if shift:
        student, teacher, mask = student[:, :-1], teacher[:, :-1], (labels[:, 1:] != -100).float()
    else:
        mask = (labels != -100).float()
    p_log, q_log = student.log_softmax(-1), teacher.log_softmax(-1)
    per_token = (q_log.exp() * (q_log - p_log)).sum(-1) * mask  # (1, T')
    per_seq = per_token.sum(-1) / mask.sum(-1) if avg else per_token.sum(-1)
    return per_seq.mean(0)


def original_step(model, o: dict, pair, row, near, out) -> torch.Tensor:
    """The loss of one original micro-batch (one in-scope item with its near and out rows)."""
    if o["algo"] == "sft":
        return hf_nll(model, row)
    if o["algo"] == "sft_weighted":
        return hf_nll(model, row) + o["sigma_soft"] * hf_nll(model, out) + o["sigma_hard"] * hf_nll(model, near)
    chosen, rejected = pair
    with torch.no_grad(), disable_adapters(model):
        ref_c, ref_r = trl_logps(model, chosen), trl_logps(model, rejected)
    h = (trl_logps(model, chosen) - ref_c) - (trl_logps(model, rejected) - ref_r)
    loss = -F.logsigmoid(o["beta"] * h).mean()
    if o["algo"] == "dpo":
        return loss

    def kd(enc):
        kl = masked_kl(model, enc, o["temp"], o.get("avg_kl", False)) * o["temp"] ** 2
        return (1 - o["kd_lambda"]) * hf_nll(model, enc) + o["kd_lambda"] * kl

    for sigma, enc in ((o["sigma_soft"], out), (o["sigma_hard"], near)):
        if sigma > 0:  # the original skips a term whose σ is 0
            term = kd(enc)
            loss = loss + (sigma * 0.5 * term**2 if o.get("use_l2") else sigma * term)
    return loss


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The tiny model with LoRA on every linear layer (dropout 0, B random so adapters matter) and
    the encoded rows."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), torch.float32, torch.device("cpu"), "eager")
    inject_lora(model, "all-linear", ["lm_head"], r=4, alpha=8, dropout=0.0, seed=0)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = 0.3 * torch.randn(p.shape, generator=g)
    model.train()  # dropout is 0: train mode changes nothing but is the loop's mode
    s = Streams()
    s.pairs = [encode_pair(tok, p, c, r, 256, 128) for p, c, r in IN]
    s.rows = [encode_row(tok, p, c, 256, 128) for p, c, _ in IN]
    s.near = [encode_row(tok, p, b, 256, 128) for p, b in NEAR]
    s.out = [encode_row(tok, p, b, 256, 128) for p, b in OUT]
    assert len({len(x.input_ids) for x in s.near + s.out}) == 6  # unequal lengths: padding is exercised
    return model, tok, s, str(tiny_model_dir), tmp_path_factory.mktemp("equiv")


def _cfg(method: dict, model_dir: str, out_dir, batch: int):
    raw = {"model": {"path": model_dir, "dtype": "float32"}, "data": {"dirs": [str(out_dir)]},
           "output_dir": str(out_dir / "run"), "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "method": method, "train": {"batch_size": batch, "logprob_chunk_size": 5}}
    return config_from_dict(raw, "test")


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "lora_" in n}


def _run(model, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    grads = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    scale = want.abs().max().clamp(min=1e-12)
    err = (got - want).abs().max()
    assert err <= rel * scale, f"{what}: max error {err.item():.3g} against scale {scale.item():.3g}"


def _assert_same(got, want) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = got, want
    _close(loss_a, loss_b, "loss")
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_b:
        _close(grads_a[name], grads_b[name], name)


def _rlvf(model, s, cfg, items: list[list[int]]) -> torch.Tensor:
    """rlvf's loss of one optimizer step: its micro-batches (lists of item indices), accumulated."""
    s, run = _streams_for(s, cfg), RunContext(cfg, PAD, torch.device("cpu"))
    ref = compute_reference(model, s, run) if s.pairs else None
    total = 0
    for idx in items:
        mb = MicroBatch(idx, idx if s.near else [], idx if s.out else [])
        loss, _, _ = compute_loss(model, s, mb, ref, run)
        total = total + loss / len(items)
    return total


def _streams_for(s: Streams, cfg) -> Streams:
    """The streams a method trains on (as rlvf.batches.build_streams would make them from rows)."""
    name = cfg.method.name
    return Streams(pairs=s.pairs if name in ("c3po", "dpo") else [],
                   rows=s.rows if name in ("scd", "scd_neg") else [],
                   near=s.near if name in ("c3po", "scd_neg") else [],
                   out=s.out if name in ("c3po", "scd_neg") else [])


def _original(model, s, o, items: list[int]) -> torch.Tensor:
    """The original's loss of one optimizer step of len(items) micro-batches of one item each."""
    return sum(original_step(model, o, s.pairs[i], s.rows[i], s.near[i], s.out[i]) for i in items) / len(items)


# --------------------------------------------------------------------------- the proofs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_micro_batch_1_equals_the_original(setup, name):
    """One item per micro-batch, the original's setting: the same loss and LoRA gradients."""
    model, _, s, model_dir, out = setup
    cfg = _cfg(CONFIGS[name], model_dir, out, batch=1)
    for i in range(3):
        _assert_same(_run(model, lambda: _rlvf(model, s, cfg, [[i]])),
                     _run(model, lambda: _original(model, s, ORIGINAL[name], [i])))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_micro_batch_3_equals_three_accumulated(setup, name):
    """Three items of unequal lengths in one padded micro-batch, and three micro-batches of one with
    accumulation 3, both equal the original's three accumulated micro-batches of one."""
    model, _, s, model_dir, out = setup
    want = _run(model, lambda: _original(model, s, ORIGINAL[name], [0, 1, 2]))
    batch3 = _cfg(CONFIGS[name], model_dir, out, batch=3)
    _assert_same(_run(model, lambda: _rlvf(model, s, batch3, [[0, 1, 2]])), want)
    batch1 = _cfg(CONFIGS[name], model_dir, out, batch=1)
    _assert_same(_run(model, lambda: _rlvf(model, s, batch1, [[0], [1], [2]])), want)


@pytest.mark.parametrize("name", ["lcdpo", "lcdpo_kl", "sft_weighted"])
def test_triton_path_equals_the_original(setup, name, monkeypatch):
    """The same through the Triton kernels (Triton's CPU interpreter without a GPU)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("RLVF_KERNELS", "triton")
    model, _, s, model_dir, out = setup
    cfg = _cfg(CONFIGS[name], model_dir, out, batch=3)
    _assert_same(_run(model, lambda: _rlvf(model, s, cfg, [[0, 1, 2]])),
                 _run(model, lambda: _original(model, s, ORIGINAL[name], [0, 1, 2])))


def test_the_default_method_is_the_originals_c3po(setup):
    """A config without a method section trains config_lcdpo.json's objective."""
    model, _, s, model_dir, out = setup
    raw = {"model": {"path": model_dir}, "data": {"dirs": [str(out)]}, "output_dir": str(out / "x")}
    cfg = config_from_dict(raw, "test")
    m = cfg.method
    assert (m.name, m.beta, m.lambda_out, m.lambda_near, m.constraint, m.nll_reduction) == \
        ("c3po", 0.1, 0.2, 0.1, "sft", "token_mean")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.train.lr, cfg.train.warmup_ratio) == \
        (64, 128.0, 0.05, 5e-5, 0.05)
    cfg.train.logprob_chunk_size = 5
    _assert_same(_run(model, lambda: _rlvf(model, s, cfg, [[0]])),
                 _run(model, lambda: _original(model, s, ORIGINAL["lcdpo"], [0])))


def test_kl_mask_difference_is_small(setup):
    """The one KD difference kept (README): rlvf's KL mask is shifted to the positions that predict a
    completion token, the original's is not. On the tiny model the two per-sequence KLs differ by a
    few percent of the KL (measured here) and agree within rounding when shifted the same way."""
    model, _, s, _, _ = setup
    with torch.no_grad():
        rel = []
        for enc in s.near + s.out:
            a = masked_kl(model, enc, 1.0, avg=False, shift=True)
            b = masked_kl(model, enc, 1.0, avg=False, shift=False)
            rel.append(((a - b).abs() / a).item())
    assert 0 < max(rel) < 0.1, rel  # measured 0.2–2% of the KL (README)


# --------------------------------------------------------------------------- schedule and step count


@pytest.mark.parametrize("total,warmup", [(51, 3), (10, 1), (7, 0), (1, 1)])
def test_lr_schedule_is_the_trainers(total, warmup):
    """The multiplier of every step equals transformers' scheduler of the same kind (HF Trainer's)."""
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    from rlvf.train import lr_lambda

    makers = {"cosine": lambda o: get_cosine_schedule_with_warmup(o, warmup, total),
              "linear": lambda o: get_linear_schedule_with_warmup(o, warmup, total),
              "constant": lambda o: get_constant_schedule_with_warmup(o, warmup)}
    for kind, make in makers.items():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, ours = make(opt), lr_lambda(total, warmup, kind)
        for t in range(total):
            assert sched.get_last_lr()[0] == pytest.approx(ours(t), abs=1e-12), (kind, t)
            opt.step()
            sched.step()


@pytest.mark.parametrize("n,batch,accum,epochs", [(820, 1, 16, 1), (37, 4, 1, 6), (5, 1, 16, 1), (100, 3, 4, 2.5)])
def test_step_count_is_the_trainers(n, batch, accum, epochs):
    """HF Trainer: ceil(n / batch) micro-batches per epoch, floor(· / accum) optimizer steps (≥ 1),
    ceil(epochs · that) in all; config_lcdpo.json's 820 training items make 51 steps, not 52."""
    import math

    from rlvf.batches import optimizer_steps

    per_epoch = max(len(range(0, n, batch)) // accum, 1)
    assert optimizer_steps(n, batch, accum, epochs) == math.ceil(epochs * per_epoch)
    if (n, batch, accum) == (820, 1, 16):
        assert optimizer_steps(n, batch, accum, epochs) == 51


@pytest.mark.parametrize("method,extra,dropout_off", [
    ("c3po", {}, True), ("dpo", {}, True),  # TRL 0.7.10 DPOTrainer(disable_dropout=True): every nn.Dropout p = 0
    ("scd", {}, False), ("scd_neg", {}, False), ("sft", {}, False),  # SFTTrainer: lora_dropout stays
    ("c3po", {"disable_dropout": False}, False), ("scd", {"disable_dropout": True}, True),  # the user decides
])
def test_dropout_is_off_where_the_originals_trainer_turns_it_off(tiny_model_dir, tmp_path, method, extra, dropout_off):
    """The original's dpo/lcdpo run through TRL 0.7.10's DPOTrainer, whose default disable_dropout=True sets
    p = 0 on every nn.Dropout of the PEFT-wrapped model (dpo_trainer.py: get_peft_model, then
    disable_dropout_in_model), so its LoRA dropout 0.05 never acts; its SFT trainers keep it."""
    from rlvf.train import RunContext, _build_model

    raw = {"model": {"path": str(tiny_model_dir), "dtype": "float32", "gradient_checkpointing": False},
           "data": {"dirs": [str(tmp_path)]}, "output_dir": str(tmp_path / "x"),
           "method": {"name": method, **extra}, "lora": {"r": 2, "alpha": 4, "dropout": 0.05}}
    cfg = config_from_dict(raw, "test")
    model, _ = _build_model(RunContext(cfg, PAD, torch.device("cpu")))
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.0} if dropout_off else {0.05})
