"""C3PO and baseline losses: small pure functions of per-sequence log-probabilities.

Every input is a per-sequence quantity from rlvf.logprobs (log π(y | x) summed over the response
tokens, shape (B,)), so the same functions serve the fused and the naive log-prob paths.
Notation: π the policy (LoRA on), π_ref the frozen reference (adapters off), y_w ≻ y_l the
revised (chosen) and baseline (rejected) responses to an in-scope prompt, σ the logistic function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


class DPOOutput(NamedTuple):
    losses: torch.Tensor  # (B,) per-pair loss; the training loss is losses.mean()
    chosen_rewards: torch.Tensor  # (B,) β·(log π(y_w|x) − log π_ref(y_w|x)), detached
    rejected_rewards: torch.Tensor  # (B,) β·(log π(y_l|x) − log π_ref(y_l|x)), detached


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """Direct Preference Optimization on in-scope pairs (Rafailov et al. 2023, eq. 7; the L_DPO term
    of C3PO, Stephan et al. 2024, eq. 5). All inputs (B,) per-sequence log-probs.

    With the log-ratio margin  h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)):

        sigmoid:  −(1 − ε)·log σ(βh) − ε·log σ(−βh)      (ε = label_smoothing: conservative DPO;
                                                          ε = 0 is the paper's loss, log(1 + e^{−βh}))
        ipo:      (h − 1/(2β))²                          (IPO, Azar et al. 2023)
        hinge:    max(0, 1 − βh)                         (SLiC, Zhao et al. 2023)

    IPO is defined on length-normalised log-probs: pass ``SequenceLogps.per_token`` for all four
    inputs, as the IPO paper and TRL do. Rewards are β·(log π − log π_ref), detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5 or (label_smoothing and loss_type != "sigmoid"):
        raise ValueError(
            f"label_smoothing must be in [0, 0.5), and 0 unless loss_type is 'sigmoid'; got {label_smoothing}"
        )
    chosen_logratio = policy_chosen - ref_chosen  # (B,)
    rejected_logratio = policy_rejected - ref_rejected  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return DPOOutput(losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach())


def sft_loss(
    logps: torch.Tensor, n_tokens: torch.Tensor | None = None, per_token: bool = False
) -> torch.Tensor:
    """Negative log-likelihood, −(1/B) Σ_b log π(y_b | x_b): scalar.

    logps (B,) per-sequence sums. Default: the sum over tokens per sequence, mean over sequences,
    the paper's L_SFT. ``per_token``: −(1/B) Σ_b log π(y_b|x_b) / |y_b| (needs n_tokens (B,)).
    """
    return -_per_row(logps, n_tokens, per_token).mean()


def kd_loss(
    logps: torch.Tensor,
    kl: torch.Tensor,
    n_tokens: torch.Tensor | None,
    kappa: float,
    temperature: float = 1.0,
    per_token: bool = False,
    squared: bool = False,
) -> torch.Tensor:
    """Knowledge-distillation constraint on baseline responses (the upstream C3PO code's KD option):

        L = (1/B) Σ_b [ (1 − κ)·(−log π(y_b|x_b)) + κ·T²·KL_b ],   KL_b = Σ_t KL(π_ref ‖ π) at T

    logps (B,) and kl (B,) per-sequence sums (``sequence_kl``); ``per_token`` divides both by
    n_tokens (B,) first. κ = 0 is ``sft_loss``; T² keeps the KL gradient's scale independent of T
    (Hinton et al. 2015). ``squared`` returns ½·L² (upstream's L2 variant), whose gradient L·∂L
    fades as the constraint is met. Scalar.
    """
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must be in [0, 1], got {kappa}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    nll = -_per_row(logps, n_tokens, per_token)  # (B,)
    kl = _per_row(kl, n_tokens, per_token)  # (B,)
    loss = ((1 - kappa) * nll + kappa * temperature**2 * kl).mean()
    return 0.5 * loss**2 if squared else loss


def c3po_loss(
    dpo_losses: torch.Tensor,
    out_constraint: torch.Tensor | None,
    near_constraint: torch.Tensor | None,
    lambda_out: float = 0.2,
    lambda_near: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """C3PO objective (Stephan et al. 2024, eq. 5):

        L = mean_in(L_DPO) + λ_out·L_out + λ_near·L_near

    dpo_losses (B,) from ``dpo_loss`` on in-scope pairs; out_constraint / near_constraint scalar
    losses on out-of-scope / near-scope baseline responses (``sft_loss``, or ``kd_loss``), or None
    when that term is absent. Returns (total, parts) with detached parts "dpo", "out", "near", "total".
    """
    return _weighted_sum(dpo_losses.mean(), "dpo", out_constraint, near_constraint, lambda_out, lambda_near)


def scd_loss(
    in_sft: torch.Tensor,
    out_sft: torch.Tensor | None = None,
    near_sft: torch.Tensor | None = None,
    lambda_out: float = 0.2,
    lambda_near: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised context distillation baselines of the paper (Stephan et al. 2024):

        SCD:             L = L_SFT(revised in-scope responses)
        SCD + negatives: L = L_SFT(revised in-scope)
                             + λ_out·L_SFT(out-of-scope baselines) + λ_near·L_SFT(near-scope baselines)

    All arguments are scalar ``sft_loss`` values; leave out_sft and near_sft None for plain SCD.
    Returns (total, parts) with detached parts "sft", "out", "near", "total".
    """
    return _weighted_sum(in_sft, "sft", out_sft, near_sft, lambda_out, lambda_near)


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL-style DPO metrics: mean implicit rewards, margin, and how often chosen ≻ rejected."""
    margins = chosen_rewards - rejected_rewards  # (B,)
    return {
        "rewards/chosen": chosen_rewards.float().mean().item(),
        "rewards/rejected": rejected_rewards.float().mean().item(),
        "rewards/margins": margins.float().mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
    }


def _per_row(values: torch.Tensor, n_tokens: torch.Tensor | None, per_token: bool) -> torch.Tensor:
    """values (B,), divided by the token counts when ``per_token`` (empty rows count as 1)."""
    if not per_token:
        return values
    if n_tokens is None:
        raise ValueError("per_token=True needs n_tokens")
    return values / n_tokens.clamp(min=1)


def _weighted_sum(main, main_name, out, near, lambda_out, lambda_near):
    """main + λ_out·out + λ_near·near (None terms skipped), with a detached breakdown."""
    total, parts = main, {main_name: main.detach()}
    for name, term, weight in (("out", out, lambda_out), ("near", near, lambda_near)):
        if term is not None:
            total = total + weight * term
            parts[name] = term.detach()
    parts["total"] = total.detach()
    return total, parts
