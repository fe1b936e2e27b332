"""adapter_config.json as PEFT 0.21 reads it: checked, and which modules it wraps with which r and α.

PEFT decides from the config alone which layers of the base model it wraps
(``peft.tuners.tuners_utils.check_target_module_exists``), before it looks at the weights:

- ``exclude_modules`` first: a regex string (re.fullmatch on the module path) or a list of names
  (the path equals one, or ends in "." + one) — excluded modules are never wrapped;
- ``target_modules``: "all-linear" (any case; every nn.Linear and Conv1D but the output embedding), a regex
  string (re.fullmatch), or a list of names matched like exclude_modules;
- ``layers_to_transform`` (an int or a list of ints; only with a list target_modules, and only for
  entries that matched as a suffix, not as a full path): the module's layer index — the first
  ``<segment>.<digits>.`` in its path, or the first ``<layers_pattern>.<digits>.`` — must be listed;
- ``rank_pattern`` / ``alpha_pattern``: the first key k with re.match(rf"(.*\\.)?({k})$", path)
  gives that module's r / α (``peft.utils.other.get_pattern_key``); ``use_rslora``: s = α/√r;
- ``target_parameters`` (a list): parameters whose path ``<module>.<parameter>`` equals an entry or
  ends in "." + entry get a LoRA on the bare parameter (expert stacks, routers; see
  rlvf/peft_format.py for their keys); exclude_modules and layers_to_transform do not apply to them.

Weights for a module the config does not select are ignored by PEFT (with only a warning) but
applied by loaders that go by the weights alone (vLLM), so rlvf refuses them. Fields whose value
changes the model in ways this plain LoRA cannot reproduce (DoRA, biases,
modules_to_save, layer replication, LoRA variants, initialisations that rewrite the base weights
on load, …) are refused in one line. ``fan_in_fan_out`` is honoured as PEFT does: it follows the
layer (False for nn.Linear, True for GPT-2's Conv1D, whatever the file says; the weights' shapes are
the same). Unknown keys are ignored, as PEFT drops them.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from rlvf.errors import UserError

CONFIG_NAME = "adapter_config.json"
ALL_LINEAR = "all-linear"

# init_lora_weights values whose effect is only the initial A/B, which the saved weights replace.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# init_lora_weights values that make PEFT rewrite the base layer's weight when it loads the adapter
# (unless the adapter was converted with path_initial_model_for_weight_conversion).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
# Fields whose set value turns the adapter into something other than plain LoRA.
_UNSUPPORTED_IF_SET = {
    "use_dora": "DoRA adds a magnitude vector",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "full copies of whole modules",
    "layer_replication": "repeated base layers",
    "trainable_token_indices": "trained embedding rows",
    "alora_invocation_tokens": "Activated LoRA, applied only after its invocation tokens",
    "use_qalora": "QALoRA, for GPTQ-quantized models",
    "megatron_config": "Megatron parallel layers",
    "velora_config": "the VeLoRA variant",
    "kasa_config": "the KaSA variant",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routing",
    "monteclora_config": "the MonteCLoRA variant",
}


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(path: Path, key: str, value, why: str):
    return UserError(f"{path}: {key} = {_short(value)} is not supported ({why}); rlvf loads plain LoRA "
                     "on linear layers, expert stacks and routers")


def read_config(adapter_dir: Path) -> dict:
    """adapter_config.json of ``adapter_dir``, checked for what rlvf's LoRA can reproduce."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{path}: not found; a PEFT LoRA adapter folder holds {CONFIG_NAME} and "
                        "adapter_model.safetensors")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise _refuse(path, "peft_type", config.get("peft_type"), 'only peft_type "LORA"')
    if config.get("bias", "none") != "none":
        raise _refuse(path, "bias", config.get("bias"), "trained base-layer biases")
    for key, why in _UNSUPPORTED_IF_SET.items():
        if config.get(key):
            raise _refuse(path, key, config[key], why)
    _check_init(config, path)
    _check_numbers(config, path)
    check_patterns(config, path)
    _check_selection_fields(config, path)
    return config


def _check_init(config: dict, path: Path) -> None:
    init = config.get("init_lora_weights", True)
    name = init.lower() if isinstance(init, str) else init
    if any(name is v or (isinstance(v, str) and name == v) for v in _PLAIN_INITS):
        return
    if isinstance(name, str) and name.startswith(_BASE_REWRITING_INITS):
        raise _refuse(path, "init_lora_weights", init, "PEFT rewrites the base weights when it loads such an "
                      "adapter; convert it with PEFT's save_pretrained(path_initial_model_for_weight_conversion=...)")
    raise _refuse(path, "init_lora_weights", init, "a LoRA variant or an unknown initialisation")


def _check_numbers(config: dict, path: Path) -> None:
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise UserError(f"{path}: {key} must be a positive number, got {value!r}")
    if isinstance(config["r"], float) and not config["r"].is_integer():
        raise UserError(f"{path}: r must be a whole number, got {config['r']!r}")


def check_patterns(config: dict, path: Path) -> None:
    """rank_pattern / alpha_pattern: {regex: positive number}."""
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise UserError(f"{path}: {key} must be a mapping of module regex to number, got {patterns!r}")
        for pattern, value in patterns.items():
            _compile(path, f"{key} key {pattern!r}", pattern)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise UserError(f"{path}: {key}[{pattern!r}] must be a positive number, got {value!r}")


def _compile(path: Path, what: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise UserError(f"{path}: {what} is not a valid regex ({err})") from None


def _names_or_regex(config: dict, key: str, path: Path) -> None:
    value = config.get(key)
    if isinstance(value, str):
        if value.lower() != ALL_LINEAR:
            _compile(path, f"{key} {value!r}", value)
    elif not (isinstance(value, list) and all(isinstance(t, str) and t for t in value)):
        raise UserError(f"{path}: {key} must be a list of module names or a regex string, got {_short(value)}")


def _check_selection_fields(config: dict, path: Path) -> None:
    """target_modules, exclude_modules, layers_to_transform, layers_pattern: types and combinations."""
    params = config.get("target_parameters")
    if params is not None and not (isinstance(params, list) and all(isinstance(t, str) and t for t in params)):
        raise UserError(f"{path}: target_parameters must be a list of parameter names, got {_short(params)}")
    if config.get("target_modules") is None:
        raise UserError(f"{path}: target_modules is missing; PEFT would pick modules by model type — "
                        "list the adapted modules, e.g. [\"q_proj\", \"v_proj\"]")
    _names_or_regex(config, "target_modules", path)
    if config.get("exclude_modules") is not None:
        _names_or_regex(config, "exclude_modules", path)
    layers, pattern = config.get("layers_to_transform"), config.get("layers_pattern")
    ok_index = lambda i: isinstance(i, int) and not isinstance(i, bool) and i >= 0  # noqa: E731
    if not (layers is None or ok_index(layers) or (isinstance(layers, list) and all(map(ok_index, layers)))):
        raise UserError(f"{path}: layers_to_transform must be a layer index or a list of them, got {_short(layers)}")
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if not (pattern is None or (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns))):
        raise UserError(f"{path}: layers_pattern must be a name or a list of names, got {_short(pattern)}")
    for p in patterns or []:
        _compile(path, f"layers_pattern {p!r}", rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.")
    if isinstance(config["target_modules"], str) and (layers is not None or pattern is not None):
        key = "layers_to_transform" if layers is not None else "layers_pattern"
        raise UserError(f"{path}: {key} needs target_modules to be a list of names, not the string "
                        f"{config['target_modules']!r} (PEFT refuses this combination)")
    if pattern and layers is None:
        raise UserError(f"{path}: layers_pattern is set but layers_to_transform is not (PEFT refuses this)")


# ----------------------------------------------------------------------------- which modules, which r and α


def matches(path: str, spec) -> bool:
    """PEFT's name matching: a string is a regex on the full path (re.fullmatch); a list matches a
    path equal to an entry or ending in "." + entry."""
    if not spec:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(path == key or path.endswith("." + key) for key in spec)


def _layer_index(path: str, layers_pattern) -> int | None:
    """The layer index PEFT reads from a module path (the first numbered segment)."""
    if not layers_pattern:  # None, "" or []: any segment
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", path)
    else:
        match = None
        for p in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", path)
            if match is not None:
                break
    return int(match["idx"]) if match else None


def left_out_by(config: dict, path: str, all_linear: set[str] | None) -> str | None:
    """None if PEFT wraps the linear layer at ``path``, else why not (completes "… but <why>").

    ``all_linear``: the model's linear paths minus the output embedding (what "all-linear"
    selects); None when no model is at hand (every path then counts as linear).
    """
    exclude = config.get("exclude_modules")
    if exclude and matches(path, exclude):
        return f"{CONFIG_NAME} exclude_modules {_short(exclude)} excludes it"
    targets = config["target_modules"]
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        if all_linear is None or path in all_linear:
            return None
        return f"it is the output embedding, which {CONFIG_NAME} target_modules 'all-linear' leaves out"
    if isinstance(targets, str):
        return None if matches(path, targets) else f"is not matched by {CONFIG_NAME} target_modules {targets!r}"
    if path in targets:
        return None  # named in full: layers_to_transform does not apply (PEFT)
    if not matches(path, targets):
        return f"is not in {CONFIG_NAME} target_modules {_short(targets)}"
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return None
    index = _layer_index(path, config.get("layers_pattern"))
    if index is not None and index in ([layers] if isinstance(layers, int) else layers):
        return None
    pattern = config.get("layers_pattern")
    where = f"layer {index}" if index is not None else f"no layer index found (layers_pattern {pattern!r})"
    return f"{CONFIG_NAME} layers_to_transform {_short(layers)} leaves it out ({where})"


def pattern_value(patterns: dict | None, path: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key (a regex) matching a dotted suffix
    of ``path`` wins (peft.utils.other.get_pattern_key)."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", path):
            return value
    return default


def module_rank_alpha(config: dict, module: str) -> tuple[int, float]:
    """(r, alpha) that adapter_config.json gives ``module``."""
    r = pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return r, alpha


def random_init_without_weights(config: dict) -> bool:
    """True if PEFT gives a wrapped module that has no saved weights a non-zero random update
    (init_lora_weights False leaves nn.Linear's random B; 'orthogonal' draws B too)."""
    init = config.get("init_lora_weights", True)
    return init is False or (isinstance(init, str) and init.lower() == "orthogonal")
