"""Loading a Hugging Face causal LM and its tokenizer from a local directory, with clear errors."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from rlvf.data import check_chat_template
from rlvf.errors import UserError

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


def check_model_dir(path: str | Path, key: str = "model.path") -> Path:
    """A local HF model directory: config.json and safetensors weights. Raises UserError.

    Weights load only from safetensors: a folder holding only pickle checkpoints (*.bin, *.pt, *.pth,
    *.ckpt) is refused, since unpickling them can run arbitrary code.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{key}: {path} is not a directory (a local Hugging Face model directory is expected)")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{key}: {path} has no config.json; not a Hugging Face model directory")
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
        raise UserError(f"{key}: {path} has no *.safetensors weights (rlvf loads weights only from safetensors){found}")
    return path


def load_tokenizer(path: str | Path, key: str = "model.path"):
    from transformers import AutoTokenizer

    path = check_model_dir(path, key)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{key}: {path} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])} with tokenizer_config.json); "
                        "save it there with tokenizer.save_pretrained")
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
    check_chat_template(tokenizer, f"{key}: {path}")
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
               attn_implementation: str = "sdpa", key: str = "model.path"):
    """AutoModelForCausalLM from a local directory, frozen, on ``device``.

    Safetensors only; every parameter must come from the checkpoint with the shape config.json
    gives it (transformers would otherwise initialise it at random with a warning).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, key)
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
                output_loading_info=True, ignore_mismatched_sizes=True,
            )
    except SafetensorError as err:
        raise UserError(f"{key}: {path}: cannot read the safetensors weights ({err}); the file is damaged "
                        "or incomplete") from None
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{key}: cannot load the model from {path}: {str(err).splitlines()[0]}") from None
    _check_loading_info(info, path, key)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.to(device)
