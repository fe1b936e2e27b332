"""Adapter tools on the command line.

    python -m rlvf.adapters mix --adapter runs/a/adapter:1.0 --adapter runs/b/adapter:0.5 --out runs/mix
    python -m rlvf.adapters export --model models/base --adapter runs/a/adapter --out models/merged

``mix`` concatenates LoRA adapters with weights (ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, rsLoRA-aware) into one PEFT
adapter; ``export`` writes base + adapter as a plain merged Hugging Face model directory.
"""
from __future__ import annotations

import argparse
import math
import sys

from rlvf.errors import UserError, exit_on_user_error


def _weighted(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise UserError(f"--adapter {text}: expected PATH or PATH:WEIGHT, e.g. runs/a/adapter:0.5") from None
    if not math.isfinite(value):
        raise UserError(f"--adapter {text}: the weight must be a finite number, got {weight}")
    return path, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.adapters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mix = sub.add_parser("mix", help="weighted concatenation of several adapters into one")
    mix.add_argument("--adapter", action="append", required=True, metavar="PATH[:WEIGHT]")
    mix.add_argument("--out", required=True)
    export = sub.add_parser("export", help="merge an adapter into its base model and save the full model")
    export.add_argument("--model", required=True, help="local HF model directory")
    export.add_argument("--adapter", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "mix":
            from rlvf.lora import mix_adapters

            out = mix_adapters([_weighted(a) for a in args.adapter], args.out)
        else:
            import torch

            from rlvf.lora import export_merged, load_adapter
            from rlvf.modeling import DTYPES, load_model, load_tokenizer

            dtype = torch.float32 if args.dtype == "auto" else DTYPES[args.dtype]
            tokenizer = load_tokenizer(args.model, key="--model")
            model = load_model(args.model, dtype, torch.device("cpu"), key="--model")
            load_adapter(model, args.adapter)
            out = export_merged(model, tokenizer, args.out)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
