"""Every method's loss from per-sequence log-probs and the micro-batch layout: the one assembly of eq. 5.

Training (rlvf/train.py), the fused path (kernels/c3po_loss.py) and the benchmarks all end here.
A micro-batch's sequences are laid out in the order of its single concatenated forward:

    [ chosen (P) | rejected (P) | rows (R) | near (N) | out (O) ]        S = 2P + R + N + O

P in-scope DPO pairs (c3po, dpo), R rows scored by their NLL (scd, scd_neg, sft), and N near-scope
and O out-of-scope baseline rows under the constraint L_c (c3po, scd_neg). What the method reads is
in rlvf/methods.py; the primitive terms are in rlvf/losses.py.

    c3po      L = mean_p L_DPO + λ_out·mean_o L_c,o + λ_near·mean_n L_c,n      (Stephan et al., eq. 5)
    scd_neg   L = mean_r NLL_r + λ_out·mean_o NLL_o + λ_near·mean_n NLL_n
    dpo       L = mean_p L_DPO;        scd, sft:  L = mean_r NLL_r

What is averaged over what, by default (``nll_reduction: token_mean``, ``kl_reduction: sequence_sum``):

- tokens: NLL_r = −(1/|y_r|)·Σ_t log π(y_r,t | ·), each row's mean over its own completion tokens
  (``sequence_sum``: the sum). KL_r = Σ_t KL_t summed over the row's tokens (``token_mean``: /|y_r|).
- rows: each term is the mean over its rows in the micro-batch (pairs for L_DPO).
- micro-batches: the training loop divides each micro-batch's loss by the accumulation count, so an
  optimizer step averages its micro-batches; ranks under FSDP weight their slice by its share of the
  micro-batch, so the step's gradient is that of one process (rlvf/train.py).

Every micro-batch holds the same number of items, so the step's loss is the plain mean of the
per-row terms over the step, whatever the micro-batch size, accumulation or rank count. At one
item per micro-batch (the original's ``per_device_train_batch_size: 1``) the per-row token mean is
exactly Hugging Face's ``model(...).loss`` that the original code uses for its constraint terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from rlvf.losses import constraint_loss, dpo_loss, nll, reward_metrics
from rlvf.methods import METHODS, setting


@dataclass(frozen=True)
class Layout:
    """How many sequences of each group a micro-batch holds (module doc)."""

    pairs: int = 0
    rows: int = 0
    near: int = 0
    out: int = 0

    @property
    def n_seq(self) -> int:
        return 2 * self.pairs + self.rows + self.near + self.out

    @property
    def constraint_rows(self) -> slice:
        """The near and out rows, which the KD constraint needs reference hidden states for."""
        return slice(2 * self.pairs + self.rows, self.n_seq)

    def split(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sequence values (S, ...) → {"chosen", "rejected", "rows", "near", "out"}."""
        if t.shape[0] != self.n_seq:
            raise ValueError(f"expected {self.n_seq} sequences for {self}, got {t.shape[0]}")
        sizes = [self.pairs, self.pairs, self.rows, self.near, self.out]
        return dict(zip(("chosen", "rejected", "rows", "near", "out"), t.split(sizes)))


class LossOutput(NamedTuple):
    loss: torch.Tensor  # () the training loss of the micro-batch
    parts: dict[str, torch.Tensor]  # detached terms before weighting: "dpo", "sft", "near", "out"
    chosen_rewards: torch.Tensor | None  # (P,) β·(log π(y_w) − log π_ref(y_w)), detached
    rejected_rewards: torch.Tensor | None  # (P,)
    logps: torch.Tensor  # (S,) per-sequence Σ_t log π, detached
    n_tokens: torch.Tensor  # (S,) scored tokens per sequence

    def metrics(self, layout: Layout) -> dict[str, float]:
        """The training loop's metrics: TRL-style rewards, mean chosen/rejected log-probs, loss parts."""
        out = {f"loss/{k}": v.item() for k, v in self.parts.items()}
        if self.chosen_rewards is not None:
            out.update(reward_metrics(self.chosen_rewards, self.rejected_rewards))
            g = layout.split(self.logps)
            out["logps/chosen"] = g["chosen"].mean().item()
            out["logps/rejected"] = g["rejected"].mean().item()
        return out


def method_loss(
    method,
    layout: Layout,
    logps: torch.Tensor,
    n_tokens: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
) -> LossOutput:
    """The loss of one micro-batch for ``method`` (an rlvf.config.MethodConfig).

    logps (S,) per-sequence Σ_t log π and n_tokens (S,) in ``layout`` order; ref_chosen,
    ref_rejected (P,) the reference policy's per-sequence log-probs of the pairs; kl (N + O,) the
    per-sequence Σ_t KL(π_ref ‖ π) of the near and out rows at the KD temperature (constraint: kd).
    A group with no rows contributes nothing.
    """
    spec = METHODS[method.name]
    g, n = layout.split(logps), layout.split(n_tokens)
    parts = {}
    chosen_rewards = rejected_rewards = None
    if layout.pairs:
        parts["dpo"], chosen_rewards, rejected_rewards = _dpo_term(method, g, n, ref_chosen, ref_rejected)
    if layout.rows:
        parts["sft"] = nll(g["rows"], n["rows"], method.nll_reduction).mean()
    if spec.constraints:
        kd = spec.kd and method.constraint == "kd"
        if kd and kl is None and (layout.near or layout.out):
            raise ValueError("constraint 'kd' needs the per-sequence KL of the near and out rows")
        kls = dict(zip(("near", "out"), kl.split([layout.near, layout.out]))) if kd else {}
        for group in ("near", "out"):
            if getattr(layout, group):
                parts[group] = constraint_loss(
                    g[group], n[group], kls.get(group), kappa=method.kd_kappa if kd else 0.0,
                    temperature=method.kd_temperature, nll_reduction=method.nll_reduction,
                    kl_reduction=method.kl_reduction, squared=spec.kd and method.constraint_squared,
                ).mean()
    main = parts.get("dpo", parts.get("sft"))
    if main is None:
        raise ValueError(f"a {method.name} micro-batch needs {'pairs' if spec.pairs else 'rows'}, got {layout}")
    loss = main
    for group, key in (("out", "lambda_out"), ("near", "lambda_near")):
        if group in parts:
            loss = loss + setting(method, key) * parts[group]
    detached = {k: v.detach() for k, v in parts.items()}
    return LossOutput(loss, detached, chosen_rewards, rejected_rewards, logps.detach(), n_tokens)


def _dpo_term(method, g: dict, n: dict, ref_chosen, ref_rejected):
    """mean over pairs of L_DPO on summed log-probs (TRL 0.7.10); IPO on per-token means (README)."""
    if ref_chosen is None or ref_rejected is None:
        raise ValueError("DPO pairs need the reference log-probs ref_chosen and ref_rejected")
    pc, pr = g["chosen"], g["rejected"]
    rc, rr = ref_chosen.to(pc), ref_rejected.to(pr)
    if method.loss_type == "ipo":  # IPO compares length-normalised log-probs (Azar et al. 2023; TRL ≥ 0.7.11)
        nc, nr = n["chosen"].clamp(min=1), n["rejected"].clamp(min=1)
        pc, rc, pr, rr = pc / nc, rc / nc, pr / nr, rr / nr
    d = dpo_loss(pc, pr, rc, rr, method.beta, method.loss_type, method.label_smoothing)
    return d.losses.mean(), d.chosen_rewards, d.rejected_rewards
