"""Shared fixtures: a tiny random Llama written as a real HF directory, loaded like any HF model."""
from __future__ import annotations

import os

import pytest
import torch


def _use_triton_interpreter_without_gpu() -> None:
    """Without CUDA, run Triton kernels in Triton's CPU interpreter (tests/test_triton_kernels.py).

    ``@triton.jit`` reads TRITON_INTERPRET when it decorates, i.e. when rlvf.kernels'
    Triton module is first imported; conftest.py is imported before any test module, so setting it
    here, at collection time, is early enough for the whole session. An explicit value is kept.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_use_triton_interpreter_without_gpu()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random Llama (config.json, model.safetensors, tokenizer with chat template)."""
    from rlvf.random_llama import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh fp32 copy of the tiny model, loaded through AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
