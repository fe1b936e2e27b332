"""Which weights of a model LoRA adapts, chosen as PEFT 0.21 chooses them.

Three kinds of weight take a low-rank update ΔW = s·B·A (rlvf/lora.py, rlvf/lora_param.py):

- **linear layers**: ``nn.Linear`` and its subclasses (Falcon's ``FalconLinear``), and transformers'
  ``Conv1D`` (the GPT-2 family), whose weight is stored transposed, (in, out) — PEFT's
  ``fan_in_fan_out``. Fused projections (phi3 ``qkv_proj``/``gate_up_proj``, Falcon and GPT-NeoX
  ``query_key_value``) are plain linear layers: one A and one B over the whole fused output.
- **expert stacks**: a 3-D parameter of a mixture-of-experts block, (E, out, in), or (E, in, out)
  when its module says ``is_transposed`` (Mixtral, Qwen3-MoE, GPT-OSS in transformers 5);
- **routers**: a module other than a linear layer whose 2-D ``weight`` (E, in) sits beside an expert
  stack of E experts (``MixtralTopKRouter``, ``Qwen3MoeTopKRouter``).

The last two are PEFT's ``target_parameters`` (``lora.ParamWrapper``). "all-linear" selects what
``peft.get_peft_model(model, LoraConfig(target_modules="all-linear"))`` adapts: every linear layer
but the output embedding (``peft.tuners.tuners_utils._maybe_include_all_linear_layers``) and, as
PEFT's transformers-5 conversion does for Mixtral- and Qwen-MoE-style models
(``peft.utils.transformers_weight_conversion``), every router and expert stack. On Mamba-type models
(PEFT's list in ``_check_lora_target_modules_mamba``: falcon_h1, mamba, mamba2, falcon_mamba,
nemotron_h) PEFT refuses modules named ``out_proj`` or ``conv1d`` — their fused kernels read the
weight directly, bypassing any adapter — so "all-linear" leaves them out and naming one is refused.

A list of names (a path equal to one or ending in "." + one) or a regex (re.fullmatch) selects among
the same candidates, output embedding included; a parameter target's path is ``<module>.<param>``
(``model.layers.0.mlp.experts.gate_up_proj``, ``model.layers.0.mlp.gate.weight``). Exclusions win,
and also exclude a parameter target by its module's path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

from rlvf.adapter_config import matches
from rlvf.errors import UserError

ALL_LINEAR = "all-linear"
LINEAR, CONV1D, EXPERTS, ROUTER = "linear", "conv1d", "experts", "router"
PARAMETER_KINDS = (EXPERTS, ROUTER)
# peft.tuners.tuners_utils._check_lora_target_modules_mamba (peft 0.21)
MAMBA_MODEL_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
MAMBA_REFUSED = frozenset({"out_proj", "conv1d"})


@dataclass(eq=False)
class Target:
    """One weight that LoRA can adapt."""

    path: str  # linear: the module path; parameter kinds: "<module path>.<parameter name>"
    kind: str  # LINEAR, CONV1D, EXPERTS or ROUTER
    module: nn.Module = field(repr=False)  # the layer, or the module that holds the parameter
    param: str = "weight"  # the adapted parameter of ``module``

    @property
    def owner(self) -> str:
        """Path of the module holding the weight."""
        return self.path if self.kind in (LINEAR, CONV1D) else self.path.rpartition(".")[0]

    @property
    def label(self) -> str:
        """The kind as a user sees it: the class name, plus the parameter for parameter targets."""
        name = type(self.module).__name__
        return name if self.kind in (LINEAR, CONV1D) else f"{name}.{self.param}"


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: y = x W + b with W (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _is_lora(module: nn.Module) -> bool:
    return getattr(module, "is_rlvf_lora", False)


def _not_an_owner(module: nn.Module) -> bool:
    """Modules whose 2-D/3-D parameters are not expert stacks or routers."""
    return (isinstance(module, (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd, nn.EmbeddingBag))
            or is_conv1d(module) or _is_lora(module))


def _experts(module: nn.Module) -> list[str]:
    """Names of ``module``'s own 3-D parameters (expert stacks (E, ·, ·))."""
    if _not_an_owner(module):
        return []
    return [n for n, p in module.named_parameters(recurse=False) if p.ndim == 3]


def candidates(model: nn.Module) -> list[Target]:
    """Every weight LoRA could adapt, in ``named_modules`` order (linear layers, then parameters)."""
    modules = list(model.named_modules())
    found = []
    for path, m in modules:
        if isinstance(m, nn.Linear):
            found.append(Target(path, LINEAR, m))
        elif is_conv1d(m):
            found.append(Target(path, CONV1D, m))
    for path, m in modules:
        found += [Target(f"{path}.{n}", EXPERTS, m, n) for n in _experts(m)]
    for path, parent in modules:
        n_experts = {getattr(c, n).shape[0] for c in parent.children() for n in _experts(c)}
        for name, child in parent.named_children():
            weight = child._parameters.get("weight") if not _not_an_owner(child) else None
            if weight is not None and weight.ndim == 2 and weight.shape[0] in n_experts and not _experts(child):
                found.append(Target(f"{path}.{name}.weight" if path else f"{name}.weight", ROUTER, child))
    return found


def output_embedding(model: nn.Module) -> nn.Module | None:
    """The model's lm head (``get_output_embeddings()``), which "all-linear" leaves out; None if it has none."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def _check_spec(name: str, spec) -> None:
    if isinstance(spec, str) and spec != ALL_LINEAR:
        try:
            re.compile(spec)
        except re.error as err:
            raise UserError(f"lora.{name}: {spec!r} is not a valid regex ({err})") from None


def mamba_refused(model: nn.Module, path: str) -> bool:
    """True if PEFT refuses LoRA on the module at ``path`` of this (Mamba-type) model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in MAMBA_MODEL_TYPES and path.rpartition(".")[2] in MAMBA_REFUSED


def select_targets(model: nn.Module, target_modules, exclude_modules=()) -> list[Target]:
    """The targets that ``target_modules`` minus ``exclude_modules`` select, sorted by path."""
    _check_spec("target_modules", target_modules)
    _check_spec("exclude_modules", exclude_modules)
    head = output_embedding(model)
    selected = []
    for t in candidates(model):
        if target_modules == ALL_LINEAR:
            hit = t.module is not head and not mamba_refused(model, t.owner)
        else:
            hit = matches(t.path, target_modules)
        excluded = matches(t.path, exclude_modules) or matches(t.owner, exclude_modules)
        if hit and not excluded:
            if mamba_refused(model, t.owner):
                raise UserError(
                    f"lora.target_modules: {t.path} is a Mamba mixer's {t.owner.rpartition('.')[2]}, which "
                    f"PEFT refuses to adapt in {model.config.model_type} models (its fused kernel reads the "
                    "weight directly); leave it out or add it to lora.exclude_modules")
            selected.append(t)
    return sorted(selected, key=lambda t: t.path)


def select_linear_modules(model: nn.Module, target_modules, exclude_modules=()) -> list[str]:
    """Sorted paths of the linear layers (``nn.Linear``, ``Conv1D``) that the specs select."""
    return [t.path for t in select_targets(model, target_modules, exclude_modules) if t.kind in (LINEAR, CONV1D)]
