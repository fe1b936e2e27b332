"""Fused C3PO loss of one micro-batch: every row's log-prob in one lm-head kernel call, then eq. 5.

    L = mean_b L_DPO(y_w,b ≻ y_l,b) + λ_out·L_SFT(out-of-scope) + λ_near·L_SFT(near-scope)
                                                          (Stephan et al. 2024, eq. 5; rlvf/losses.py)

Inputs are the hidden states of the scored positions of all sequences of the micro-batch, in the
concatenated order rlvf/train.py uses for its single forward:

    sequences  [ chosen_0 … chosen_{B−1} | rejected_0 … rejected_{B−1} | near … | out … ]
    hidden (N, H)  targets (N,)  seq_index (N,) ∈ [0, S),  S = 2B + n_near + n_out

``fused_c3po_loss`` runs ``rlvf.kernels.linear_logprobs`` once over all N rows (the Triton kernels
on CUDA, the chunked torch path on CPU), sums the per-token log-probs into per-sequence sums with
one ``index_add`` and hands those to the free functions of rlvf.losses (``dpo_loss``, ``sft_loss``,
``c3po_loss``): no loss maths is repeated here. ``naive_c3po_loss`` is the reference beside it:
full (N, V) logits via ``naive_linear_logprobs``, a per-sequence loop, and the same rlvf.losses.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlvf.losses import c3po_loss, dpo_loss, reward_metrics, sft_loss

from .dispatch import linear_logprobs
from .linear_logprob import IGNORE_INDEX, naive_linear_logprobs


class C3POOutput(NamedTuple):
    loss: torch.Tensor  # () the training loss, differentiable in hidden and weight
    parts: dict[str, torch.Tensor]  # detached "dpo", "out", "near" (when present), "total"
    chosen_rewards: torch.Tensor  # (B,) β·(log π(y_w) − log π_ref(y_w)), detached
    rejected_rewards: torch.Tensor  # (B,) β·(log π(y_l) − log π_ref(y_l)), detached
    logps: torch.Tensor  # (S,) per-sequence Σ_t log π, detached
    n_tokens: torch.Tensor  # (S,) scored tokens per sequence


def c3po_from_sequence_logps(
    logps: torch.Tensor,
    n_tokens: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    n_near: int,
    n_out: int,
    beta: float = 0.1,
    lambda_out: float = 0.2,
    lambda_near: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    per_token_sft: bool = False,
) -> C3POOutput:
    """Eq. 5 from per-sequence sums logps (S,) and n_tokens (S,) laid out as in the module doc.

    DPO on the B pairs (IPO on length-normalised log-probs, as rlvf/train.py does), ``sft_loss`` on
    the near and out rows (``per_token_sft``: divided by their token counts); an empty group is
    left out of the sum, as ``c3po_loss`` does with None.
    """
    b = ref_chosen.shape[0]
    if ref_rejected.shape != ref_chosen.shape:
        raise ValueError(f"ref_rejected {tuple(ref_rejected.shape)} must match ref_chosen {tuple(ref_chosen.shape)}")
    _check_layout(logps.shape[0], b, n_near, n_out)
    chosen, rejected, near, out = logps.split([b, b, n_near, n_out])  # (B,), (B,), (n_near,), (n_out,)
    n_chosen, n_rejected, n_near_tok, n_out_tok = n_tokens.split([b, b, n_near, n_out])
    ref_chosen, ref_rejected = ref_chosen.to(logps), ref_rejected.to(logps)
    if loss_type == "ipo":  # IPO compares length-normalised log-probs
        norm_c, norm_r = n_chosen.clamp(min=1), n_rejected.clamp(min=1)  # (B,) each
        chosen, ref_chosen = chosen / norm_c, ref_chosen / norm_c
        rejected, ref_rejected = rejected / norm_r, ref_rejected / norm_r
    dpo = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing)
    near_sft = sft_loss(near, n_near_tok, per_token_sft) if n_near else None
    out_sft = sft_loss(out, n_out_tok, per_token_sft) if n_out else None
    loss, parts = c3po_loss(dpo.losses, out_sft, near_sft, lambda_out, lambda_near)
    return C3POOutput(loss, parts, dpo.chosen_rewards, dpo.rejected_rewards, logps.detach(), n_tokens)


def fused_c3po_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    n_near: int,
    n_out: int,
    beta: float = 0.1,
    lambda_out: float = 0.2,
    lambda_near: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    per_token_sft: bool = False,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    softcap: float | None = None,
    backend: str | None = None,
) -> C3POOutput:
    """C3PO loss of a micro-batch with one fused log-prob call over all its rows (module doc).

    hidden (N, H) and weight (V, H) of one dtype; targets (N,) long (ignore_index rows count for
    nothing); seq_index (N,) long, the sequence of each row; ref_chosen, ref_rejected (B,) reference
    per-sequence log-probs. ``backend``: see kernels/dispatch.py. No (N, V) tensor is kept.
    """
    n_seq = 2 * ref_chosen.shape[0] + n_near + n_out
    if seq_index.shape != targets.shape:
        raise ValueError(f"seq_index {tuple(seq_index.shape)} must match targets {tuple(targets.shape)}")
    token_logps = linear_logprobs(hidden, weight, targets, ignore_index, chunk_size, softcap, backend)  # (N,)
    logps = token_logps.new_zeros(n_seq).index_add(0, seq_index, token_logps)  # (S,)
    valid = (targets != ignore_index).long()  # (N,)
    n_tokens = torch.zeros(n_seq, dtype=torch.long, device=valid.device).index_add(0, seq_index, valid)  # (S,)
    return c3po_from_sequence_logps(
        logps, n_tokens, ref_chosen, ref_rejected, n_near, n_out, beta, lambda_out, lambda_near,
        loss_type, label_smoothing, per_token_sft,
    )


def naive_c3po_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    n_near: int,
    n_out: int,
    beta: float = 0.1,
    lambda_out: float = 0.2,
    lambda_near: float = 0.1,
    per_token_sft: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """Reference (sigmoid DPO, n_near and n_out ≥ 1): full (N, V) logits, per-sequence sums by a loop,
    then rlvf.losses. Scalar."""
    token_logps = naive_linear_logprobs(hidden, weight, targets, softcap=softcap)  # (N,), 0 on ignored
    n_seq = 2 * ref_chosen.shape[0] + n_near + n_out
    rows = [seq_index == s for s in range(n_seq)]
    logps = torch.stack([token_logps[r].sum() for r in rows])  # (S,)
    n_tokens = torch.stack([(targets[r] != IGNORE_INDEX).sum() for r in rows])  # (S,)
    b = ref_chosen.shape[0]
    dpo = dpo_loss(logps[:b], logps[b : 2 * b], ref_chosen.float(), ref_rejected.float(), beta)
    near = sft_loss(logps[2 * b : 2 * b + n_near], n_tokens[2 * b : 2 * b + n_near], per_token_sft)
    out = sft_loss(logps[2 * b + n_near :], n_tokens[2 * b + n_near :], per_token_sft)
    return dpo.losses.mean() + lambda_out * out + lambda_near * near


def c3po_metrics(out: C3POOutput) -> dict[str, float]:
    """The training loop's metrics: TRL-style rewards, mean chosen/rejected log-probs, loss parts."""
    b = out.chosen_rewards.shape[0]
    metrics = reward_metrics(out.chosen_rewards, out.rejected_rewards)
    metrics["logps/chosen"] = out.logps[:b].mean().item()
    metrics["logps/rejected"] = out.logps[b : 2 * b].mean().item()
    metrics.update({f"loss/{k}": v.item() for k, v in out.parts.items() if k != "total"})
    return metrics


def _check_layout(n_seq: int, n_pairs: int, n_near: int, n_out: int) -> None:
    if n_pairs < 1 or n_near < 0 or n_out < 0 or n_seq != 2 * n_pairs + n_near + n_out:
        raise ValueError(
            f"expected 2·{n_pairs} pair sequences + {n_near} near + {n_out} out = "
            f"{2 * n_pairs + n_near + n_out} sequences with at least one pair, got {n_seq}"
        )
