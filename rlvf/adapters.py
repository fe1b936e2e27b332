"""Adapter tools on the command line.

    python -m rlvf.adapters mix --adapter runs/a/adapter:1.0 --adapter runs/b/adapter:0.5 --out runs/mix
    python -m rlvf.adapters export --model models/base --adapter runs/a/adapter --out models/merged
    python -m rlvf.adapters export --model mistralai/Mistral-7B-Instruct-v0.2 [--revision REV] --adapter ... --out ...

``mix`` concatenates LoRA adapters with weights (ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, rsLoRA-aware) into one PEFT
adapter; ``export`` writes base + adapter as a plain merged Hugging Face model directory.

--out must be a new or empty directory. With --overwrite a non-empty one is accepted: the files the
command writes are replaced (export also drops older weight files, which would shadow the new
ones) and everything else in it is kept; the new folder is built beside it and swapped in whole.
--out is never the base model's directory or an adapter being read, nor a folder holding one.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

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


def _contents(path: Path, show: int = 3) -> str:
    names = sorted(p.name for p in path.iterdir())
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


def check_out(out: str, overwrite: bool, inputs: list[tuple[str, str]]) -> None:
    """Refuse an --out that would destroy something this command did not create, before any work.

    ``inputs``: (option, path) read by the command (--model, --adapter). --out may be none of them
    nor a folder above one (the swap would move it), and a non-empty --out needs ``overwrite``.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    target = path.resolve()
    for option, given in inputs:
        source = Path(given).resolve()
        if target == source or target in source.parents:
            what = "is" if target == source else "holds"
            raise UserError(f"--out {out}: {what} {option} {given}, which this command reads; "
                            "write to another directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: directory is not empty (it holds {_contents(path)}); choose a new "
                        "directory, or pass --overwrite to replace the files this command writes and keep the rest")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlvf.adapters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    overwrite_help = "accept a non-empty --out: replace the files this command writes there, keep the rest"
    mix = sub.add_parser("mix", help="weighted concatenation of several adapters into one")
    mix.add_argument("--adapter", action="append", required=True, metavar="PATH[:WEIGHT]")
    mix.add_argument("--out", required=True, help="a new or empty directory (see --overwrite)")
    mix.add_argument("--overwrite", action="store_true", help=overwrite_help)
    export = sub.add_parser("export", help="merge an adapter into its base model and save the full model")
    export.add_argument("--model", required=True, help="local HF model directory, or a Hub id (owner/name) "
                        "resolved through the Hugging Face cache")
    export.add_argument("--revision", help="branch, tag or commit of the Hub model --model names (default: main)")
    export.add_argument("--adapter", required=True)
    export.add_argument("--out", required=True, help="a new or empty directory (see --overwrite)")
    export.add_argument("--overwrite", action="store_true", help=overwrite_help)
    export.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.command == "mix":
            from rlvf.peft_format import mix_adapters

            adapters = [_weighted(a) for a in args.adapter]
            check_out(args.out, args.overwrite, [("--adapter", p) for p, _ in adapters])
            out = mix_adapters(adapters, args.out)
        else:
            out = _export(args)
        print(f"wrote {out}", file=sys.stderr)


def _export(args: argparse.Namespace) -> Path:
    import torch

    from rlvf.modeling import DTYPES, load_model, load_tokenizer
    from rlvf.peft_format import export_merged, load_adapter

    check_out(args.out, args.overwrite, [("--model", args.model), ("--adapter", args.adapter)])
    dtype = torch.float32 if args.dtype == "auto" else DTYPES[args.dtype]
    tokenizer = load_tokenizer(args.model, key="--model", revision=args.revision)
    model = load_model(args.model, dtype, torch.device("cpu"), key="--model", revision=args.revision)
    load_adapter(model, args.adapter)
    return export_merged(model, tokenizer, args.out)


if __name__ == "__main__":
    main()
