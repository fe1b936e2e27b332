"""End-to-end training on the tiny model: learning signal, methods, resume, sweeps, bad data."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from rlvf.config import load_config
from rlvf.metrics_log import read_metrics
from rlvf.train import main, saturation_hint, train

TOY = Path(__file__).resolve().parent.parent / "configs" / "data" / "maddie-heart"


def make_config(tmp_path: Path, model_dir, name="run", **sections) -> Path:
    raw = {
        "model": {"path": str(model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"dirs": [str(TOY)], "max_length": 128, "max_prompt_length": 64, "val_fraction": 0.1},
        "output_dir": str(tmp_path / name),
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05},
        "method": {"name": "c3po"},
        "train": {"lr": 5e-3, "batch_size": 2, "grad_accum": 1, "max_steps": 4, "progress": False, "seed": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run(path, *extra) -> Path:
    main(["--config", str(path), *extra])
    return Path(load_config(path).output_dir)


def last(rows, key):
    return [r[key] for r in rows if key in r][-1]


def test_c3po_lowers_loss_and_raises_margin(tmp_path, tiny_model_dir):
    out = run(make_config(tmp_path, tiny_model_dir, train={"max_steps": 12, "eval_every": 4}))
    rows = read_metrics(out)
    steps = [r for r in rows if "loss" in r]
    # At step 1 the adapter is zero (B = 0), so policy = reference: loss/dpo = log 2, margin 0.
    assert steps[0]["step"] == 1
    assert steps[0]["loss/dpo"] == pytest.approx(0.693147, abs=1e-5)
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    evals = [r for r in rows if "eval/loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["eval/loss/dpo"] == pytest.approx(0.693147, abs=1e-5)
    assert [e["step"] for e in evals] == [0, 4, 8, 12]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert last(rows, "eval/rewards/margins") > 0
    assert last(rows, "eval/loss/dpo") < 0.693
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # readable by a server running as another user: the umask's mode, not safetensors' 0600
    from rlvf.atomic import default_mode
    for path in (out / "adapter" / "adapter_model.safetensors", out / "ref_logps.safetensors"):
        assert path.stat().st_mode & 0o777 == default_mode(), path
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"]["lambda_out"] == 0.2 and saved["train"]["max_steps"] == 12
    for key in ("lr", "grad_norm", "tokens_per_s", "loss/near", "loss/out", "rewards/accuracies"):
        assert key in steps[0]


def test_constraint_weights_move_near_and_out_terms(tmp_path, tiny_model_dir):
    finals = {}
    for lam in (0.0, 2.0):
        out = run(make_config(tmp_path, tiny_model_dir, name=f"lam{lam}",
                              method={"lambda_out": lam, "lambda_near": lam}, train={"max_steps": 10}))
        rows = read_metrics(out)
        finals[lam] = (last(rows, "eval/loss/near"), last(rows, "eval/loss/out"))
    # λ weights −log π(baseline) on near/out rows: a larger λ keeps those NLLs lower.
    assert finals[2.0][0] < finals[0.0][0]
    assert finals[2.0][1] < finals[0.0][1]


def test_resume_is_bit_exact(tmp_path, tiny_model_dir):
    full = run(make_config(tmp_path, tiny_model_dir, name="full", train={"max_steps": 6, "grad_accum": 2}))
    cut = make_config(tmp_path, tiny_model_dir, name="cut", train={"max_steps": 6, "grad_accum": 2, "stop_at_step": 3})
    out = run(cut)
    assert not (out / "adapter").exists() and (out / "checkpoints" / "step-000003").is_dir()
    run(cut, "--resume")
    a = (full / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]
    assert strip(read_metrics(full)) == strip(read_metrics(out))


def test_existing_run_needs_resume_and_same_config(tmp_path, tiny_model_dir, capsys):
    path = make_config(tmp_path, tiny_model_dir, train={"max_steps": 2, "stop_at_step": 1})
    run(path)
    with pytest.raises(SystemExit) as exc:
        run(path)
    assert exc.value.code == 2 and "already holds a run; pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run(path, "--resume", "--set", "train.lr=1e-2")
    assert exc.value.code == 2
    assert "train.lr was 0.005, now 0.01" in capsys.readouterr().err


@pytest.mark.parametrize("method", [
    {"name": "dpo"},
    {"name": "dpo", "negatives_near_ratio": 0.5, "negatives_out_ratio": 0.25},
    {"name": "dpo", "loss_type": "ipo"},
    {"name": "dpo", "loss_type": "hinge"},
    {"name": "scd"},
    {"name": "scd_neg"},
    {"name": "sft"},
    {"name": "c3po", "constraint": "kd", "kd_kappa": 0.5, "kd_temperature": 2.0},
    {"name": "c3po", "constraint": "kd", "kl_reduction": "token_mean", "nll_reduction": "sequence_sum"},
    {"name": "c3po", "nll_reduction": "sequence_sum", "constraint_squared": True},
], ids=lambda m: "-".join(str(v) for v in m.values()))
def test_every_method_trains(tmp_path, tiny_model_dir, method):
    out = run(make_config(tmp_path, tiny_model_dir, method=method, train={"max_steps": 2}))
    rows = read_metrics(out)
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert (out / "adapter" / "adapter_config.json").is_file()
    keys = set().union(*rows)
    if method["name"] in ("dpo", "c3po"):
        assert "rewards/margins" in keys
    if method["name"] in ("c3po", "scd_neg"):
        assert {"loss/near", "loss/out"} <= keys


def test_dpo_negatives_add_pairs(tmp_path, tiny_model_dir, capsys):
    run(make_config(tmp_path, tiny_model_dir, name="neg", method={"name": "dpo", "negatives_near_ratio": 0.5},
                    train={"max_steps": 1}))
    err = capsys.readouterr().err
    n_in = sum(1 for _ in open(TOY / "in_scope_train.jsonl"))
    # 90% of the in-scope rows train, plus int(0.5 · n_in_train) near-scope negatives (the original's count)
    n_train = n_in - max(1, int(n_in * 0.1))
    assert f"{n_train + int(0.5 * n_train)} train items" in err
    # the log names the method, its original config and every setting it reads, resolved
    assert ("method dpo (the original's config_dpo.json at its defaults): beta=0.1 disable_dropout=True "
            "label_smoothing=0.0 loss_type=sigmoid negatives_near_ratio=0.5 negatives_out_ratio=0.0 reference=base") in err


def test_continue_from_adapter_and_two_feedbacks(tmp_path, tiny_model_dir, capsys):
    scd = run(make_config(tmp_path, tiny_model_dir, name="scd", method={"name": "scd"}, train={"max_steps": 3}))
    second = tmp_path / "second-feedback"
    shutil.copytree(TOY, second)
    capsys.readouterr()
    dpo = run(make_config(tmp_path, tiny_model_dir, name="dpo", method={"name": "dpo"},
                          data={"dirs": [str(TOY), str(second)]}, lora={"init_from": str(scd / "adapter")},
                          train={"max_steps": 2}))
    err = capsys.readouterr().err
    n_in = sum(1 for _ in open(TOY / "in_scope_train.jsonl"))
    assert f"{2 * n_in - max(1, int(2 * n_in * 0.1))} train items" in err
    rows = read_metrics(dpo)
    # the reference is the base model, as in the original's config_dpo_after_sft.json (TRL disables
    # the PEFT adapter for the reference): before training, the SCD adapter already moves the margin
    assert rows[0]["step"] == 0 and abs(rows[0]["eval/rewards/margins"]) > 1e-3
    cfg = json.loads((dpo / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4
    # method.reference: init_adapter makes the SCD adapter itself the reference: policy = reference
    start = run(make_config(tmp_path, tiny_model_dir, name="dpo-start",
                            method={"name": "dpo", "reference": "init_adapter"},
                            lora={"init_from": str(scd / "adapter")}, train={"max_steps": 1}))
    rows = read_metrics(start)
    assert rows[0]["step"] == 0 and rows[0]["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_sweep_runs_each_point_in_its_own_dir(tmp_path, tiny_model_dir):
    path = make_config(tmp_path, tiny_model_dir, name="sw", train={"max_steps": 1},
                       sweep={"params": ["train.lr", "lora.r"], "values": [[1e-3, 2], [2e-3, 4]]})
    main(["--config", str(path)])
    for name, r in (("train.lr=0.001,lora.r=2", 2), ("train.lr=0.002,lora.r=4", 4)):
        cfg = json.loads((tmp_path / "sw" / name / "adapter" / "adapter_config.json").read_text())
        assert cfg["r"] == r
        assert yaml.safe_load((tmp_path / "sw" / name / "config.yaml").read_text())["lora"]["r"] == r


def test_truncated_rows_are_dropped_and_counted(tmp_path, tiny_model_dir, capsys):
    out = run(make_config(tmp_path, tiny_model_dir, data={"max_length": 38, "max_prompt_length": 38},
                          train={"max_steps": 1}))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["dropped_rows"] > 0
    assert f"{summary['dropped_rows']} rows dropped by truncation" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_model_dir, capsys):
    path = make_config(tmp_path, tiny_model_dir, train={"max_steps": 8, "lr": 1e30, "max_grad_norm": 0.0,
                                                        "save_every": 1, "warmup_ratio": 0.0})
    with pytest.raises(SystemExit) as exc:
        run(path)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "non-finite" in err and "last good checkpoint is" in err
    ckpt = Path(err.split("last good checkpoint is ")[1].split(".")[0].rstrip(","))
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "adapter").exists()


BAD_DATA = [
    ("in_scope_train.jsonl", '{"id": "x", "prompt": "p", "baseline": "b"}\n', ":1: missing field 'revised'"),
    ("near_scope_train.jsonl", '{"id": "x", "prompt": "p", "baseline": 7}\n', ":1: field 'baseline' must be a string"),
    ("out_of_scope_train.jsonl", "", ": no rows"),
]


@pytest.mark.parametrize("file,content,fragment", BAD_DATA, ids=[b[2] for b in BAD_DATA])
def test_bad_data_stops_before_any_work(tmp_path, tiny_model_dir, capsys, file, content, fragment):
    data = tmp_path / "data"
    shutil.copytree(TOY, data)
    (data / file).write_text(content)
    path = make_config(tmp_path, tiny_model_dir, data={"dirs": [str(data)]})
    with pytest.raises(SystemExit) as exc:
        run(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert f"{data / file}{fragment}" in err[0]
    assert not (tmp_path / "run").exists()


def test_bad_model_dir_and_template(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        run(make_config(tmp_path, tmp_path / "nowhere", name="a"))
    assert "model.path: " in capsys.readouterr().err
    broken = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "chat_template.jinja").unlink()
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        run(make_config(tmp_path, broken, name="b"))
    assert "has no chat template" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_function_returns_peft_adapter(tmp_path, tiny_model_dir):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, train={"max_steps": 1}))
    out = train(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_gradient_checkpointing_gives_the_same_step(tmp_path, tiny_model_dir):
    plain = run(make_config(tmp_path, tiny_model_dir, name="plain", train={"max_steps": 2}))
    gc = run(make_config(tmp_path, tiny_model_dir, name="gc", model={"gradient_checkpointing": True},
                         train={"max_steps": 2}))
    for a, b in zip(read_metrics(plain), read_metrics(gc)):
        for key in ("loss", "grad_norm", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5)


def test_gradient_checkpointing_is_switched_on(tmp_path, tiny_model_dir, recwarn):
    import torch

    from rlvf.train import RunContext, _build_model

    for on in (False, True):
        cfg = load_config(make_config(tmp_path, tiny_model_dir, name=f"gc{on}", model={"gradient_checkpointing": on}))
        model, _ = _build_model(RunContext(cfg, pad_id=0, device=torch.device("cpu")))
        state = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.24's name
        assert (model.is_gradient_checkpointing if state is None else state) is on
    # through the current transformers name, not the deprecated one
    assert not [w for w in recwarn if "gradient_checkpointing_enable" in str(w.message)]


@pytest.mark.parametrize("reporter", ["wandb", "tensorboard"])
def test_reporters_need_their_package(tmp_path, tiny_model_dir, capsys, reporter):
    import importlib.util

    path = make_config(tmp_path, tiny_model_dir, train={"max_steps": 1, "report_to": reporter})
    if importlib.util.find_spec(reporter) is not None:
        pytest.skip(f"{reporter} is installed here; the missing-package path cannot be exercised")
    with pytest.raises(SystemExit) as exc:
        run(path)
    assert exc.value.code == 2
    assert f"needs the {reporter} package (pip install {reporter})" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _hint_metrics(loss_dpo, chosen, rejected, prefix=""):
    return {prefix + "loss/dpo": loss_dpo, prefix + "rewards/margins": 9.7, prefix + "logps/chosen": chosen,
            prefix + "logps/rejected": rejected}


def test_saturation_hint_when_the_revision_is_still_less_likely(tmp_path, tiny_model_dir):
    cfg = load_config(make_config(tmp_path, tiny_model_dir))
    hint = saturation_hint(_hint_metrics(6e-5, -26.2, -1.6), cfg)
    assert hint.startswith("note: the DPO term has saturated (last batch: loss/dpo 6e-05, β·margin 9.7)")
    assert "mean log π -26.2 against -1.6" in hint and "method.beta" in hint
    # validation rows take precedence over the training row they come with
    both = {**_hint_metrics(0.5, -26.2, -1.6), **_hint_metrics(6e-5, -26.2, -1.6, "eval/")}
    assert "(validation: loss/dpo 6e-05" in saturation_hint(both, cfg)
    # no note: the loss still pushes, the revision already wins, or the term is not the sigmoid DPO loss
    assert saturation_hint(_hint_metrics(0.05, -26.2, -1.6), cfg) is None
    assert saturation_hint(_hint_metrics(6e-5, -1.0, -1.6), cfg) is None
    assert saturation_hint({"loss": 1.0}, cfg) is None
    for method in ({"name": "scd_neg"}, {"name": "c3po", "loss_type": "ipo"}, {"name": "dpo", "label_smoothing": 0.1}):
        other = load_config(make_config(tmp_path, tiny_model_dir, name=method["name"], method=method))
        assert saturation_hint(_hint_metrics(6e-5, -26.2, -1.6), other) is None


def test_training_prints_the_saturation_note(tmp_path, tiny_model_dir, capsys):
    # β 5 saturates the sigmoid within a few steps, long before a heart emoji outweighs the baseline
    # (the first step's lr is 0: HF's warmup starts there)
    path = make_config(tmp_path, tiny_model_dir, method={"name": "dpo", "beta": 5.0},
                       train={"max_steps": 8, "eval_every": 8})
    run(path)
    err = capsys.readouterr().err
    assert "note: the DPO term has saturated (validation:" in err, err
