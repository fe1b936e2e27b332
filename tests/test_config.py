"""Config loading: every bad config is one line naming the file and key, exit code 2, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlvf.config import Config, describe, expand_sweep, load_config, yaml_load
from rlvf.train import main

GOOD = {
    "model": {"path": "MODEL"},
    "data": {"dirs": ["DATA"]},
    "output_dir": "OUT",
}


def write(tmp_path: Path, raw, name="cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def with_(section: str, **values) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    raw.setdefault(section, {}).update(values)
    return raw


BAD = [
    # (raw config, override list, expected fragment of the one-line message)
    (with_("train", lrr=1e-4), [], "train.lrr: unknown key (did you mean 'train.lr'?)"),
    (with_("trian", lr=1e-4), [], "trian: unknown key (did you mean 'train'?)"),
    (with_("train", lr="fast"), [], "train.lr: expected a number, got 'fast'"),
    (with_("train", batch_size=2.5), [], "train.batch_size: expected an integer"),
    (with_("train", progress="yes"), [], "train.progress: expected true or false"),
    (with_("method", name="ppo"), [], "method.name: expected one of 'c3po', 'dpo'"),
    (with_("lora", r=0), [], "lora.r: must be positive"),
    (with_("lora", dropout=1.5), [], "lora.dropout: must be in [0, 1)"),
    (with_("data", max_prompt_length=4096), [], "data.max_prompt_length: must be in [1, data.max_length=2048]"),
    (with_("method", name="scd", constraint="kd"), [], "method.constraint: 'kd' needs the reference model"),
    (with_("method", name="c3po", negatives_near_ratio=0.5), [], "method.negatives_near_ratio: 0.5 is not used by method c3po"),
    (with_("method", kd_kappa=0.5), [], "method.kd_kappa: 0.5 is not used with constraint 'sft'"),
    (with_("method", name="scd", beta=0.5), [], "method.beta: 0.5 is not used by method scd"),
    (with_("method", name="dpo", lambda_out=0.3), [], "method.lambda_out: 0.3 is not used by method dpo"),
    (with_("method", name="scd_neg", constraint_squared=True), [], "method.constraint_squared: True is not used"),
    (with_("method", reference="init_adapter"), [], "method.reference: 'init_adapter' needs lora.init_from"),
    (with_("method", kd_per_token=True), [], "method.kd_per_token: replaced by method.nll_reduction"),
    (GOOD, ["method.kd_squared=true"], "--set method.kd_squared=true: method.kd_squared: renamed method.constraint_squared"),
    (with_("method", nll_reduction="mean"), [], "method.nll_reduction: expected one of 'token_mean', 'sequence_sum'"),
    (with_("method", loss_type="ipo", label_smoothing=0.1), [], "method.label_smoothing: only applies"),
    ({"data": {"dirs": ["D"]}, "output_dir": "O"}, [], "model.path: missing required value"),
    ({"model": {"path": "M"}, "data": {"dirs": ["D"]}}, [], "output_dir: missing required value"),
    (with_("model", path=["a"]), [], "model.path: expected a string"),
    ("model: [unclosed\n", [], "invalid YAML at line"),
    ("", [], "config file is empty"),
    ("- a\n- b\n", [], "expected a mapping at the top level"),
    (GOOD, ["train.lrr=1"], "--set train.lrr=1: train.lrr: unknown key (did you mean 'train.lr'?)"),
    (GOOD, ["train.lr"], "expected KEY=VALUE"),
    (GOOD, ["train.lr=abc"], "train.lr: expected a number, got 'abc'"),
    (GOOD, ["train.lr.x=1"], "'train.lr' has no sub-keys"),
    (with_("sweep", params=["train.lr"], values=[[1e-5, 2]]), [], "sweep.values[0]: has 2 values for 1 params"),
    (with_("sweep", params=["train.lrr"], values=[[1e-5]]), [], "train.lrr: unknown key"),
    (with_("sweep", grid={"lora.r": [8, -1]}), [], "lora.r: must be positive"),
]


@pytest.mark.parametrize("raw,overrides,fragment", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_config_one_line_exit_2_nothing_written(tmp_path, capsys, raw, overrides, fragment):
    path = write(tmp_path, raw)
    before = sorted(tmp_path.rglob("*"))
    argv = ["--config", str(path)] + [a for o in overrides for a in ("--set", o)]
    code, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    if not overrides:
        assert str(path) in lines[0]
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_config_file(tmp_path, capsys):
    code, err = run_cli(["--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml: config file not found" in err


def test_cli_subprocess_exit_code(tmp_path):
    path = write(tmp_path, with_("train", lrr=1))
    proc = subprocess.run([sys.executable, "-m", "rlvf.train", "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: train.lrr: unknown key (did you mean 'train.lr'?)"]


def test_defaults_are_the_papers(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert (cfg.method.beta, cfg.method.lambda_out, cfg.method.lambda_near) == (0.1, 0.2, 0.1)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 128.0, 0.05)
    assert cfg.lora.exclude_modules == ["lm_head"] and cfg.lora.target_modules == "all-linear"
    assert (cfg.train.lr, cfg.train.scheduler, cfg.train.warmup_ratio, cfg.train.epochs) == (5e-5, "cosine", 0.05, 1.0)
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (2048, 1024)
    # config_lcdpo.json: per_device_train_batch_size 1, gradient_accumulation_steps 16, gradient checkpointing,
    # the constraint the per-token mean NLL (student_output.loss), bf16 on CUDA (model.dtype auto)
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.model.gradient_checkpointing) == (1, 16, True)
    assert (cfg.method.name, cfg.method.constraint, cfg.method.nll_reduction) == ("c3po", "sft", "token_mean")
    assert (cfg.method.reference, cfg.method.kd_kappa, cfg.method.kd_temperature) == ("base", 1.0, 1.0)
    assert cfg.model.dtype == "auto" and cfg.data.val_fraction == 0.05


def test_per_method_defaults_follow_each_sweep_point(tmp_path):
    """λ and negatives ratios left unset take each method's original value, per sweep point."""
    path = write(tmp_path, with_("sweep", grid={"method.name": ["c3po", "scd_neg", "sft", "dpo"]}))
    runs = expand_sweep(load_config(path), str(path))
    got = {r.method.name: (r.method.lambda_out, r.method.lambda_near, r.method.negatives_near_ratio,
                           r.method.negatives_out_ratio) for _, r in runs}
    assert got == {"c3po": (0.2, 0.1, None, None), "scd_neg": (0.5, 0.5, None, None),
                   "sft": (None, None, 0.5, 0.5), "dpo": (None, None, 0.0, 0.0)}
    # a value given in the file is kept for every point that reads it
    path = write(tmp_path, with_("method", lambda_out=1.0) | {"sweep": {"grid": {"method.name": ["c3po", "scd_neg"]}}})
    assert [r.method.lambda_out for _, r in expand_sweep(load_config(path), str(path))] == [1.0, 1.0]


def test_overrides_and_yaml12_floats(tmp_path):
    cfg = load_config(write(tmp_path, "model: {path: M}\ndata: {dirs: [D]}\noutput_dir: O\ntrain: {lr: 1e-5}\n"),
                      ["train.batch_size=3", "method.name=dpo", "lora.target_modules=[q_proj, v_proj]"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 3 and cfg.method.name == "dpo"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert yaml_load("a: 5e-5")["a"] == 5e-5


def test_sweep_points_and_run_dirs(tmp_path):
    raw = with_("sweep", params=["train.lr", "lora.r"], values=[[1e-5, 8], [5e-5, 16]],
                grid={"method.beta": [0.1, 0.5]})
    cfg = load_config(write(tmp_path, raw))
    runs = expand_sweep(cfg, "x.yaml")
    assert [n for n, _ in runs] == [
        "train.lr=1e-05,lora.r=8,method.beta=0.1", "train.lr=1e-05,lora.r=8,method.beta=0.5",
        "train.lr=5e-05,lora.r=16,method.beta=0.1", "train.lr=5e-05,lora.r=16,method.beta=0.5"]
    name, last = runs[-1]
    assert (last.train.lr, last.lora.r, last.method.beta) == (5e-5, 16, 0.5)
    assert Path(last.output_dir) == Path("OUT") / name
    assert expand_sweep(load_config(write(tmp_path, GOOD, "plain.yaml")), "p") == [("", load_config(tmp_path / "plain.yaml"))]


def test_every_field_documented():
    text = describe(Config)
    assert "train.lr = 5e-05" in text
    # every leaf line is followed by a non-empty docstring line
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and " = " in line and not line.startswith("      "):
            assert lines[i + 1].strip(), f"no docstring for {line.strip()}"


def test_paper_preset_is_the_defaults(tmp_path):
    """configs/paper-mistral-7b.yaml writes out config_lcdpo.json; rlvf's defaults are the same values."""
    from rlvf.config import to_dict
    from rlvf.pipeline_config import PipelineConfig

    preset = to_dict(load_config(Path(__file__).resolve().parent.parent / "configs" / "paper-mistral-7b.yaml",
                                 [], PipelineConfig))
    default = to_dict(load_config(write(tmp_path, GOOD)))
    for section in ("method", "lora"):
        assert preset[section] == default[section], section
    differ = {k for k in default["train"] if preset["train"][k] != default["train"][k]}
    assert differ == {"eval_every"}  # the original evaluates every 8 steps; rlvf's default is the end only
    assert preset["model"]["gradient_checkpointing"] is default["model"]["gradient_checkpointing"] is True
    assert (preset["data"]["max_length"], preset["data"]["max_prompt_length"], preset["data"]["val_fraction"]) == \
        (default["data"]["max_length"], default["data"]["max_prompt_length"], default["data"]["val_fraction"])


def test_shipped_configs_load():
    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files
    from rlvf.pipeline_config import PipelineConfig

    for path in files:
        load_config(path, [], PipelineConfig)
