"""The whole-pipeline config: the training config plus the sections of sampling, serving and evaluation.

One YAML file describes an experiment end to end; each stage reads its sections:

    python -m rlvf.sample   --config X.yaml   feedback, teacher, student, sample  → data.dirs
    python -m rlvf.train    --config X.yaml   model, data, lora, method, train    → output_dir/adapter
    python -m rlvf.eval     --config X.yaml   feedback, teacher, student, eval    → output_dir/eval
    python -m rlvf.pipeline --config X.yaml   all three in order (serve: starts local servers)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from rlvf.client import EndpointConfig, Sampling
from rlvf.config import Config, UserError

BASELINE_KINDS = ("in_context", "cot")
EVAL_METHODS = ("adapter", "base", "in_context", "cot", "revised")


@dataclass
class ServeConfig:
    teacher: bool = False
    """Start the offline tiny-world teacher on a free loopback port and use it as the teacher (no API key)."""
    student: bool = False
    """Serve model.path (and, for evaluation, the trained adapter) on a free loopback port and use it as the student."""
    max_batch_size: int = 32
    """Rows per generate call of the local server."""
    teacher_revision: Literal["edit", "rewrite"] = "edit"
    """How the offline teacher revises: edit (the student's reply plus the feedback's edit) or rewrite (a fresh reply in the world's words, edited, as a GPT-4-class reviser rewrites)."""


@dataclass
class SampleConfig:
    categories: int = 5
    """K: categories of in-scope situations asked of the teacher per feedback."""
    in_scope_per_category: int = 10
    """In-scope prompts asked per category."""
    near_scope_per_category: int = 10
    """Near-scope prompts asked per category."""
    out_of_scope: int = 50
    """Out-of-scope prompts drawn from general_prompts."""
    general_prompts: str = "tinyworld"
    """Source of out-of-scope prompts: 'tinyworld' (world requests outside the feedback's scope and near scope), a JSONL file with a 'prompt' field per line, or a local datasets directory (save_to_disk) with a 'prompt' column."""
    test_fraction: float = 0.2
    """Share of each scope's prompts held out for evaluation (seeded split)."""
    seed: int = 0
    """Seed of the split, the general-prompt draw and the teacher/student request seeds."""
    filter_revisions: bool = True
    """Quantitative feedback: drop in-scope pairs whose revision does not beat the baseline on the metric (counted)."""
    negatives: bool = False
    """Also ask the teacher to apply the feedback to near/out baselines (field 'revised'), for dpo with negatives."""
    baselines: list[str] = field(default_factory=lambda: ["in_context", "cot"])
    """Extra student responses for the paper's baselines: in_context (feedback in the prompt), cot (reason first)."""
    max_parse_retries: int = 3
    """Teacher replies that do not parse are asked again with another seed this many times, then reported."""
    teacher_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.95, max_tokens=1024))
    """Sampling of teacher requests (categories, prompts, revisions)."""
    student_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))
    """Sampling of the student's baseline responses (greedy by default)."""


@dataclass
class EvalConfig:
    methods: list[str] = field(default_factory=lambda: ["adapter"])
    """What to evaluate: adapter (output_dir/adapter), base (the untrained model), in_context, cot, revised (the teacher's revisions, an upper bound)."""
    adapter: Union[str, None] = None
    """Adapter directory to evaluate as 'adapter' (default: output_dir/adapter); e.g. a mix made by python -m rlvf.adapters mix."""
    out_dir: Union[str, None] = None
    """Where results.json, report.md and chart.png go (default: output_dir/eval)."""
    judge_quality: bool = False
    """Also ask the teacher to rate each response's quality (1-5)."""
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))
    """Sampling of the evaluated responses (greedy by default, as the baselines)."""


@dataclass
class PipelineConfig(Config):
    feedback: list[str] = field(default_factory=list)
    """One feedback spec per entry of data.dirs: a shipped tiny-world name (e.g. heart-emoji-maddie) or a YAML path."""
    teacher: Union[EndpointConfig, None] = None
    """The teacher model's endpoint (GPT-4-class, any OpenAI-compatible server); or serve.teacher."""
    student: Union[EndpointConfig, None] = None
    """The served model being trained (its base name), for baseline and evaluated responses; or serve.student."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """Local servers the pipeline starts itself."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Data generation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""

    def validate_more(self, where: str) -> None:
        """Checks of the pipeline sections; UserError naming the key."""
        if self.feedback and len(self.feedback) != len(self.data.dirs):
            raise UserError(f"{where}: feedback: {len(self.feedback)} feedbacks for {len(self.data.dirs)} data.dirs; "
                            "give one feedback per data directory")
        for name in ("teacher", "student"):
            endpoint = getattr(self, name)
            if endpoint is not None:
                endpoint.validate(f"{where}: {name}")
        s = self.sample
        self.sample.teacher_sampling.validate(f"{where}: sample.teacher_sampling")
        self.sample.student_sampling.validate(f"{where}: sample.student_sampling")
        self.eval.sampling.validate(f"{where}: eval.sampling")
        for key in ("categories", "in_scope_per_category", "near_scope_per_category"):
            if getattr(s, key) < 1:
                raise UserError(f"{where}: sample.{key}: must be >= 1, got {getattr(s, key)}")
        if s.out_of_scope < 0 or not 0 < s.test_fraction < 1 or s.max_parse_retries < 0:
            raise UserError(f"{where}: sample: out_of_scope and max_parse_retries must be >= 0, "
                            "test_fraction in (0, 1)")
        for kind in s.baselines:
            if kind not in BASELINE_KINDS:
                raise UserError(f"{where}: sample.baselines: unknown {kind!r}; known: {', '.join(BASELINE_KINDS)}")
        for method in self.eval.methods:
            if method not in EVAL_METHODS:
                raise UserError(f"{where}: eval.methods: unknown {method!r}; known: {', '.join(EVAL_METHODS)}")
            if method in BASELINE_KINDS and method not in s.baselines:
                raise UserError(f"{where}: eval.methods: {method!r} needs sample.baselines to include it")
