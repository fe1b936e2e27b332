"""Per-sequence log-probabilities log π(y | x) = Σ_t log π(y_t | x, y_<t) of a Hugging Face causal LM.

The loss functions in losses.py take these per-sequence sums. The fast path runs the backbone
once, keeps the hidden states of only the positions that predict a labelled token, and feeds
them to the fused ``lm_head`` + log-softmax in rlvf.kernels, so the (B, T, V) logits that
``model(...).logits`` would build are never materialised. rlvf.kernels picks the Triton kernels
for CUDA tensors when triton is installed and the chunked pure-PyTorch path otherwise
(``RLVF_KERNELS=torch|triton`` forces one, see kernels/dispatch.py). ``naive_sequence_logprobs``
is the reference the tests compare against.

Label convention (Hugging Face): ``labels`` is aligned with ``input_ids``, −100 marks positions
that are not scored (prompt, padding), and the token at position t is predicted from the
hidden state at t − 1, so the shift happens here.

Under FSDP2 the head is used through its weight, not through ``lm_head.forward``; a trainer that
shards the head must unshard it around these calls (or register the calling method with
``torch.distributed.fsdp.register_fsdp_forward_method``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlvf.kernels import IGNORE_INDEX, fused_c3po_loss, linear_kl, linear_logprobs
from rlvf.objective import Layout, LossOutput, method_loss

# Config keys that rescale the logits after lm_head in some architectures (Cohere, Granite, ...).
# The fused path does not apply them, so a model that sets one to anything but 1 is rejected.
_UNSUPPORTED_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier")


@dataclass
class SequenceLogps:
    """Per-sequence sums over the scored (label ≠ −100) tokens."""

    logps: torch.Tensor  # (B,) fp32, Σ_t log π(y_t | x, y_<t)
    n_tokens: torch.Tensor  # (B,) long, number of scored tokens

    @property
    def per_token(self) -> torch.Tensor:
        """Length-normalised log-prob, logps / n_tokens (0 for a sequence with no scored token): (B,)."""
        return self.logps / self.n_tokens.clamp(min=1)


@dataclass
class SequenceKL:
    """Per-sequence sums of the per-token KL(π_ref ‖ π) over the scored tokens."""

    kl: torch.Tensor  # (B,) fp32
    n_tokens: torch.Tensor  # (B,) long


@dataclass(frozen=True)
class OutputHead:
    """How to turn hidden states into logits: z = softcap(module(h))."""

    module: nn.Module  # model.get_output_embeddings()
    weight: torch.Tensor | None  # (V, H) when the head is a plain bias-free linear map, else None
    softcap: float | None  # Gemma-2 style final_logit_softcapping, z = s·tanh(x/s)

    @property
    def fused(self) -> bool:
        """True when the chunked kernel can use ``weight`` directly."""
        return self.weight is not None


# --------------------------------------------------------------------------- model plumbing


def backbone_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states of the backbone (after its last norm), without the lm head: (B, T, H)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(base, nn.Module) or base is model:
        raise ValueError(
            f"{type(model).__name__} has no backbone at .{getattr(model, 'base_model_prefix', '?')}; "
            "pass a Hugging Face *ForCausalLM model"
        )
    out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # (B, T, H)


def output_head(model: nn.Module) -> OutputHead:
    """The model's lm head, its weight when it is a plain linear map, and its logit softcap.

    Raises ValueError for models that rescale logits in a way this path does not reproduce.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm head)")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in _UNSUPPORTED_LOGIT_SCALES:
        value = getattr(config, key, None)
        if value is not None and value != 1:
            raise ValueError(
                f"{type(model).__name__}: config.{key}={value} rescales the logits, which rlvf's "
                "log-prob path does not support"
            )
    plain = (type(head) is nn.Linear and head.bias is None) or type(head) is nn.Embedding
    softcap = getattr(config, "final_logit_softcapping", None) or None
    return OutputHead(head, head.weight if plain else None, softcap)


def _scored_positions(hidden: torch.Tensor, labels: torch.Tensor):
    """Shift labels (token t is predicted from hidden t−1) and keep only the scored positions.

    hidden (B, T, H), labels (B, T) → h (N, H), targets (N,), rows (N,) batch index, n_tokens (B,).
    """
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX  # (B, T-1)
    rows = keep.nonzero()[:, 0]  # (N,)
    return hidden[:, :-1][keep], targets[keep], rows, keep.sum(1)


def _as_head_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hidden states in the head's dtype (differentiably): the fused ops take one dtype and do not
    autocast, so e.g. an fp32 final norm in front of a bf16 head does not push them off the fused path."""
    return h if h.dtype == weight.dtype else h.to(weight.dtype)


def _sum_rows(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Σ of per-token ``values`` (N,) into their sequences: (B,)."""
    return values.new_zeros(batch).index_add(0, rows, values)


def _mask_padding(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Never score padding, whatever the labels say."""
    return labels if attention_mask is None else labels.masked_fill(attention_mask == 0, IGNORE_INDEX)


# --------------------------------------------------------------------------- generic (non-plain head) path


def _chunk_module_logprobs(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, softcap) -> torch.Tensor:
    """log π(y | h) through an arbitrary head module: (n, H), (n,) → (n,). Targets are all valid."""
    logits = head(h).float()  # (n, V)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (n,)


def _chunk_module_kl(head, h, ref_h, ref_weight, temperature, softcap) -> torch.Tensor:
    """KL(π_ref ‖ π) per row through an arbitrary head; the reference uses ``ref_weight`` or ``head``."""
    logits = head(h).float()  # (n, V)
    with torch.no_grad():
        ref_logits = (head(ref_h) if ref_weight is None else F.linear(ref_h, ref_weight)).float()  # (n, V)
    if softcap:
        logits, ref_logits = (softcap * torch.tanh(z / softcap) for z in (logits, ref_logits))
    logp, logq = (z.div(temperature).log_softmax(-1) for z in (logits, ref_logits))
    return F.kl_div(logp, logq, reduction="none", log_target=True).sum(-1)  # (n,)


def _checkpointed_chunks(fn, head: nn.Module, tensors: tuple, extra: tuple, chunk_size: int) -> torch.Tensor:
    """``fn(head, *row_chunks, *extra)`` over row chunks of ``tensors``, concatenated: (N,).

    Each chunk runs under non-reentrant activation checkpointing, so only one chunk's
    (chunk_size, V) logits are alive at a time, in forward and in backward.
    """
    n = tensors[0].shape[0]
    outs = [
        checkpoint(fn, head, *(t[s : s + chunk_size] for t in tensors), *extra, use_reentrant=False)
        for s in range(0, n, chunk_size)
    ]
    return torch.cat(outs) if outs else tensors[0].new_zeros(0, dtype=torch.float32)


# --------------------------------------------------------------------------- public API


def logprobs_from_hidden(
    model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> SequenceLogps:
    """Per-sequence Σ_t log π(y_t | ·) from backbone hidden states (B, T, H) and labels (B, T)."""
    head = output_head(model)
    h, targets, rows, n_tokens = _scored_positions(hidden, labels)  # (N, H), (N,), (N,), (B,)
    if head.fused:
        h = _as_head_dtype(h, head.weight)
        token_logps = linear_logprobs(h, head.weight, targets, IGNORE_INDEX, chunk_size, head.softcap)
    else:
        fn, extra = _chunk_module_logprobs, (head.softcap,)
        token_logps = _checkpointed_chunks(fn, head.module, (h, targets), extra, chunk_size)
    return SequenceLogps(_sum_rows(token_logps.float(), rows, hidden.shape[0]), n_tokens)


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
) -> SequenceLogps:
    """Σ_t log π(y_t | x, y_<t) per sequence, without (B, T, V) logits.

    input_ids, attention_mask, labels (B, T); labels −100 where not scored (HF convention, shifted
    here). Returns logps (B,) fp32 and n_tokens (B,).
    """
    hidden = backbone_hidden(model, input_ids, attention_mask)  # (B, T, H)
    return logprobs_from_hidden(model, hidden, _mask_padding(labels, attention_mask), chunk_size)


def sequence_method_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    layout: Layout,
    method,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    constraint_ref_hidden: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> LossOutput:
    """The loss of ``method`` (an rlvf.config.MethodConfig) on a micro-batch collated in ``layout``
    order (rlvf/objective.py): one backbone forward, one fused log-prob call over all scored tokens
    (``rlvf.kernels.fused_c3po_loss``), then ``rlvf.objective.method_loss``.

    input_ids, attention_mask, labels (S, T); ref_chosen, ref_rejected (P,) reference log-probs of
    the pairs; constraint_ref_hidden (N + O, T, H) the reference backbone's hidden states of the near
    and out rows (adapters off, no grad), needed for constraint: kd only. A head that is not a plain
    linear map takes the generic chunked path to the same per-sequence sums.
    """
    hidden = backbone_hidden(model, input_ids, attention_mask)  # (S, T, H)
    labels = _mask_padding(labels, attention_mask)
    kl = None
    if constraint_ref_hidden is not None:
        c = layout.constraint_rows
        kl = sequence_kl(model, hidden[c], constraint_ref_hidden, labels[c], method.kd_temperature, chunk_size).kl
    head = output_head(model)
    if not head.fused:
        lp = logprobs_from_hidden(model, hidden, labels, chunk_size)
        return method_loss(method, layout, lp.logps, lp.n_tokens, ref_chosen, ref_rejected, kl)
    h, targets, rows, _ = _scored_positions(hidden, labels)  # (M, H), (M,), (M,)
    return fused_c3po_loss(_as_head_dtype(h, head.weight), head.weight, targets, rows, layout, method,
                           ref_chosen, ref_rejected, kl, chunk_size=chunk_size, softcap=head.softcap)


def naive_sequence_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> SequenceLogps:
    """Reference: full ``model(...).logits`` → log-softmax → gather → sum. O(B·T·V) memory."""
    labels = _mask_padding(labels, attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX
    logp = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
    token_logps = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T-1)
    return SequenceLogps(torch.where(keep, token_logps, 0.0).sum(1), keep.sum(1))


def sequence_kl(
    model: nn.Module,
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    ref_weight: torch.Tensor | None = None,
) -> SequenceKL:
    """Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) over the scored tokens, logits divided by T.

    hidden (B, T, H) from the policy (``backbone_hidden``); ref_hidden (B, T, H) from the reference,
    computed by the caller under ``torch.no_grad()`` with adapters disabled; labels (B, T), −100 on
    prompt and padding (as for ``sequence_logprobs``; there is no attention mask here). The
    reference head is ``ref_weight`` if given, else the model's head (a constant either way), which
    is right when, as in the paper, the head carries no adapter.
    """
    head = output_head(model)
    h, _, rows, n_tokens = _scored_positions(hidden, labels)  # (N, H)
    ref_h = _scored_positions(ref_hidden, labels)[0]  # (N, H)
    if head.fused:
        mask = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)  # (N,)
        h, ref_h = _as_head_dtype(h, head.weight), _as_head_dtype(ref_h, head.weight)
        if ref_weight is not None:
            ref_weight = ref_weight.to(head.weight.dtype)
        token_kl = linear_kl(h, ref_h, head.weight, mask, temperature, chunk_size, head.softcap, ref_weight)
    else:
        extra = (ref_weight, temperature, head.softcap)
        token_kl = _checkpointed_chunks(_chunk_module_kl, head.module, (h, ref_h.detach()), extra, chunk_size)
    return SequenceKL(_sum_rows(token_kl.float(), rows, hidden.shape[0]), n_tokens)
