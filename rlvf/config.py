"""Typed experiment configs: one YAML file per experiment ⇄ nested dataclasses.

Every field has a docstring (printed by ``python -m rlvf.train --help-config``). Loading checks
everything before any work starts and reports the first problem as one line naming the file and key:

    configs/demo.yaml: train.lrr: unknown key (did you mean 'train.lr'?)

Command-line overrides (``--set train.lr=1e-4``, values parsed as YAML) are applied to the raw YAML
before validation. A ``sweep`` section expands one file into several runs, each in its own
directory under ``output_dir`` named by what it changed (see ``expand_sweep``).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rlvf.errors import UserError
from rlvf.methods import KD_KEYS, METHODS, PER_METHOD_KEYS

class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-5`` as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?=\.?[0-9])(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _construct_mapping(loader, node, deep=False):
    """A mapping whose keys are unique: YAML would silently keep the last of two equal keys. (Keys
    merged in with ``<<: *anchor`` may still be overridden, as YAML intends.)"""
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen[key]})", key_node.start_mark)
        except TypeError:  # an unhashable key: SafeLoader reports it itself
            break
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


@dataclass
class ModelConfig:
    path: str = REQUIRED
    """Local Hugging Face model directory (config.json, safetensors weights, tokenizer with a chat template)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype of the frozen base model. auto: bfloat16 on CUDA, float32 on CPU (bf16 matmul is slow on CPUs)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to from_pretrained."""
    gradient_checkpointing: bool = True
    """Recompute decoder activations in backward: less memory, about a third more compute (the original's gradient_checkpointing: true; off pays for small models on CPUs)."""


@dataclass
class LoRAConfig:
    r: int = 64
    """LoRA rank."""
    alpha: float = 128.0
    """LoRA alpha; the update is scaled by alpha/r (or alpha/sqrt(r) with use_rslora)."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: Union[str, list[str]] = "all-linear"
    """'all-linear' (every nn.Linear but the output head), a list of module names (suffix match, as PEFT), or a regex (full match on the module path)."""
    exclude_modules: Union[str, list[str]] = field(default_factory=lambda: ["lm_head"])
    """Modules never wrapped, same syntax as target_modules."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)."""
    init_from: Union[str, None] = None
    """Continue from this PEFT-format adapter directory (e.g. DPO after SCD); r/alpha then come from it."""


@dataclass
class DataConfig:
    dirs: list[str] = REQUIRED
    """Data directories (one per feedback) with {in_scope,near_scope,out_of_scope}_{train,test}.jsonl; two or more train on several feedbacks at once."""
    max_length: int = 2048
    """Longest prompt + completion in tokens; longer rows are truncated prompt-first."""
    max_prompt_length: int = 1024
    """Prompts of over-long rows are cut (from the left) to this many tokens before completions are cut."""
    val_fraction: float = 0.05
    """Fraction of the training rows held out for validation (0 disables validation)."""


@dataclass
class MethodConfig:
    """The objective. Defaults reproduce the original code's config_lcdpo.json (C3PO); a setting the
    chosen method does not read must be left at its default (rlvf/methods.py lists what each reads)."""

    name: Literal["c3po", "dpo", "scd", "scd_neg", "sft"] = "c3po"
    """c3po: DPO(in) + λ_out·L_c(out) + λ_near·L_c(near) (config_lcdpo.json); dpo: DPO on in-scope pairs, near/out rows as reversed pairs at negatives_*_ratio (config_dpo.json); scd: NLL of revised in-scope responses (config_sft.json); scd_neg: scd + λ-weighted NLL of near/out baselines (config_sft_weighted.json); sft: NLL of revised in-scope responses and of near/out baselines as extra rows (config_sft_neg.json)."""
    beta: float = 0.1
    """DPO temperature β (dpo_beta)."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """Preference loss: DPO (sigmoid), IPO (on per-token mean log-probs, as TRL ≥ 0.7.11) or hinge (SLiC)."""
    label_smoothing: float = 0.0
    """Conservative DPO label smoothing ε (sigmoid loss only)."""
    reference: Literal["base", "init_adapter"] = "base"
    """Reference policy of the DPO term: base (the base model, adapters off, as the original also does when continuing from an adapter) or init_adapter (base + the lora.init_from adapter, dropout off)."""
    lambda_out: Union[float, None] = None
    """Weight λ_out of the out-of-scope constraint (lcdpo_sigma_soft). Unset: c3po 0.2, scd_neg 0.5."""
    lambda_near: Union[float, None] = None
    """Weight λ_near of the near-scope constraint (lcdpo_sigma_hard). Unset: c3po 0.1, scd_neg 0.5."""
    constraint: Literal["sft", "kd"] = "sft"
    """c3po's constraint L_c on near/out baselines: sft (their NLL) or kd ((1−κ)·NLL + κ·T²·KL(π_ref‖π), the original's KD; π_ref is the base model)."""
    nll_reduction: Literal["token_mean", "sequence_sum"] = "token_mean"
    """How each row's NLL is reduced over its completion tokens before the mean over rows: token_mean (Hugging Face's causal-LM loss of the row, as the original) or sequence_sum (−log π(y|x) of the whole response)."""
    kl_reduction: Literal["token_mean", "sequence_sum"] = "sequence_sum"
    """How each row's KL is reduced over its tokens (constraint: kd): sequence_sum (the original's default) or token_mean (lcdpo_avg_kl)."""
    kd_kappa: float = 1.0
    """KD mixing weight κ (lcdpo_lambda; constraint: kd). 1 reproduces config_lcdpo_kl.json."""
    kd_temperature: float = 1.0
    """KD temperature T (lcdpo_temp; constraint: kd)."""
    constraint_squared: bool = False
    """Use ½·L_c² per row instead of L_c (the original's use_l2; c3po)."""
    negatives_near_ratio: Union[float, None] = None
    """dpo, sft: near-scope rows added per in-scope row, as reversed pairs (dpo) or baseline rows (sft) (negative_prompt_ratio). Unset: dpo 0, sft 0.5."""
    negatives_out_ratio: Union[float, None] = None
    """dpo, sft: out-of-scope rows added per in-scope row, as negatives_near_ratio (general_prompt_ratio). Unset: dpo 0, sft 0.5."""


# Keys that earlier versions read, with what replaced them.
_REPLACED = {
    "method.kd_per_token": "replaced by method.nll_reduction and method.kl_reduction (token_mean | sequence_sum)",
    "method.kd_squared": "renamed method.constraint_squared",
}


@dataclass
class TrainConfig:
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    epochs: float = 1.0
    """Passes over the main stream (in-scope pairs or rows); fractions allowed."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: derived from epochs)."""
    batch_size: int = 1
    """Main-stream items per micro-batch (c3po also takes as many near and out rows); the loss does not depend on it, only memory and speed do."""
    grad_accum: int = 16
    """Micro-batches per optimizer step (the original's gradient_accumulation_steps: 16 at batch_size 1)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = 0.05
    """Fraction of optimizer steps with linear warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the adapter gradients' global norm to this (0 disables)."""
    seed: int = 42
    """Seed of adapter init, data order, validation split and dropout."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk of the fused lm-head log-prob; bounds logits memory to chunk × vocab."""
    eval_every: int = 0
    """Validate every N optimizer steps (0: only at the end)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only at the end)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    stop_at_step: int = 0
    """Checkpoint and exit after this optimizer step, as if interrupted (time-boxed jobs); continue with --resume."""
    log_every: int = 1
    """Write metrics every N optimizer steps."""
    report_to: Literal["none", "wandb", "tensorboard"] = "none"
    """Also report metrics to Weights & Biases or TensorBoard (must be installed)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    progress: bool = True
    """Show a progress bar on stderr."""


@dataclass
class SweepConfig:
    params: list[str] = field(default_factory=list)
    """Dotted keys to sweep together, e.g. [train.lr, lora.r] (the original code's sweep_params)."""
    values: list[list[Any]] = field(default_factory=list)
    """One tuple of values per run, aligned with params (the original code's sweep_values)."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Cartesian grid {dotted key: [values]}; combined with params/values if both are given."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model being trained."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    output_dir: str = REQUIRED
    """Run directory: resolved config, metrics.jsonl, checkpoints/, adapter/ (relative paths are relative to the working directory)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The adapter."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Objective and its weights."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and bookkeeping."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Optional sweep over config values."""


# ----------------------------------------------------------------------------- type checking


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return "a list" if origin is list else "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str, where: str):
    """Check ``value`` against annotation ``tp``; return it (ints widened to float). Raises UserError."""
    origin = typing.get_origin(tp)
    bad = UserError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key, where)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        structured = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(structured) == 1:  # a section: report its own first problem
            return _coerce(value, structured[0], key, where)
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, where)
            except UserError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _shallow(obj) -> dict:
    """A dataclass instance's fields as a dict, nested dataclasses kept as dicts."""
    return {f.name: (dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v)
            for f in dataclasses.fields(obj)}


def _unknown_key(cls, key: str, name: str, where: str) -> UserError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
    return UserError(f"{where}: {key}: unknown key{hint}")


# Keys that would hold a credential; a config names the environment variable instead (api_key_env).
SECRET_KEYS = frozenset({"api_key", "apikey", "api_token", "token", "access_token", "auth_token", "secret",
                         "secret_key", "password", "authorization", "bearer", "openai_api_key"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _secret_key(cls, key: str, where: str) -> UserError:
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    names = {f.name for f in dataclasses.fields(cls)}
    target = f"{prefix}api_key_env" if "api_key_env" in names else "the endpoint's api_key_env"
    return UserError(f"{where}: {key}: credentials are never written in config files (they would be copied into "
                     f"saved configs and logs); export the key in an environment variable and name that variable "
                     f"in {target}, e.g. api_key_env: OPENAI_API_KEY")


def _check_special(name: str, value, key: str, where: str) -> None:
    """Fields whose values must not carry a credential."""
    if name == "api_key_env" and isinstance(value, str) and not _ENV_NAME.fullmatch(value):
        raise UserError(f"{where}: {key}: must be the NAME of an environment variable (letters, digits and _, "
                        "e.g. OPENAI_API_KEY), not the key itself; export the key in that variable")
    if name == "base_url" and isinstance(value, str) and "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        raise UserError(f"{where}: {key}: holds credentials (user:password@); remove them from the URL and "
                        "put the key in the environment variable named by api_key_env")


def _build(cls, raw: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in names:
            full = f"{prefix}.{name}" if prefix else str(name)
            if str(name).lower().replace("-", "_") in SECRET_KEYS:
                raise _secret_key(cls, full, where)
            if full in _REPLACED:
                raise UserError(f"{where}: {full}: {_REPLACED[full]}")
            raise _unknown_key(cls, full, str(name), where)
        _check_special(name, raw[name], f"{prefix}.{name}" if prefix else name, where)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            # a section given in part keeps the defaults of the keys it leaves out (and a missing
            # section still has its required keys checked)
            given = raw.get(f.name, {})
            if not isinstance(given, dict):
                raise UserError(f"{where}: {key}: expected a mapping of {tp.__name__} fields, got {given!r}")
            defaults = {k: v for k, v in _shallow(f.default_factory()).items() if v is not REQUIRED}
            kwargs[f.name] = _build(tp, {**defaults, **given}, key, where)
        elif f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], tp, key, where)
        elif f.default is REQUIRED:
            raise UserError(f"{where}: {key}: missing required value ({field_doc(cls, f.name)})")
    return cls(**kwargs)


# ----------------------------------------------------------------------------- validation


def _check(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise UserError(f"{where}: {key}: {msg}")


def validate(cfg: Config, where: str) -> Config:
    """Value ranges and impossible combinations; raises UserError naming the file and key."""
    m, t, d, lo = cfg.method, cfg.train, cfg.data, cfg.lora
    _check(lo.r > 0, where, "lora.r", f"must be positive, got {lo.r}")
    _check(lo.alpha > 0, where, "lora.alpha", f"must be positive, got {lo.alpha}")
    _check(0 <= lo.dropout < 1, where, "lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    _check(len(d.dirs) > 0, where, "data.dirs", "needs at least one data directory")
    for i, data_dir in enumerate(d.dirs):  # the stages read and write these as directories
        _check(not Path(data_dir).exists() or Path(data_dir).is_dir(), where, f"data.dirs[{i}]",
               f"{data_dir} exists and is not a directory")
    _check(not Path(cfg.output_dir).exists() or Path(cfg.output_dir).is_dir(), where, "output_dir",
           f"{cfg.output_dir} exists and is not a directory")
    _check(d.max_length > 0, where, "data.max_length", f"must be positive, got {d.max_length}")
    _check(0 < d.max_prompt_length <= d.max_length, where, "data.max_prompt_length",
           f"must be in [1, data.max_length={d.max_length}], got {d.max_prompt_length}")
    _check(0 <= d.val_fraction < 1, where, "data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
    _check_method(m, lo, where)
    _check(t.lr > 0, where, "train.lr", f"must be positive, got {t.lr}")
    _check(t.epochs > 0, where, "train.epochs", f"must be positive, got {t.epochs}")
    for key in ("batch_size", "grad_accum", "logprob_chunk_size", "log_every", "save_total_limit"):
        _check(getattr(t, key) >= 1, where, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    for key in ("max_steps", "eval_every", "save_every", "stop_at_step"):
        _check(getattr(t, key) >= 0, where, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    _check(0 <= t.warmup_ratio < 1, where, "train.warmup_ratio", "must be in [0, 1)")
    _check(t.weight_decay >= 0 and t.max_grad_norm >= 0, where, "train.weight_decay",
           "weight_decay and max_grad_norm must be >= 0")
    _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), where,
           "train.adam_betas", f"must be two numbers in [0, 1), got {t.adam_betas}")
    return cfg


def _check_method(m: MethodConfig, lo: LoRAConfig, where: str) -> None:
    """Method ranges, settings the method would ignore, and the per-method defaults filled in."""
    spec = METHODS[m.name]
    _check(m.beta > 0, where, "method.beta", f"must be positive, got {m.beta}")
    _check(0 <= m.label_smoothing < 0.5, where, "method.label_smoothing", "must be in [0, 0.5)")
    _check(m.label_smoothing == 0 or m.loss_type == "sigmoid", where, "method.label_smoothing",
           f"only applies to loss_type sigmoid, not {m.loss_type}")
    for key in PER_METHOD_KEYS:
        value = getattr(m, key)
        _check(value is None or value >= 0, where, f"method.{key}", f"must be >= 0, got {value}")
    _check(0 <= m.kd_kappa <= 1, where, "method.kd_kappa", f"must be in [0, 1], got {m.kd_kappa}")
    _check(m.kd_temperature > 0, where, "method.kd_temperature", "must be positive")
    _check(m.constraint == "sft" or spec.kd, where, "method.constraint",
           f"'kd' needs the reference model and applies to method c3po only, not {m.name}")
    _check(m.reference == "base" or lo.init_from, where, "method.reference",
           "'init_adapter' needs lora.init_from (the adapter training continues from)")
    _check(not (m.constraint == "kd" and m.reference == "init_adapter"), where, "method.reference",
           "'init_adapter' with constraint 'kd' would mix two references (the KL's is the base model)")
    reads, default = spec.reads(m.constraint), MethodConfig()
    for f in dataclasses.fields(MethodConfig):
        value = getattr(m, f.name)
        if f.name not in reads and value is not None and value != getattr(default, f.name):
            used = "with constraint 'sft'" if f.name in KD_KEYS and spec.kd else f"by method {m.name}"
            raise UserError(f"{where}: method.{f.name}: {value!r} is not used {used}; remove it "
                            f"(rlvf/methods.py lists what each method reads)")
    unset = {key for key in PER_METHOD_KEYS if getattr(m, key) is None and key in spec.defaults}
    for key in unset:  # the saved config shows the values that trained
        setattr(m, key, spec.defaults[key])
    m.__dict__["_unset"] = unset  # not a field: sweeps re-resolve these per point (expand_sweep)


# ----------------------------------------------------------------------------- loading


def _set_dotted(raw: dict, key: str, value, where: str, root=None) -> None:
    """Set ``raw[a][b][c] = value`` for key 'a.b.c', checking each part names a config field."""
    cls, node, parts = root or Config, raw, key.split(".")
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names and part.lower().replace("-", "_") in SECRET_KEYS:
            raise _secret_key(cls, ".".join(parts[: i + 1]), where)
        if part not in names and ".".join(parts[: i + 1]) in _REPLACED:
            raise UserError(f"{where}: {key}: {_REPLACED[key]}")
        if part not in names:
            raise _unknown_key(cls, ".".join(parts[: i + 1]), part, where)
        tp = typing.get_type_hints(cls)[part]
        if typing.get_origin(tp) in (Union, types.UnionType):  # an optional section: its dataclass
            tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if i == len(parts) - 1:
            node[part] = value
        elif not dataclasses.is_dataclass(tp):
            raise UserError(f"{where}: {key}: '{'.'.join(parts[:i + 1])}' has no sub-keys")
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, cls = node[part], tp


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-4' → ('train.lr', 0.0001); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    try:
        return key.strip(), yaml_load(value)
    except yaml.YAMLError as err:
        raise UserError(f"--set {text}: value is not valid YAML ({err.problem})") from None


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML file holding a mapping (YAML 1.2 floats); every problem is a one-line UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read {what} file ({err})") from None
    try:
        raw = yaml_load(text)
        size = _expanded_size(raw, MAX_YAML_NODES)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{line}: {getattr(err, 'problem', err)}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if size > MAX_YAML_NODES:
        raise UserError(f"{path}: more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded; "
                        f"a {what} file is small (is this an alias bomb?)")
    if raw is None:
        raise UserError(f"{path}: {what} file is empty")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


MAX_YAML_NODES = 100_000  # values in a config or feedback file, aliases expanded (a real one has hundreds)


def _expanded_size(value, budget: int) -> int:
    """Number of values in ``value`` counting every alias use separately, stopping past ``budget``:
    YAML aliases share objects, so a few lines can stand for billions of values that a deep copy
    (dataclasses.asdict, yaml.safe_dump) would then build."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def config_from_dict(raw: dict, where: str, cls=None) -> Config:
    cfg = _build(cls or Config, raw, "", where)
    validate(cfg, where)
    if hasattr(cfg, "validate_more"):  # subclasses add sections with checks of their own
        cfg.validate_more(where)
    return cfg


def load_config(path: str | Path, overrides: list[str] = (), cls=None) -> Config:
    """Read, override, type-check and validate a YAML config (``cls``: Config or a subclass
    adding sections, such as rlvf.pipeline_config.PipelineConfig). Raises UserError."""
    raw = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, f"--set {text}", cls)
    cfg = config_from_dict(raw, str(path), cls)
    expand_sweep(cfg, str(path))  # checks every sweep point up front
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, sections: tuple[str, ...] | None = None) -> None:
    """Write the resolved config (all defaults filled in, no sweep section) as YAML; ``sections``
    keeps only those top-level keys."""
    data = to_dict(cfg)
    data.pop("sweep", None)
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ----------------------------------------------------------------------------- sweeps


def _format_value(v) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text)


def expand_sweep(cfg: Config, where: str) -> list[tuple[str, Config]]:
    """[(run name, config)]: one entry named '' without a sweep, else one per sweep point.

    Points are the params/values tuples (zipped) crossed with the grid's cartesian product. Each
    run's output_dir is ``<output_dir>/<key>=<value>,...`` naming only what the point changed.
    """
    sw = cfg.sweep
    if len(sw.params) != 0 or len(sw.values) != 0:
        _check(len(sw.params) > 0 and len(sw.values) > 0, where, "sweep.values",
               "sweep.params and sweep.values must be given together")
        for i, tup in enumerate(sw.values):
            _check(len(tup) == len(sw.params), where, f"sweep.values[{i}]",
                   f"has {len(tup)} values for {len(sw.params)} params")
    tuples = [list(zip(sw.params, tup)) for tup in sw.values] or [[]]
    grid = [list(zip(sw.grid, combo)) for combo in itertools.product(*sw.grid.values())]
    points = [t + g for t in tuples for g in grid]
    if points == [[]]:
        return [("", cfg)]
    base = to_dict(cfg)
    base.pop("sweep")
    for key in getattr(cfg.method, "_unset", ()):  # per-method defaults follow each point's method.name
        base["method"][key] = None
    runs = []
    for point in points:
        raw = copy.deepcopy(base)
        for key, value in point:
            _set_dotted(raw, key, value, f"{where}: sweep", type(cfg))
        name = ",".join(f"{k}={_format_value(v)}" for k, v in point)
        run = config_from_dict(raw, f"{where} (sweep point {name})", type(cfg))
        run.output_dir = str(Path(cfg.output_dir) / name)
        runs.append((name, run))
    names = [n for n, _ in runs]
    _check(len(set(names)) == len(names), where, "sweep", "two sweep points have the same name")
    return runs


# ----------------------------------------------------------------------------- docs


def field_doc(cls, name: str) -> str:
    """The docstring written under field ``name`` of dataclass ``cls``."""
    return _field_docs(cls).get(name, "")


def _field_docs(cls) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cls=Config, prefix: str = "") -> str:
    """Every config key with its default and docstring, for --help-config."""
    lines, docs = [], _field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            lines += [f"{key}:  {docs.get(f.name, '')}", describe(tp, key + ".")]
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {key} = {default!r}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)
