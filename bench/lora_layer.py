"""One LoRA layer, forward + backward: rlvf.lora.LoRALinear vs PEFT's lora.Linear.

    python bench/lora_layer.py                   # 2,048 tokens, 4096 → 4096, r 64, α 128, dropout 0 and 0.05

The layer wraps a frozen bias-free nn.Linear (a Llama projection); its input x (tokens, 4096)
requires grad, as inside a model whose earlier layers carry adapters too. The adapter matrices
are the same random A and B (B ≠ 0, as mid-training) in both. fp32 on the CPU; on CUDA a bf16
base with fp32 adapters (PEFT upcasts its adapters to fp32 by default, rlvf always keeps them
fp32). PEFT's layer is built through its public API (``get_peft_model`` on a one-layer module).

Measured per implementation and dropout, each in a fresh process: forward, backward and
fwd+bwd time; peak memory of one fwd+bwd (bench/common.py); and the memory saved for backward —
the unique storages autograd keeps (``torch.autograd.graph.saved_tensors_hooks``), parameters
excluded, the input x included.

Targets: fwd+bwd time ≤ 1.0 × PEFT; with dropout > 0, memory saved for backward ≤ 0.6 × PEFT
(PEFT keeps a dropped-out copy of x and the dropout mask; rlvf keeps x and redraws the mask).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

NAME = "lora_layer"
IMPLS = ("rlvf", "peft")


def shapes_for(args, device: torch.device) -> dict:
    if args.smoke:
        return dict(tokens=8, d_in=32, d_out=32, r=4, alpha=8, dtype="float32")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    return dict(tokens=2048, d_in=4096, d_out=4096, r=64, alpha=128, dtype=dtype)


class OneLinear(nn.Module):
    """A module holding one projection, so that PEFT's get_peft_model can target it."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.proj = base


def make_layer(impl: str, s: dict, dropout: float, device: torch.device) -> nn.Module:
    """The LoRA layer of ``impl`` around the same frozen base, with the same A (r, in) and B (out, r)."""
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(s["d_in"], s["d_out"], bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(s["d_out"], s["d_in"], generator=g) / s["d_in"] ** 0.5)
    base = base.to(device, getattr(torch, s["dtype"]))
    A = torch.randn(s["r"], s["d_in"], generator=g) / s["d_in"] ** 0.5  # (r, in)
    B = torch.randn(s["d_out"], s["r"], generator=g) / s["r"] ** 0.5  # (out, r)
    if impl == "rlvf":
        from rlvf.lora import LoRALinear

        layer = LoRALinear(base, s["r"], s["alpha"], dropout)
        lora_A, lora_B = layer.lora_A.weight, layer.lora_B.weight
    elif impl == "peft":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=dropout, target_modules=["proj"])
        layer = get_peft_model(OneLinear(base), config).base_model.model.proj
        lora_A, lora_B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    with torch.no_grad():
        lora_A.copy_(A)
        lora_B.copy_(B)
    return layer.to(device).train()


def worker(args) -> dict:
    common.setup_worker(args)
    impl, dropout = args.worker.split(":")
    dropout = float(dropout)
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    warmup, iters = common.counts(args, 0 if args.smoke else 2, 1 if args.smoke else 7)
    torch.manual_seed(0)
    layer = make_layer(impl, s, dropout, device)
    params = list(layer.parameters())
    trainable = [p for p in params if p.requires_grad]
    dtype = getattr(torch, s["dtype"])
    x = torch.randn(s["tokens"], s["d_in"], device=device, dtype=dtype, requires_grad=True)  # (N, in)
    grad_out = torch.randn(s["tokens"], s["d_out"], device=device, dtype=dtype)  # (N, out)

    def backward(y):
        y.backward(grad_out)
        x.grad = None
        for p in trainable:
            p.grad = None

    times = common.time_fwd_bwd(lambda: layer(x), backward, device, warmup, iters)
    result = {}
    if times:
        y, saved = common.saved_tensor_mib(lambda: layer(x), exclude=params)
        backward(y)
        result.update(times_ms=times, saved_for_backward_mib=saved, trainable=sum(p.numel() for p in trainable))
    if args.measure != "time":
        with common.PeakMemory(device) as mem:
            backward(layer(x))
        result["peak_mib"] = mem.mib
    return result


def report(rows: list[dict]) -> str:
    out = [f"{rows[0]['device']}, {rows[0]['dtype']}, shapes {rows[0]['shapes']}"]
    table = []
    by = {(r["implementation"], r["shapes"]["dropout"]): r for r in rows}
    for r in rows:
        peft = by.get(("peft", r["shapes"]["dropout"]), {})
        t = r.get("times_ms", {})
        table.append([r["implementation"], f"{r['shapes']['dropout']:g}", common.median(t, "forward"), common.median(t, "backward"),
                      common.median_range(t.get("fwd_bwd"), 1), r.get("peak_mib"), r.get("saved_for_backward_mib"),
                      common.ratio(common.median(t, "fwd_bwd"), common.median(peft.get("times_ms", {}), "fwd_bwd")),
                      common.ratio(r.get("saved_for_backward_mib"), peft.get("saved_for_backward_mib")),
                      r.get("error", "")])
    out.append(common.markdown_table(
        ["implementation", "dropout", "fwd ms", "bwd ms", "fwd+bwd ms (p20–p80)", "peak MiB",
         "saved for bwd MiB", "time / PEFT", "saved / PEFT", "note"], table))
    for dropout in dict.fromkeys(r["shapes"]["dropout"] for r in rows):
        mine, peft = by.get(("rlvf", dropout), {}), by.get(("peft", dropout), {})
        t = common.ratio(common.median(mine.get("times_ms", {}), "fwd_bwd"), common.median(peft.get("times_ms", {}), "fwd_bwd"))
        out.append(f"- dropout {dropout}: rlvf fwd+bwd time {common.fmt(t, 2)} × PEFT (≤ 1.0): {common.verdict(t, 1.0)}")
        if dropout > 0:
            m = common.ratio(mine.get("saved_for_backward_mib"), peft.get("saved_for_backward_mib"))
            out.append(f"- dropout {dropout}: rlvf memory saved for backward {common.fmt(m, 2)} × PEFT (≤ 0.6): "
                       f"{common.verdict(m, 0.6)}")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--dropouts", default="0.0,0.05", help="comma-separated LoRA dropout rates")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = common.command_line(__file__, argv)
    if args.worker:
        common.emit(worker(args))
        return
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    rows = []
    for dropout in (float(d) for d in args.dropouts.split(",")):
        for impl in IMPLS:
            if impl == "peft" and importlib.util.find_spec("peft") is None:
                result = {"error": "peft is not installed (pip install -e '.[bench]')"}
            else:
                inline = common.inline_worker(args, parse_args, worker)
                result = common.measure(__file__, args, f"{impl}:{dropout}", device, inline)
            shapes = {**{k: v for k, v in s.items() if k != "dtype"}, "dropout": dropout}
            rows.append(common.make_row(NAME, impl, device, s["dtype"], shapes, result, command))
    path = common.write_rows(args.out, NAME, rows)
    print(report(rows))
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
