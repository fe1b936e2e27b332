"""Log-prob + DPO / C3PO loss from final hidden states: rlvf vs naive (HF/TRL) vs Liger.

    python bench/logprob_loss.py                 # CPU: 4 pairs × 512 tokens, H 1024, V 32,000, fp32
    python bench/logprob_loss.py --device cuda   # GPU: 2 pairs × 512 tokens (2,048), H 4096, V 128,256, bf16

What is timed is everything after the backbone: lm_head → log-softmax → gather → per-sequence
sums → loss, forward and backward, for hidden states (S, T, H) that require grad and a frozen
head weight (V, H) (LoRA training leaves lm_head alone). Every position is scored. The DPO
reference log-probs are precomputed constants, as rlvf.train caches them.

Implementations (each in a fresh process, see bench/common.py):
- ``rlvf``: ``rlvf.logprobs.logprobs_from_hidden`` (whatever path it dispatches to on the device:
  chunked torch on the CPU) + ``rlvf.losses``.
- ``naive``: ``rlvf.kernels.naive_linear_logprobs`` (the tests' reference: full (N, V) logits →
  log_softmax → gather, as HF/TRL do) + the same ``rlvf.losses``.
- ``liger``: ``liger_kernel.chunked_loss.LigerFusedLinearDPOLoss`` (DPO case only; torch.compile'd
  as shipped, compile time spent in warm-up). It takes no precomputed reference log-probs, so it
  runs with ``use_ref_model=False``: the loss differs from the others by a constant inside the
  sigmoid, the work does not.
- ``rlvf-fused-c3po``: ``rlvf.kernels.fused_c3po_loss`` (kernels/c3po_loss.py, when present): all
  rows in one ``rlvf.kernels.linear_logprobs`` call (Triton on CUDA, chunked torch on the CPU),
  then the same rlvf.losses; the DPO case is the same call without near/out rows.
- ``torch.matmul``: the rate of the plain (N, H) @ (H, V) matmul on the device (cuBLAS on GPU).

Cases: ``dpo`` (the pairs only) and ``c3po`` (the pairs + near-scope + out-of-scope sequences,
L = L_DPO + λ_out·SFT(out) + λ_near·SFT(near), paper eq. 5). Targets, from one run:
peak memory ≤ 0.25 × naive and ≤ Liger; fwd+bwd time ≤ 1.0 × naive and < Liger; on GPU, the
rlvf path's model-FLOP rate (4·N·H·V per fwd+bwd) ≥ 60 % of the matmul rate.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

NAME = "logprob_loss"
BETA, LAMBDA_OUT, LAMBDA_NEAR = 0.1, 0.2, 0.1


def shapes_for(args, device: torch.device) -> dict:
    """Shapes and dtype of the run: smoke, CPU or GPU."""
    if args.smoke:
        return dict(pairs=2, near=1, out=1, T=16, H=32, V=101, dtype="float32", chunk=8)
    if device.type == "cuda":
        return dict(pairs=2, near=1, out=1, T=512, H=4096, V=128256, dtype="bfloat16", chunk=1024)
    return dict(pairs=4, near=2, out=2, T=512, H=1024, V=32000, dtype="float32", chunk=1024)


def n_seqs(s: dict, case: str) -> int:
    return 2 * s["pairs"] + (s["near"] + s["out"] if case == "c3po" else 0)


# --------------------------------------------------------------------------- inputs


def make_inputs(s: dict, case: str, device: torch.device, seed: int = 0) -> dict:
    """hidden (S, T, H) requiring grad, frozen weight (V, H), labels (S, T), reference log-probs (P,)."""
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, s["dtype"])
    S, T, H, V = n_seqs(s, case), s["T"], s["H"], s["V"]
    hidden = torch.randn(S, T, H, generator=g).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(device, dtype)  # logits ~ N(0, 1)
    labels = torch.randint(0, V, (S, T), generator=g).to(device)  # every position scored
    ref = (-T * torch.rand(2, s["pairs"], generator=g) * 10).to(device)  # log π_ref of chosen, rejected
    return dict(hidden=hidden, weight=weight, labels=labels, ref_chosen=ref[0], ref_rejected=ref[1])


class HeadOnly(nn.Module):
    """The least ``rlvf.logprobs.logprobs_from_hidden`` needs from a model: a bias-free lm_head and a config."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.lm_head.weight = nn.Parameter(weight, requires_grad=False)  # (V, H)
        self.config = SimpleNamespace()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


# --------------------------------------------------------------------------- the losses


def seq_logps_rlvf(x: dict, chunk: int) -> torch.Tensor:
    """Per-sequence Σ log π through the project's public path: (S,)."""
    from rlvf.logprobs import logprobs_from_hidden

    return logprobs_from_hidden(HeadOnly(x["weight"]), x["hidden"], x["labels"], chunk_size=chunk).logps


def seq_logps_naive(x: dict, chunk: int) -> torch.Tensor:
    """Per-sequence Σ log π with the full (N, V) logits (the tests' reference): (S,)."""
    from rlvf.kernels import naive_linear_logprobs

    hidden, labels = x["hidden"], x["labels"]
    S, T, H = hidden.shape
    h = hidden[:, :-1].reshape(-1, H)  # (N, H), N = S·(T−1): position t predicts token t+1
    token_logps = naive_linear_logprobs(h, x["weight"], labels[:, 1:].reshape(-1))  # (N,)
    return token_logps.view(S, T - 1).sum(1)  # (S,)


def objective(s: dict, case: str):
    """(method settings, layout) of the case: C3PO with the paper's weights, or DPO alone."""
    from rlvf.config import MethodConfig
    from rlvf.objective import Layout

    near, out = (s["near"], s["out"]) if case == "c3po" else (0, 0)
    method = MethodConfig(name="c3po" if case == "c3po" else "dpo", beta=BETA,
                          **({"lambda_out": LAMBDA_OUT, "lambda_near": LAMBDA_NEAR} if case == "c3po" else {}))
    return method, Layout(pairs=s["pairs"], near=near, out=out)


def loss_from_logps(logps: torch.Tensor, x: dict, s: dict, case: str) -> torch.Tensor:
    """DPO on the pairs, plus the C3PO constraints on near/out rows for case 'c3po' (rlvf.objective): scalar."""
    from rlvf.objective import method_loss

    method, layout = objective(s, case)
    n_tokens = torch.full_like(logps, s["T"] - 1, dtype=torch.long)  # every position is scored
    return method_loss(method, layout, logps, n_tokens, x["ref_chosen"], x["ref_rejected"]).loss


def liger_loss_fn(x: dict, compiled: bool):
    """Liger's fused linear DPO loss on the pairs (chosen first, then rejected), summed log-probs."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss = LigerFusedLinearDPOLoss(beta=BETA, use_ref_model=False, average_log_prob=False, compiled=compiled)
    hidden, labels = x["hidden"], x["labels"]
    return lambda: loss(x["weight"], hidden[:, :-1], labels[:, 1:])[0]  # input (S, T−1, H), target (S, T−1)


def fused_c3po_fn(x: dict, s: dict, case: str):
    """``rlvf.kernels.fused_c3po_loss`` on the flattened scored rows (all of them)."""
    from rlvf.kernels import fused_c3po_loss

    hidden, labels = x["hidden"], x["labels"]
    S, T, H = hidden.shape
    seq_index = torch.arange(S, device=hidden.device).repeat_interleave(T - 1)  # (N,)
    method, layout = objective(s, case)

    def fn():
        h = hidden[:, :-1].reshape(-1, H)  # (N, H)
        return fused_c3po_loss(h, x["weight"], labels[:, 1:].reshape(-1), seq_index, layout, method,
                               x["ref_chosen"], x["ref_rejected"], chunk_size=s["chunk"]).loss

    return fn


def fused_c3po_available() -> bool:
    return importlib.util.find_spec("rlvf.kernels.c3po_loss") is not None


def forward_fn(impl: str, x: dict, s: dict, case: str, smoke: bool):
    """A zero-argument function computing the scalar loss with ``impl``."""
    if impl == "rlvf":
        return lambda: loss_from_logps(seq_logps_rlvf(x, s["chunk"]), x, s, case)
    if impl == "naive":
        return lambda: loss_from_logps(seq_logps_naive(x, s["chunk"]), x, s, case)
    if impl == "liger":
        return liger_loss_fn(x, compiled=not smoke)
    if impl == "rlvf-fused-c3po":
        return fused_c3po_fn(x, s, case)
    raise ValueError(f"unknown implementation {impl!r}")


# --------------------------------------------------------------------------- worker and parent


def flops(s: dict, case: str) -> float:
    """Model FLOPs of one fwd+bwd with a frozen head: logits 2·N·H·V, ∂hidden 2·N·H·V."""
    n = n_seqs(s, case) * (s["T"] - 1)
    return 4.0 * n * s["H"] * s["V"]


def worker(args) -> dict:
    common.setup_worker(args)
    impl, case = args.worker.split(":")
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    warmup, iters = common.counts(args, 0 if args.smoke else 1 if device.type == "cpu" else 3,
                                  1 if args.smoke else 3 if device.type == "cpu" else 10)
    if impl == "torch.matmul":
        if args.measure == "memory":
            return {"peak_mib": None}
        n = n_seqs(s, case) * (s["T"] - 1)
        rate = common.matmul_rate(n, s["H"], s["V"], getattr(torch, s["dtype"]), device, warmup, iters)
        return {"times_ms": {"forward": rate["ms"]}, "tflops": rate["tflops"], "peak_mib": None}
    x = make_inputs(s, case, device)
    fwd = forward_fn(impl, x, s, case, args.smoke)

    def backward(loss):
        loss.backward()
        x["hidden"].grad = None

    times = common.time_fwd_bwd(fwd, backward, device, warmup, iters)
    result = {}
    if times:
        result.update(times_ms=times, loss=fwd().item(),
                      tflops=flops(s, case) / (times["fwd_bwd"]["median"] * 1e-3) / 1e12)
    if args.measure != "time":
        with common.PeakMemory(device) as mem:
            backward(fwd())
        result["peak_mib"] = mem.mib
    return result


def implementations(case: str) -> list[str]:
    impls = ["rlvf"] + (["rlvf-fused-c3po"] if fused_c3po_available() else []) + ["naive"]
    return impls + (["liger"] if case == "dpo" else []) + ["torch.matmul"]


def run_case(args, case: str, device: torch.device, s: dict, command: str) -> list[dict]:
    rows = []
    for impl in implementations(case):
        if impl == "liger" and importlib.util.find_spec("liger_kernel") is None:
            result = {"error": "liger-kernel is not installed (pip install -e '.[bench]')"}
        else:
            inline = common.inline_worker(args, parse_args, worker)
            result = common.measure(__file__, args, f"{impl}:{case}", device, inline)
        shapes = {"case": case, "sequences": n_seqs(s, case), "pairs": s["pairs"],
                  "tokens": n_seqs(s, case) * s["T"], **{k: s[k] for k in ("T", "H", "V", "chunk")}}
        rows.append(common.make_row(NAME, impl, device, s["dtype"], shapes, result, command))
    return rows


def report(rows: list[dict], device: torch.device) -> str:
    """The table and the target checks, per case."""
    out = []
    for case in dict.fromkeys(r["shapes"]["case"] for r in rows):
        cr = [r for r in rows if r["shapes"]["case"] == case]
        by = {r["implementation"]: r for r in cr}
        naive_t = _total(by.get("naive"))
        naive_m = by.get("naive", {}).get("peak_mib")
        table = []
        for r in cr:
            t = r.get("times_ms", {})
            table.append([r["implementation"], common.median(t.get("forward")), common.median(t.get("backward")),
                          common.median_range(t.get("fwd_bwd") if "fwd_bwd" in t else t.get("forward")), r.get("peak_mib"),
                          r.get("tflops"), common.ratio(_total(r), naive_t), common.ratio(r.get("peak_mib"), naive_m),
                          r.get("error", "")])
        sh = cr[0]["shapes"]
        out.append(f"case {case}: {sh['sequences']} sequences × {sh['T']} tokens, H {sh['H']}, V {sh['V']}, "
                   f"{cr[0]['dtype']}, {cr[0]['device']}")
        out.append(common.markdown_table(
            ["implementation", "fwd ms", "bwd ms", "fwd+bwd ms (p20–p80)", "peak MiB", "TFLOP/s",
             "time / naive", "memory / naive", "note"], table))
        out += _targets(by, device)
    return "\n".join(out)


def _targets(by: dict, device: torch.device) -> list[str]:
    """Target checks for each project implementation present (rlvf, rlvf-fused-c3po)."""
    naive, liger, mm = (by.get(k, {}) for k in ("naive", "liger", "torch.matmul"))
    lines = []
    for name in ("rlvf", "rlvf-fused-c3po"):
        r = by.get(name)
        if not r:
            continue
        m_ratio = common.ratio(r.get("peak_mib"), naive.get("peak_mib"))
        t_ratio = common.ratio(_total(r), _total(naive))
        lines.append(f"- {name} peak memory {common.fmt(m_ratio, 3)} × naive (≤ 0.25): {common.verdict(m_ratio, 0.25)}")
        lines.append(f"- {name} fwd+bwd time {common.fmt(t_ratio, 2)} × naive (≤ 1.0): {common.verdict(t_ratio, 1.0)}")
        if liger:
            lm = common.ratio(r.get("peak_mib"), liger.get("peak_mib"))
            lt = common.ratio(_total(r), _total(liger))
            lines.append(f"- {name} peak memory {common.fmt(lm, 2)} × Liger (≤ 1.0): {common.verdict(lm, 1.0)}")
            lines.append(f"- {name} fwd+bwd time {common.fmt(lt, 2)} × Liger (< 1.0): {common.verdict(lt, 1.0, '<')}")
        rate = common.ratio(r.get("tflops"), mm.get("tflops"))
        check = common.verdict(rate, 0.6, ">=") if device.type == "cuda" else "info only (the target is for GPU)"
        lines.append(f"- {name} model-FLOP rate {common.fmt(rate, 2)} × matmul rate (≥ 0.6 on GPU): {check}")
    return lines


def _total(row):
    if not row or "times_ms" not in row:
        return None
    return common.median(row["times_ms"].get("fwd_bwd"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--cases", default="dpo,c3po", help="comma-separated: dpo, c3po")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = common.command_line(__file__, argv)
    if args.worker:
        common.emit(worker(args))
        return
    device = common.pick_device(args.device)
    s = shapes_for(args, device)
    rows = [row for case in args.cases.split(",") for row in run_case(args, case, device, s, command)]
    path = common.write_rows(args.out, NAME, rows)
    print(report(rows, device))
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
