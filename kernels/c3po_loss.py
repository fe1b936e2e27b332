"""Fused C3PO loss of one micro-batch: every row's log-prob in one lm-head kernel call, then eq. 5.

    L = mean_p L_DPO(y_w,p ≻ y_l,p) + λ_out·mean_o L_c,o + λ_near·mean_n L_c,n
                                                       (Stephan et al. 2024, eq. 5; rlvf/objective.py)

Inputs are the hidden states of the scored positions of all sequences of the micro-batch, in the
order of rlvf.objective.Layout (the training loop's single concatenated forward):

    sequences  [ chosen (P) | rejected (P) | rows (R) | near (N) | out (O) ]
    hidden (M, H)  targets (M,)  seq_index (M,) ∈ [0, S),  S = layout.n_seq

``fused_c3po_loss`` runs ``rlvf.kernels.linear_logprobs`` once over all M rows (the Triton kernels
on CUDA, the chunked torch path on CPU), sums the per-token log-probs into per-sequence sums with
one ``index_add`` and hands those to ``rlvf.objective.method_loss``, which assembles every method's
loss: no loss maths is written here. ``naive_c3po_loss`` is the reference beside it: full (M, V)
logits via ``naive_linear_logprobs`` and a per-sequence loop, then the same ``method_loss``.
"""
from __future__ import annotations

import torch

from rlvf.objective import Layout, LossOutput, method_loss

from .dispatch import linear_logprobs
from .linear_logprob import IGNORE_INDEX, naive_linear_logprobs


def fused_c3po_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    layout: Layout,
    method,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    softcap: float | None = None,
    backend: str | None = None,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """The micro-batch loss of ``method`` (an rlvf.config.MethodConfig) with one fused log-prob call.

    hidden (M, H), weight (V, H) and the head's bias (V,) or None, of one dtype; targets (M,) long
    (ignore_index rows count for nothing); seq_index (M,) long, the sequence of each row in
    ``layout`` order; ref_chosen, ref_rejected (P,) reference per-sequence log-probs; kl (N + O,) for
    constraint: kd (see ``method_loss``). ``backend``: see kernels/dispatch.py. No (M, V) tensor is kept.
    """
    if seq_index.shape != targets.shape:
        raise ValueError(f"seq_index {tuple(seq_index.shape)} must match targets {tuple(targets.shape)}")
    token_logps = linear_logprobs(hidden, weight, targets, ignore_index, chunk_size, softcap, backend, bias)  # (M,)
    logps = token_logps.new_zeros(layout.n_seq).index_add(0, seq_index, token_logps)  # (S,)
    valid = (targets != ignore_index).long()  # (M,)
    n_tokens = torch.zeros(layout.n_seq, dtype=torch.long, device=valid.device).index_add(0, seq_index, valid)
    return method_loss(method, layout, logps, n_tokens, ref_chosen, ref_rejected, kl)


def naive_c3po_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    layout: Layout,
    method,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """Reference: full (M, V) logits, per-sequence sums by a Python loop, then ``method_loss``."""
    token_logps = naive_linear_logprobs(hidden, weight, targets, softcap=softcap, bias=bias)  # (M,), 0 on ignored
    rows = [seq_index == s for s in range(layout.n_seq)]
    logps = torch.stack([token_logps[r].sum() for r in rows])  # (S,)
    n_tokens = torch.stack([(targets[r] != IGNORE_INDEX).sum() for r in rows])  # (S,)
    return method_loss(method, layout, logps, n_tokens, ref_chosen, ref_rejected, kl)
