"""Loading a Hugging Face causal LM and its tokenizer from a local directory or a Hub id, with clear errors."""
from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import torch

from rlvf import cpu_threads
from rlvf import chat_template as chat
from rlvf.errors import UserError
from rlvf.hub_models import HubModel, resolve

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tiktoken.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    """'auto' → CUDA if available else CPU; 'cuda' without a GPU is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 on CUDA, fp32 on CPU (bf16 matmul is very slow on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def check_model_dir(path: str | Path, key: str = "model.path", revision: str | None = None) -> Path:
    """The local directory of a HF model: ``path`` itself, or for a Hub id (owner/name, no such local
    path) its snapshot in the Hugging Face cache at ``revision``. Raises UserError (see ``locate_model``)."""
    return locate_model(path, key, revision)[0]


def locate_model(path: str | Path, key: str = "model.path",
                 revision: str | None = None) -> tuple[Path, HubModel | None]:
    """(local directory, HubModel or None) of a HF model given by local path or Hub id
    (rlvf.hub_models.resolve). The directory must hold config.json and safetensors weights.

    Weights load only from safetensors: a folder holding only pickle checkpoints (*.bin, *.pt, *.pth,
    *.ckpt) is refused, since unpickling them can run arbitrary code.
    """
    path, hub = resolve(path, revision, key)
    shown = hub.describe() if hub else str(path)
    if not path.is_dir():
        raise UserError(f"{key}: {path} is not a directory (a local Hugging Face model directory, or a Hub id "
                        "owner/name, is expected)")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{key}: {shown} has no config.json; not a Hugging Face model "
                        f"{'repository' if hub else 'directory'}")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{config}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{config}: expected a JSON object, got {type(raw).__name__}")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for ext in PICKLE_SUFFIXES for p in path.glob(f"*{ext}"))
        found = f"; found only {', '.join(pickles[:3])} (pickle files are never loaded: convert them " \
                "to safetensors with save_pretrained(..., safe_serialization=True))" if pickles else ""
        raise UserError(f"{key}: {shown} has no *.safetensors weights (rlvf loads weights only from safetensors)"
                        f"{found}")
    return path, hub


def load_tokenizer(path: str | Path, key: str = "model.path", revision: str | None = None,
                   chat_template: str | Path | None = None, chat_template_kwargs: dict | None = None,
                   template_key: str = "model.chat_template", kwargs_key: str = "model.chat_template_kwargs"):
    """The model's tokenizer (``path``: a local directory or a Hub id, see ``check_model_dir``),
    with a pad token and a checked chat template: ``chat_template`` (a Jinja file) replaces the
    tokenizer's, ``chat_template_kwargs`` go to every rendering (rlvf.chat_template.configure; its
    ``chat_format(tokenizer).summary`` is a line for the log)."""
    from transformers import AutoTokenizer

    path, hub = locate_model(path, key, revision)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        hint = "" if hub else "; save it there with tokenizer.save_pretrained"
        raise UserError(f"{key}: {hub.describe() if hub else path} has no tokenizer "
                        f"({' or '.join(TOKENIZER_FILES[:2])} with tokenizer_config.json){hint}")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                raise UserError(f"{file}: not valid JSON ({err})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{key}: cannot load the tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if hub:  # named as from_pretrained(repo_id) names it
        tokenizer.name_or_path = hub.repo_id
    chat.configure(tokenizer, chat_template, chat_template_kwargs, where=f"{key}: {hub.repo_id if hub else path}",
                   template_key=template_key, kwargs_key=kwargs_key)
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere, so EOS is a safe pad
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bar and no load report from transformers while loading: problems are checked
    here and reported as one line instead."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    logger = logging.getLogger("transformers")
    level = logger.level
    hf_logging.disable_progress_bar()
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


def _check_loading_info(info: dict, path: Path, key: str) -> None:
    """Refuse a checkpoint whose tensors do not fill the model: a missing tensor would be left at a
    random initialisation, a wrongly shaped one replaced by one."""
    weights = ", ".join(sorted(p.name for p in path.glob("*.safetensors"))[:2])
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        name, saved, expected = mismatched[0]
        raise UserError(f"{key}: {path / weights}: tensor {name} has shape {tuple(saved)} but config.json needs "
                        f"{tuple(expected)} ({len(mismatched)} mismatched); weights and config.json are from "
                        "different models")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"{key}: {path}: the safetensors weights ({weights}) lack {len(missing)} tensor(s) the "
                        f"model needs, e.g. {missing[0]}; the checkpoint is incomplete or for another model")


def load_model(path: str | Path, dtype: torch.dtype, device: torch.device,
               attn_implementation: str | None = None, key: str = "model.path",
               attn_key: str = "model.attn_implementation", revision: str | None = None):
    """AutoModelForCausalLM from a local directory or a Hub id at ``revision`` (``check_model_dir``),
    frozen, on ``device``.

    Safetensors only; every parameter must come from the checkpoint with the shape config.json
    gives it (transformers would otherwise initialise it at random with a warning).
    ``attn_implementation`` None lets transformers choose (sdpa where the architecture supports it,
    else eager); an explicit choice the architecture or the installation refuses is a UserError
    naming ``attn_key``.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path, hub = locate_model(path, key, revision)
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True,
                **attn,
            )
    except SafetensorError as err:
        raise UserError(f"{key}: {path}: cannot read the safetensors weights ({err}); the file is damaged "
                        "or incomplete") from None
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if attn and re.search(r"attn|attention", first, re.IGNORECASE):
            raise UserError(f"{attn_key}: {attn_implementation!r} cannot be used with the model in {path} "
                            f"({first}); leave {attn_key} unset to let transformers choose, or set it "
                            "to 'eager'") from None
        if isinstance(err, ImportError):
            raise
        raise UserError(f"{key}: cannot load the model from {path}: {first}") from None
    _check_loading_info(info, path, key)
    if hub:  # named as from_pretrained(repo_id) names it: save_adapter records it as the base model
        model.config.name_or_path = model.name_or_path = hub.repo_id
    model.config.use_cache = False
    model.requires_grad_(False)
    cpu_threads.apply(model, device)  # one intra-op thread for a small model on the CPU (rlvf/cpu_threads.py)
    model = model.to(device)
    _check_finite(model, path, key)
    return model


def model_skeleton(path: str | Path | None, revision: str | None = None, needed_by: str | Path = "") -> torch.nn.Module:
    """The modules of a HF model, with parameters on the meta device (shapes only, no weights read):
    from config.json of a local directory or a Hub id at ``revision`` (``locate_model``). For code that
    needs a model's structure but not its weights (mixing expert adapters). ``needed_by`` names the
    file that asked, for the error when no base model is recorded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not path:
        raise UserError(f"{needed_by}: records no base_model_name_or_path, which is needed to read its "
                        "target_parameters (the model's modules name them)")
    local, _ = locate_model(path, "base_model_name_or_path", revision)
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(local)
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"base_model_name_or_path: cannot build the model of {path} from its config.json: {first}") from None


def _check_finite(model: torch.nn.Module, path: Path, key: str) -> None:
    """Refuse NaN or infinite weights at load: training on them would fail at its first step and
    blame the learning rate, sampling would answer garbage. One pass over the weights (on ``device``)."""
    for name, param in model.named_parameters():
        finite = torch.isfinite(param)
        if not bool(finite.all()):
            bad = param.numel() - int(finite.sum())
            why = ("the checkpoint is damaged, or holds values beyond float16's range (load it as bfloat16 or "
                   "float32)" if param.dtype == torch.float16 else "the checkpoint is damaged; re-download or "
                   "re-export it")
            raise UserError(f"{key}: {path}: tensor {name} holds NaN or infinite values ({bad:,} of "
                            f"{param.numel():,} as {str(param.dtype).removeprefix('torch.')}); {why}")


# --------------------------------------------------------------------------- the load-time log-prob check

PROBE_SHAPE = (2, 12)  # rows × tokens of the synthetic probe: enough for a fit over 22 × V logits
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}  # else (bf16, fp16): HALF_TOLERANCE
# bf16 rounds a logit of size 30 to ±0.06; a different matmul order for the full-logits forward and
# the fused head may round a few logits the other way. A wrong multiplier or a missing term is O(1).
HALF_TOLERANCE = 2e-2


def probe_rows(model: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Short synthetic rows drawn from the model's vocabulary, the second one right-padded:
    input_ids, attention_mask (2, 12) on the model's device."""
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None) or model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, PROBE_SHAPE, generator=g)  # (2, 12)
    attention_mask = torch.ones(PROBE_SHAPE, dtype=torch.long)
    attention_mask[1, -3:] = 0
    device = embeddings.weight.device
    return input_ids.to(device), attention_mask.to(device)


def architecture(model: torch.nn.Module) -> str:
    """'GraniteForCausalLM (model_type granite)'."""
    return f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')})"


def check_logprobs(model: torch.nn.Module, key: str = "model.path") -> str:
    """The load-time check that training never uses silently wrong log-probs.

    On ``probe_rows`` it measures the model's logit multiplier (rlvf.logprobs.probe_head, which
    stores it on the model for every later log-prob call) and compares rlvf's fused/chunked
    log-probs with log_softmax(model(...).logits), the model's own output, with the adapters on
    and, when the model holds LoRA adapters, off. Call it after the adapters are in place and
    before anything is written. Raises UserError naming the architecture and the size of the
    error; returns a one-line summary for the log.
    """
    from rlvf.logprobs import probe_head
    from rlvf.lora import disable_adapters, lora_modules

    input_ids, attention_mask = probe_rows(model)
    dtype = next(model.parameters()).dtype
    tolerance = PROBE_TOLERANCE.get(dtype, HALF_TOLERANCE)
    training = model.training
    model.eval()
    try:
        probes = {"": probe_head(model, input_ids, attention_mask)}
        if lora_modules(model):
            probes = {" with the adapters on": probes[""]}
            with disable_adapters(model):
                probes[" with the adapters off"] = probe_head(model, input_ids, attention_mask, fit_scale=False)
    finally:
        model.train(training)
    probe = probes[next(iter(probes))]
    scale = "" if probe.scale == 1 else f" × {probe.scale:.6g}" + (f" (= {probe.source})" if probe.source else "")
    cap = f", softcap {probe.softcap:g}" if probe.softcap else ""
    name = getattr(model.config, "_name_or_path", "")
    for where, p in probes.items():
        if not p.error <= tolerance:  # also NaN
            raise UserError(
                f"{key}: {name + ': ' if name else ''}rlvf cannot reproduce the log-probs of {architecture(model)}: its fused log-probs differ "
                f"from log_softmax(model(...).logits) by {p.error:.3g} (relative; tolerance {tolerance:g}){where}, "
                f"with logits{scale or ' × 1'}{cap} measured from the model's output; this architecture computes "
                "its logits in a way rlvf's lm-head path does not (please report it)"
            )
    worst = max(p.error for p in probes.values())
    return (f"log-prob check: {architecture(model)} logits{scale or ' × 1'}{cap}; rlvf's log-probs match "
            f"log_softmax(model logits) to {worst:.2g} (relative){'' if len(probes) == 1 else ', adapters on and off'}")
