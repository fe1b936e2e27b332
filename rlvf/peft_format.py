"""Adapters on disk in PEFT's folder format: save, read and load, mix, and export merged.

The folder format is PEFT's (peft 0.21, ``PeftModel.save_pretrained``), which vLLM serves with
``--enable-lora``: ``adapter_config.json`` and ``adapter_model.safetensors`` (metadata
{"format": "pt"}) with keys ``base_model.model.<module path>.lora_A.weight`` (r, in) and
``.lora_B.weight`` (out, r). peft itself is never imported here; the tests use it as an oracle.

Inside: ``save_adapter`` (a model's ``LoRALinear`` modules as a folder), ``read_adapter`` /
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
from rlvf.lora import (LoRALinear, freeze_base, lora_modules, lora_state_dict, output_embedding,
                       refuse_second_adapter, replace_module, select_linear_modules)

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
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    task_type: str = "CAUSAL_LM",
) -> dict:
    """The adapter_config.json fields that PEFT 0.21 and vLLM read (PEFT defaults elsewhere)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "revision": None,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "target_modules": target_modules,
        "exclude_modules": None,
        "rank_pattern": rank_pattern or {},
        "alpha_pattern": alpha_pattern or {},
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _target_modules_field(model: nn.Module, paths: list[str]) -> list[str]:
    """Short names (["o_proj", "q_proj"]) if they select exactly ``paths``, else the full paths.

    PEFT and vLLM match list entries as name suffixes, so short names are only safe when every
    linear module with such a last name (output embedding aside) is wrapped.
    """
    short = sorted({p.rpartition(".")[2] for p in paths})
    head = output_embedding(model)
    same_named = {
        path
        for path, m in model.named_modules()
        if isinstance(m, (nn.Linear, LoRALinear))
        and m is not head
        and path.rpartition(".")[2] in short
    }
    return short if same_named == set(paths) else sorted(paths)


def _most_common(values: list):
    return collections.Counter(values).most_common(1)[0][0]


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model's adapters as a PEFT LoRA folder (loadable by PEFT and vLLM); return it.

    ``base_model_name_or_path`` defaults to ``model.name_or_path``. r and lora_alpha are the most
    common values; modules that differ go to rank_pattern/alpha_pattern under their full paths.
    The folder is written beside ``out_dir`` and renamed into place when complete. ``tensors``
    (keyed like ``lora_state_dict``, e.g. gathered from FSDP shards) replaces the model's own.
    """
    modules = lora_modules(model)
    if not modules:
        raise ValueError(f"save_adapter: {type(model).__name__} has no LoRA modules")
    if len({m.use_rslora for m in modules.values()}) > 1:
        raise ValueError("save_adapter: modules mix rsLoRA and plain scaling; PEFT can't say so")
    paths = sorted(modules)
    r = _most_common([modules[p].r for p in paths])
    alpha = _most_common([modules[p].alpha for p in paths])
    first = modules[paths[0]]
    config = _peft_config(
        r=r,
        alpha=alpha,
        dropout=first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        target_modules=_target_modules_field(model, paths),
        use_rslora=first.use_rslora,
        base_model=base_model_field(base_model_name_or_path or getattr(model, "name_or_path", None)),
        rank_pattern={p: modules[p].r for p in paths if modules[p].r != r},
        alpha_pattern={p: modules[p].alpha for p in paths if modules[p].alpha != alpha},
    )
    tensors = {  # fp32, contiguous, on the CPU
        PEFT_PREFIX + key: t.to("cpu", torch.float32).contiguous()
        for key, t in (lora_state_dict(model) if tensors is None else tensors).items()
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


def _check_shapes(file: Path, module: str, pair: dict, config: dict, in_f: int, out_f: int) -> int:
    """Check lora_A (r, in) and lora_B (out, r) against the layer and the config; return r."""
    A, B = pair["lora_A"], pair["lora_B"]  # (r, in), (out, r)
    r = A.shape[0]
    for part, got, expected in (("lora_A", A.shape, (r, in_f)), ("lora_B", B.shape, (out_f, r))):
        if tuple(got) != expected:
            raise UserError(
                f"{file}: {PEFT_PREFIX}{module}.{part}.weight has shape {tuple(got)}, expected "
                f"{expected} for nn.Linear({in_f}, {out_f}) — adapter for a different base model?"
            )
    config_r, _ = module_rank_alpha(config, module)
    if r != config_r:
        raise UserError(f"{file}: {module} has rank {r} but {CONFIG_NAME} gives it r = {config_r}")
    return r


def _linear_for_key(model: nn.Module, path: str, file: Path) -> nn.Linear:
    """The ``nn.Linear`` at ``path`` that the adapter's keys name."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        kind = type(module).__name__
        what = "does not exist" if module is None else f"is a {kind}, not nn.Linear"
        raise UserError(
            f"{file}: key {PEFT_PREFIX}{path}.lora_A.weight names module {path!r}, which "
            f"{what} in {type(model).__name__} — adapter for a different base model?"
        )
    return module


def _check_targets(model: nn.Module, config: dict, modules: list[str], adapter_dir: Path) -> None:
    """The modules with weights must be exactly those of PEFT's selection that it would load.

    A target_modules entry must name a linear layer of ``model``; a module with weights must be
    one that PEFT wraps (``adapter_config.left_out_by``: target_modules, exclude_modules,
    layers_to_transform, layers_pattern), since PEFT ignores other weights while vLLM applies
    them. A wrapped module without weights is a zero update, unless init_lora_weights makes PEFT
    draw a random one, which is refused.
    """
    linear = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
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
    if random_init_without_weights(config):
        missing = [p for p in linear if p not in modules and left_out_by(config, p, all_linear) is None]
        if missing:
            raise UserError(
                f"{adapter_dir / CONFIG_NAME}: selects {missing[0]}, which has no weights in {WEIGHTS_NAME}, and "
                f"init_lora_weights = {config['init_lora_weights']!r} makes PEFT give it a random update "
                "(save the adapter with all its weights, or narrow target_modules)"
            )


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, dropout: float | None = None, trainable: bool = False
) -> list[str]:
    """Load a PEFT LoRA folder (saved here or by peft) into a plain HF model; return wrapped paths.

    Everything is checked before the model is touched. The modules are those PEFT wraps for this
    adapter_config.json (target_modules, exclude_modules, layers_to_transform, layers_pattern; see
    rlvf.adapter_config) that have weights; weights outside that selection, and config values
    this plain LoRA cannot reproduce, are refused in one line. Rank comes from the tensor shapes
    (checked against rank_pattern or r), alpha from alpha_pattern or lora_alpha, the scaling from
    use_rslora, dropout from the config unless given. Base parameters are frozen; the LoRA weights
    train only if ``trainable`` (to continue training an adapter).
    """
    adapter_dir = Path(adapter_dir)
    refuse_second_adapter(model, f"load_adapter({adapter_dir})")
    config, plan = read_adapter(model, adapter_dir)
    drop = config.get("lora_dropout", 0.0) if dropout is None else dropout
    for m in plan:
        module = LoRALinear(m.base, m.r, m.alpha, drop, m.use_rslora)
        with torch.no_grad():
            module.lora_A.weight.copy_(m.lora_A)
            module.lora_B.weight.copy_(m.lora_B)
        replace_module(model, m.path, module)
    freeze_base(model, lora_trainable=trainable)
    return [m.path for m in plan]


@dataclass
class AdapterModule:
    """One module of an adapter folder, checked against the model it is for."""

    path: str  # module path in the model
    base: nn.Linear  # the layer it adapts
    lora_A: torch.Tensor  # (r, in)
    lora_B: torch.Tensor  # (out, r)
    r: int
    alpha: float
    use_rslora: bool

    @property
    def scaling(self) -> float:
        return _scaling(self.alpha, self.r, self.use_rslora)


def read_adapter(model: nn.Module, adapter_dir: str | Path) -> tuple[dict, list[AdapterModule]]:
    """Read a PEFT LoRA folder and check it against ``model`` without changing the model:
    (adapter_config, modules sorted by path). Raises UserError naming the file and the problem."""
    adapter_dir = Path(adapter_dir)
    config, weights = _read_config(adapter_dir), _read_weights(adapter_dir)
    file, rslora, plan = adapter_dir / WEIGHTS_NAME, bool(config.get("use_rslora", False)), []
    bases = {path: _linear_for_key(model, path, file) for path in sorted(weights)}
    _check_targets(model, config, sorted(weights), adapter_dir)
    for path, base in bases.items():
        r = _check_shapes(file, path, weights[path], config, base.in_features, base.out_features)
        plan.append(AdapterModule(path, base, weights[path]["lora_A"], weights[path]["lora_B"], r,
                                  module_rank_alpha(config, path)[1], rslora))
    return config, plan


# ----------------------------------------------------------------------------------------------
# Mixing and exporting


def mix_adapters(adapters: list[tuple[str | Path, float]], out_dir: str | Path, *,
                 keep_other_files: bool = True) -> Path:
    """Weighted sum of LoRA adapters as one exact adapter, by concatenation; no model is loaded.

    For every module in any adapter, with sᵢ adapter i's own scaling (α/r or α/√r):

        A' = rows[w₁·s₁·A₁; w₂·s₂·A₂; ...]   (Σrᵢ, in)
        B' = cols[B₁, B₂, ...]                (out, Σrᵢ)    so B'A' = Σ wᵢ·sᵢ·Bᵢ·Aᵢ

    written with lora_alpha = r' = Σrᵢ and use_rslora false: its scaling is 1 and ΔW is exact.
    Adapter i contributes rᵢ = its largest rank to every module (zero blocks where it has no or a
    smaller adapter), so r' is the same everywhere and no rank_pattern is needed (vLLM ignores
    it). r' must fit vLLM's --max-lora-rank. This is PEFT's ``add_weighted_adapter(..., "cat")``
    except that PEFT copies use_rslora from the first adapter, so its rsLoRA mixes get scaling
    √r' instead of 1 — wrong.

    An existing ``out_dir`` gets the two adapter files replaced and keeps its other files
    (``keep_other_files``; False replaces the folder whole).
    """
    if not adapters:
        raise UserError("mix_adapters: no adapters given")
    loaded = []  # (dir, weight, config, {module: {"lora_A", "lora_B"}})
    for adapter_dir, weight in adapters:
        d = Path(adapter_dir)
        config, weights = _read_config(d), _read_weights(d)
        _check_own_selection(d, config, weights)
        loaded.append((d, float(weight), config, weights))
    bases = {str(d): base_model_field(c.get("base_model_name_or_path")) for d, _, c, _ in loaded}
    if len(set(bases.values())) > 1:
        raise UserError(f"mix_adapters: adapters are for different base models: {bases}")
    shapes = _module_shapes(loaded)  # module -> (out, in)
    ranks = [max(pair["lora_A"].shape[0] for pair in w.values()) for _, _, _, w in loaded]
    tensors = {}
    for module, shape in sorted(shapes.items()):
        A, B = _mix_module(module, shape, loaded, ranks)  # (r', in), (out, r')
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = A
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = B
    r_mix = sum(ranks)
    config = _peft_config(
        r=r_mix,
        alpha=r_mix,
        dropout=max(float(c.get("lora_dropout", 0.0)) for _, _, c, _ in loaded),
        target_modules=_union_target_modules([c for _, _, c, _ in loaded], shapes),
        use_rslora=False,
        base_model=next(iter(bases.values())),
        task_type=loaded[0][2].get("task_type") or "CAUSAL_LM",
    )
    return _write_adapter(out_dir, config, tensors, (lambda name: True) if keep_other_files else None)


def _check_own_selection(adapter_dir: Path, config: dict, weights: dict) -> None:
    """Without a model at hand: every module with weights must be one its config selects."""
    for module in sorted(weights):
        why = left_out_by(config, module, None)
        if why is not None:
            raise UserError(f"{adapter_dir / WEIGHTS_NAME}: {module} has LoRA weights but {why}; PEFT would "
                            f"ignore these weights and vLLM apply them (fix {CONFIG_NAME} or drop the weights)")


def _mix_module(
    module: str, shape: tuple[int, int], loaded: list, ranks: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's A' = rows[wᵢ·sᵢ·Aᵢ] (Σrᵢ, in) and B' = cols[Bᵢ] (out, Σrᵢ), zero-padded."""
    out_f, in_f = shape
    blocks_A, blocks_B = [], []
    for (_, weight, config, weights), r_i in zip(loaded, ranks):
        A = torch.zeros(r_i, in_f)  # (r_i, in); stays zero where adapter i lacks the module
        B = torch.zeros(out_f, r_i)  # (out, r_i)
        if module in weights:
            r = weights[module]["lora_A"].shape[0]  # <= r_i
            s = _scaling(module_rank_alpha(config, module)[1], r, bool(config.get("use_rslora")))
            A[:r] = weight * s * weights[module]["lora_A"].float()
            B[:, :r] = weights[module]["lora_B"].float()
        blocks_A.append(A)
        blocks_B.append(B)
    return torch.cat(blocks_A, dim=0).contiguous(), torch.cat(blocks_B, dim=1).contiguous()


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
                merged = module.weight.float() + module.delta_weight()  # (out, in)
                state[f"{path}.weight"] = merged.to(module.weight.dtype).cpu()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)

    keep = (lambda name: _HF_WEIGHT_FILE.fullmatch(name) is None) if keep_other_files else None
    return write_dir_atomic(out_dir, write, keep)
