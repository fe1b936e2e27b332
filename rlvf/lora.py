"""LoRA by hand: the ``LoRALinear`` layer, putting adapters into a model, switching them off, merging.

LoRA (Hu et al., 2021, eq. 3) freezes a pretrained weight W (out, in) and learns a low-rank update:

    h = W x + b + s · B A x        A: (r, in), B: (out, r), s = α / r

rsLoRA (Kalajdzievski, 2023) uses s = α / √r instead, so the update keeps its size as r grows.
A is initialised like ``nn.Linear`` (kaiming_uniform_, a=√5) and B with zeros, so a fresh adapter
computes exactly the base model. ``LoRALinear`` keeps the base layer's own ``weight``/``bias``
parameters, so a wrapped model's state_dict keeps Hugging Face key names (``...q_proj.weight``) and
the adapter adds ``...q_proj.lora_A.weight`` / ``...q_proj.lora_B.weight`` beside them. GPT-2's
``Conv1D`` stores W transposed, (in, out) (PEFT's ``fan_in_fan_out``); A and B keep the shapes above.

Which weights get adapters is rlvf/lora_targets.py: linear layers, and the expert stacks and routers
of mixture-of-experts blocks, which are bare parameters and get a ``LoRAParameter`` (rlvf/lora_param.py).

With the adapters switched off (``disable_adapters``) the model computes the base model bit for
bit; DPO uses that as its reference policy, without a second copy of the weights.

Inside: ``LoRALinear`` (and its fused adapter branch with a redrawn dropout mask), ``inject_lora`` /
``wrap_target``, ``lora_modules`` / ``lora_state_dict`` (PEFT's file keys) / ``trainable_parameters``,
``disable_adapters``, ``merge_adapters`` / ``unmerge_adapters``, ``describe_adapters`` (the startup
line). The adapter files (PEFT format: save, load, mix, merged export) are in rlvf/peft_format.py.
"""
from __future__ import annotations

import collections
import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlvf.errors import UserError
from rlvf.lora_param import LoRAParameter
from rlvf.lora_targets import PARAMETER_KINDS, Target, is_conv1d, output_embedding, select_targets

TargetSpec = str | Sequence[str] | None  # "all-linear", a regex (re.fullmatch), or name suffixes
LoRALayer = "LoRALinear | LoRAParameter"


# ----------------------------------------------------------------------------------------------
# The layer


class LoRALinear(nn.Module):
    """A linear layer plus a low-rank update: ``y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ``.

    It wraps an ``nn.Linear`` (a subclass with its own forward, like FalconLinear, keeps that
    forward, which must still map (…, in) to (…, out)) or GPT-2's ``Conv1D`` (y = x W + b, W (in, out)).

    The base ``weight`` (out, in) and ``bias`` (out,) are the wrapped layer's own Parameters,
    frozen. ``lora_A`` (r, in) and ``lora_B`` (out, r) are float32 whatever the base dtype: the
    adapter path runs in fp32 (autocast off) and is cast to the base output's dtype, so a bf16
    base with fp32 adapters trains without the update drowning in bf16 rounding.

    The adapter path is one autograd.Function (``_LoRABranch``) that saves only x, in its own
    dtype, and h = dropout(x) Aᵀ (…, r) for backward; the dropout mask is redrawn in backward
    from a seed. nn.Dropout followed by nn.Linear (as in PEFT) would keep the mask and a
    dropped-out fp32 copy of x per layer instead. ``lora_A`` / ``lora_B`` stay nn.Linear
    modules (PEFT key names), but forward uses their weights directly.
    """

    is_rlvf_lora = True

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base_kind = type(base).__name__  # "Linear", "Conv1D", "FalconLinear", ...
        self.fan_in_fan_out = is_conv1d(base)  # GPT-2's Conv1D: weight (in, out), y = x W + b
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features, self.out_features = base.in_features, base.out_features
        # an nn.Linear subclass with its own forward (FalconLinear: x @ W.T + b) keeps it, so that the
        # adapters switched off compute the base model bit for bit
        overridden = type(base).forward if isinstance(base, nn.Linear) else nn.Linear.forward
        self._base_forward = None if overridden is nn.Linear.forward else overridden
        self.weight = base.weight  # (out, in) — (in, out) for Conv1D — the base layer's own Parameter
        self.register_parameter("bias", base.bias)  # (out,) or None
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        # Built on "meta" (no memory, no RNG draw), given storage, then initialised once below.
        fp32_meta = dict(bias=False, device="meta", dtype=torch.float32)
        self.lora_A = nn.Linear(self.in_features, r, **fp32_meta)
        self.lora_B = nn.Linear(r, self.out_features, **fp32_meta)
        self.lora_A.to_empty(device=base.weight.device)
        self.lora_B.to_empty(device=base.weight.device)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True: weight holds W + s·B·A and the adapter path is skipped
        self.disabled = False  # True: compute the base layer only
        self.reset_lora_parameters(generator)
        self.train(base.training)  # injected into an eval() model, dropout stays off
        if self._base_forward is not None:
            self._check_base_forward()

    @torch.no_grad()
    def _check_base_forward(self) -> None:
        """A subclass's forward must still be a linear map x -> (..., out) reading weight and bias."""
        x = torch.zeros(1, self.in_features, dtype=self.weight.dtype, device=self.weight.device)
        try:
            y = self._base_forward(self, x)
        except Exception as err:  # e.g. a router that returns a tuple, or calls super().forward
            y = err
        if not (isinstance(y, torch.Tensor) and tuple(y.shape) == (1, self.out_features)):
            raise ValueError(f"{self.base_kind} is an nn.Linear whose forward is not a plain linear layer")

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ kaiming_uniform_(a=√5) like ``nn.Linear``, B = 0, so the update starts at zero.

        A is drawn on the CPU (from ``generator`` if given, else the global RNG), so a seed gives
        the same adapter on every device.
        """
        a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)  # (r, in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A.weight.copy_(a)
        nn.init.zeros_(self.lora_B.weight)  # (out, r)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's own output, x: (..., in) -> (..., out)."""
        if self.fan_in_fan_out:  # exactly transformers' Conv1D.forward
            y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)  # (N, out)
            return y.view(x.size()[:-1] + (self.out_features,))
        if self._base_forward is not None:
            return self._base_forward(self, x)
        return F.linear(x, self.weight, self.bias)  # exactly nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out)."""
        y = self.base_forward(x)  # (..., out)
        if self.disabled or self.merged:
            return y
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) and self.dropout.training else 0.0
        seed = _draw_seed() if p > 0 else 0
        with torch.autocast(device_type=x.device.type, enabled=False):
            delta = _LoRABranch.apply(x, self.lora_A.weight, self.lora_B.weight, self.scaling, p, seed)
        return y + delta.to(y.dtype)  # delta (..., out) fp32

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A float32, in the layout of ``weight``: (out, in), or (in, out) for Conv1D."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW (added in fp32, cast to W's dtype); the adapter path is then skipped."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge: already merged")
        if self.disabled:
            raise RuntimeError("LoRALinear.merge: adapter is disabled; merging it would enable it")
        self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW. Exact up to rounding: ~1e-7 in fp32, up to one ulp per element in bf16."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge: not merged")
        self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
        self.merged = False

    def base_weight(self) -> nn.Parameter:
        """The adapted weight itself (without the update)."""
        return self.weight

    @torch.no_grad()
    def copy_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Load A (r', in) and B (out, r') of rank r' <= r into this layer, zeros elsewhere."""
        self.lora_A.weight.zero_()
        self.lora_B.weight.zero_()
        self.lora_A.weight[: A.shape[0]].copy_(A)
        self.lora_B.weight[:, : B.shape[1]].copy_(B)

    def extra_repr(self) -> str:
        return (
            f"{self.base_kind}, in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, r={self.r}, alpha={self.alpha}, "
            f"scaling={self.scaling:.4g}, use_rslora={self.use_rslora}, merged={self.merged}"
        )


def _draw_seed() -> int:
    """A dropout seed from the global CPU RNG: seeded runs repeat, and activation checkpointing
    (which restores the RNG state before recomputing) redraws the same mask."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


_MASK_LEVELS = 2**16  # the dropout rate is drawn at 16-bit resolution (see _drop_mask)


def quantized_dropout(p: float) -> float:
    """The rate the mask really has: p rounded to a multiple of 2⁻¹⁶ (0.05 → 0.0500031)."""
    return round(p * _MASK_LEVELS) / _MASK_LEVELS


def _drop_mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> torch.Tensor:
    """Dropout *drop* mask, True with probability ``quantized_dropout(p)``, from ``seed``: bool (shape).

    The same (shape, p, seed, device) always gives the same mask, so backward can redraw it. One
    64-bit random word gives four 16-bit lanes v, uniform over [−2¹⁵, 2¹⁵); an element is dropped
    when v < p̂·2¹⁶ − 2¹⁵. This draws a quarter of the random numbers of ``bernoulli_``, whose
    CPU kernel draws one number per element on one thread (4–5 × faster here for 2,048 × 4,096).
    """
    n = math.prod(shape)
    generator = torch.Generator(device=device).manual_seed(seed)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    lanes = words.view(torch.int16)[:n].view(shape)  # (shape), uniform int16
    return lanes < round(p * _MASK_LEVELS) - _MASK_LEVELS // 2


class _LoRABranch(torch.autograd.Function):
    """δ = s · (dropout(x) Aᵀ) Bᵀ in fp32, with x (…, in), A (r, in), B (out, r) → (…, out).

    dropout(x) = (x ⊙ M) · c with M the keep mask, drawn at rate p̂ = ``quantized_dropout(p)``, and
    c = 1/(1 − p̂) (M = 1, c = 1 when p = 0); c is applied to the small (N, r) tensors. With
    g = ∂L/∂δ, h = (x ⊙ M) Aᵀ c and u = s · c · (g B):

        ∂L/∂B = s · gᵀ h        ∂L/∂A = uᵀ (x ⊙ M)        ∂L/∂x = (u A) ⊙ M

    Saved for backward: x (its own dtype) and h (N, r); M is redrawn from ``seed``. No (N, out)
    or extra (N, in) tensor is kept; backward builds x ⊙ M and u A one at a time.
    """

    @staticmethod
    def forward(ctx, x, A, B, scaling, p, seed):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in), a view when x is contiguous
        xd = x2.float()  # (N, in) fp32
        p = quantized_dropout(p)  # the rate the mask has; ctx keeps it for backward
        if p > 0:
            xd = xd.masked_fill(_drop_mask(xd.shape, p, seed, xd.device), 0.0)
        h = (xd @ A.T).mul_(1.0 / (1.0 - p))  # (N, r)
        del xd
        ctx.save_for_backward(x2, A, B, h)
        ctx.scaling, ctx.p, ctx.seed, ctx.x_shape = scaling, p, seed, x.shape
        # A 3-d @ 2-d matmul returns a fresh (…, out) tensor, not a view of an (N, out) one.
        return (h.view(*x.shape[:-1], -1) @ B.T).mul_(scaling)  # (…, out)

    @staticmethod
    def backward(ctx, grad):
        x2, A, B, h = ctx.saved_tensors
        need_x, need_A, need_B = ctx.needs_input_grad[:3]
        p, s = ctx.p, ctx.scaling
        g = grad.reshape(-1, grad.shape[-1]).float()  # (N, out), fp32 like the output
        grad_B = (g.T @ h).mul_(s) if need_B else None  # (out, r)
        u = (g @ B).mul_(s / (1.0 - p))  # (N, r)
        del g
        drop = _drop_mask(x2.shape, p, ctx.seed, x2.device) if p > 0 and (need_x or need_A) else None
        grad_A = grad_x = None
        if need_A:
            grad_A = u.T @ (x2.float() if drop is None else x2.float().masked_fill(drop, 0.0))  # (r, in)
        if need_x:
            # (…, in), fresh (not a view), so autograd can add the base layer's ∂L/∂x into it in place
            gx = u.view(*ctx.x_shape[:-1], -1) @ A
            grad_x = (gx if drop is None else gx.masked_fill_(drop.view_as(gx), 0.0)).to(x2.dtype)
        return grad_x, grad_A, grad_B, None, None, None


# ----------------------------------------------------------------------------------------------
# Putting adapters into a model


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule at the full path ``path``."""
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new)


def freeze_base(model: nn.Module, lora_trainable: bool) -> None:
    """Freeze every parameter, then let the LoRA A/B matrices train if ``lora_trainable``."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in lora_modules(model).values():
        module.lora_A.weight.requires_grad_(lora_trainable)
        module.lora_B.weight.requires_grad_(lora_trainable)


def refuse_second_adapter(model: nn.Module, what: str) -> None:
    """UserError naming ``what`` if ``model`` already holds LoRA modules."""
    if lora_modules(model):
        raise UserError(
            f"{what}: {type(model).__name__} already has LoRA adapters; rlvf holds one adapter at "
            f"a time (combine adapters offline with mix_adapters, or start from a fresh model)"
        )


def wrap_target(model: nn.Module, target: Target, r: int, alpha: float, dropout: float, use_rslora: bool,
                generator: torch.Generator | None = None) -> LoRALayer:
    """Put a fresh adapter on one target (B = 0) and return it. Parameter targets get no dropout."""
    if target.kind in PARAMETER_KINDS:
        module = LoRAParameter(target.module, target.param, r, alpha, use_rslora, generator=generator)
        target.module.add_module(f"lora_{target.param}", module)
        return module
    try:
        module = LoRALinear(target.module, r, alpha, dropout, use_rslora, generator=generator)
    except ValueError as err:
        raise UserError(f"lora.target_modules: {target.path}: {err}; leave it out or add it to "
                        "lora.exclude_modules") from None
    replace_module(model, target.path, module)
    return module


def inject_lora(
    model: nn.Module,
    target_modules: TargetSpec = "all-linear",
    exclude_modules: TargetSpec = ("lm_head",),
    r: int = 64,
    alpha: float = 128,
    dropout: float = 0.05,
    use_rslora: bool = False,
    seed: int | None = None,
) -> list[str]:
    """Put adapters on the targets ``target_modules`` selects (rlvf/lora_targets.py); return their paths.

    Linear layers (nn.Linear, Conv1D) are wrapped in ``LoRALinear``; expert stacks and routers get a
    ``LoRAParameter`` (no dropout there, as in PEFT). All base parameters are frozen; only the new
    lora_A/lora_B weights train. With ``seed`` the A matrices come from a ``torch.Generator`` seeded
    with it (in sorted path order), independent of the global RNG.
    """
    refuse_second_adapter(model, "inject_lora")
    if not isinstance(r, int) or r < 1:
        raise UserError(f"lora.r must be a positive integer, got {r!r}")
    if not 0 <= dropout < 1:
        raise UserError(f"lora.dropout must be in [0, 1), got {dropout!r}")
    targets = select_targets(model, target_modules, exclude_modules)
    if not targets:
        raise UserError(
            f"lora.target_modules: {target_modules!r} (minus exclude_modules {exclude_modules!r}) matched no "
            f"linear layer (nn.Linear, Conv1D), expert stack or router in {type(model).__name__}"
        )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for target in targets:
        wrap_target(model, target, r, alpha, dropout, use_rslora, generator)
    freeze_base(model, lora_trainable=True)
    return [t.path for t in targets]


def lora_modules(model: nn.Module) -> dict[str, LoRALayer]:
    """Adapted weight's path -> its adapter, in ``named_modules`` order: a ``LoRALinear`` under its
    module path, a ``LoRAParameter`` under "<module>.<parameter>" (as PEFT's target_parameters)."""
    found = {}
    for path, m in model.named_modules():
        if isinstance(m, LoRALinear):
            found[path] = m
        elif isinstance(m, LoRAParameter):
            found[f"{path.rpartition('.')[0]}.{m.param_name}"] = m
    return found


def adapted_weight_key(path: str, module: LoRALayer) -> str:
    """The state_dict key of the weight an adapter updates."""
    return f"{path}.weight" if isinstance(module, LoRALinear) else path


def peft_module_names(model: nn.Module) -> dict[str, str]:
    """Adapted path -> the module name of its lora_A/lora_B in PEFT's adapter file.

    A linear layer keeps its path. PEFT wraps a module once per targeted parameter, in the order the
    module declares its parameters, each ``ParamWrapper`` around the previous one, and names the
    weights of the i-th of n parameters ``<module>`` + ".base_layer" × (n − 1 − i): Mixtral's
    ``experts.base_layer.lora_A.weight`` is gate_up_proj's, ``experts.lora_A.weight`` down_proj's.
    """
    modules = lora_modules(model)
    names, owners = {}, {}
    for path, m in modules.items():
        if isinstance(m, LoRALinear):
            names[path] = path
        else:
            owners.setdefault(path.rpartition(".")[0], set()).add(m.param_name)
    for owner, adapted in owners.items():
        order = [n for n, _ in model.get_submodule(owner).named_parameters(recurse=False) if n in adapted]
        for i, name in enumerate(order):
            names[f"{owner}.{name}"] = owner + ".base_layer" * (len(order) - 1 - i)
    return names


def peft_key_map(model: nn.Module) -> dict[str, str]:
    """Parameter name in ``model`` -> key in the adapter file (no prefix), for every LoRA weight."""
    names, keys = peft_module_names(model), {}
    for path, m in lora_modules(model).items():
        inside = path if isinstance(m, LoRALinear) else f"{path.rpartition('.')[0]}.lora_{m.param_name}"
        for part in ("lora_A", "lora_B"):
            keys[f"{inside}.{part}.weight"] = f"{names[path]}.{part}.weight"
    return keys


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights under their adapter-file keys (no prefix): ``<module>.lora_A.weight`` (r, in)
    and ``.lora_B.weight`` (out, r); (E·r, in) and (out, r·E) for an expert stack (see lora_param)."""
    params = dict(model.named_parameters())
    return {key: params[name].detach() for name, key in peft_key_map(model).items()}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require grad (after ``inject_lora``: the LoRA A/B weights)."""
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes its base model exactly (the DPO reference policy).

    Each adapter's previous ``disabled`` flag is restored on exit, also on an exception.
    """
    modules = list(lora_modules(model).values())
    if any(m.merged for m in modules):
        raise RuntimeError("disable_adapters: adapters are merged into the weights; unmerge first")
    previous = [m.disabled for m in modules]
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was_disabled in zip(modules, previous):
            m.disabled = was_disabled


def merge_adapters(model: nn.Module) -> None:
    """W ← W + s·B·A in every adapter (for fast inference; see ``LoRALinear.merge``)."""
    for module in lora_modules(model).values():
        module.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo ``merge_adapters``."""
    for module in lora_modules(model).values():
        module.unmerge()


def describe_adapters(model: nn.Module) -> str:
    """What the adapters cover, for the startup line: the kinds of weight and the share of the
    model's non-embedding weights (every base parameter but the input and output embeddings) they
    update, e.g. "14 LoRA weights: Linear ×8, MixtralExperts.gate_up_proj ×2, … — 54,272 of 61,888
    non-embedding weights (87.7%)"."""
    modules = lora_modules(model)
    kinds = collections.Counter(
        m.base_kind if isinstance(m, LoRALinear) else f"{type(m._owner).__name__}.{m.param_name}"
        for m in modules.values())
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = output_embedding(model)
    embeddings |= {id(p) for p in head.parameters()} if head is not None else set()
    lora = {id(p) for m in modules.values() for p in (m.lora_A.weight, m.lora_B.weight)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in embeddings | lora)
    adapted = sum(m.base_weight().numel() for m in modules.values())
    listed = ", ".join(f"{kind} ×{n}" for kind, n in kinds.most_common())
    share = f"{adapted / total:.1%}" if total else "n/a"
    return f"{len(modules)} LoRA weights: {listed} — {adapted:,} of {total:,} non-embedding weights ({share})"
