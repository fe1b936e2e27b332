"""A ``select`` section runs each selected feedback on its own, as the original's command line does.

The original (src/modal/app.py) trains and evaluates every feedback its prefix/category selects in a
job of its own; its ``second_feedback_prefix`` adds one feedback to each: with
``multi_feedback_training`` false (its default) evaluation concatenates the first feedback's adapter
and the second's with weights 1 and 1 (``add_weighted_adapter(..., "cat")``), with it true each first
feedback is trained together with the second; either way only the first feedback's held-out prompts
are scored, and results go to eval/<first>/<second>/. Checked here through the real commands on the
shipped tiny model and the offline teacher (a few optimizer steps), with the mix checked against the
sum of the two adapters' updates recomputed from their files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlvf.config import load_config
from rlvf.drafts import prepare_feedbacks
from rlvf.feedback_runs import eval_parts, train_parts

FEEDBACKS = ["ampersand-recipes", "uppercase-grandma", "fun-fact-ancient-history", "heart-emoji-maddie"]
FIRSTS = ["uppercase-grandma", "fun-fact-ancient-history"]  # the two that start "When "
SECOND = "heart-emoji-maddie"


def _config(tmp_path, model_dir, **select) -> Path:
    raw = {
        "feedback": FEEDBACKS,
        "select": {"prefix": "When ", **select},
        "serve": {"teacher": True, "student": True},
        "model": {"path": str(model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"dirs": [str(tmp_path / "data" / n) for n in FEEDBACKS], "max_length": 256,
                 "max_prompt_length": 96, "val_fraction": 0.1},
        "output_dir": str(tmp_path / "run"),
        "sample": {"categories": 2, "in_scope_per_category": 3, "near_scope_per_category": 3, "out_of_scope": 6,
                   "reviser": "teacher", "baselines": [], "student_sampling": {"temperature": 0.0, "max_tokens": 16}},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 1e-2, "progress": False},
        "eval": {"methods": ["adapter"], "prompts_per_set": 3, "sampling": {"temperature": 0.0, "max_tokens": 16}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _parts(path):
    cfg = load_config(path)
    prepare_feedbacks(cfg, str(path), "train", progress=False)
    return train_parts(cfg), eval_parts(cfg)


def test_the_runs_of_a_selection(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    # no second feedback: each selected feedback alone, trained and evaluated in output_dir/<name>
    train, evals = _parts(_config(tmp_path, tmp_path / "m", second_feedback=None))
    assert [p.name for p in train] == [p.name for p in evals] == FIRSTS
    for part, name in zip(train, FIRSTS):
        assert part.cfg.feedback == [name] and part.cfg.data.dirs == [str(data / name)]
        assert part.cfg.output_dir == str(run / name) and part.mix is None
        assert part.cfg.select.prefix is None and part.cfg.select.second_feedback is None  # its config.yaml: this run
    # separate (the default): every feedback alone, then each first mixed with the second
    train, evals = _parts(_config(tmp_path, tmp_path / "m", second_feedback="heart"))
    assert [p.cfg.output_dir for p in train] == [str(run / n) for n in FIRSTS + [SECOND]]
    assert [p.cfg.feedback for p in train] == [[n] for n in FIRSTS + [SECOND]]
    for part, name in zip(evals, FIRSTS):
        assert part.name == f"{name}/{SECOND}" and part.cfg.output_dir == str(run / name / SECOND)
        assert part.cfg.feedback == [name] and part.cfg.data.dirs == [str(data / name)]  # the first's prompts only
        assert part.mix == (run / name / "adapter", run / SECOND / "adapter")
    # together (the original's multi_feedback_training): each first trained with the second
    train, evals = _parts(_config(tmp_path, tmp_path / "m", second_feedback="heart", second_feedback_training="together"))
    assert [p.cfg.output_dir for p in train] == [p.cfg.output_dir for p in evals] == [str(run / n / SECOND) for n in FIRSTS]
    assert [p.cfg.feedback for p in train] == [[n, SECOND] for n in FIRSTS]
    assert [p.cfg.data.dirs for p in train] == [[str(data / n), str(data / SECOND)] for n in FIRSTS]
    assert [p.cfg.feedback for p in evals] == [[n] for n in FIRSTS] and not any(p.mix for p in evals)
    # a second feedback and no filter: every other feedback is a first one
    path = _config(tmp_path, tmp_path / "m", second_feedback="heart")
    raw = yaml.safe_load(path.read_text())
    del raw["select"]["prefix"]
    path.write_text(yaml.safe_dump(raw))
    assert [p.name for p in _parts(path)[1]] == [f"{n}/{SECOND}" for n in FEEDBACKS[:3]]
    # an eval.adapter given by the user is evaluated as it is: nothing to mix
    path = _config(tmp_path, tmp_path / "m", second_feedback="heart")
    raw = yaml.safe_load(path.read_text())
    raw["eval"]["adapter"] = str(tmp_path / "mine")
    path.write_text(yaml.safe_dump(raw))
    assert not any(p.mix for p in _parts(path)[1])


def test_two_selected_feedbacks_of_one_name_are_refused(tmp_path):
    """Each runs in output_dir/<name>: two of one name would share a run directory."""
    from rlvf.errors import UserError
    from rlvf.feedback import FEEDBACK_DIR

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "heart.yaml").write_text((FEEDBACK_DIR / "heart-emoji-maddie.yaml").read_text())
    path = _config(tmp_path, tmp_path / "m")
    raw = yaml.safe_load(path.read_text())
    raw["feedback"] = [str(tmp_path / "a" / "heart.yaml"), str(tmp_path / "b" / "heart.yaml")]
    raw["data"]["dirs"] = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    raw["select"] = {"prefix": "Always"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="select: .*b/heart.yaml: feedback name 'heart' already used by"):
        _parts(path)


def test_no_selection_is_one_run_over_every_feedback(tmp_path):
    path = _config(tmp_path, tmp_path / "m")
    raw = yaml.safe_load(path.read_text())
    del raw["select"]
    path.write_text(yaml.safe_dump(raw))
    train, evals = _parts(path)
    assert len(train) == len(evals) == 1 and train[0].name == "" and train[0].cfg.feedback == FEEDBACKS
    assert train[0].cfg.output_dir == str(tmp_path / "run")


def _delta(adapter_dir) -> dict[str, torch.Tensor]:
    """ΔW of every module, from the files alone: scaling · B @ A (scaling = α/r, no rsLoRA here)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not config.get("use_rslora") and not config.get("rank_pattern")
    scaling = config["lora_alpha"] / config["r"]
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return {k.removesuffix(".lora_A.weight"): scaling * weights[k.replace("lora_A", "lora_B")] @ weights[k]
            for k in weights if k.endswith("lora_A.weight")}


def test_separate_training_and_mixed_evaluation(tmp_path, tiny_model_dir, capsys):
    from rlvf.eval import main as evaluate
    from rlvf.pipeline import main as pipeline

    path = _config(tmp_path, tiny_model_dir, second_feedback="heart")
    run = tmp_path / "run"
    # before anything is trained, the mixed evaluation names what is missing
    with pytest.raises(SystemExit) as exc:
        evaluate(["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "select.second_feedback_training: separate: uppercase-grandma/heart-emoji-maddie" \
        f" is evaluated with the mix of two adapters trained alone, and there is no adapter at {run / FIRSTS[0] / 'adapter'}" in err[-1]
    assert not run.exists()

    pipeline(["--config", str(path)])
    capsys.readouterr()
    assert not (tmp_path / "data" / "ampersand-recipes").exists()  # not selected: not sampled
    for name in FIRSTS + [SECOND]:  # every feedback trained alone, on its own rows
        saved = yaml.safe_load((run / name / "config.yaml").read_text())
        assert saved["data"]["dirs"] == [str(tmp_path / "data" / name)]
        assert (run / name / "adapter" / "adapter_model.safetensors").is_file()
        assert not (run / name / "eval").exists()  # with a second feedback only the pairs are evaluated
    for name in FIRSTS:
        pair = run / name / SECOND
        mixed, first, second = _delta(pair / "adapter"), _delta(run / name / "adapter"), _delta(run / SECOND / "adapter")
        assert sorted(mixed) == sorted(first) == sorted(second)
        for key in mixed:  # the original's weights 1 and 1: ΔW = ΔW_first + ΔW_second
            torch.testing.assert_close(mixed[key], first[key] + second[key], rtol=1e-5, atol=1e-7)
        results = json.loads((pair / "eval" / "results.json").read_text())
        assert list(results) == [name] and set(results[name]) == {"adapter"}  # the first's held-out prompts only
        report = (pair / "eval" / "report.md").read_text(encoding="utf-8")
        assert f"{name}'s LoRA adapter ({run / name / 'adapter'}) and {SECOND}'s ({run / SECOND / 'adapter'}), each " \
               "trained alone with method c3po, concatenated with weights 1 and 1" in report


def test_together_trains_each_first_with_the_second(tmp_path, tiny_model_dir, capsys):
    from rlvf.pipeline import main as pipeline

    path = _config(tmp_path, tiny_model_dir, second_feedback="heart", second_feedback_training="together")
    pipeline(["--config", str(path)])
    run = tmp_path / "run"
    for name in FIRSTS:
        pair = run / name / SECOND
        saved = yaml.safe_load((pair / "config.yaml").read_text())
        assert saved["data"]["dirs"] == [str(tmp_path / "data" / n) for n in (name, SECOND)]
        assert list(json.loads((pair / "eval" / "results.json").read_text())) == [name]
        assert f"trained with method c3po on {name} and {SECOND} together" in (pair / "eval" / "report.md").read_text()
        assert not (run / name / "adapter").exists()
    assert not (run / SECOND).exists()
    # the same selection evaluated as `separate` would replace the jointly trained adapter by a mix: refused
    for name in FIRSTS + [SECOND]:  # as if each had also been trained alone
        (run / name / "adapter").mkdir(parents=True, exist_ok=True)
        (run / name / "adapter" / "adapter_config.json").write_text("{}")
    before = (run / FIRSTS[0] / SECOND / "adapter" / "adapter_model.safetensors").read_bytes()
    from rlvf.eval import main as evaluate

    with pytest.raises(SystemExit) as exc:
        evaluate(["--config", str(path), "--set", "select.second_feedback_training=separate"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and f"select.second_feedback_training: separate: {run / FIRSTS[0] / SECOND} holds a " \
        "run trained with the second feedback (together)" in err[-1]
    assert (run / FIRSTS[0] / SECOND / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_an_external_student_serves_one_adapter(tmp_path, tiny_model_dir, capsys):
    """Several adapters to evaluate, one name on an external server: refused before any request."""
    from rlvf.eval import main as evaluate

    path = _config(tmp_path, tiny_model_dir, second_feedback=None)
    raw = yaml.safe_load(path.read_text())
    raw["serve"]["student"] = False
    raw["student"] = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    path.write_text(yaml.safe_dump(raw))
    for name in FIRSTS:  # adapters in place, so that only the server's single name is at fault
        (tmp_path / "run" / name / "adapter").mkdir(parents=True)
        (tmp_path / "run" / name / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        evaluate(["--config", str(path), "--adapter-model", "heart"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[0].startswith("select: 2 of 4 feedbacks") and len(err) == 2
    assert "serve.student: false: the external student server serves one adapter, named 'heart', but this " \
           "evaluation needs 2 adapters" in err[1]
    assert not any((tmp_path / "run" / name / "eval").exists() for name in FIRSTS)


@pytest.mark.slow
def test_shipped_second_feedback_config_runs(tmp_path):
    """configs/tinyworld-second-feedback.yaml, as its header prints it (data and runs moved to tmp_path)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    dirs = [str(tmp_path / "data" / n) for n in ("heart-emoji-maddie", "uppercase-grandma", "fun-fact-ancient-history",
                                                 "concise-email-alan")]
    proc = subprocess.run([sys.executable, "-m", "rlvf.pipeline", "--config", "configs/tinyworld-second-feedback.yaml",
                           "--set", f"data.dirs=[{', '.join(dirs)}]", "--set", f"output_dir={tmp_path / 'run'}",
                           "--set", "train.progress=false"], capture_output=True, text=True, cwd=root, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for first in ("uppercase-grandma", "fun-fact-ancient-history"):
        pair = tmp_path / "run" / first / SECOND
        results = json.loads((pair / "eval" / "results.json").read_text())
        assert list(results) == [first] and set(results[first]) == {"base", "adapter"}
        assert (pair / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "data" / "concise-email-alan").exists()
