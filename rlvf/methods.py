"""The training methods as one table: what each trains on, which settings it reads, its defaults.

Every place that depends on the method — the streams built from the data (rlvf/batches.py), the
loss assembled from log-probs (rlvf/objective.py), the config checks (rlvf/config.py) — looks the
method up here instead of testing its name. Each row reproduces one configuration of the original
research code (austrian-code-wizard/c3po, ``configs/*.json`` with TRL 0.7.10):

    method   original config               trains on
    c3po     config_lcdpo.json (algo lcdpo) DPO(in-scope pairs) + λ_out·L_c(out) + λ_near·L_c(near)
    dpo      config_dpo.json (algo dpo)     DPO on in-scope pairs; near/out rows as reversed pairs
                                            at negatives_*_ratio (0 there, so plain DPO)
    scd      config_sft.json (algo sft)     NLL of the revised in-scope responses
    scd_neg  config_sft_weighted.json       NLL(revised in) + λ_out·NLL(out) + λ_near·NLL(near),
             (algo sft_weighted)            λ 0.5 and 0.5
    sft      config_sft_neg.json (algo sft) NLL of revised in-scope responses and of near/out
                                            baselines joined as extra rows at ratio 0.5 each

This module imports nothing heavy, so the config can use it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Settings of the DPO term, of the NLL terms, of the near/out constraints and of the KD constraint.
_PAIR_KEYS = frozenset({"beta", "loss_type", "label_smoothing", "reference"})
_NLL_KEYS = frozenset({"nll_reduction"})
_CONSTRAINT_KEYS = frozenset({"lambda_out", "lambda_near"})
_C3PO_CONSTRAINT_KEYS = _CONSTRAINT_KEYS | {"constraint", "constraint_squared"}
KD_KEYS = frozenset({"kd_kappa", "kd_temperature", "kl_reduction"})
_NEGATIVE_KEYS = frozenset({"negatives_near_ratio", "negatives_out_ratio"})

# Settings whose default depends on the method (None in MethodConfig until resolved).
PER_METHOD_KEYS = ("lambda_out", "lambda_near", "negatives_near_ratio", "negatives_out_ratio", "disable_dropout")
# TRL 0.7.10's DPOTrainer (disable_dropout=True) sets p = 0 on every nn.Dropout of the PEFT-wrapped model,
# LoRA's lora_dropout included: the original's dpo and lcdpo runs train without any dropout; its SFT
# trainers (scd, scd_neg, sft) keep lora_dropout 0.05 and the model's own dropout.
_DPO_TRAINER = {"disable_dropout": True}


@dataclass(frozen=True)
class Method:
    """One training method: its data streams, the settings it reads, and its defaults."""

    name: str
    summary: str
    original: str  # the original code's config file this method reproduces at its defaults
    pairs: bool = False  # DPO on in-scope pairs, revised ≻ baseline
    sft_in: bool = False  # NLL of the revised in-scope responses
    negatives: str | None = None  # "pairs" (reversed pairs) or "rows" (NLL rows) made from near/out rows
    constraints: bool = False  # λ_out·L_c(out-of-scope baselines) + λ_near·L_c(near-scope baselines)
    kd: bool = False  # the constraint may be knowledge distillation (constraint: kd)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # values of PER_METHOD_KEYS left unset

    def reads(self, constraint: str = "sft") -> frozenset[str]:
        """The ``method.*`` settings this method uses (``constraint``: the configured L_c)."""
        keys = {"name", "disable_dropout"}
        if self.pairs or self.negatives == "pairs":
            keys |= _PAIR_KEYS
        if self.sft_in or self.negatives == "rows" or self.constraints:
            keys |= _NLL_KEYS
        if self.negatives:
            keys |= _NEGATIVE_KEYS
        if self.constraints:
            keys |= _C3PO_CONSTRAINT_KEYS if self.kd else _CONSTRAINT_KEYS
        if self.kd and constraint == "kd":
            keys |= KD_KEYS
        return frozenset(keys)

    def fields(self, scope: str, ratios: Mapping[str, float]) -> tuple[str, ...]:
        """Fields each row of ``scope`` must have ("in_scope", "near_scope", "out_of_scope");
        () when the method does not read that scope. ``ratios``: {scope: negatives ratio}."""
        if scope == "in_scope":
            return ("baseline", "revised")
        if self.constraints:
            return ("baseline",)
        if self.negatives and ratios.get(scope, 0) > 0:
            return ("baseline", "revised") if self.negatives == "pairs" else ("baseline",)
        return ()


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("c3po", "DPO(in-scope pairs) + λ_out·L_c(out-of-scope) + λ_near·L_c(near-scope) (paper eq. 5)",
           "config_lcdpo.json", pairs=True, constraints=True, kd=True,
           defaults={"lambda_out": 0.2, "lambda_near": 0.1, **_DPO_TRAINER}),
    Method("dpo", "DPO on in-scope pairs, plus near/out rows as reversed pairs (chosen = baseline) at "
           "negatives_*_ratio", "config_dpo.json", pairs=True, negatives="pairs",
           defaults={"negatives_near_ratio": 0.0, "negatives_out_ratio": 0.0, **_DPO_TRAINER}),
    Method("scd", "supervised context distillation: NLL of the revised in-scope responses",
           "config_sft.json", sft_in=True, defaults={"disable_dropout": False}),
    Method("scd_neg", "SCD + negatives: NLL(revised in) + λ_out·NLL(out baselines) + λ_near·NLL(near baselines)",
           "config_sft_weighted.json", sft_in=True, constraints=True,
           defaults={"lambda_out": 0.5, "lambda_near": 0.5, "disable_dropout": False}),
    Method("sft", "NLL of revised in-scope responses and of near/out baselines joined as extra rows at "
           "negatives_*_ratio", "config_sft_neg.json", sft_in=True, negatives="rows",
           defaults={"negatives_near_ratio": 0.5, "negatives_out_ratio": 0.5, "disable_dropout": False}),
)}

METHOD_NAMES = tuple(METHODS)


def summary(method_config) -> str:
    """One line for the training log: the method, its original config, and every setting it reads,
    e.g. 'c3po (the original's config_lcdpo.json at its defaults): beta=0.1 ...'."""
    spec = METHODS[method_config.name]
    keys = sorted(spec.reads(method_config.constraint) - {"name"})
    values = " ".join(f"{k}={setting(method_config, k)}" for k in keys)
    return f"{spec.name} (the original's {spec.original} at its defaults): {values}"


def setting(method_config, key: str):
    """``method_config.<key>``, or the method's own default when it is unset (None)."""
    value = getattr(method_config, key)
    if value is None and key in PER_METHOD_KEYS:
        return METHODS[method_config.name].defaults.get(key, 0.0)
    return value
