"""bench/overgeneralization.py's bookkeeping: which --set overrides reach which method, how the
summary averages rows and checks the three targets, and what a row records of the last training
step. The benchmark itself trains 60 adapters (~25 min) and is run by hand (bench/README.md)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("bench_overgeneralization", BENCH / "overgeneralization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


og = _load()


def _row(method: str, feedback: str, s_in: float, s_near: float, s_general: float) -> dict:
    s_out = (s_near + s_general) / 2
    return {"method": method, "feedback": feedback, "S_in": s_in, "S_near": s_near, "S_general": s_general,
            "S_out": s_out, "S_overall": (s_in + 1 - s_out) / 2}


def test_method_overrides_scope():
    sets = ["train.epochs=12", "c3po:method.beta=0.01", "dpo:method.beta=0.03", "data.dirs=[a:b]"]
    assert og.method_overrides(sets, "c3po") == ["train.epochs=12", "method.beta=0.01", "data.dirs=[a:b]"]
    assert og.method_overrides(sets, "dpo") == ["train.epochs=12", "method.beta=0.03", "data.dirs=[a:b]"]
    assert og.method_overrides(sets, "scd") == ["train.epochs=12", "data.dirs=[a:b]"]


def test_summary_means_and_targets_met():
    rows = [_row("dpo", "a", 1.0, 0.8, 0.4), _row("dpo", "b", 0.6, 0.6, 0.2),
            _row("c3po", "a", 1.0, 0.2, 0.0), _row("c3po", "b", 0.8, 0.0, 0.0),
            _row("scd_neg", "a", 1.0, 0.4, 0.2), _row("scd_neg", "b", 1.0, 0.4, 0.2)]
    text = og.summary(rows)
    assert "mean over 2 feedbacks" in text
    c3po = next(line for line in text.splitlines() if line.startswith("| c3po |"))
    # S_in (1.0 + 0.8)/2, S_near 0.1, S_general 0, S_out 0.05, S_overall (0.9 + 1 - 0.05)/2
    assert c3po == "| c3po | 0.900 | 0.100 | 0.000 | 0.050 | 0.925 |"
    assert "highest mean S_overall: c3po (met)" in text
    assert "C3PO S_out 0.050 vs ½·DPO 0.250 (met)" in text
    assert "C3PO S_in 0.900 vs 0.9·DPO 0.720 (met)" in text


def test_summary_reports_each_missed_target():
    rows = [_row("dpo", "a", 1.0, 0.2, 0.0), _row("c3po", "a", 0.5, 0.4, 0.0), _row("scd_neg", "a", 1.0, 0.0, 0.0)]
    text = og.summary(rows)
    assert "highest mean S_overall: scd_neg (MISSED)" in text
    assert "C3PO S_out 0.200 vs ½·DPO 0.050 (MISSED)" in text
    assert "C3PO S_in 0.500 vs 0.9·DPO 0.900 (MISSED)" in text


def test_train_end_reads_the_last_step(tmp_path):
    final = {"loss": 0.24761, "loss/dpo": 6.2e-05, "loss/near": 1.1856, "logps/chosen": -26.16124,
             "logps/rejected": -1.57334, "lr": 7.3e-07, "tokens_per_s": 2697.8}
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 62, "final": final}), encoding="utf-8")
    got = og.train_end(tmp_path)
    assert got == {"loss": 0.2476, "loss/dpo": 6.2e-05, "loss/near": 1.186, "logps/chosen": -26.16,
                   "logps/rejected": -1.573}
    assert og.train_end(tmp_path / "missing") == {}
