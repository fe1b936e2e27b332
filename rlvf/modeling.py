"""Loading a Hugging Face causal LM and its tokenizer from a local directory, with clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlvf.data import check_chat_template
from rlvf.errors import UserError

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
    """A local HF model directory: config.json and safetensors weights. Raises UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{key}: {path} is not a directory (a local Hugging Face model directory is expected)")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{key}: {path} has no config.json; not a Hugging Face model directory")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{config}: not valid JSON ({err})") from None
    if not any(path.glob("*.safetensors")):
        raise UserError(f"{key}: {path} has no *.safetensors weights (rlvf loads weights only from safetensors)")
    return path


def load_tokenizer(path: str | Path, key: str = "model.path"):
    from transformers import AutoTokenizer

    path = check_model_dir(path, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{key}: cannot load the tokenizer from {path}: {str(err).splitlines()[0]}") from None
    check_chat_template(tokenizer, f"{key}: {path}")
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere, so EOS is a safe pad
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: torch.dtype, device: torch.device,
               attn_implementation: str = "sdpa", key: str = "model.path"):
    """AutoModelForCausalLM from a local directory, frozen, on ``device``."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True
        )
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{key}: cannot load the model from {path}: {str(err).splitlines()[0]}") from None
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.to(device)
