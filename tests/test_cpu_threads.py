"""The CPU thread policy (rlvf/cpu_threads.py): one intra-op thread for a small model on the CPU,
torch's default for a large one or on a GPU, and the user's OMP_NUM_THREADS / MKL_NUM_THREADS left alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from rlvf import cpu_threads

ROOT = Path(__file__).resolve().parent.parent
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_policy():
    small, large = 3_300_000, 7_000_000_000
    assert cpu_threads.threads_for(small, CPU, env={}) == 1
    assert cpu_threads.threads_for(large, CPU, env={}) is None  # torch's default: every core
    assert cpu_threads.threads_for(small, CUDA, env={}) is None
    assert cpu_threads.threads_for(small, CPU, env={"OMP_NUM_THREADS": "2"}) is None  # the user's choice
    assert cpu_threads.threads_for(small, CPU, env={"MKL_NUM_THREADS": "4"}) is None
    assert cpu_threads.threads_for(small, CPU, env={"OMP_NUM_THREADS": ""}) == 1  # empty is unset


def _threads_after_load(tiny_model_dir, env_extra: dict, before: str = "") -> int:
    code = (f"import torch\n{before}\nfrom rlvf.modeling import load_model\n"
            f"load_model({str(tiny_model_dir)!r}, torch.float32, torch.device('cpu'))\n"
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in cpu_threads.USER_SETTINGS}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, **env_extra}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip().splitlines()[-1])


def test_loading_a_small_model_sets_one_thread_unless_the_user_chose(tiny_model_dir):
    assert _threads_after_load(tiny_model_dir, {}) == 1
    assert _threads_after_load(tiny_model_dir, {"OMP_NUM_THREADS": "2"}) == 2
