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

The head is z = softcap(m · lm_head(h)): an lm_head bias is passed to the fused ops, and a scalar
logit multiplier m (Cohere's logit_scale, Granite's 1/logits_scaling, Falcon-H1's
lm_head_multiplier, ...) is folded in as m·(h Wᵀ + b) = (m·h) Wᵀ + m·b. m is not read from a list of
config keys: ``probe_head`` measures it from the model's own output (least squares of
``model(...).logits`` against ``lm_head(h)``) and checks that the result reproduces
log_softmax(model(...).logits); rlvf.modeling.check_logprobs runs it when training loads a model.

Under FSDP2 the head is used through its weight, not through ``lm_head.forward``; a trainer that
shards the head must unshard it around these calls (or register the calling method with
``torch.distributed.fsdp.register_fsdp_forward_method``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlvf.kernels import IGNORE_INDEX, fused_c3po_loss, linear_kl, linear_logprobs
from rlvf.objective import Layout, LossOutput, method_loss

# Where ``probe_head`` leaves the measured logit multiplier m on the model (a float attribute).
LOGIT_SCALE_ATTR = "rlvf_logit_scale"
# Only a guard for models that were never probed (probed ones carry m and never read these): config
# keys some architectures use to rescale the logits after lm_head. Set to anything but 1 on an
# unprobed model, they are refused rather than silently ignored.
_KNOWN_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


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
    """How to turn hidden states into logits: z = softcap(scale · module(h))."""

    module: nn.Module  # model.get_output_embeddings()
    weight: torch.Tensor | None  # (V, H) when the head is a plain linear map (nn.Linear, nn.Embedding), else None
    bias: torch.Tensor | None  # (V,) the plain head's bias, if it has one
    scale: float  # the logit multiplier m (1 for most models), measured by probe_head
    softcap: float | None  # Gemma-2 style final_logit_softcapping, z = s·tanh(x/s)

    @property
    def fused(self) -> bool:
        """True when the chunked kernel can use ``weight`` (and ``bias``) directly."""
        return self.weight is not None

    def fused_inputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states and bias for the fused ops, the multiplier folded in: (m·h, m·b).

        h (N, H) → (N, H) in the head's dtype (differentiably: the fused ops take one dtype and do
        not autocast, so e.g. an fp32 final norm in front of a bf16 head stays on the fused path)."""
        h = h if h.dtype == self.weight.dtype else h.to(self.weight.dtype)
        if self.scale == 1.0:
            return h, self.bias
        return h * self.scale, None if self.bias is None else self.bias * self.scale

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits softcap(m · module(h)) through the head module itself: (n, H) → (n, V)."""
        return self.finish(self.module(h))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """softcap(m · x) in fp32 for the head module's output x (n, V)."""
        z = x.float()  # (n, V)
        if self.scale != 1.0:
            z = z * self.scale
        return self.softcap * torch.tanh(z / self.softcap) if self.softcap else z


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


def _text_config(model: nn.Module):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def config_softcap(model: nn.Module) -> float | None:
    """The final-logit softcap s of z = s·tanh(x/s) (Gemma-2/3 ``final_logit_softcapping``), or None."""
    return getattr(_text_config(model), "final_logit_softcapping", None) or None


def output_head(model: nn.Module) -> OutputHead:
    """The model's lm head: its weight and bias when it is a plain linear map, the logit multiplier
    ``probe_head`` measured (1 if it was never probed), and the logit softcap.

    Raises ValueError for an unprobed model whose config sets a known logit-scale key to anything but 1.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm head)")
    scale = getattr(model, LOGIT_SCALE_ATTR, None)
    if scale is None:
        config = _text_config(model)
        for key in _KNOWN_LOGIT_SCALES:
            value = getattr(config, key, None)
            if value is not None and value != 1:
                raise ValueError(
                    f"{type(model).__name__}: config.{key}={value} rescales the logits; measure the multiplier "
                    "with rlvf.logprobs.probe_head(model, input_ids, attention_mask) first "
                    "(rlvf.modeling.check_logprobs does when training loads a model)"
                )
        scale = 1.0
    plain = type(head) in (nn.Linear, nn.Embedding)
    bias = head.bias if type(head) is nn.Linear else None
    return OutputHead(head, head.weight if plain else None, bias, float(scale), config_softcap(model))


def _scored_positions(hidden: torch.Tensor, labels: torch.Tensor):
    """Shift labels (token t is predicted from hidden t−1) and keep only the scored positions.

    hidden (B, T, H), labels (B, T) → h (N, H), targets (N,), rows (N,) batch index, n_tokens (B,).
    """
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX  # (B, T-1)
    rows = keep.nonzero()[:, 0]  # (N,)
    return hidden[:, :-1][keep], targets[keep], rows, keep.sum(1)


def _sum_rows(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Σ of per-token ``values`` (N,) into their sequences: (B,)."""
    return values.new_zeros(batch).index_add(0, rows, values)


def _mask_padding(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Never score padding, whatever the labels say."""
    return labels if attention_mask is None else labels.masked_fill(attention_mask == 0, IGNORE_INDEX)


# --------------------------------------------------------------------------- generic (non-plain head) path


def _chunk_module_logprobs(module: nn.Module, h: torch.Tensor, targets: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """log π(y | h) through an arbitrary head module: (n, H), (n,) → (n,). Targets are all valid.
    (``module`` is ``head.module``, passed separately so that checkpoint() sees its parameters.)"""
    logits = head.logits(h)  # (n, V)
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (n,)


def _chunk_module_kl(module, h, ref_h, ref_weight, temperature, head: OutputHead) -> torch.Tensor:
    """KL(π_ref ‖ π) per row through an arbitrary head; the reference uses ``ref_weight`` or ``head``."""
    logits = head.logits(h)  # (n, V)
    with torch.no_grad():
        bias = getattr(module, "bias", None)
        ref_x = module(ref_h) if ref_weight is None else F.linear(ref_h, ref_weight, bias)  # (n, V)
        ref_logits = head.finish(ref_x)  # (n, V)
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


def _token_logprobs(head: OutputHead, h: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-token log π(y | h) of scored positions, h (N, H), targets (N,) → (N,): fused when it can be."""
    if head.fused:
        h, bias = head.fused_inputs(h)
        return linear_logprobs(h, head.weight, targets, IGNORE_INDEX, chunk_size, head.softcap, bias=bias)
    return _checkpointed_chunks(_chunk_module_logprobs, head.module, (h, targets), (head,), chunk_size)


def logprobs_from_hidden(
    model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> SequenceLogps:
    """Per-sequence Σ_t log π(y_t | ·) from backbone hidden states (B, T, H) and labels (B, T)."""
    h, targets, rows, n_tokens = _scored_positions(hidden, labels)  # (N, H), (N,), (N,), (B,)
    token_logps = _token_logprobs(output_head(model), h, targets, chunk_size)  # (N,)
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
    h, bias = head.fused_inputs(h)
    return fused_c3po_loss(h, head.weight, targets, rows, layout, method, ref_chosen, ref_rejected, kl,
                           chunk_size=chunk_size, softcap=head.softcap, bias=bias)


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
        (h, bias), (ref_h, _) = head.fused_inputs(h), head.fused_inputs(ref_h)
        if ref_weight is not None:
            ref_weight = ref_weight.to(head.weight.dtype)
        token_kl = linear_kl(h, ref_h, head.weight, mask, temperature, chunk_size, head.softcap, ref_weight,
                             bias=bias)
    else:
        extra = (ref_weight, temperature, head)
        token_kl = _checkpointed_chunks(_chunk_module_kl, head.module, (h, ref_h.detach()), extra, chunk_size)
    return SequenceKL(_sum_rows(token_kl.float(), rows, hidden.shape[0]), n_tokens)


# --------------------------------------------------------------------------- the head probe


@dataclass(frozen=True)
class HeadProbe:
    """What ``probe_head`` measured: the logit multiplier, and how far rlvf's log-probs are from the model's."""

    scale: float  # m in z = softcap(m · lm_head(h)), now used by every log-prob call on the model
    source: str | None  # the config value m equals ("config.logit_scale", "1/config.logits_scaling"), if any
    softcap: float | None  # from config (final_logit_softcapping), checked by ``error``
    error: float  # max_t |log π_rlvf − log π_model| / max(1, max_t |log π_model|) over the probe's tokens


def _fit_scale(x: torch.Tensor, y: torch.Tensor, softcap: float | None) -> float:
    """Least-squares m in y ≈ softcap(m·x): x = lm_head(h), y = the model's logits, both (n, V) fp32.

    With a softcap, y is mapped back through s·atanh(y/s), keeping entries well inside (−s, s)."""
    if softcap:
        keep = (y / softcap).abs() < 0.9  # (n, V): atanh is ill-conditioned near saturation
        x, y = x[keep], softcap * torch.atanh(y[keep] / softcap)
    xx = x.double().square().sum()
    return float((x.double() * y.double()).sum() / xx) if xx > 0 else 1.0


def _name_scale(model: nn.Module, scale: float) -> tuple[float, str | None]:
    """Snap a measured multiplier onto 1 or onto a float config value v or 1/v it matches to 1e-4,
    so that the exact value is used and can be named; else keep it as measured."""
    candidates = [(1.0, None)]
    for key, value in _text_config(model).to_dict().items():
        if isinstance(value, float) and math.isfinite(value) and value != 0:
            candidates += [(value, f"config.{key}"), (1.0 / value, f"1/config.{key}")]
    for value, source in candidates:
        if abs(scale - value) <= 1e-4 * abs(value):
            return value, source
    return scale, None


@torch.no_grad()
def probe_head(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    fit_scale: bool = True,
    chunk_size: int = 1024,
) -> HeadProbe:
    """Measure the logit multiplier m from the model's own output, store it on the model, and compare
    rlvf's log-probs (``backbone_hidden`` + the fused head) with log_softmax(model(...).logits).

    input_ids, attention_mask (B, T), a few short rows. With ``fit_scale`` m is the least-squares fit
    of the model's logits to softcap(m · lm_head(h)) (``_fit_scale``) and is saved on the model as
    ``LOGIT_SCALE_ATTR``, where ``output_head`` reads it; without, the stored m is only checked (e.g.
    again with the adapters off). Nothing here is specific to an architecture: any scalar multiplier,
    a bias and a config softcap are reproduced; anything else shows up as a large ``error``.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    hidden = backbone_hidden(model, input_ids, attention_mask)  # (B, T, H)
    keep = attention_mask.bool()  # (B, T)
    logits, h = logits[keep].float(), hidden[keep]  # (n, V), (n, H)
    source = None
    if fit_scale:
        head = model.get_output_embeddings()
        x = F.linear(h, head.weight) if type(head) is nn.Embedding else head(h)  # (n, V) = lm_head(h)
        scale, source = _name_scale(model, _fit_scale(x.float(), logits, config_softcap(model)))
        setattr(model, LOGIT_SCALE_ATTR, scale)
    head = output_head(model)
    targets = input_ids[keep][1:]  # (n − 1,): within a row, token t + 1 follows token t ...
    same_row = keep.nonzero()[:, 0]  # (n,)
    pairs = same_row[1:] == same_row[:-1]  # (n − 1,) ... and pairs across two rows are dropped
    ours = _token_logprobs(head, h[:-1][pairs], targets[pairs], chunk_size).float()  # (m,)
    oracle = logits[:-1][pairs].log_softmax(-1).gather(1, targets[pairs][:, None]).squeeze(1)  # (m,)
    error = (ours - oracle).abs().max() / oracle.abs().max().clamp(min=1.0)
    return HeadProbe(head.scale, source, head.softcap, float(error))
