"""Helpers shared by the LoRA tests."""
from __future__ import annotations

import torch


@torch.no_grad()
def randomize_lora_B(model, seed: int = 0) -> None:
    """Fresh adapters have B = 0 (ΔW = 0), which would hide every layout or scaling bug: give every
    lora_B a seeded N(0, 0.1²) value."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
