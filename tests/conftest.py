"""Shared fixtures: a tiny random Llama written as a real HF directory, loaded like any HF model."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random Llama (config.json, model.safetensors, tokenizer with chat template)."""
    from rlvf.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh fp32 copy of the tiny model, loaded through AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
