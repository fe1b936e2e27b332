"""The terms of C3PO and its baselines: small pure functions of per-sequence log-probabilities.

Every input is a per-sequence quantity from rlvf.logprobs (log π(y | x) summed over the response
tokens, shape (B,)), so the same functions serve the fused and the naive log-prob paths; every
output is per pair or per row. rlvf/objective.py assembles them into each method's loss.
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


REDUCTIONS = ("token_mean", "sequence_sum")


def per_row(values: torch.Tensor, n_tokens: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sequence sums (B,) as each row's ``token_mean`` (divided by its scored-token count; an
    empty row counts 1) or ``sequence_sum`` (unchanged): (B,)."""
    if reduction == "sequence_sum":
        return values
    if reduction == "token_mean":
        return values / n_tokens.clamp(min=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def nll(logps: torch.Tensor, n_tokens: torch.Tensor, reduction: str = "token_mean") -> torch.Tensor:
    """Negative log-likelihood of each row, (B,): −log π(y_b | x_b) per ``reduction`` (``per_row``).

    ``token_mean`` of one row is Hugging Face's causal-LM loss ``model(input_ids, labels=...).loss``
    on that row alone: the mean cross-entropy over its labelled tokens.
    """
    return -per_row(logps, n_tokens, reduction)


def constraint_loss(
    logps: torch.Tensor,
    n_tokens: torch.Tensor,
    kl: torch.Tensor | None = None,
    kappa: float = 0.0,
    temperature: float = 1.0,
    nll_reduction: str = "token_mean",
    kl_reduction: str = "sequence_sum",
    squared: bool = False,
) -> torch.Tensor:
    """The constraint L_c of each near- or out-of-scope baseline row, (B,) (the original code's
    ``compute_knowledge_distillation_loss``, one row at a time):

        L_c,b = (1 − κ)·NLL_b + κ·T²·KL_b,     KL_b = Σ_t KL(π_ref ‖ π) at temperature T

    logps, kl (B,) per-sequence sums, n_tokens (B,); NLL_b and KL_b reduced over tokens as
    ``nll_reduction`` / ``kl_reduction`` say (``per_row``). κ = 0 is the plain NLL (kl may then be
    None); T² keeps the KL gradient's scale independent of T (Hinton et al. 2015). ``squared``
    returns ½·L_c,b² (the original's ``use_l2``), whose gradient L·∂L fades as the constraint is met.
    """
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must be in [0, 1], got {kappa}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    loss = nll(logps, n_tokens, nll_reduction)  # (B,)
    if kappa:
        if kl is None:
            raise ValueError("kappa > 0 needs the per-sequence KL")
        loss = (1 - kappa) * loss + kappa * temperature**2 * per_row(kl, n_tokens, kl_reduction)
    return 0.5 * loss**2 if squared else loss


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL-style DPO metrics: mean implicit rewards, margin, and how often chosen ≻ rejected."""
    margins = chosen_rewards - rejected_rewards  # (B,)
    return {
        "rewards/chosen": chosen_rewards.float().mean().item(),
        "rewards/rejected": rejected_rewards.float().mean().item(),
        "rewards/margins": margins.float().mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
    }
