"""The experiment config: one YAML file, one schema, read by every command.

Each command reads the sections it needs and accepts (and checks) the others, so one file drives
the whole job, stage by stage or end to end:

    python -m rlvf.sample   --config X.yaml   feedback, teacher, student, serve, sample → data.dirs
    python -m rlvf.train    --config X.yaml   model, data, lora, method, train         → output_dir/adapter
    python -m rlvf.eval     --config X.yaml   feedback, teacher, student, serve, eval  → output_dir/eval
    python -m rlvf.pipeline --config X.yaml   all three in order

Every field has a type, a default and a docstring (``--help-config`` on any command prints them).
Loading checks everything before any work starts (rlvf/typed.py is the engine) and reports the
first problem as one line naming the file, or the ``--set`` override, and the key:

    configs/demo.yaml: train.lrr: unknown key (did you mean 'train.lr'?)
    --set lr=1e-4: lr: unknown key (did you mean 'train.lr'?)

Numbers have bounds a real run never reaches (stated in each key's help), so a typo such as
``train.batch_size: 1e20`` stops at load instead of exhausting memory. Relative paths are relative
to the working directory, not to the config file. Overrides (``--set train.lr=1e-4``, values parsed
as YAML) are applied to the raw YAML before checking. A ``sweep`` section expands one file into
several runs, each in its own directory under ``output_dir`` named by what it changed
(``load_runs``); each command honours it (``sweep_for``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterator, Literal, Union
from urllib.parse import urlparse

import yaml

from rlvf.atomic import dir_problem, writable_dir_problem
from rlvf.errors import UserError
from rlvf.hub_models import is_hub_id
from rlvf.methods import KD_KEYS, METHODS, PER_METHOD_KEYS
from rlvf.typed import (REQUIRED, NonEmpty, Origin, Range, Unique, Where, build, check, describe, dotted_keys,
                        error, hints, read_yaml, section_class, show, unknown_key, yaml_load)

__all__ = ["REQUIRED", "Config", "DataConfig", "EndpointConfig", "EvalConfig", "LoRAConfig", "MethodConfig",
           "ModelConfig", "SampleConfig", "Sampling", "ServeConfig", "SweepConfig", "TrainConfig", "check",
           "check_stage", "config_from_dict", "describe_for", "expand_sweep", "load_config", "load_runs",
           "parse_override", "read_yaml", "samplings", "save_config", "sweep_for", "to_dict", "yaml_load"]

# Sanity bounds: far above any real run, low enough that a typo fails at load, not hours later.
SEED_MAX = 2**32 - 1  # numpy's RandomState range; torch folds seed·1,000,003 into its int64 generator seed
COUNT_MAX = 1_000_000_000  # steps and intervals
TOKENS_MAX = 1 << 20  # sequence lengths and max_tokens: 1M tokens, beyond any model's context
ITEMS_MAX = 1000  # items one teacher request asks for (rlvf.serve's --max-teacher-items default)


def _path_key(path: str) -> str:
    """What makes two paths the same directory (symlinks and ./ resolved)."""
    return os.path.realpath(path)


_ONE_DIR_PER_FEEDBACK = Unique(_path_key, "each feedback needs its own data directory (a repeated one trains on "
                                          "every row twice, or a second feedback's data overwrites the first's)")
_FRACTION = Range(0, 1, hi_open=True, interval=True)  # [0, 1)


# ----------------------------------------------------------------------------- training sections


@dataclass
class ModelConfig:
    path: str = REQUIRED
    """Local Hugging Face model directory (config.json, safetensors weights, tokenizer with a chat template; a relative path is relative to the working directory), or a Hugging Face Hub id such as mistralai/Mistral-7B-Instruct-v0.2, used when no local path of that name exists and resolved through the Hugging Face cache (HF_HUB_CACHE / HF_HOME; HF_HUB_OFFLINE=1 uses the cache only)."""
    revision: Union[str, None] = None
    """Branch, tag or commit of the Hub repository model.path names (null: main); only for a Hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype of the frozen base model. auto: bfloat16 on CUDA, float32 on CPU (bf16 matmul is slow on CPUs)."""
    attn_implementation: Union[Literal["sdpa", "eager", "flash_attention_2"], None] = None
    """Attention kernel passed to from_pretrained; null (default): transformers chooses for the model (sdpa where the architecture supports it, else eager, as for Gemma-2 and BLOOM)."""
    chat_template: Union[str, None] = None
    """A Jinja chat template file (as chat_template.jinja) used instead of the tokenizer's, for training, reference log-probs and the served student alike; null: the tokenizer's."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra variables for every rendering of the chat template (training rows and served prompts alike), e.g. {enable_thinking: false} for Qwen3; a key the template never reads is an error."""
    gradient_checkpointing: bool = True
    """Recompute decoder activations in backward: less memory, about a third more compute (the original's gradient_checkpointing: true; off pays for small models on CPUs)."""


@dataclass
class LoRAConfig:
    r: Annotated[int, Range(0, 65536, lo_open=True, why="wider than any model's hidden size")] = 64
    """LoRA rank."""
    alpha: Annotated[float, Range(0, 1e6, lo_open=True)] = 128.0
    """LoRA alpha; the update is scaled by alpha/r (or alpha/sqrt(r) with use_rslora)."""
    dropout: Annotated[float, _FRACTION] = 0.05
    """Dropout on the adapter's input."""
    target_modules: Union[str, list[str]] = "all-linear"
    """'all-linear' (every nn.Linear but the output head), a list of module names (suffix match, as PEFT), or a regex (full match on the module path)."""
    exclude_modules: Union[str, list[str]] = field(default_factory=lambda: ["lm_head"])
    """Modules never wrapped, same syntax as target_modules."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)."""
    init_from: Union[str, None] = None
    """Continue from this PEFT-format adapter directory (e.g. DPO after SCD); r/alpha then come from it."""


@dataclass
class DataConfig:
    dirs: Annotated[list[str], NonEmpty("needs at least one data directory"), _ONE_DIR_PER_FEEDBACK] = REQUIRED
    """Data directories (one per feedback, no repeats) with {in_scope,near_scope,out_of_scope}_{train,test}.jsonl; two or more train on several feedbacks at once."""
    max_length: Annotated[int, Range(1, TOKENS_MAX)] = 2048
    """Longest prompt + completion in tokens; longer rows are truncated prompt-first."""
    max_prompt_length: Annotated[int, Range(1, TOKENS_MAX)] = 1024
    """Prompts of over-long rows are cut (from the left) to this many tokens before completions are cut; at most max_length."""
    val_fraction: Annotated[float, _FRACTION] = 0.05
    """Fraction of the training rows held out for validation (0 disables validation)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.max_prompt_length > self.max_length:
            yield "max_prompt_length", (f"must be in [1, data.max_length={self.max_length}], "
                                        f"got {self.max_prompt_length}")
        for i, data_dir in enumerate(self.dirs):  # the stages read and write these as directories
            problem = _dir_problem(data_dir)
            if problem:
                yield f"dirs[{i}]", problem


@dataclass
class MethodConfig:
    """The objective. Defaults reproduce the original code's config_lcdpo.json (C3PO); a setting the
    chosen method does not read must be left at its default (rlvf/methods.py lists what each reads)."""

    REPLACED_KEYS: ClassVar[dict[str, str]] = {  # keys that earlier versions read, with what replaced them
        "kd_per_token": "replaced by method.nll_reduction and method.kl_reduction (token_mean | sequence_sum)",
        "kd_squared": "renamed method.constraint_squared",
    }

    name: Literal["c3po", "dpo", "scd", "scd_neg", "sft"] = "c3po"
    """c3po: DPO(in) + λ_out·L_c(out) + λ_near·L_c(near) (config_lcdpo.json); dpo: DPO on in-scope pairs, near/out rows as reversed pairs at negatives_*_ratio (config_dpo.json); scd: NLL of revised in-scope responses (config_sft.json); scd_neg: scd + λ-weighted NLL of near/out baselines (config_sft_weighted.json); sft: NLL of revised in-scope responses and of near/out baselines as extra rows (config_sft_neg.json)."""
    beta: Annotated[float, Range(0, 1000, lo_open=True)] = 0.1
    """DPO temperature β (dpo_beta)."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """Preference loss: DPO (sigmoid), IPO (on per-token mean log-probs, as TRL ≥ 0.7.11) or hinge (SLiC)."""
    label_smoothing: Annotated[float, Range(0, 0.5, hi_open=True, interval=True)] = 0.0
    """Conservative DPO label smoothing ε (sigmoid loss only)."""
    reference: Literal["base", "init_adapter"] = "base"
    """Reference policy of the DPO term: base (the base model, adapters off, as the original also does when continuing from an adapter) or init_adapter (base + the lora.init_from adapter, dropout off)."""
    lambda_out: Union[Annotated[float, Range(0, 1e6)], None] = None
    """Weight λ_out of the out-of-scope constraint (lcdpo_sigma_soft). Unset: c3po 0.2, scd_neg 0.5."""
    lambda_near: Union[Annotated[float, Range(0, 1e6)], None] = None
    """Weight λ_near of the near-scope constraint (lcdpo_sigma_hard). Unset: c3po 0.1, scd_neg 0.5."""
    constraint: Literal["sft", "kd"] = "sft"
    """c3po's constraint L_c on near/out baselines: sft (their NLL) or kd ((1−κ)·NLL + κ·T²·KL(π_ref‖π), the original's KD; π_ref is the base model)."""
    nll_reduction: Literal["token_mean", "sequence_sum"] = "token_mean"
    """How each row's NLL is reduced over its completion tokens before the mean over rows: token_mean (Hugging Face's causal-LM loss of the row, as the original) or sequence_sum (−log π(y|x) of the whole response)."""
    kl_reduction: Literal["token_mean", "sequence_sum"] = "sequence_sum"
    """How each row's KL is reduced over its tokens (constraint: kd): sequence_sum (the original's default) or token_mean (lcdpo_avg_kl)."""
    kd_kappa: Annotated[float, Range(0, 1, interval=True)] = 1.0
    """KD mixing weight κ (lcdpo_lambda; constraint: kd). 1 reproduces config_lcdpo_kl.json."""
    kd_temperature: Annotated[float, Range(0, 1000, lo_open=True)] = 1.0
    """KD temperature T (lcdpo_temp; constraint: kd)."""
    constraint_squared: bool = False
    """Use ½·L_c² per row instead of L_c (the original's use_l2; c3po)."""
    negatives_near_ratio: Union[Annotated[float, Range(0, 1000)], None] = None
    """dpo, sft: near-scope rows added per in-scope row, as reversed pairs (dpo) or baseline rows (sft) (negative_prompt_ratio). Unset: dpo 0, sft 0.5."""
    negatives_out_ratio: Union[Annotated[float, Range(0, 1000)], None] = None
    """dpo, sft: out-of-scope rows added per in-scope row, as negatives_near_ratio (general_prompt_ratio). Unset: dpo 0, sft 0.5."""
    disable_dropout: Union[bool, None] = None
    """Train with every dropout off, LoRA's included. Unset: on for c3po and dpo (TRL 0.7.10's DPOTrainer, disable_dropout=True, zeroes them in the original), off for scd, scd_neg, sft (its SFT trainers keep lora.dropout)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Impossible combinations, and settings the method would ignore."""
        spec = METHODS[self.name]
        if self.label_smoothing != 0 and self.loss_type != "sigmoid":
            yield "label_smoothing", f"only applies to loss_type sigmoid, not {self.loss_type}"
        if self.constraint == "kd" and not spec.kd:
            yield "constraint", f"'kd' needs the reference model and applies to method c3po only, not {self.name}"
        if self.constraint == "kd" and self.reference == "init_adapter":
            yield "reference", "'init_adapter' with constraint 'kd' would mix two references (the KL's is the base model)"
        reads, default = spec.reads(self.constraint), MethodConfig()
        for f in dataclasses.fields(MethodConfig):
            value = getattr(self, f.name)
            if f.name not in reads and value is not None and value != getattr(default, f.name):
                used = "with constraint 'sft'" if f.name in KD_KEYS and spec.kd else f"by method {self.name}"
                yield f.name, f"{value!r} is not used {used}; remove it (rlvf/methods.py lists what each method reads)"


def resolve_method_defaults(m: MethodConfig) -> None:
    """Fill in the per-method defaults of the settings left unset, so the saved config shows the
    values that trained; remember which were unset (sweeps re-resolve them per point)."""
    spec = METHODS[m.name]
    unset = {key for key in PER_METHOD_KEYS if getattr(m, key) is None and key in spec.defaults}
    for key in unset:
        setattr(m, key, spec.defaults[key])
    m.__dict__["_unset"] = unset  # not a field: expand_sweep resets these to None for every point


@dataclass
class TrainConfig:
    lr: Annotated[float, Range(0, lo_open=True)] = 5e-5
    """Peak learning rate of AdamW."""
    epochs: Annotated[float, Range(0, 1e6, lo_open=True)] = 1.0
    """Passes over the main stream (in-scope pairs or rows); fractions allowed."""
    max_steps: Annotated[int, Range(0, COUNT_MAX)] = 0
    """Stop after this many optimizer steps (0: derived from epochs)."""
    batch_size: Annotated[int, Range(1, 65536)] = 1
    """Main-stream items per micro-batch (c3po also takes as many near and out rows); the loss does not depend on it, only memory and speed do."""
    grad_accum: Annotated[int, Range(1, 65536)] = 16
    """Micro-batches per optimizer step (the original's gradient_accumulation_steps: 16 at batch_size 1)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: Annotated[float, _FRACTION] = 0.05
    """Fraction of optimizer steps with linear warmup."""
    weight_decay: Annotated[float, Range(0, 100)] = 0.0
    """AdamW weight decay."""
    adam_betas: list[Annotated[float, _FRACTION]] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas: two numbers in [0, 1)."""
    max_grad_norm: Annotated[float, Range(0, 1e6)] = 1.0
    """Clip the adapter gradients' global norm to this (0 disables)."""
    seed: Annotated[int, Range(0, SEED_MAX, why="the range numpy and torch seeds share")] = 42
    """Seed of adapter init, data order, validation split and dropout."""
    logprob_chunk_size: Annotated[int, Range(1, TOKENS_MAX)] = 1024
    """Tokens per chunk of the fused lm-head log-prob; bounds logits memory to chunk × vocab."""
    eval_every: Annotated[int, Range(0, COUNT_MAX)] = 0
    """Validate every N optimizer steps (0: only at the end)."""
    save_every: Annotated[int, Range(0, COUNT_MAX)] = 0
    """Checkpoint every N optimizer steps (0: only at the end)."""
    save_total_limit: Annotated[int, Range(1, 10_000)] = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    stop_at_step: Annotated[int, Range(0, COUNT_MAX)] = 0
    """Checkpoint and exit after this optimizer step, as if interrupted (time-boxed jobs); continue with --resume."""
    log_every: Annotated[int, Range(1, COUNT_MAX)] = 1
    """Write metrics every N optimizer steps."""
    report_to: Literal["none", "wandb", "tensorboard"] = "none"
    """Also report metrics to Weights & Biases or TensorBoard (must be installed)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if len(self.adam_betas) != 2:
            yield "adam_betas", f"must be two numbers in [0, 1), got {self.adam_betas}"


# ----------------------------------------------------------------------------- endpoints and sampling


class _HttpUrl:
    """An http(s) URL with a host and no credentials in it."""

    doc = "an http(s) URL"

    def check(self, value: str) -> str | None:
        url = urlparse(value)
        if "@" in url.netloc:
            return ("holds credentials (user:password@); remove them from the URL and put the key in the "
                    "environment variable named by api_key_env")
        if url.scheme not in ("http", "https") or not url.hostname:
            return f"must be an http(s) URL such as https://api.openai.com/v1, got {show(value)}"
        return None


class _EnvVarName:
    """The name of an environment variable, never a key."""

    doc = "an environment variable's name"

    def check(self, value: str) -> str | None:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            return None
        return ("must be the NAME of an environment variable (letters, digits and _, e.g. OPENAI_API_KEY), "
                "not the key itself; export the key in that variable")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat-completions endpoint (the teacher, the student's server); rlvf.client sends to it."""

    base_url: Annotated[str, _HttpUrl()] = REQUIRED
    """API root of an OpenAI-compatible server, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1."""
    model: Annotated[str, NonEmpty("must name a model")] = REQUIRED
    """Model name sent with every request (for vLLM with --lora-modules: the adapter's name)."""
    api_key_env: Union[Annotated[str, _EnvVarName()], None] = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (never the key itself); null: send no key. Loopback servers may run without the variable set."""
    max_concurrency: Annotated[int, Range(1, 4096)] = 8
    """Requests in flight at once."""
    requests_per_minute: Annotated[float, Range(0, 1e9)] = 0
    """Client-side request rate limit, requests spaced 60/rpm seconds apart (0: unlimited)."""
    tokens_per_minute: Annotated[float, Range(0, 1e12)] = 0
    """Client-side token rate limit (0: unlimited); a request is charged prompt chars/4 + n·max_tokens up front, corrected by the usage the server reports."""
    timeout_s: Annotated[float, Range(0, 86400, lo_open=True, why="a day")] = 120
    """Seconds an attempt may wait for the server (connecting: at most 10 s) before it is abandoned and retried."""
    max_retries: Annotated[int, Range(0, 100)] = 6
    """Retries per request after its first attempt (6 retries back off for about 20 s in all)."""
    price_per_1m_input: Annotated[float, Range(0, 1e6)] = 0
    """USD per million prompt tokens, for the cost estimate in the summary (0 and 0: no estimate)."""
    price_per_1m_output: Annotated[float, Range(0, 1e6)] = 0
    """USD per million completion tokens, for the cost estimate in the summary."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Fields added to every request body, e.g. {min_p: 0.05} for vLLM; model, messages and sampling fields take precedence."""
    cache_namespace: Union[Annotated[str, NonEmpty("must be a non-empty string, or null for the base_url")],
                           None] = None
    """Names this endpoint in cache keys (null: base_url); set it to keep cached answers when the same model moves to another URL, change it to start afresh."""

    def namespace(self) -> str:
        """What identifies this endpoint's answers in cache keys: cache_namespace, else the base_url."""
        return self.cache_namespace or self.base_url.rstrip("/")


@dataclass
class Sampling:
    """Sampling fields of chat requests (OpenAI's names)."""

    temperature: Annotated[float, Range(0, 100)] = REQUIRED
    """Sampling temperature (0: greedy)."""
    top_p: Annotated[float, Range(0, 1, lo_open=True, interval=True)] = 1.0
    """Nucleus sampling mass."""
    max_tokens: Annotated[int, Range(1, TOKENS_MAX)] = 512
    """Most tokens generated per choice."""
    seed: Union[Annotated[int, Range(0, 2**63 - 1, why="a signed 64-bit integer")], None] = None
    """Sampling seed (honoured by vLLM and, best-effort, by OpenAI); sent as null when None."""
    n: Annotated[int, Range(1, 128)] = 1
    """Choices per request."""
    stop: Union[list[str], None] = None
    """Stop strings; sent as null when None."""
    top_k: Union[Annotated[int, Range(1, 1 << 31)], None] = None
    """Top-k (vLLM, llama.cpp, Together); sent only when set."""
    repetition_penalty: Union[Annotated[float, Range(0, 100, lo_open=True)], None] = None
    """Repetition penalty (vLLM, Together); sent only when set."""

    def body(self) -> dict[str, Any]:
        """The request fields, all explicit: vLLM and others fill absent ones from generation_config.json."""
        body = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "n": self.n, "stop": self.stop}
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if self.repetition_penalty is not None:
            body["repetition_penalty"] = self.repetition_penalty
        return body


# ----------------------------------------------------------------------------- sampling, serving, evaluation


BASELINE_KINDS = ("in_context", "cot")
EVAL_METHODS = ("adapter", "base", "in_context", "cot", "revised")


@dataclass
class ServeConfig:
    teacher: bool = False
    """Start the offline tiny-world teacher on a free loopback port and use it as the teacher (no API key)."""
    student: bool = False
    """Serve model.path (and, for evaluation, the trained adapter) on a free loopback port and use it as the student."""
    max_batch_size: Annotated[int, Range(1, 4096)] = 32
    """Rows per generate call of the local server."""
    teacher_revision: Literal["edit", "rewrite"] = "edit"
    """How the offline teacher revises: edit (the student's reply plus the feedback's edit) or rewrite (a fresh reply in the world's words, edited, as a GPT-4-class reviser rewrites)."""


@dataclass
class SampleConfig:
    categories: Annotated[int, Range(1, ITEMS_MAX, why="items one teacher request may ask for")] = 30
    """K: categories asked of the teacher per feedback, a slightly larger superset of its domain (the original: ceil(960 / 32) = 30)."""
    in_scope_per_category: Annotated[int, Range(1, ITEMS_MAX, why="items one teacher request may ask for")] = 32
    """In-scope prompts asked per category (the original's prompts_per_category; 30 × 32 = its 960)."""
    near_scope_per_category: Annotated[int, Range(1, ITEMS_MAX, why="items one teacher request may ask for")] = 32
    """Near-scope prompts asked per category."""
    out_of_scope: Annotated[int, Range(0, 1_000_000)] = 960
    """Out-of-scope prompts drawn from general_prompts."""
    general_prompts: Annotated[str, NonEmpty()] = "tinyworld"
    """Source of out-of-scope prompts: 'tinyworld' (world requests outside the feedback's scope and near scope), a JSONL file with a 'prompt' field per line, or a local datasets directory (save_to_disk) with a 'prompt' column."""
    general_prompts_column: Annotated[str, NonEmpty()] = "prompt"
    """The column (or JSONL field) of general_prompts that holds the prompts."""
    test_fraction: Annotated[float, Range(0, 1, lo_open=True, hi_open=True, interval=True)] = 0.1
    """Share of each scope's prompts held out for evaluation (seeded split; the original's train_test_split 0.1)."""
    seed: Annotated[int, Range(0, SEED_MAX, why="the range numpy and torch seeds share")] = 0
    """Seed of the split, the general-prompt draw and the teacher/student request seeds."""
    filter_revisions: bool = False
    """Quantitative feedback: drop in-scope pairs whose revision does not beat the baseline on the metric (counted; the original's filter_relevant_feedback, off)."""
    negatives: bool = False
    """Also have the reviser apply the feedback to near/out train baselines (field 'revised'), for dpo with negatives."""
    reviser: Literal["student", "teacher"] = "student"
    """Who writes the revised responses: student (the model being trained revises its own baseline given the feedback's effect, as the original) or teacher (given the feedback, applied where it applies)."""
    baselines: Annotated[list[Literal["in_context", "cot"]], Unique()] = field(
        default_factory=lambda: ["in_context", "cot"])
    """Extra student responses for the paper's baselines: in_context (feedback in the prompt), cot (reason first)."""
    max_parse_retries: Annotated[int, Range(0, 100)] = 3
    """Teacher replies (and student revisions) that do not parse are asked again with another seed this many times, then reported."""
    teacher_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.7, max_tokens=4096))
    """Sampling of teacher requests (categories, prompts, revisions with reviser teacher, judging): the original's 0.7 / 0.7, 4096 tokens."""
    student_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.7, max_tokens=600))
    """Sampling of the student's baseline, in-context and CoT responses and its revisions (reviser student): the original's 0.7 / 0.7, 600 tokens."""


@dataclass
class EvalConfig:
    methods: Annotated[list[Literal["adapter", "base", "in_context", "cot", "revised"]],
                       NonEmpty("needs at least one method"), Unique()] = field(default_factory=lambda: ["adapter"])
    """What to evaluate: adapter (output_dir/adapter), base (the untrained model), in_context, cot, revised (the revisions written by rlvf.sample: the student's own with sample.reviser student, an upper bound only with the teacher)."""
    adapter: Union[str, None] = None
    """Adapter directory to evaluate as 'adapter' (default: output_dir/adapter); e.g. a mix made by python -m rlvf.adapters mix."""
    out_dir: Union[str, None] = None
    """Where results.json, report.md and chart.png go (default: output_dir/eval)."""
    judge_quality: bool = False
    """Also ask the teacher to rate each response's quality (1-5)."""
    prompts_per_set: Annotated[int, Range(1, 1_000_000)] = 75
    """Held-out prompts scored per set (in scope, near scope, general): a seeded shuffle (seed 42) of the test split, then the first n, as the original."""
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=512))
    """Sampling of the evaluated responses: greedy with 512 new tokens, as the original's evaluation."""


@dataclass
class SweepConfig:
    params: list[str] = field(default_factory=list)
    """Dotted keys to sweep together, e.g. [train.lr, lora.r] (the original code's sweep_params)."""
    values: list[list[Any]] = field(default_factory=list)
    """One tuple of values per run, aligned with params (the original code's sweep_values)."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Cartesian grid {dotted key: [values]}; combined with params/values if both are given."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if bool(self.params) != bool(self.values):
            yield "values", "sweep.params and sweep.values must be given together"
        for i, values in enumerate(self.values):
            if len(values) != len(self.params):
                yield f"values[{i}]", f"has {len(values)} values for {len(self.params)} params"
        for key, values in self.grid.items():
            if not values:
                yield f"grid.{key}", "no values: an empty list would leave no run at all"
        keys = self.keys()
        for key in keys:
            where = "params" if key in self.params else "grid"
            if keys.count(key) > 1:
                yield where, f"{key} is swept twice"
            if key == "output_dir" or key.split(".")[0] == "sweep":
                yield where, f"{key} cannot be swept (each point gets its own output_dir)"

    def keys(self) -> list[str]:
        """The swept keys, params first."""
        return [*self.params, *self.grid]


# ----------------------------------------------------------------------------- the config


@dataclass
class SelectConfig:
    prefix: Union[str, None] = None
    """Keep the feedbacks whose sentence or file name starts with this (the original's feedback_prefix)."""
    category: Union[str, None] = None
    """Keep the feedbacks with this category, case-insensitive (the original's feedback_category)."""
    scope: Annotated[list[Literal["global", "regional", "local"]], Unique()] = field(default_factory=list)
    """Keep the feedbacks of these scopes (empty: all)."""
    type: Annotated[list[Literal["quantitative", "qualitative"]], Unique()] = field(default_factory=list)
    """Keep the feedbacks of these types (empty: all)."""
    second_feedback: Union[str, None] = None
    """Name or prefix of exactly one more feedback entry, kept whatever the filters, added to each selected feedback's run (the original's second_feedback_prefix; see second_feedback_training)."""
    second_feedback_training: Literal["separate", "together"] = "separate"
    """With second_feedback: separate (the original's default) trains every feedback alone and evaluates each selected one with its adapter mixed with the second's (concatenated, weights 1 and 1); together (the original's multi_feedback_training) trains each selected feedback with the second in one adapter. Either way in output_dir/<first>/<second>."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model being trained."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data directories: written by sample, read by train and eval."""
    output_dir: Annotated[str, NonEmpty()] = REQUIRED
    """Run directory: resolved config, metrics.jsonl, checkpoints/, adapter/, eval/ (relative paths are relative to the working directory)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The adapter."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Objective and its weights."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and bookkeeping."""
    feedback: list[Annotated[str, NonEmpty()]] = field(default_factory=list)
    """One feedback spec per entry of data.dirs: a shipped tiny-world name (e.g. heart-emoji-maddie) or a YAML path (sample and eval need it)."""
    teacher: Union[EndpointConfig, None] = None
    """The teacher model's endpoint (GPT-4-class, any OpenAI-compatible server); or serve.teacher."""
    student: Union[EndpointConfig, None] = None
    """The served model being trained (its base name), for baseline and evaluated responses; or serve.student."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """Local servers that sample, eval and pipeline start themselves."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Data generation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Which of the config's feedbacks (and their data.dirs) a command works on, as the original's command line selects them: each selected feedback is then trained and evaluated on its own, in output_dir/<feedback> (without a selection, all feedbacks are one run)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Optional sweep over config values."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Checks that span sections."""
        problem = _dir_problem(self.output_dir)
        if problem:
            yield "output_dir", problem
        if _inside(self.model.path, self.output_dir):
            yield "output_dir", (f"{self.output_dir} is, or holds, model.path {self.model.path}; a run needs a "
                                 "directory of its own")
        if self.method.reference == "init_adapter" and not self.lora.init_from:
            yield "method.reference", "'init_adapter' needs lora.init_from (the adapter training continues from)"
        if self.feedback and len(self.feedback) != len(self.data.dirs):
            yield "feedback", (f"{len(self.feedback)} feedbacks for {len(self.data.dirs)} data.dirs; "
                               "give one feedback per data directory")
        for method in self.eval.methods:
            if method in BASELINE_KINDS and method not in self.sample.baselines:
                yield "eval.methods", f"{method!r} needs sample.baselines to include it"


def _dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be a directory that a stage reads or creates, or None (nothing is written;
    whether a stage may write there is ``check_stage``'s question)."""
    return dir_problem(path)


def _inside(path: str, root: str) -> bool:
    """Is ``path`` the directory ``root`` or inside it?"""
    path, root = Path(_path_key(path)), Path(_path_key(root))
    return path == root or root in path.parents


# ----------------------------------------------------------------------------- loading


def set_dotted(raw: dict, key: str, value, where: Where) -> None:
    """``raw[a][b][c] = value`` for key 'a.b.c', checking each part names a config key."""
    cls, node, parts = Config, raw, key.split(".")
    everywhere = tuple(dotted_keys(Config))
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            raise unknown_key(cls, ".".join(parts[: i + 1]), where, everywhere)
        section = section_class(hints(cls)[part])
        if i == len(parts) - 1:
            node[part] = value
        elif section is None:
            raise error(where, key, f"'{'.'.join(parts[:i + 1])}' has no sub-keys")
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, cls = node[part], section


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-4' → ('train.lr', 0.0001); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{_label(text)}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    try:
        return key.strip(), yaml_load(value)
    except yaml.YAMLError as err:
        raise UserError(f"{_label(text)}: value is not valid YAML ({getattr(err, 'problem', err)})") from None


def config_from_dict(raw: dict, where: Where) -> Config:
    """A checked Config from a raw mapping, per-method defaults filled in."""
    cfg = build(Config, raw, "", where)
    resolve_method_defaults(cfg.method)
    return cfg


def _label(text: str) -> str:
    """``--set TEXT`` as messages show it (a 5000-digit value cut short)."""
    return f"--set {text if len(text) <= 80 else text[:60] + '…'}"


def origin(path: str | Path, overrides: list[str] = ()) -> Origin:
    """Where each value of a config came from: the file, or the ``--set`` override that set it."""
    return Origin(str(path), [(parse_override(text)[0], _label(text)) for text in overrides])


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override and check a YAML config (its sweep section is checked, not expanded: see
    ``load_runs``). Raises UserError naming the file, or the ``--set`` override, and the key."""
    raw = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value, _label(text))
    return config_from_dict(raw, origin(path, overrides))


def load_runs(path: str | Path, overrides: list[str] = ()) -> list[tuple[str, Config]]:
    """``load_config`` with the sweep expanded, each point built and checked once: [(name, config)],
    one entry named '' without a sweep."""
    return expand_sweep(load_config(path, overrides), str(path))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, sections: tuple[str, ...] | None = None) -> None:
    """Write the resolved config (all defaults filled in, no sweep section) as YAML; ``sections``
    keeps only those top-level keys."""
    data = to_dict(cfg)
    data.pop("sweep", None)
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ----------------------------------------------------------------------------- sweeps


def _format_value(v) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text)


def expand_sweep(cfg: Config, where: str) -> list[tuple[str, Config]]:
    """[(run name, config)]: one entry named '' without a sweep, else one per sweep point.

    Points are the params/values tuples (zipped) crossed with the grid's cartesian product. Each
    run's output_dir (and eval.out_dir, when set) is ``<dir>/<key>=<value>,...`` naming only what
    the point changed. Settings whose default depends on the method are resolved per point.
    """
    sw = cfg.sweep
    if not sw.keys():
        return [("", cfg)]
    tuples = [list(zip(sw.params, values)) for values in sw.values] or [[]]
    grid = [list(zip(sw.grid, combo)) for combo in itertools.product(*sw.grid.values())]
    base = to_dict(cfg)
    base.pop("sweep")
    for key in getattr(cfg.method, "_unset", ()):  # per-method defaults follow each point's method.name
        base["method"][key] = None
    runs = []
    for point in (t + g for t in tuples for g in grid):
        raw = copy.deepcopy(base)
        for key, value in point:
            set_dotted(raw, key, value, f"{where}: sweep")
        name = ",".join(f"{k}={_format_value(v)}" for k, v in point)
        run = config_from_dict(raw, f"{where} (sweep point {name})")
        run.output_dir = str(Path(cfg.output_dir) / name)
        if run.eval.out_dir is not None and "eval.out_dir" not in sw.keys():
            run.eval.out_dir = str(Path(run.eval.out_dir) / name)
        runs.append((name, run))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise error(where, "sweep", "two sweep points have the same name")
    return runs


# What each stage reads (dotted prefixes); the pipeline reads them all.
STAGE_READS = {
    "sample": ("feedback", "select", "teacher", "student", "serve", "sample", "data.dirs", "model.path",
               "model.revision", "model.chat_template", "model.chat_template_kwargs"),
    "train": ("model", "data", "output_dir", "lora", "method", "train", "select"),
    "eval": ("feedback", "select", "teacher", "student", "serve", "sample", "eval", "data.dirs", "output_dir",
             "model.path", "model.revision", "model.chat_template", "model.chat_template_kwargs", "method.name"),
}
STAGE_READS["pipeline"] = tuple(dict.fromkeys(k for keys in STAGE_READS.values() for k in keys))


def reads(stage: str, key: str) -> bool:
    """Does ``stage`` read config key ``key`` (or part of it)?"""
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in STAGE_READS[stage])


def _view(cfg: Config, stage: str) -> dict:
    """The values ``stage`` reads, by dotted key."""
    data, out = to_dict(cfg), {}
    for key in STAGE_READS[stage]:
        node = data
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def swept_keys(runs: list[tuple[str, Config]]) -> list[str]:
    """The keys a sweep changes, read from the first point's name ('train.lr=1e-05,lora.r=8'; values
    never hold ',' or '=', see _format_value); [] without a sweep."""
    return [part.split("=", 1)[0] for part in runs[0][0].split(",")] if runs[0][0] else []


def sweep_for(runs: list[tuple[str, Config]], stages: tuple[str, ...], where: Where) -> None:
    """Refuse, in one line, a sweep that is meaningless for these stages (every point would do the
    same work) or whose points would overwrite each other's files."""
    swept = swept_keys(runs)
    if not swept:
        return
    cfg = runs[0][1]
    if stages == ("train",) and not any(reads("train", k) for k in swept):
        raise error(where, "sweep", f"python -m rlvf.train reads none of the swept keys ({', '.join(swept)}), so "
                                    "every point would train the same run; run the sweep with python -m rlvf.pipeline")
    if "eval" in stages and cfg.eval.adapter is not None and "eval.adapter" not in swept and \
            ("train" in stages or not any(reads("eval", k) for k in swept)):
        raise error(where, "eval.adapter", "names one adapter for every sweep point; leave it unset (each point "
                                           "evaluates its own output_dir/adapter) or sweep eval.adapter")
    if "sample" in stages:
        samplings(runs, where)


def samplings(runs: list[tuple[str, Config]], where: Where) -> list[Config]:
    """The distinct samplings of a sweep: points that sample the same settings into the same data
    directories share one. Two points that sample different settings into the same data directory
    are refused (the second would overwrite the first's data)."""
    distinct: dict[str, tuple[str, Config]] = {}
    owner: dict[str, str] = {}  # data dir -> the sampling that writes it
    for name, cfg in runs:
        view = _view(cfg, "sample")
        fingerprint = yaml.safe_dump(view, sort_keys=True)
        if fingerprint in distinct:
            continue
        distinct[fingerprint] = (name, cfg)
        for data_dir in cfg.data.dirs:
            other = owner.setdefault(_path_key(data_dir), name)
            if other != name:
                raise error(where, "sweep", f"points {other} and {name} sample different settings into the same "
                                            f"data directory {data_dir}; sweep data.dirs along with them")
    return [cfg for _, cfg in distinct.values()]


# ----------------------------------------------------------------------------- the stages' own checks


def _missing(path: str) -> str | None:
    """'<path> does not exist (relative to the working directory …)', or None if it exists."""
    if Path(path).exists():
        return None
    relative = "" if Path(path).is_absolute() else f" (relative to the working directory {os.getcwd()})"
    return f"{path} does not exist{relative}"


def check_stage(cfg: Config, stage: str, where: Where) -> None:
    """What ``stage`` ('sample', 'train', 'eval') needs from the config beyond its types, before anything runs."""
    loads_model = stage == "train" or (stage in ("sample", "eval") and cfg.serve.student)
    missing = _missing(cfg.model.path) if loads_model and not is_hub_id(cfg.model.path) else None
    if missing:
        raise error(where, "model.path", f"{missing}; give a local Hugging Face model directory or a Hub id (owner/name)")
    if stage in ("sample", "eval") and not cfg.feedback:
        raise error(where, "feedback", f"missing required value: rlvf.{stage} needs the feedback each data.dirs "
                                       "entry is about (one shipped name or YAML path per data directory)")
    missing = _missing(cfg.lora.init_from) if stage == "train" and cfg.lora.init_from else None
    if missing:
        raise error(where, "lora.init_from", f"{missing}; give a PEFT-format adapter directory")
    if stage == "eval":
        needs_student = [m for m in cfg.eval.methods if m in ("adapter", "base")]
        if needs_student and cfg.student is None and not cfg.serve.student:
            raise error(where, "student", f"eval.methods {', '.join(needs_student)} need a student endpoint "
                                          "(student: {base_url, model}) or serve.student: true")
    if stage == "sample":
        for role in ("teacher", "student"):
            if getattr(cfg, role) is None and not getattr(cfg.serve, role):
                raise error(where, role, f"no endpoint configured: give {role}: {{base_url, model}}, or "
                                         f"serve.{role}: true for rlvf's local server")
    for key, path in _written_dirs(cfg, stage):  # last: it tries to write (and removes what it tried)
        problem = writable_dir_problem(path)
        if problem:
            raise error(where, key, problem)


def _written_dirs(cfg: Config, stage: str) -> list[tuple[str, str]]:
    """(config key, directory) of every directory ``stage`` writes."""
    if stage == "train":
        return [("output_dir", cfg.output_dir)]
    if stage == "sample":
        return [(f"data.dirs[{i}]", d) for i, d in enumerate(cfg.data.dirs)]
    if stage == "eval":
        return [("eval.out_dir", cfg.eval.out_dir)] if cfg.eval.out_dir else [("output_dir", str(Path(cfg.output_dir) / "eval"))]
    return []


def describe_for(stage: str) -> str:
    """``--help-config`` of ``python -m rlvf.<stage>``: the keys it reads, their types, defaults and docs."""
    head = (f"Keys python -m rlvf.{stage} reads (type = default, then what it does). A config file may hold "
            "every section; the ones this command does not read are checked and otherwise ignored.\n")
    if stage == "pipeline":
        head = "Every config key (type = default, then what it does); sample, train and eval each read their part.\n"
    return head + describe(Config, only=lambda key: key.startswith("sweep") or reads(stage, key))


# ----------------------------------------------------------------------------- command lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and --help-config, the same on every command."""
    parser.add_argument("--config", help="experiment YAML (see configs/); every command reads the same file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--help-config", action="store_true",
                        help="list the config keys this command reads: type, default, what each does")


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, stage: str) -> argparse.Namespace:
    """Parse ``argv``; --help-config prints ``describe_for(stage)`` and exits 0."""
    args = parser.parse_args(argv)
    if args.help_config:
        print(describe_for(stage))
        raise SystemExit(0)
    if not args.config:
        parser.error("--config is required (or --help-config)")
    return args
