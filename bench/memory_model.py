"""Peak GPU memory of one rlvf training step: an analytical model, checked against measured peaks.

    python bench/memory_model.py                   # the table for the paper's setting + CPU validation (~1 min)
    python bench/memory_model.py --no-validate     # the table only (instant)
    python bench/memory_model.py --rss             # validation also against each run's resident-set peak

What is modelled: one micro-batch of the paper's preset (Stephan et al. 2024, Appendix; configs/
mistral-7b-gpt4.yaml): 1 in-scope pair (chosen + rejected) + 1 near-scope + 1 out-of-scope row at
2,048 tokens each, one concatenated forward through ``rlvf.logprobs.sequence_logprobs`` (backbone,
then the fused lm-head log-probs: Triton on CUDA), bf16 base weights, fp32 LoRA r 64 α 128 dropout
0.05 on every linear layer but lm_head (``rlvf.lora.inject_lora``), AdamW (fp32 states), reference
log-probs cached (no reference forward in the step), gradient accumulation (so the LoRA gradients
exist while a micro-batch runs: the steady state of every micro-batch after the first).

The model counts bytes of live tensors, i.e. what ``torch.cuda.max_memory_allocated`` reports (the
caching allocator's 512-byte rounding aside); the CUDA context (~0.5 GiB) and fragmentation of
the reserved pool come on top. Terms (B sequences × T tokens, N = B·T, M scored tokens, H hidden,
H_kv = kv heads × head dim, I intermediate, L layers, r LoRA rank, w bytes per base element):

- static: base weights P·w; LoRA parameters, gradients and AdamW's two moments, 4 × 4 bytes each.
- saved for backward per decoder layer (rlvf LoRALinear keeps x and h = dropout(x)Aᵀ only;
  HF Llama/Mistral with SDPA), measured op by op on the CPU and exact there:
      2 RMSNorms × (fp32 copy of the input 4·N·H + rsqrt 4·N)
      w·N·H × 4   (q/k/v input, q after RoPE, attention output = o_proj input, gate/up input)
      w·N·H_kv × 2 (k after RoPE, v)   4·B·heads·T (the attention's logsumexp)
      w·N·I × 4   (gate out, SiLU out, up out, their product = down_proj input)
      4·N·r × 7   (h of each LoRA)
  The first layer's input norm saves nothing (its input, the embedding, needs no gradient).
  With gradient checkpointing (HF, non-reentrant) a layer keeps only its input, w·N·H, and backward
  recomputes one layer at a time.
- the working set where the peak happens, in the last decoder layer's MLP: LoRA's branch on the
  down_proj input (width I) holds an fp32 copy of x, the dropout mask and the masked copy, 9·N·I
  bytes for a bf16 base with dropout (5·N·I for fp32, where the copy is x itself; 4·N·I / 0 without
  dropout); at up_proj's output the fp32 update and its bf16 cast, (4 + w)·N·I; in backward through
  SiLU(gate)·up the gradients of the product and of both factors, 3·w·N·I. Around these the
  embedding, the layer input, the residual and the base output, 4·w·N·H (when recomputing: 2·w·N·H,
  and the incoming gradient (w + 4)·N·H, bf16 and an fp32 copy). With an fp32 base the norms'
  "copies" are their inputs (the layer input, the residual), counted once.
- the final RMSNorm's backward: five fp32 (N, H) temporaries beside its saved input.
- the fused head: final norm 4·N·H, hidden w·N·H, the scored rows and their gradient directions
  2·w·M·H, and one chunk of logits: chunk·V·w on the Triton path (the gradient is written in place),
  chunk·V·(4 + w) on the torch path (an fp32 copy; 4·chunk·V for fp32).
- the optimizer step: foreach AdamW (the CUDA default) allocates one fp32 temporary per LoRA tensor.
- FSDP2 (rlvf.distributed, one rank of W): base weights and LoRA state sharded 1/W; the root's
  embedding + lm_head stay gathered through forward and backward; two decoder layers gathered at a
  time (the one running and the one prefetched); each rank runs the same micro-batch shape.

The peak is the largest of these candidates (``peak_candidates``): the last layer's down_proj LoRA
input and up_proj LoRA output (in forward, or in backward's recompute with checkpointing), the
backward through its MLP product, the final norm's backward, the fused head's chunk, the optimizer
step. Each was located op by op on the CPU (every allocation's size, shape and op at the peak).

Validation (by default; ``--no-validate`` skips it): the same step runs on the CPU with real
tensors at small scale — ``inject_lora``, ``sequence_logprobs`` (the chunked torch head; Triton's
interpreter makes copies a GPU would not, so the Triton head is not measured this way), DPO + NLL
constraints, backward, clipping, AdamW — and every tensor
allocation is tracked (``LiveBytes``, a TorchDispatchMode counting each storage once, until it is
freed). Those measured peaks are compared with the model in its CPU settings (torch head, AdamW
without foreach); ``--rss`` adds the process's resident-set peak (bench/common.PeakMemory, in a
fresh process) as an independent check of the tracker. The CUDA-only differences (Triton head
chunk, foreach AdamW, FSDP2) are modelled, not measured here; bench/gpu_check.sh measures the 7B
step on a GPU against this model.

Rows go to bench/results/memory_model.jsonl with machine, versions, date and command.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

NAME = "memory_model"
GIB = 2**30
# torch.cuda.get_device_properties(0).total_memory of an A100-SXM4-40GB (39.4 GiB) and of an H100/H200
# 80 GB part (79.1 GiB), minus ~0.5 GiB of CUDA context: what the caching allocator can hand out.
A100_40GB_USABLE = 39.4 * GIB - 0.5 * GIB
H100_80GB_USABLE = 79.1 * GIB - 0.5 * GIB
TRACKER_TOLERANCE = 0.05  # the model must agree with the CPU measurements within 5 % (peak − static)


# --------------------------------------------------------------------------- architectures and settings


@dataclass(frozen=True)
class Arch:
    """Decoder dimensions, as in the model's config.json (Llama / Mistral architecture, no biases)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    family: str = "llama"  # "llama" or "mistral": the transformers config class
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def hf_config(self, max_positions: int = 4096):
        """The transformers config of this architecture (random weights are built from it)."""
        from transformers import LlamaConfig, MistralConfig

        cls = MistralConfig if self.family == "mistral" else LlamaConfig
        extra = {"sliding_window": None} if self.family == "mistral" else {}
        return cls(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                   num_hidden_layers=self.layers, num_attention_heads=self.heads,
                   num_key_value_heads=self.kv_heads, max_position_embeddings=max_positions,
                   tie_word_embeddings=self.tied, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)


# config.json of mistralai/Mistral-7B-Instruct-v0.2, meta-llama/Meta-Llama-3-8B and -70B
ARCHS = {
    "mistral-7b": Arch("Mistral-7B-Instruct-v0.2", 4096, 14336, 32, 32, 8, 32000, "mistral"),
    "llama3-8b": Arch("Llama-3-8B", 4096, 14336, 32, 32, 8, 128256),
    "llama3-70b": Arch("Llama-3-70B", 8192, 28672, 80, 64, 8, 128256),
}


@dataclass(frozen=True)
class Setting:
    """One training micro-batch and how it runs (defaults: the paper's preset on one GPU)."""

    seqs: int = 4  # 1 pair (chosen + rejected) + 1 near-scope + 1 out-of-scope row
    seq_len: int = 2048
    prompt_len: int = 1024  # unscored prefix of each row (data.max_prompt_length)
    r: int = 64
    dropout: float = 0.05
    base_bytes: int = 2  # bf16
    checkpointing: bool = True
    head: str = "triton"  # "triton" (CUDA) or "torch" (the chunked CPU path)
    chunk: int = 1024  # train.logprob_chunk_size
    ranks: int = 1  # FSDP2 world size
    foreach_adam: bool = True  # torch.optim.AdamW's default on CUDA

    @property
    def tokens(self) -> int:
        return self.seqs * self.seq_len

    @property
    def scored(self) -> int:
        """M: labelled positions (position t predicts token t+1, so the prompt's T_p tokens score none)."""
        return self.seqs * (self.seq_len - self.prompt_len)


# --------------------------------------------------------------------------- parameters


def layer_params(a: Arch) -> int:
    """Base parameters of one decoder layer: q, k, v, o, gate, up, down and two RMSNorm weights."""
    H, I, q = a.hidden, a.intermediate, a.heads * a.head_dim
    return H * q + 2 * H * a.kv_dim + q * H + 3 * H * I + 2 * H


def root_params(a: Arch) -> int:
    """Embedding, lm_head (unless tied) and the final norm."""
    return a.vocab * a.hidden * (1 if a.tied else 2) + a.hidden


def base_params(a: Arch) -> int:
    return a.layers * layer_params(a) + root_params(a)


def lora_layer_params(a: Arch, r: int) -> int:
    """LoRA A (r, in) + B (out, r) on the 7 linear layers of one decoder layer: r·Σ(in + out)."""
    H, I, q, kv = a.hidden, a.intermediate, a.heads * a.head_dim, a.kv_dim
    return r * ((H + q) + 2 * (H + kv) + (q + H) + 2 * (H + I) + (I + H))


def lora_params(a: Arch, r: int) -> int:
    return a.layers * lora_layer_params(a, r)


# --------------------------------------------------------------------------- activations


def layer_saved(a: Arch, s: Setting, first: bool = False) -> int:
    """Bytes autograd keeps for backward in one decoder layer without checkpointing (module doc)."""
    N, H, I, w = s.tokens, a.hidden, a.intermediate, s.base_bytes
    norms = (1 if first else 2) * (4 * N * H + 4 * N)  # fp32 input copy + rsqrt per RMSNorm
    attention = 4 * w * N * H + 2 * w * N * a.kv_dim + 4 * s.seqs * a.heads * s.seq_len
    mlp = 4 * w * N * I
    lora = 7 * 4 * N * s.r
    return norms + attention + mlp + lora


def rope_bytes(a: Arch, s: Setting) -> int:
    """cos and sin (1, T, head_dim), shared by all layers."""
    return 2 * s.seq_len * a.head_dim * s.base_bytes


def lora_branch_transient(width: int, s: Setting) -> int:
    """Extra bytes while ``_LoRABranch.forward`` runs on an (N, width) input: fp32 copy of x, drop
    mask and masked copy (the copy is x itself for an fp32 base)."""
    N, fp32 = s.tokens, s.base_bytes == 4
    if s.dropout > 0:
        return N * width * (5 if fp32 else 9)
    return 0 if fp32 else 4 * N * width


def lora_output_transient(width: int, s: Setting) -> int:
    """Extra bytes when ``LoRALinear.forward`` adds the fp32 update δ (N, width) to the base output:
    δ and its cast to the base dtype (none for fp32), minus the product not yet made (w·N·width)."""
    return s.tokens * width * (4 + (0 if s.base_bytes == 4 else s.base_bytes))


def head_chunk(a: Arch, s: Setting) -> int:
    """One chunk of logits in the fused head: Triton writes the gradient in place in the input dtype;
    the torch path adds an fp32 copy (kernels/linear_logprob.py)."""
    n = min(s.chunk, s.scored)
    per = s.base_bytes if s.head == "triton" else (4 if s.base_bytes == 4 else 4 + s.base_bytes)
    return n * a.vocab * per + n * a.hidden * s.base_bytes  # + the (n, H) product before it is copied into d


def activation_terms(a: Arch, s: Setting) -> dict[str, int]:
    """Named activation terms (bytes) used by the peak candidates."""
    N, H, w, M = s.tokens, a.hidden, s.base_bytes, s.scored
    layers = a.layers * layer_saved(a, s) - (4 * N * H + 4 * N)  # the first input norm saves nothing
    return {
        "saved_layers": layers if not s.checkpointing else a.layers * w * N * H,
        "layer": layer_saved(a, s),
        "rope": rope_bytes(a, s),
        "down_lora": lora_branch_transient(a.intermediate, s),
        "up_lora_output": lora_output_transient(a.intermediate, s),
        "head_saved": 4 * N * H + 4 * N + 2 * w * M * H + 8 * M,  # final norm, hidden rows and directions
        "head_chunk": head_chunk(a, s),
    }


# --------------------------------------------------------------------------- the step


def static_terms(a: Arch, s: Setting) -> dict[str, int]:
    """Persistent bytes per rank: sharded weights and LoRA state, plus FSDP2's gathered buffers."""
    W, P_lora = s.ranks, lora_params(a, s.r)
    out = {
        "weights": base_params(a) * s.base_bytes // W,
        "lora_params": 4 * P_lora // W,
        "lora_grads": 4 * P_lora // W,
        "adamw_states": 8 * P_lora // W,
        "batch": 4 * 8 * s.tokens,  # input_ids, attention_mask, labels (+ the masked copy), int64
    }
    if W > 1:  # gathered root (embedding + lm_head) and two gathered decoder layers (current + prefetch)
        out["fsdp_gathered"] = root_params(a) * s.base_bytes + 2 * (
            layer_params(a) * s.base_bytes + 4 * lora_layer_params(a, s.r))
    return out


def peak_candidates(a: Arch, s: Setting) -> dict[str, int]:
    """Bytes above the static terms at each point where the step can peak (module doc)."""
    t = activation_terms(a, s)
    N, H, w, r = s.tokens, a.hidden, s.base_bytes, s.r
    fixed = t["rope"] + 8 * s.seq_len  # + position ids
    # the last layer's MLP, with everything it saves but down_proj's h, and the tensors around it. With an
    # fp32 base the norms' "fp32 copies" are their inputs themselves: the layer input and the residual.
    alias = 2 * 4 * N * H if w == 4 else 0
    if not s.checkpointing:  # forward: embedding, layer input, residual, down_proj's base output
        where, before = "forward", t["saved_layers"] - 4 * N * r + fixed + 4 * w * N * H - alias
    else:  # backward: recompute of the last layer; its input is saved already, the incoming gradient
        where = "backward (recompute)"  # (base dtype, plus an fp32 copy unless the base is fp32) is not
        grad_in = w * N * H + (0 if w == 4 else 4 * N * H)
        before = t["saved_layers"] + fixed + grad_in + t["layer"] - 4 * N * r + 2 * w * N * H - alias
    out = {
        f"{where}, last layer's down_proj LoRA input": before + t["down_lora"],
        # at up_proj's output: its fp32 update δ and δ in the base dtype, before the product and down_proj
        f"{where}, last layer's up_proj LoRA output": before - w * N * H + t["up_lora_output"],
    }
    # backward through the product SiLU(gate)·up of the last layer: down_proj's input and h are released,
    # the gradients of the product, of SiLU(gate) and of up are alive (3·w·N·I)
    mlp = t["layer"] - w * N * a.intermediate - 4 * N * r + 3 * w * N * a.intermediate
    if not s.checkpointing:
        out["backward, last layer's MLP product"] = t["saved_layers"] - t["layer"] + mlp + fixed + w * N * H
    else:
        out["backward, last layer's MLP product"] = (t["saved_layers"] + fixed + grad_in + mlp
                                                     - (4 * N * H if w == 4 else 0))
    # backward through the final RMSNorm: its fp32 input and five fp32 (N, H) gradient temporaries
    # (the cast, x·rsqrt, the rsqrt branch's product, pow's 2x·g and their sum; measured op by op)
    out["backward, final norm"] = t["saved_layers"] + fixed + 4 * N * H + 4 * N + 5 * 4 * N * H
    out["forward, fused head chunk"] = (t["saved_layers"] + fixed + t["head_saved"] + w * N * H
                                        + t["head_chunk"])
    out["optimizer step"] = 4 * lora_params(a, r) // s.ranks if s.foreach_adam else 0
    return out


def step_memory(a: Arch, s: Setting) -> dict:
    """Static terms, activation terms, the peak (bytes) and where it happens."""
    static = static_terms(a, s)
    candidates = peak_candidates(a, s)
    where = max(candidates, key=candidates.get)
    total_static = sum(static.values())
    return {"static": static, "activations": activation_terms(a, s), "candidates": candidates,
            "static_bytes": total_static, "peak_bytes": total_static + candidates[where], "peak_at": where,
            "logits_bytes": activation_terms(a, s)["head_chunk"] - min(s.chunk, s.scored) * a.hidden * s.base_bytes}


# --------------------------------------------------------------------------- measuring (CPU or CUDA)


class LiveBytes(contextlib.AbstractContextManager):
    """Bytes of live tensor storage while active: every storage an op returns is counted once, until
    it is freed (a weakref callback). ``track`` adds tensors that existed before (parameters, states).

    Same idea as torch.distributed._tools.mem_tracker.MemTracker, which cannot track frozen
    parameters (it registers a gradient hook on every parameter) — LoRA's base is frozen.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    tracker.track(t)
                return out

        self._mode, self._refs = _Mode(), WeakIdKeyDictionary()
        self.current = self.peak = 0

    def track(self, *tensors) -> None:
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage in self._refs:
                continue
            n = storage.nbytes()
            self._refs[storage] = weakref.ref(storage, lambda _, n=n: self._free(n))
            self.current += n
            self.peak = max(self.peak, self.current)

    def _free(self, n: int) -> None:
        self.current -= n

    def __enter__(self):
        self.peak = self.current
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


def meta_model(a: Arch, s: Setting):
    """The HF model of ``a`` with rlvf's LoRA (``inject_lora``: r, α = 2r, dropout, every linear but
    lm_head) and checkpointing as set, on the meta device: shapes only, no memory."""
    from transformers import AutoModelForCausalLM

    from rlvf.lora import inject_lora

    dtype = {2: torch.bfloat16, 4: torch.float32}[s.base_bytes]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(a.hf_config(max(4096, s.seq_len)), dtype=dtype,
                                                 attn_implementation="sdpa")
    model.requires_grad_(False)
    inject_lora(model, "all-linear", ["lm_head"], r=s.r, alpha=2 * s.r, dropout=s.dropout, seed=0)
    if s.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def materialise(model, device: torch.device, seed: int = 0) -> None:
    """Give a meta model (plain or sharded by FSDP2) storage on ``device`` and finite random values:
    norms 1, LoRA B 0, other weights N(0, 0.02); RoPE's inverse frequencies recomputed. Values do not
    change memory; initialising on the device keeps a 7B build to seconds."""
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard is a DTensor
            if name.endswith("norm.weight"):
                local.fill_(1.0)
            elif "lora_B" in name:
                local.zero_()
            else:
                local.normal_(0.0, 0.02, generator=generator)
        for module in model.modules():
            if hasattr(module, "inv_freq") and hasattr(module, "config"):
                fresh = type(module)(module.config)
                module.inv_freq = fresh.inv_freq.to(device)
                module.original_inv_freq = fresh.original_inv_freq.to(device)


def build_model(a: Arch, s: Setting, device: torch.device, seed: int = 0):
    """A random model of ``a`` with rlvf's LoRA on ``device``, in training mode: (model, LoRA params)."""
    from rlvf.lora import trainable_parameters

    model = meta_model(a, s)
    materialise(model, device, seed)
    model.train()
    return model, trainable_parameters(model)


def make_batch(a: Arch, s: Setting, device: torch.device, seed: int = 0) -> dict:
    """[chosen, rejected, near, out] rows of random tokens, no padding, prompts unscored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, a.vocab, (s.seqs, s.seq_len), generator=g)
    labels = ids.clone()
    labels[:, : s.prompt_len] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def micro_batch_loss(model, batch: dict, chunk: int) -> torch.Tensor:
    """C3PO on [chosen, rejected, near, out] (eq. 5 of the paper, λ_out 0.2, λ_near 0.1): DPO on the
    pair (reference log-probs cached: constants) + token-mean NLL on the near and out rows."""
    from rlvf.logprobs import sequence_logprobs
    from rlvf.losses import dpo_loss

    lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=chunk)
    ref = lp.logps.detach()[:2] - 1.0  # any constants
    dpo = dpo_loss(lp.logps[:1], lp.logps[1:2], ref[:1], ref[1:2], beta=0.1)
    nll = -lp.logps / lp.n_tokens.clamp(min=1)  # (S,)
    return dpo.losses.mean() + 0.2 * nll[3:].mean() + 0.1 * nll[2:3].mean()


def train_micro_batch(model, params, optimizer, batch: dict, chunk: int, last: bool) -> None:
    """What rlvf.train does per micro-batch (autocast on CUDA), and, on the last one of a step,
    clipping, the AdamW step and zero_grad."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if batch["input_ids"].is_cuda
                else contextlib.nullcontext())
    with autocast:
        loss = micro_batch_loss(model, batch, chunk)
    loss.backward()
    if last:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def warm_start(a: Arch, s: Setting, device: torch.device):
    """Model, LoRA parameters, AdamW, batch after one micro-batch and an optimizer step that keeps the
    gradients: AdamW's states and the gradients exist, as in any micro-batch after a step's first."""
    model, params = build_model(a, s, device)
    optimizer = torch.optim.AdamW(params, lr=1e-5, **({} if s.foreach_adam else {"foreach": False}))
    batch = make_batch(a, s, device)
    t0 = time.perf_counter()
    train_micro_batch(model, params, optimizer, batch, s.chunk, last=False)
    optimizer.step()
    return model, params, optimizer, batch, time.perf_counter() - t0


def measure_step(a: Arch, s: Setting, device: torch.device) -> dict:
    """Measured peak of a micro-batch with its optimizer step, after ``warm_start`` (gradients and AdamW
    states exist): bytes of everything, parameters included.

    CPU: ``LiveBytes`` over every tensor (parameters, states and batch tracked first). CUDA:
    ``torch.cuda.max_memory_allocated`` after resetting the peak statistics.
    """
    model, params, optimizer, batch, warm_s = warm_start(a, s, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        static = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        train_micro_batch(model, params, optimizer, batch, s.chunk, last=True)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        tracker = LiveBytes()
        tracker.track(*model.parameters(), *model.buffers(), *(p.grad for p in params), *batch.values(),
                      *(v for state in optimizer.state.values() for v in state.values()))
        static = tracker.current
        t0 = time.perf_counter()
        with tracker:
            train_micro_batch(model, params, optimizer, batch, s.chunk, last=True)
        peak = tracker.peak
    return {"static_bytes": static, "peak_bytes": peak, "step_s": time.perf_counter() - t0, "warmup_s": warm_s}


def rss_peak(a: Arch, s: Setting) -> float:
    """MiB the measured micro-batch adds to the resident set, in a fresh process (bench/common.PeakMemory,
    glibc's mmap threshold fixed at 128 KiB so freed blocks go back to the system)."""
    argv = ["--rss-worker", json.dumps({"arch": asdict(a), "setting": asdict(s)})]
    result = common.run_worker(__file__, argv, env=common.MALLOC_ENV)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["rss_mib"]


def _rss_worker(spec: str) -> None:
    spec = json.loads(spec)
    a, s, cpu = Arch(**spec["arch"]), Setting(**spec["setting"]), torch.device("cpu")
    model, params, optimizer, batch, _ = warm_start(a, s, cpu)
    with common.PeakMemory(cpu) as mem:
        train_micro_batch(model, params, optimizer, batch, s.chunk, last=True)
    common.emit({"rss_mib": mem.mib})


# --------------------------------------------------------------------------- validation and the table


SMALL = Arch("small Mistral-like (GQA 4:1)", 128, 448, 3, 8, 2, 1024, "mistral")
SMALL_HEAD = Arch("small Llama-like, 32k vocabulary", 128, 320, 2, 4, 4, 32000)
VALIDATION = [  # (arch, setting): CPU path (torch head, AdamW without foreach), a few seconds each
    (SMALL, Setting(seq_len=128, prompt_len=64, r=16, checkpointing=False, head="torch", foreach_adam=False)),
    (SMALL, Setting(seq_len=128, prompt_len=64, r=16, checkpointing=True, head="torch", foreach_adam=False)),
    (SMALL, Setting(seq_len=128, prompt_len=64, r=16, dropout=0.0, checkpointing=True, head="torch",
                    foreach_adam=False)),
    (SMALL, Setting(seq_len=128, prompt_len=32, r=16, base_bytes=4, checkpointing=False, head="torch",
                    foreach_adam=False)),
    (SMALL_HEAD, Setting(seq_len=256, prompt_len=64, r=8, base_bytes=4, checkpointing=True, head="torch",
                         foreach_adam=False, chunk=256)),
]


def validate(rss: bool = False, configs=VALIDATION) -> list[dict]:
    """Model vs measurement (``LiveBytes``, optionally RSS) for each validation config on the CPU."""
    rows = []
    for a, s in configs:
        model = step_memory(a, s)
        measured = measure_step(a, s, torch.device("cpu"))
        extra_model = model["peak_bytes"] - model["static_bytes"]
        extra_measured = measured["peak_bytes"] - measured["static_bytes"]
        row = {"arch": asdict(a), "setting": asdict(s), "model": model, "measured": measured,
               "model_extra_mib": extra_model / 2**20, "measured_extra_mib": extra_measured / 2**20,
               "extra_error": extra_model / extra_measured - 1,
               "peak_error": model["peak_bytes"] / measured["peak_bytes"] - 1,
               "static_error": model["static_bytes"] / measured["static_bytes"] - 1}
        if rss:
            row["rss_extra_mib"] = rss_peak(a, s)
        rows.append(row)
    return rows


def paper_settings() -> list[tuple[str, Arch, Setting]]:
    """The rows of the table: 7B and 8B on one GPU with checkpointing on and off, 70B on 8 GPUs."""
    out = []
    for key in ("mistral-7b", "llama3-8b"):
        for ckpt in (True, False):
            out.append((f"{key}, 1 GPU, ckpt {'on' if ckpt else 'off'}", ARCHS[key], Setting(checkpointing=ckpt)))
    for ckpt in (True, False):
        out.append((f"llama3-70b, FSDP2 × 8, ckpt {'on' if ckpt else 'off'}", ARCHS["llama3-70b"],
                    Setting(checkpointing=ckpt, ranks=8)))
    return out


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def paper_table(rows: list[dict]) -> str:
    header = ["setting", "weights", "LoRA p+g+AdamW", "FSDP gathered", "activations at peak", "peak GiB",
              "peak at", "logits chunk MiB", "fits 40 GB A100 (margin GiB)", "fits 80 GB H100 (margin GiB)"]
    body = []
    for r in rows:
        m, st = r["model"], r["model"]["static"]
        lora = st["lora_params"] + st["lora_grads"] + st["adamw_states"]
        fits = [f"{'yes' if m['peak_bytes'] < usable else 'no'} ({(usable - m['peak_bytes']) / GIB:+.1f})"
                for usable in (A100_40GB_USABLE, H100_80GB_USABLE)]
        body.append([r["name"], gib(st["weights"]), gib(lora), gib(st.get("fsdp_gathered", 0)),
                     gib(m["peak_bytes"] - m["static_bytes"]), gib(m["peak_bytes"]), m["peak_at"],
                     f"{m['logits_bytes'] / 2**20:.1f}", *fits])
    return common.markdown_table(header, body)


def validation_table(rows: list[dict]) -> str:
    header = ["config", "ckpt", "base", "dropout", "model extra MiB", "measured extra MiB", "error",
              "model peak MiB", "measured peak MiB", "error", "peak at (model)"]
    if any("rss_extra_mib" in r for r in rows):
        header.append("RSS extra MiB")
    body = []
    for r in rows:
        s = r["setting"]
        line = [f"{r['arch']['name']}: B {s['seqs']} × T {s['seq_len']}, r {s['r']}",
                "on" if s["checkpointing"] else "off", {2: "bf16", 4: "fp32"}[s["base_bytes"]], f"{s['dropout']:g}",
                f"{r['model_extra_mib']:.2f}", f"{r['measured_extra_mib']:.2f}", f"{100 * r['extra_error']:+.2f} %",
                f"{r['model']['peak_bytes'] / 2**20:.2f}", f"{r['measured']['peak_bytes'] / 2**20:.2f}",
                f"{100 * r['peak_error']:+.2f} %", r["model"]["peak_at"]]
        if "rss_extra_mib" in r:
            line.append(f"{r['rss_extra_mib']:.1f}")
        body.append(line)
    return common.markdown_table(header, body)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets for the 7B step in the paper preset."""
    r = next(r for r in rows if r["name"].startswith("mistral-7b, 1 GPU, ckpt on"))
    peak, logits = r["model"]["peak_bytes"], r["model"]["logits_bytes"]
    margin = A100_40GB_USABLE - peak
    return [f"- 7B step (ckpt on) fits a 40 GB A100: peak {gib(peak)} GiB of ~{gib(A100_40GB_USABLE)} GiB usable, "
            f"margin {gib(margin)} GiB: {common.verdict(-margin, 0, '<')}",
            f"- fused head's logits ≤ 1 % of 40 GB: {logits / 2**20:.1f} MiB = {100 * logits / (40 * GIB):.2f} %: "
            f"{common.verdict(logits / (40 * GIB), 0.01)}"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-validate", action="store_true", help="print the model's table only")
    parser.add_argument("--rss", action="store_true", help="validation also against RSS peaks (fresh processes)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for memory_model.jsonl")
    parser.add_argument("--rss-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_worker:
        _rss_worker(args.rss_worker)
        return 0
    command = common.command_line(__file__, argv)
    stamp = {"machine": common.device_name(torch.device("cpu")), "versions": common.versions(),
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command}
    rows = [{"benchmark": NAME, "kind": "model", "name": name, "arch": asdict(a), "setting": asdict(s),
             "model": step_memory(a, s), **stamp} for name, a, s in paper_settings()]
    print("Modelled peak memory of one training step (GiB; bytes of live tensors, as max_memory_allocated):")
    print(paper_table(rows))
    print("\n".join(targets(rows)))
    failed = False
    if not args.no_validate:
        t0 = time.perf_counter()
        checks = [{"benchmark": NAME, "kind": "validation", **r, **stamp} for r in validate(args.rss)]
        rows += checks
        worst = max(abs(r["extra_error"]) for r in checks)
        print(f"\nModel vs measured on the CPU (LiveBytes: every tensor allocation of the step), "
              f"{time.perf_counter() - t0:.0f} s:")
        print(validation_table(checks))
        failed = worst > TRACKER_TOLERANCE
        print(f"- largest error of the activation part (peak − static): {100 * worst:.2f} % "
              f"(≤ {100 * TRACKER_TOLERANCE:.0f} %): {common.verdict(worst, TRACKER_TOLERANCE)}")
    path = common.write_rows(args.out, NAME, rows)
    print(f"rows appended to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
