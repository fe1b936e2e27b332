"""LoRA on a weight that is a bare ``nn.Parameter``: a router's (E, in) matrix or an expert stack.

Mixture-of-experts blocks in transformers 5 keep their experts as one 3-D parameter per projection
— Mixtral's ``gate_up_proj`` (E, 2·I, H) and ``down_proj`` (E, H, I); (E, in, out) where the module
sets ``is_transposed``, as GPT-OSS does — and their routers as a module with a plain (E, H)
``weight``. The forward reads these weights inside the module (index, grouped matmul, ...), so no
input x is in reach of an adapter branch. ``LoRAParameter`` instead hands the module its weight with
the update folded in, W' = W + s·ΔW, for the duration of each forward call. This is PEFT's
``lora.ParamWrapper`` (``target_parameters``), with its layout, which is also the adapter file's:

    A: (E·r, in)   rows expert-major:   A_e = A.view(E, r, in)[e]              (r, in)
    B: (out, r·E)  columns rank-major:  B_e = B.view(out, r, E)[:, :, e]       (out, r)
    ΔW_e = B_e A_e  (out, in), stored as ΔW_eᵀ where the weight is (E, in, out)

with E = 1 for a 2-D weight (then A (r, in), B (out, r), as for a linear layer). A is drawn like
``nn.Linear``'s weight (kaiming_uniform_, a = √5) and B is zero, so a fresh adapter changes nothing.

The module's own Parameter stays where it is under its own name (the state_dict keeps Hugging Face's
keys); a forward pre-hook puts W' in the module's instance ``__dict__``, which Python finds before
``nn.Module.__getattr__`` looks in ``_parameters``, and a forward hook (``always_call``) removes it.
W' is one ``baddbmm`` in W's dtype, like PEFT's ``_LoraFactorsProxy``: on a bf16 base the update is
rounded to bf16 when added (the experts' matmuls need one weight tensor), and the forward keeps one
extra copy of the expert stack alive until backward. No dropout: dropout(x) cannot be factored out of
a weight update (PEFT refuses lora_dropout there too).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRAParameter(nn.Module):
    """ΔW = s · B A on the parameter ``name`` of ``owner``; registered as ``owner.lora_<name>``."""

    is_rlvf_lora = True

    def __init__(self, owner: nn.Module, name: str, r: int, alpha: float, use_rslora: bool = False,
                 *, generator: torch.Generator | None = None):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        weight = getattr(owner, name)
        self.param_name, self.ndim = name, weight.ndim
        self.transposed = weight.ndim == 3 and bool(getattr(owner, "is_transposed", False))
        if weight.ndim == 2:
            self.num_experts, (self.out_features, self.in_features) = 1, weight.shape
        elif weight.ndim == 3:
            e, d1, d2 = weight.shape
            self.num_experts, self.in_features, self.out_features = (e, d1, d2) if self.transposed else (e, d2, d1)
        else:
            raise ValueError(f"LoRA on a parameter needs a 2-D or 3-D weight, {name} is {tuple(weight.shape)}")
        n = self.num_experts * r
        fp32_meta = dict(bias=False, device="meta", dtype=torch.float32)
        self.lora_A = nn.Linear(self.in_features, n, **fp32_meta)  # weight (E·r, in)
        self.lora_B = nn.Linear(n, self.out_features, **fp32_meta)  # weight (out, r·E)
        self.lora_A.to_empty(device=weight.device)
        self.lora_B.to_empty(device=weight.device)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False  # True: the parameter holds W + ΔW and forward leaves it alone
        self.disabled = False  # True: the module computes with W only
        self.reset_lora_parameters(generator)
        self.__dict__["_owner"] = owner  # a plain reference, not a submodule (that would be a cycle)
        self._hooks = (owner.register_forward_pre_hook(self._put_weight),
                       owner.register_forward_hook(self._take_weight, always_call=True))

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ kaiming_uniform_(a=√5) over its (E·r, in) shape, drawn on the CPU; B = 0."""
        a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A.weight.copy_(a)
        nn.init.zeros_(self.lora_B.weight)

    def _factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_e, A_e) stacked over experts: (E, out, r) and (E, r, in), cast to ``dtype``."""
        E = self.num_experts
        A = self.lora_A.weight.view(E, -1, self.in_features)  # (E, r, in)
        B = self.lora_B.weight.view(self.out_features, -1, E).permute(2, 0, 1)  # (E, out, r)
        return B.to(dtype), A.to(dtype)

    def adapted_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W + s·ΔW in W's layout and dtype: one (b)addmm, differentiable in A and B."""
        B, A = self._factors(weight.dtype)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            if weight.ndim == 2:
                return torch.addmm(weight, B[0], A[0], alpha=self.scaling)  # (out, in)
            if self.transposed:  # (E, in, out) + (E, in, r) @ (E, r, out)
                return torch.baddbmm(weight, A.transpose(1, 2), B.transpose(1, 2), alpha=self.scaling)
            return torch.baddbmm(weight, B, A, alpha=self.scaling)  # (E, out, in)

    def delta_weight(self) -> torch.Tensor:
        """s·ΔW in fp32, in the parameter's layout: (out, in), (E, out, in) or (E, in, out)."""
        B, A = self._factors(torch.float32)
        delta = torch.bmm(B, A) * self.scaling  # (E, out, in)
        if self.ndim == 2:
            return delta[0]
        return delta.transpose(1, 2) if self.transposed else delta

    def base_weight(self) -> nn.Parameter:
        """The adapted parameter itself (without the update)."""
        return self._owner._parameters[self.param_name]

    def _put_weight(self, owner: nn.Module, args) -> None:
        if not (self.disabled or self.merged):
            owner.__dict__[self.param_name] = self.adapted_weight(owner._parameters[self.param_name])

    def _take_weight(self, owner: nn.Module, args, output) -> None:
        owner.__dict__.pop(self.param_name, None)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW (added in fp32, cast to W's dtype); forward then uses W as it is."""
        if self.merged:
            raise RuntimeError("LoRAParameter.merge: already merged")
        if self.disabled:
            raise RuntimeError("LoRAParameter.merge: adapter is disabled; merging it would enable it")
        w = self.base_weight()
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW (exact up to rounding)."""
        if not self.merged:
            raise RuntimeError("LoRAParameter.unmerge: not merged")
        w = self.base_weight()
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    @torch.no_grad()
    def copy_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Load A (E·r', in) and B (out, r'·E) of rank r' <= r into this module, zeros elsewhere."""
        E = self.num_experts
        self.lora_A.weight.zero_()
        self.lora_B.weight.zero_()
        r = A.shape[0] // E
        self.lora_A.weight.view(E, self.r, -1)[:, :r].copy_(A.view(E, r, -1))
        self.lora_B.weight.view(self.out_features, self.r, E)[:, :r].copy_(B.view(-1, r, E))

    def extra_repr(self) -> str:
        return (f"{self.param_name}: experts={self.num_experts}, in={self.in_features}, out={self.out_features}, "
                f"transposed={self.transposed}, r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, "
                f"use_rslora={self.use_rslora}, merged={self.merged}")
