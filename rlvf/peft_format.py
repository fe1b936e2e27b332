"""Adapters on disk in PEFT's folder format: save, read and load, mix, and export merged.

The folder format is PEFT's (peft 0.21, ``PeftModel.save_pretrained``), which vLLM serves with
``--enable-lora``: ``adapter_config.json`` and ``adapter_model.safetensors`` (metadata
{"format": "pt"}) with keys ``base_model.model.<module path>.lora_A.weight`` (r, in) and
``.lora_B.weight`` (out, r). GPT-2's Conv1D layers keep these shapes (the config says
``fan_in_fan_out: true``, which PEFT sets itself anyway). Expert stacks and routers are PEFT's
``target_parameters``: their weights are (E·r, in) and (out, r·E) under the module's name, with
".base_layer" inserted once per later adapted parameter of the same module
(``rlvf.lora.peft_module_names``); PEFT refuses ``lora_dropout`` there, so an adapter that has them
is saved with lora_dropout 0 (dropout only matters when training, where rlvf takes it from its config).
peft itself is never imported here; the tests use it as an oracle.

Inside: ``save_adapter`` (a model's adapters as a folder), ``read_adapter`` /
``load_adapter`` (a folder checked against a model, then wrapped into it), ``mix_adapters`` (a
weighted sum of adapters as one exact adapter, no model loaded), ``export_merged`` (base + adapter
as a plain HF model folder) and ``base_model_field``. adapter_config.json is read and checked by
rlvf/adapter_config.py; the layer itself is rlvf/lora.py; folders are written beside their target
and swapped in whole (``rlvf.atomic.write_dir_atomic``).
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlvf.adapter_config import CONFIG_NAME, left_out_by, module_rank_alpha, random_init_without_weights
from rlvf.adapter_config import matches as _matches
from rlvf.adapter_config import read_config as _read_config
from rlvf.atomic import write_dir_atomic
from rlvf.errors import UserError
from rlvf.lora import (LoRALinear, adapted_weight_key, freeze_base, lora_modules, lora_state_dict, peft_key_map,
                       refuse_second_adapter, wrap_target)
from rlvf.lora_targets import CONV1D, EXPERTS, LINEAR, ROUTER, Target, is_conv1d, mamba_refused, select_linear_modules

WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's prefix on every saved key; without it PEFT loads nothing
# <module path>.lora_A.weight; PEFT's in-memory adapter name (...lora_A.default.weight) is tolerated
_KEY_RE = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight")


# ----------------------------------------------------------------------------------------------
# PEFT folder format


def _peft_config(
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    use_rslora: bool,
    base_model: str | None,
    revision: str | None = None,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    task_type: str = "CAUSAL_LM",
    target_parameters: list[str] | None = None,
    fan_in_fan_out: bool = False,
) -> dict:
    """The adapter_config.json fields that PEFT 0.21 and vLLM read (PEFT defaults elsewhere)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "revision": revision,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "target_modules": target_modules,
        "target_parameters": target_parameters or None,
        "exclude_modules": None,
        "rank_pattern": rank_pattern or {},
        "alpha_pattern": alpha_pattern or {},
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


_LORA_PART = re.compile(r"(?:^|\.)lora_")  # a name inside an rlvf adapter (lora_A, lora_gate_up_proj, ...)


def _target_modules_field(model: nn.Module, paths: list[str]) -> list[str]:
    """Short names (["o_proj", "q_proj"]) if they select exactly ``paths``, else the full paths.

    PEFT and vLLM match list entries as name suffixes against every module, so short names are
    only safe when every module with such a last name is wrapped.
    """
    short = sorted({p.rpartition(".")[2] for p in paths})
    same_named = {path for path, _ in model.named_modules()
                  if path.rpartition(".")[2] in short and not _LORA_PART.search(path)}
    return short if same_named == set(paths) else sorted(paths)


def _target_parameters_field(model: nn.Module, paths: list[str]) -> list[str]:
    """target_parameters: short names (["down_proj", "gate.weight", "gate_up_proj"]) if PEFT's
    suffix match on every parameter of the model selects exactly ``paths``, else the full paths."""
    short = sorted({".".join(p.split(".")[-2:]) if p.endswith(".weight") else p.rpartition(".")[2] for p in paths})
    hits = {name for name, _ in model.named_parameters() if not _LORA_PART.search(name) and _matches(name, short)}
    return short if hits == set(paths) else sorted(paths)


def _most_common(values: list):
    return collections.Counter(values).most_common(1)[0][0]


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    revision: str | None = None,
) -> Path:
    """Write the model's adapters as a PEFT LoRA folder (loadable by PEFT and vLLM); return it.

    ``base_model_name_or_path`` defaults to ``model.name_or_path`` (for a model loaded by Hub id the
    id, as PEFT records it; ``revision``, the Hub revision it was loaded at, goes beside it). r and
    lora_alpha are the most common values; modules that differ go to rank_pattern/alpha_pattern under
    their full paths. The folder is written beside ``out_dir`` and renamed into place when complete.
    ``tensors`` (keyed like ``lora_state_dict``, e.g. gathered from FSDP shards) replaces the model's own.
    """
    modules = lora_modules(model)
    if not modules:
        raise ValueError(f"save_adapter: {type(model).__name__} has no LoRA modules")
    if len({m.use_rslora for m in modules.values()}) > 1:
        raise ValueError("save_adapter: modules mix rsLoRA and plain scaling; PEFT can't say so")
    paths = sorted(modules)
    linear = [p for p in paths if isinstance(modules[p], LoRALinear)]
    params = [p for p in paths if p not in linear]
    r = _most_common([modules[p].r for p in paths])
    alpha = _most_common([modules[p].alpha for p in paths])
    dropouts = [modules[p].dropout.p for p in linear if isinstance(modules[p].dropout, nn.Dropout)]
    config = _peft_config(
        r=r,
        alpha=alpha,
        dropout=dropouts[0] if dropouts and not params else 0.0,  # PEFT refuses dropout with target_parameters
        target_modules=_target_modules_field(model, linear),
        target_parameters=_target_parameters_field(model, params),
        fan_in_fan_out=any(modules[p].fan_in_fan_out for p in linear) and not params,
        use_rslora=modules[paths[0]].use_rslora,
        base_model=base_model_field(base_model_name_or_path or getattr(model, "name_or_path", None)),
        revision=revision,
        rank_pattern={p: modules[p].r for p in paths if modules[p].r != r},
        alpha_pattern={p: modules[p].alpha for p in paths if modules[p].alpha != alpha},
    )
    if tensors is None:
        tensors = lora_state_dict(model)
    else:  # keyed by parameter name (an expert stack's weights go under PEFT's module name); FSDP's
        # state dict can hold more than the trainable ones (a tied lm_head), which are left out
        key_map = peft_key_map(model)
        missing = sorted(set(key_map) - set(tensors))
        if missing:
            raise ValueError(f"save_adapter: tensors lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
        tensors = {key: tensors[name] for name, key in key_map.items()}
    tensors = {  # fp32, contiguous, on the CPU
        PEFT_PREFIX + key: t.to("cpu", torch.float32).contiguous() for key, t in tensors.items()
    }
    return _write_adapter(out_dir, config, tensors)


def base_model_field(name: str | None) -> str | None:
    """base_model_name_or_path as saved: an existing local directory as an absolute path (so that
    PEFT's AutoPeftModel finds it from any working directory), anything else (a hub id) as given."""
    if not name:
        return None
    path = Path(name).expanduser()
    return os.path.abspath(path) if path.is_dir() else name


def _write_adapter(out_dir: str | Path, config: dict, tensors: dict[str, torch.Tensor],
                   keep: Callable[[str], bool] | None = None) -> Path:
    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})

    return write_dir_atomic(out_dir, write, keep)


def _read_weights(adapter_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """adapter_model.safetensors as {module path: {"lora_A": (r, in), "lora_B": (out, r)}}."""
    path = adapter_dir / WEIGHTS_NAME
    if not path.is_file():
        hint = " (adapter_model.bin is not supported; re-save with safetensors)" if (
            adapter_dir / "adapter_model.bin"
        ).exists() else ""
        raise UserError(f"{path}: not found{hint}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: cannot read safetensors ({err})") from None
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise UserError(f"{path}: key {key!r} lacks PEFT's {PEFT_PREFIX!r} prefix")
        match = _KEY_RE.fullmatch(key[len(PEFT_PREFIX):])
        if match is None:
            raise UserError(
                f"{path}: key {key!r} is not a LoRA weight (<module>.lora_A.weight/.lora_B.weight)"
            )
        weights.setdefault(match["module"], {})[match["part"]] = tensor
    for module, pair in weights.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise UserError(f"{path}: {module!r} has {sorted(pair)} but needs lora_A and lora_B")
        for part, t in pair.items():
            name = f"{PEFT_PREFIX}{module}.{part}.weight"
            if t.ndim != 2:
                raise UserError(f"{path}: {name} has shape {tuple(t.shape)}; LoRA weights are 2-D matrices")
            if not t.is_floating_point():
                raise UserError(f"{path}: {name} has dtype {t.dtype}; LoRA weights are floating point")
            if not torch.isfinite(t).all():
                raise UserError(f"{path}: {name} holds NaN or infinite values; the adapter is broken "
                                "(was its training run diverging?)")
        if pair["lora_A"].shape[0] != pair["lora_B"].shape[1]:
            raise UserError(f"{path}: {module}: lora_A is {tuple(pair['lora_A'].shape)} and lora_B is "
                            f"{tuple(pair['lora_B'].shape)}; their ranks (A rows, B columns) must agree")
    if not weights:
        raise UserError(f"{path}: holds no LoRA weights")
    return weights


def _scaling(alpha: float, r: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _linear_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear, or of a Conv1D (weight (in, out))."""
    return tuple(module.weight.shape) if is_conv1d(module) else (module.in_features, module.out_features)


def _check_shapes(file: Path, module: str, pair: dict, config: dict, layer: nn.Module) -> int:
    """Check lora_A (r, in) and lora_B (out, r) against the layer and the config; return r."""
    in_f, out_f = _linear_features(layer)
    A, B = pair["lora_A"], pair["lora_B"]  # (r, in), (out, r)
    r = A.shape[0]
    for part, got, expected in (("lora_A", A.shape, (r, in_f)), ("lora_B", B.shape, (out_f, r))):
        if tuple(got) != expected:
            raise UserError(
                f"{file}: {PEFT_PREFIX}{module}.{part}.weight has shape {tuple(got)}, expected "
                f"{expected} for {type(layer).__name__}({in_f}, {out_f}) — adapter for a different base model?"
            )
    config_r, _ = module_rank_alpha(config, module)
    if r != config_r:
        raise UserError(f"{file}: {module} has rank {r} but {CONFIG_NAME} gives it r = {config_r}")
    return r


def _linear_for_key(model: nn.Module, path: str, file: Path) -> nn.Module:
    """The linear layer (``nn.Linear`` or ``Conv1D``) at ``path`` that the adapter's keys name."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if not (isinstance(module, nn.Linear) or (module is not None and is_conv1d(module))):
        kind = type(module).__name__
        what = "does not exist" if module is None else f"is a {kind}, not nn.Linear or Conv1D"
        raise UserError(
            f"{file}: key {PEFT_PREFIX}{path}.lora_A.weight names module {path!r}, which "
            f"{what} in {type(model).__name__} — adapter for a different base model?"
        )
    return module


def _check_targets(model: nn.Module, config: dict, modules: list[str], adapter_dir: Path) -> None:
    """The linear modules with weights must be exactly those of PEFT's selection that it would load.

    A target_modules entry must name a linear layer of ``model``; a module with weights must be
    one that PEFT wraps (``adapter_config.left_out_by``: target_modules, exclude_modules,
    layers_to_transform, layers_pattern), since PEFT ignores other weights while vLLM applies
    them, and not one PEFT refuses (a Mamba mixer's out_proj). A wrapped module without weights
    is a zero update, unless init_lora_weights makes PEFT draw a random one, which is refused.
    """
    linear = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    targets = config["target_modules"]
    if isinstance(targets, list):
        for name in targets:
            if not any(_matches(p, [name]) for p in linear):
                raise UserError(
                    f"{adapter_dir / CONFIG_NAME}: target_modules entry {name!r} matches no linear layer of "
                    f"{type(model).__name__} — adapter for a different base model?"
                )
    all_linear = set(select_linear_modules(model, "all-linear", ()))
    for module in modules:
        why = left_out_by(config, module, all_linear)
        if why is not None:
            raise UserError(
                f"{adapter_dir / WEIGHTS_NAME}: {module} has LoRA weights but {why}; PEFT would ignore these "
                f"weights and vLLM apply them (fix {CONFIG_NAME} or drop the weights)"
            )
        if mamba_refused(model, module):
            raise UserError(f"{adapter_dir / WEIGHTS_NAME}: {module} has LoRA weights, but PEFT refuses LoRA on a "
                            f"Mamba mixer's {module.rpartition('.')[2]} in {model.config.model_type} models (its "
                            "fused kernel reads the weight directly); drop these weights")
    if random_init_without_weights(config):
        missing = [p for p in linear if p not in modules and left_out_by(config, p, all_linear) is None]
        if missing:
            raise _random_init_error(adapter_dir, config, missing[0])


def _random_init_error(adapter_dir: Path, config: dict, path: str) -> UserError:
    return UserError(
        f"{adapter_dir / CONFIG_NAME}: selects {path}, which has no weights in {WEIGHTS_NAME}, and "
        f"init_lora_weights = {config['init_lora_weights']!r} makes PEFT give it a random update "
        "(save the adapter with all its weights, or narrow target_modules)"
    )


@dataclass
class ParameterTarget:
    """A parameter that adapter_config.json's target_parameters selects (PEFT's ParamWrapper)."""

    path: str  # "<module>.<parameter>"
    module: nn.Module  # the module holding it
    param: str


def _parameter_targets(model: nn.Module, config: dict, adapter_dir: Path) -> dict[str, ParameterTarget]:
    """PEFT module name of the weights -> the parameter, for every parameter target_parameters selects.

    PEFT (``BaseTuner._inject_parameters``) takes each module's own parameters whose path equals an
    entry or ends in "." + entry, in declaration order, and nests one wrapper per parameter, so the
    i-th of n is saved under ``<module>`` + ".base_layer" × (n − 1 − i).
    """
    targets = config.get("target_parameters") or []
    selected = {}
    for path, module in model.named_modules() if targets else ():
        names = [n for n, _ in module.named_parameters(recurse=False) if _matches(f"{path}.{n}", targets)]
        for i, name in enumerate(names):
            weight = getattr(module, name)
            where = f"{path}.{name}" if path else name
            if not path or weight.ndim not in (2, 3):
                why = "is a parameter of the model itself" if not path else f"has shape {tuple(weight.shape)}"
                raise UserError(f"{adapter_dir / CONFIG_NAME}: target_parameters selects {where}, which {why}; "
                                "PEFT adapts 2-D and 3-D parameters of submodules only")
            selected[path + ".base_layer" * (len(names) - 1 - i)] = ParameterTarget(where, module, name)
    return selected


def _check_parameter_shapes(file: Path, name: str, pair: dict, config: dict, target: ParameterTarget) -> int:
    """lora_A (E·r, in) and lora_B (out, r·E) for the parameter's layout (see rlvf.lora_param); return r."""
    weight = getattr(target.module, target.param)
    if weight.ndim == 2:
        E, (out_f, in_f) = 1, weight.shape
    else:
        E, d1, d2 = weight.shape
        in_f, out_f = (d1, d2) if getattr(target.module, "is_transposed", False) else (d2, d1)
    A, B = pair["lora_A"], pair["lora_B"]
    r = A.shape[0] // E
    for part, got, expected in (("lora_A", A.shape, (E * r, in_f)), ("lora_B", B.shape, (out_f, E * r))):
        if r < 1 or tuple(got) != expected:
            raise UserError(
                f"{file}: {PEFT_PREFIX}{name}.{part}.weight has shape {tuple(got)}, expected {expected} for "
                f"{target.path} {tuple(weight.shape)} with {E} expert(s) — adapter for a different base model?")
    config_r, _ = module_rank_alpha(config, target.path)
    if r != config_r:
        raise UserError(f"{file}: {target.path} has rank {r} but {CONFIG_NAME} gives it r = {config_r}")
    return r


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, dropout: float | None = None, trainable: bool = False
) -> list[str]:
    """Load a PEFT LoRA folder (saved here or by peft) into a plain HF model; return the adapted paths.

    Everything is checked before the model is touched. The modules are those PEFT wraps for this
    adapter_config.json (target_modules, exclude_modules, layers_to_transform, layers_pattern; see
    rlvf.adapter_config) that have weights, and the parameters target_parameters selects; weights
    outside that selection, and config values this plain LoRA cannot reproduce, are refused in one
    line. Rank comes from the tensor shapes (checked against rank_pattern or r), alpha from
    alpha_pattern or lora_alpha, the scaling from use_rslora, dropout (linear layers only) from the
    config unless given. Base parameters are frozen; the LoRA weights train only if ``trainable``
    (to continue training an adapter).
    """
    adapter_dir = Path(adapter_dir)
    refuse_second_adapter(model, f"load_adapter({adapter_dir})")
    config, plan = read_adapter(model, adapter_dir)
    drop = config.get("lora_dropout", 0.0) if dropout is None else dropout
    for m in plan:
        if m.param is None:
            target = Target(m.path, CONV1D if is_conv1d(m.base) else LINEAR, m.base)
        else:
            target = Target(m.path, EXPERTS if getattr(m.base, m.param).ndim == 3 else ROUTER, m.base, m.param)
        module = wrap_target(model, target, m.r, m.alpha, drop, m.use_rslora)
        with torch.no_grad():
            module.lora_A.weight.copy_(m.lora_A)
            module.lora_B.weight.copy_(m.lora_B)
    freeze_base(model, lora_trainable=trainable)
    return [m.path for m in plan]


@dataclass
class AdapterModule:
    """One adapted weight of an adapter folder, checked against the model it is for."""

    path: str  # module path in the model; "<module>.<parameter>" for a parameter target
    base: nn.Module  # the layer it adapts, or the module holding the parameter
    lora_A: torch.Tensor  # (r, in); (E·r, in) for a parameter target
    lora_B: torch.Tensor  # (out, r); (out, r·E)
    r: int
    alpha: float
    use_rslora: bool
    param: str | None = None  # the adapted parameter of ``base``; None for a linear layer

    @property
    def scaling(self) -> float:
        return _scaling(self.alpha, self.r, self.use_rslora)


def read_adapter(model: nn.Module, adapter_dir: str | Path) -> tuple[dict, list[AdapterModule]]:
    """Read a PEFT LoRA folder and check it against ``model`` without changing the model:
    (adapter_config, adapted weights sorted by path). Raises UserError naming the file and the problem."""
    adapter_dir = Path(adapter_dir)
    config, weights = _read_config(adapter_dir), _read_weights(adapter_dir)
    file, rslora, plan = adapter_dir / WEIGHTS_NAME, bool(config.get("use_rslora", False)), []
    params = _parameter_targets(model, config, adapter_dir)
    linear = sorted(k for k in weights if k not in params)
    bases = {path: _linear_for_key(model, path, file) for path in linear}
    _check_targets(model, config, linear, adapter_dir)
    for path, base in bases.items():
        r = _check_shapes(file, path, weights[path], config, base)
        plan.append(AdapterModule(path, base, weights[path]["lora_A"], weights[path]["lora_B"], r,
                                  module_rank_alpha(config, path)[1], rslora))
    wrapped_modules = {id(b) for b in bases.values()}
    for name, target in params.items():
        if id(target.module) in wrapped_modules:
            raise UserError(f"{adapter_dir / CONFIG_NAME}: target_parameters selects {target.path}, whose module "
                            "also has LoRA weights as a target module (PEFT refuses both on one module)")
        if name not in weights:
            if random_init_without_weights(config):
                raise _random_init_error(adapter_dir, config, target.path)
            continue  # a zero update
        r = _check_parameter_shapes(file, name, weights[name], config, target)
        plan.append(AdapterModule(target.path, target.module, weights[name]["lora_A"], weights[name]["lora_B"], r,
                                  module_rank_alpha(config, target.path)[1], rslora, target.param))
    return config, sorted(plan, key=lambda m: m.path)


# ----------------------------------------------------------------------------------------------
# Mixing and exporting


def mix_adapters(adapters: list[tuple[str | Path, float]], out_dir: str | Path, *,
                 keep_other_files: bool = True, model: nn.Module | None = None) -> Path:
    """Weighted sum of LoRA adapters as one exact adapter, by concatenation.

    For every module in any adapter, with sᵢ adapter i's own scaling (α/r or α/√r):

        A' = rows[w₁·s₁·A₁; w₂·s₂·A₂; ...]   (Σrᵢ, in)
        B' = cols[B₁, B₂, ...]                (out, Σrᵢ)    so B'A' = Σ wᵢ·sᵢ·Bᵢ·Aᵢ

    written with lora_alpha = r' = Σrᵢ and use_rslora false: its scaling is 1 and ΔW is exact.
    Adapter i contributes rᵢ = its largest rank to every module (zero blocks where it has no or a
    smaller adapter), so r' is the same everywhere and no rank_pattern is needed (vLLM ignores
    it). r' must fit vLLM's --max-lora-rank. This is PEFT's ``add_weighted_adapter(..., "cat")``
    except that PEFT copies use_rslora from the first adapter, so its rsLoRA mixes get scaling
    √r' instead of 1 — wrong.

    LoRA on parameters (``target_parameters``: MoE expert stacks and routers, rlvf.lora_param) is
    mixed the same way per expert: A (E·r, in) holds E blocks of r rows and B (out, r·E) E
    interleaved columns per rank, so A'ₑ = rows[wᵢ·sᵢ·Aᵢₑ] and B'ₑ = cols[Bᵢₑ] for every expert e.
    Which parameter a saved key names depends on the model's modules (PEFT nests one wrapper per
    parameter of a module), so these adapters need the model's structure: ``model``, or else a
    skeleton built on the meta device from the base model's config.json (no weights are read).
    The mix targets the union of the adapters' target_parameters, without dropout (PEFT allows none
    there). Linear-layer adapters need no model. No model weights are loaded either way.

    An existing ``out_dir`` gets the two adapter files replaced and keeps its other files
    (``keep_other_files``; False replaces the folder whole).
    """
    if not adapters:
        raise UserError("mix_adapters: no adapters given")
    loaded = []  # (dir, weight, config, {key: {"lora_A", "lora_B"}})
    for adapter_dir, weight in adapters:
        d = Path(adapter_dir)
        config, weights = _read_config(d), _read_weights(d)
        loaded.append((d, float(weight), config, weights))
    bases = {str(d): base_model_field(c.get("base_model_name_or_path")) for d, _, c, _ in loaded}
    if len(set(bases.values())) > 1:
        raise UserError(f"mix_adapters: adapters are for different base models: {bases}")
    revisions = {str(d): c.get("revision") if isinstance(c.get("revision"), str) else None
                 for d, _, c, _ in loaded}  # of a Hub base model
    if len(set(revisions.values())) > 1:
        raise UserError(f"mix_adapters: adapters are for different revisions of {next(iter(bases.values()))}: "
                        f"{revisions}")
    base, revision = next(iter(bases.values())), next(iter(revisions.values()))
    union_params = sorted({t for _, _, c, _ in loaded for t in c.get("target_parameters") or []})
    if union_params and model is None:
        from rlvf.modeling import model_skeleton

        model = model_skeleton(base, revision, loaded[0][0] / CONFIG_NAME)
    # every adapter's parameter keys renamed to the parameter's path, the mix's keys from the union
    out_keys = {t.path: key for key, t in _parameter_targets(
        model, {"target_parameters": union_params}, loaded[0][0]).items()} if union_params else {}
    experts = {}  # parameter path -> E (1 for a router)
    for i, (d, weight, config, weights) in enumerate(loaded):
        params = _parameter_targets(model, config, d) if config.get("target_parameters") else {}
        renamed = {}
        for key, pair in weights.items():
            if key in params:
                target = params[key]
                _check_parameter_shapes(d / WEIGHTS_NAME, key, pair, config, target)
                param = getattr(target.module, target.param)
                experts[target.path] = param.shape[0] if param.ndim == 3 else 1
                renamed[target.path] = pair
            else:
                why = left_out_by(config, key, None)
                if why is not None:
                    raise UserError(f"{d / WEIGHTS_NAME}: {key} has LoRA weights but {why}; PEFT would ignore "
                                    f"these weights and vLLM apply them (fix {CONFIG_NAME} or drop the weights)")
                renamed[key] = pair
        loaded[i] = (d, weight, config, renamed)
    shapes = _module_shapes(loaded)  # module (or parameter path) -> (out, in)
    ranks = [max(pair["lora_A"].shape[0] // experts.get(name, 1) for name, pair in w.items()) for _, _, _, w in loaded]
    tensors = {}
    for name, shape in sorted(shapes.items()):
        A, B = _mix_module(name, shape, loaded, ranks, experts.get(name, 1))  # (E·r', in), (out, r'·E)
        key = out_keys.get(name, name)
        tensors[f"{PEFT_PREFIX}{key}.lora_A.weight"] = A
        tensors[f"{PEFT_PREFIX}{key}.lora_B.weight"] = B
    r_mix = sum(ranks)
    linear = {name: shape for name, shape in shapes.items() if name not in experts}
    config = _peft_config(
        r=r_mix,
        alpha=r_mix,
        dropout=0.0 if union_params else max(float(c.get("lora_dropout", 0.0)) for _, _, c, _ in loaded),
        target_modules=_union_target_modules([c for _, _, c, _ in loaded], linear),
        use_rslora=False,
        base_model=base,
        revision=revision,
        task_type=loaded[0][2].get("task_type") or "CAUSAL_LM",
        target_parameters=union_params,
        fan_in_fan_out=any(bool(c.get("fan_in_fan_out")) for _, _, c, _ in loaded),
    )
    return _write_adapter(out_dir, config, tensors, (lambda name: True) if keep_other_files else None)


def _mix_module(
    name: str, shape: tuple[int, int], loaded: list, ranks: list[int], experts: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's (or parameter's) A' and B', zero-padded to each adapter's rank rᵢ: per expert e,
    A'ₑ = rows[wᵢ·sᵢ·Aᵢₑ] and B'ₑ = cols[Bᵢₑ], laid out as A (E·Σrᵢ, in) expert-major and B
    (out, Σrᵢ·E) rank-major (rlvf.lora_param); E = 1 is a linear layer's A (Σrᵢ, in), B (out, Σrᵢ)."""
    out_f, in_f = shape
    E = experts
    blocks_A, blocks_B = [], []
    for (_, weight, config, weights), r_i in zip(loaded, ranks):
        A = torch.zeros(E, r_i, in_f)  # stays zero where adapter i lacks the module
        B = torch.zeros(out_f, r_i, E)
        if name in weights:
            r = weights[name]["lora_A"].shape[0] // E  # <= r_i
            s = _scaling(module_rank_alpha(config, name)[1], r, bool(config.get("use_rslora")))
            A[:, :r] = weight * s * weights[name]["lora_A"].float().view(E, r, in_f)
            B[:, :r] = weights[name]["lora_B"].float().view(out_f, r, E)
        blocks_A.append(A)
        blocks_B.append(B)
    return (torch.cat(blocks_A, dim=1).reshape(-1, in_f).contiguous(),
            torch.cat(blocks_B, dim=1).reshape(out_f, -1).contiguous())


def _module_shapes(loaded: list) -> dict[str, tuple[int, int]]:
    """Module -> (out, in) over all adapters, which must agree where they share a module."""
    shapes: dict[str, tuple[int, int]] = {}
    for adapter_dir, _, _, weights in loaded:
        for module, pair in weights.items():
            shape = (pair["lora_B"].shape[0], pair["lora_A"].shape[1])  # (out, in)
            if shapes.setdefault(module, shape) != shape:
                raise UserError(
                    f"mix_adapters: {adapter_dir / WEIGHTS_NAME}: {module} is {shape} (out, in) "
                    f"but {shapes[module]} in an earlier adapter"
                )
    return shapes


def _union_target_modules(configs: list[dict], shapes: dict) -> list[str]:
    """Union of the configs' target_modules lists when each is a plain list of names (its own
    selection is then every module so named); full module paths otherwise (a regex string,
    exclude_modules or layers_to_transform narrowed some input's selection)."""
    plain = all(isinstance(c.get("target_modules"), list) and not c.get("exclude_modules")
                and c.get("layers_to_transform") in (None, []) for c in configs)
    if plain:
        return sorted({name for c in configs for name in c["target_modules"]})
    return sorted(shapes)


# Hugging Face weight files (single, sharded, their index): a stale one left beside a new export
# could be loaded instead of it, so --overwrite drops them with the files it writes.
_HF_WEIGHT_FILE = re.compile(r"(?:model|pytorch_model)(?:-\d+-of-\d+)?\.(?:safetensors|bin)(?:\.index\.json)?")


def export_merged(model: nn.Module, tokenizer, out_dir: str | Path, *, keep_other_files: bool = True) -> Path:
    """Save base + adapters as a plain HF model folder (safetensors + tokenizer); return it.

    The merged weights W + s·B·A are computed out of place (fp32, cast to W's dtype, on the CPU),
    so the in-memory model is left bit for bit as it was — an in-place merge/unmerge round trip
    in bf16 would perturb the base weights, which DPO uses as its reference policy. An existing
    ``out_dir`` gets the files written here replaced, loses any other weight files (which could
    shadow the new ones) and keeps everything else (``keep_other_files``; False replaces it whole).
    """
    state = {k: v for k, v in model.state_dict().items() if not re.search(r"\.lora_[AB]\.", k)}
    with torch.no_grad():
        for path, module in lora_modules(model).items():
            if not module.merged:  # a merged module's weight already holds W + ΔW
                weight = module.base_weight()  # (out, in); (in, out) for Conv1D; (E, ·, ·) for experts
                merged = weight.float() + module.delta_weight()  # ΔW in the weight's own layout
                state[adapted_weight_key(path, module)] = merged.to(weight.dtype).cpu()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)

    keep = (lambda name: _HF_WEIGHT_FILE.fullmatch(name) is None) if keep_other_files else None
    return write_dir_atomic(out_dir, write, keep)
