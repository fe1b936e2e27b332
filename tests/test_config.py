"""Config loading: every bad config is one line naming the file and key, exit code 2, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

import rlvf.eval as evaluation
from rlvf import config, pipeline, sample, train
from rlvf.config import Config, EndpointConfig, Sampling, expand_sweep, load_config, load_runs, yaml_load
from rlvf.errors import UserError
from rlvf.typed import check, describe
from rlvf.train import main

ROOT = Path(__file__).resolve().parent.parent
CLIS = {"train": train.main, "sample": sample.main, "eval": evaluation.main, "pipeline": pipeline.main}

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
    # numbers far beyond any real run stop at load, naming the key and the bound (issue 16)
    (with_("train", batch_size=10**20), [], "train.batch_size: must be at most 65,536, got 100000000000000000000"),
    (with_("train", batch_size=1e20), [], "train.batch_size: expected an integer, got 1e+20"),
    (with_("lora", r=10**20), [], "lora.r: must be at most 65,536 (wider than any model's hidden size)"),
    (GOOD, ["train.seed=1e23"], "--set train.seed=1e23: train.seed: expected an integer, got 1e+23"),
    (GOOD, [f"train.seed={10**23}"], "train.seed: must be at most 4,294,967,295 (the range numpy and torch seeds share)"),
    (with_("train", seed=-1), [], "train.seed: must be >= 0, got -1"),
    (with_("sample", in_scope_per_category=10**8), [], "sample.in_scope_per_category: must be at most 1000"),
    (with_("sample", out_of_scope=10**8), [], "sample.out_of_scope: must be at most 1,000,000"),
    (with_("sample", student_sampling={"temperature": 0, "max_tokens": 10**9}), [],
     "sample.student_sampling.max_tokens: must be at most 1,048,576"),
    (with_("eval", sampling={"temperature": 0, "n": 10**6}), [], "eval.sampling.n: must be at most 128"),
    (with_("data", max_length=10**9), [], "data.max_length: must be at most 1,048,576"),
    (with_("teacher", base_url="http://127.0.0.1:1/v1", model="m", max_concurrency=10**6), [],
     "teacher.max_concurrency: must be at most 4096"),
    (with_("train", lr=10**400), [], "train.lr: expected a number, got an integer of about 401 digits"),
    (f"train: {{seed: {'9' * 5000}}}\n", [], "invalid YAML at line 1: an integer of 5,000 digits is too long"),
    (GOOD, ["train.seed=" + "9" * 5000], "--set train.seed=99999"),
    # repeated data directories would train every row twice, or let one feedback overwrite another's data
    (with_("data", dirs=["d", "d"]), [], "data.dirs: entry 1 ('d') repeats entry 0 ('d'); each feedback needs"),
    (with_("data", dirs=["d", "./d/"]), [], "data.dirs: entry 1 ('./d/') repeats entry 0 ('d')"),
    # did-you-mean over full dotted keys: a bare setting name finds its section
    (GOOD, ["lr=1e-4"], "--set lr=1e-4: lr: unknown key (did you mean 'train.lr'?)"),
    (GOOD, ["train.beta=0.2"], "train.beta: unknown key (did you mean 'method.beta'?)"),
    (with_("method", name="c3p0"), [], "method.name: expected one of 'c3po', 'dpo', 'scd', 'scd_neg', 'sft', got 'c3p0' (did you mean 'c3po'?)"),
    # --set errors name --set, not the file
    (GOOD, ["train.lr=-1"], "error: --set train.lr=-1: train.lr: must be positive, got -1"),
    # sweeps: an empty grid is refused, and so is one rlvf.train cannot tell apart
    (with_("sweep", grid={"train.lr": []}), [], "sweep.grid.train.lr: no values: an empty list would leave no run"),
    (with_("sweep", grid={"sample.categories": [1, 2]}), [], "sweep: python -m rlvf.train reads none of the swept keys"),
    (with_("sweep", params=["train.lr"], values=[[1e-4]], grid={"train.lr": [1e-5]}), [], "sweep.params: train.lr is swept twice"),
    # every section of the one schema is checked by every command
    (with_("feedback"), [], "feedback: expected a list"),
    (with_("serve", studnet=True), [], "serve.studnet: unknown key (did you mean 'serve.student'?)"),
    (with_("teacher", base_url="ftp://x", model="m"), [], "teacher.base_url: must be an http(s) URL"),
    (with_("eval", methods=["adapter", "adapter"]), [], "eval.methods: entry 1 ('adapter') repeats entry 0"),
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
    assert len(lines[0]) < 600
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
    assert "  train.lr: a number positive = 5e-05" in text
    assert "  train.batch_size: an integer >= 1, at most 65,536 = 1" in text
    assert "  sample.teacher_sampling.temperature: a number >= 0, at most 100 = 0.7" in text  # the section's default
    # every leaf line is followed by a non-empty docstring line
    lines = text.splitlines()
    leaves = [i for i, line in enumerate(lines) if line.startswith("  ") and not line.startswith("      ")]
    assert len(leaves) > 80
    for i in leaves:
        assert " = " in lines[i] and lines[i + 1].strip(), f"no type, default or docstring for {lines[i].strip()}"


def test_paper_preset_is_the_defaults(tmp_path):
    """configs/paper-mistral-7b.yaml writes out config_lcdpo.json; rlvf's defaults are the same values."""
    from rlvf.config import to_dict

    preset = to_dict(load_config(ROOT / "configs" / "paper-mistral-7b.yaml"))
    default = to_dict(load_config(write(tmp_path, GOOD)))
    for section in ("method", "lora"):
        assert preset[section] == default[section], section
    differ = {k for k in default["train"] if preset["train"][k] != default["train"][k]}
    assert differ == {"eval_every"}  # the original evaluates every 8 steps; rlvf's default is the end only
    assert preset["model"]["gradient_checkpointing"] is default["model"]["gradient_checkpointing"] is True
    assert (preset["data"]["max_length"], preset["data"]["max_prompt_length"], preset["data"]["val_fraction"]) == \
        (default["data"]["max_length"], default["data"]["max_prompt_length"], default["data"]["val_fraction"])


# ----------------------------------------------------------------------------- one file, every command

SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def run_any(cli: str, argv: list[str], capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        CLIS[cli](argv)
    out = capsys.readouterr()
    return exc.value.code, out.err.strip().splitlines(), out.out


def test_shipped_configs_load():
    assert len(SHIPPED) >= 4
    for path in SHIPPED:
        runs = load_runs(path)
        assert [name for name, _ in runs] == [""]


@pytest.mark.parametrize("cli", list(CLIS))
def test_help_config_on_every_command(cli, capsys):
    code, _, out = run_any(cli, ["--help-config"], capsys)
    assert code == 0
    reads = {"train": ["lora.r", "train.lr", "model.path"], "sample": ["sample.categories", "teacher.base_url",
                                                                     "serve.teacher"],
             "eval": ["eval.methods", "student.model", "serve.student"],
             "pipeline": ["lora.r", "sample.categories", "eval.methods", "serve.student", "sweep.grid"]}[cli]
    for key in reads:
        assert f"  {key}: " in out, key
    if cli == "train":
        assert "  sample.categories:" not in out and "  teacher.base_url:" not in out
    if cli == "sample":
        assert "  lora.r:" not in out and "  train.lr:" not in out


COMMANDS = [  # (command, shipped config, --set overrides, expected one-line error: a legitimate later failure)
    ("train", "mistral-7b-gpt4.yaml", [], "model.path: models/mistral-7b-instruct-v0.2 does not exist (relative to "
                                          "the working directory"),
    ("train", "paper-mistral-7b.yaml", [], "model.path: models/mistral-7b-instruct-v0.2 does not exist"),
    ("sample", "mistral-7b-gpt4.yaml", [], "environment variable RLVF_CONFIG_TEST_NO_KEY is not set"),
    ("eval", "mistral-7b-gpt4.yaml", [], "environment variable RLVF_CONFIG_TEST_NO_KEY is not set"),
    ("sample", "demo.yaml", [], "demo.yaml: feedback: missing required value: rlvf.sample needs the feedback"),
    ("eval", "demo.yaml", [], "demo.yaml: feedback: missing required value: rlvf.eval needs the feedback"),
    ("pipeline", "demo.yaml", [], "demo.yaml: feedback: missing required value"),
    ("eval", "tinyworld-c3po.yaml", ["output_dir=OUT"], "--set output_dir=OUT: output_dir: no adapter at OUT/adapter; "
                                                        "run the train stage first"),
    ("train", "demo.yaml", ["model.path=nowhere"], "--set model.path=nowhere: model.path: nowhere does not exist "
                                                   "(relative to the working directory"),
]


@pytest.mark.parametrize("cli,name,overrides,fragment", COMMANDS, ids=[f"{c[0]} {c[1]} {c[2]}" for c in COMMANDS])
def test_every_shipped_config_works_with_every_command(tmp_path, monkeypatch, capsys, cli, name, overrides, fragment):
    """`python -m rlvf.train --config configs/mistral-7b-gpt4.yaml` no longer fails on the other stages'
    sections: each command reads its own, and stops (one line, exit 2) only for a reason of its own."""
    monkeypatch.chdir(ROOT)  # the shipped configs' relative paths are relative to the repository root
    monkeypatch.delenv("RLVF_CONFIG_TEST_NO_KEY", raising=False)
    overrides = [o.replace("OUT", str(tmp_path / "out")) for o in overrides]
    if "mistral" in name:  # the teacher's key variable, unset here
        overrides.append("teacher.api_key_env=RLVF_CONFIG_TEST_NO_KEY")
    before = sorted(tmp_path.rglob("*"))
    code, lines, _ = run_any(cli, ["--config", f"configs/{name}"] + [a for o in overrides for a in ("--set", o)], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fragment.replace("OUT", str(tmp_path / "out")) in lines[0]
    assert sorted(tmp_path.rglob("*")) == before


def test_relative_model_path_says_relative_to_what(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**GOOD, "model": {"path": "models/m"}})
    code, err = run_cli(["--config", str(path)], capsys)
    assert code == 2
    assert f"model.path: models/m does not exist (relative to the working directory {tmp_path})" in err


def test_sweep_points_are_built_once(tmp_path, monkeypatch):
    """Each sweep point is built and checked once (the base config once more), not twice."""
    calls = []
    build = config.config_from_dict
    monkeypatch.setattr(config, "config_from_dict", lambda raw, where: calls.append(where) or build(raw, where))
    path = write(tmp_path, with_("sweep", grid={"train.lr": [1e-5, 2e-5], "lora.r": [4, 8]}))
    runs = load_runs(path)
    assert len(runs) == 4 and len(calls) == 5


def test_sweep_sampling_is_shared_or_refused(tmp_path):
    """A sweep over training keys samples once; one over sampling keys needs its own data dirs."""
    raw = with_("sweep", grid={"train.lr": [1e-5, 2e-5]})
    runs = load_runs(write(tmp_path, raw))
    assert len(config.samplings(runs, "x")) == 1
    raw = with_("sweep", grid={"sample.categories": [1, 2]})
    with pytest.raises(UserError, match="sample different settings into the same data directory DATA"):
        config.samplings(load_runs(write(tmp_path, raw)), "x")
    raw = with_("sweep", params=["sample.categories", "data.dirs"], values=[[1, ["A"]], [2, ["B"]]])
    assert len(config.samplings(load_runs(write(tmp_path, raw)), "x")) == 2


def test_sweep_with_a_fixed_eval_adapter_is_refused(tmp_path):
    runs = load_runs(write(tmp_path, with_("eval", adapter="A") | {"sweep": {"grid": {"train.lr": [1e-5, 2e-5]}}}))
    with pytest.raises(UserError, match="eval.adapter: names one adapter for every sweep point"):
        config.sweep_for(runs, ("sample", "train", "eval"), "x")
    config.sweep_for(runs, ("train",), "x")  # training alone is fine


def test_sweep_moves_eval_out_dir_per_point(tmp_path):
    runs = load_runs(write(tmp_path, with_("eval", out_dir="E") | {"sweep": {"grid": {"train.lr": [1e-5, 2e-5]}}}))
    assert [Path(cfg.eval.out_dir) for _, cfg in runs] == [Path("E/train.lr=1e-05"), Path("E/train.lr=2e-05")]


def test_client_sections_are_checked_by_the_same_engine():
    """EndpointConfig / Sampling made in code get the messages a config file would."""
    endpoint = EndpointConfig("http://127.0.0.1:1/v1", "m", max_concurrency=0)
    with pytest.raises(UserError, match=r"^endpoint.max_concurrency: must be >= 1, got 0$"):
        check(endpoint, "endpoint")
    with pytest.raises(UserError, match=r"^request 'k': sampling.top_p: must be in \(0, 1\], got 0.0$"):
        check(Sampling(0.5, top_p=0), "sampling", "request 'k'")
    with pytest.raises(UserError, match="sampling.seed: must be at most"):
        check(Sampling(0.5, seed=2**64), "sampling")
    assert check(Sampling(0, seed=7), "sampling") == Sampling(0.0, seed=7)


def test_origin_blames_the_override_only_for_its_keys(tmp_path):
    path = write(tmp_path, with_("train", lr="fast"))
    with pytest.raises(UserError, match=rf"^{path}: train.lr: expected a number"):
        load_config(path, ["train.batch_size=2"])
    with pytest.raises(UserError, match=r"^--set train={lr: x}: train.lr: expected a number"):
        load_config(write(tmp_path, GOOD), ["train={lr: x}"])


# ----------------------------------------------------------------------------- serve: in standalone commands


@pytest.fixture()
def tiny_adapter(tiny_model_dir, tmp_path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from rlvf.lora import inject_lora
    from rlvf.peft_format import save_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inject_lora(model, ["q_proj"], r=2, alpha=4, dropout=0.0, seed=0)
    return save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tiny_model_dir))


def test_standalone_eval_and_sample_honour_serve(tmp_path, tiny_model_dir, tiny_adapter, monkeypatch, capsys):
    """`python -m rlvf.eval` / `rlvf.sample` on a config with serve: start rlvf's local server as the
    pipeline does (the student serves the adapter by name), instead of asking for endpoints."""
    seen = {}

    def fake_eval(cfg, student, teacher, adapter_model=None, **kwargs):
        seen["eval"] = (student, teacher, adapter_model)  # the server is up while the stage runs:
        seen["models"] = [m["id"] for m in httpx.get(f"{student.base_url}/models").json()["data"]]
        return {}

    monkeypatch.setattr(evaluation, "run", fake_eval)
    monkeypatch.setattr(sample, "run", lambda cfg, teacher, student: seen.setdefault("sample", (teacher, student)))
    raw = {"feedback": ["heart-emoji-maddie"], "serve": {"teacher": True, "student": True},
           "model": {"path": str(tiny_model_dir)}, "data": {"dirs": [str(tmp_path / "data")]},
           "output_dir": str(tmp_path / "run"), "eval": {"methods": ["adapter"], "adapter": str(tiny_adapter)}}
    path = write(tmp_path, raw)
    evaluation.main(["--config", str(path)])
    student, teacher, adapter_model = seen["eval"]
    assert student.base_url.startswith("http://127.0.0.1:") and student.api_key_env is None
    assert adapter_model == "adapter" and "adapter" in seen["models"] and teacher.model == "tinyworld-teacher"
    sample.main(["--config", str(path)])
    teacher, student = seen["sample"]
    assert teacher.model == "tinyworld-teacher" and student.model == "student"


def test_pipeline_sweep_samples_once_then_trains_and_evaluates_every_point(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(cfg, resume=False):
        calls.append(("train", cfg.train.lr, cfg.output_dir))
        (Path(cfg.output_dir) / "adapter").mkdir(parents=True)
        (Path(cfg.output_dir) / "adapter" / "adapter_config.json").write_text("{}")

    monkeypatch.setattr(pipeline, "train", fake_train)
    monkeypatch.setattr(sample, "run", lambda cfg, teacher, student: calls.append(("sample", cfg.data.dirs)))
    monkeypatch.setattr(evaluation, "run", lambda cfg, *a, **k: calls.append(("eval", cfg.output_dir)))
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}
    (tmp_path / "model").mkdir()
    raw = {"feedback": ["heart-emoji-maddie"], "teacher": endpoint, "student": endpoint,
           "model": {"path": str(tmp_path / "model")}, "data": {"dirs": [str(tmp_path / "data")]},
           "output_dir": str(tmp_path / "out"), "sweep": {"grid": {"train.lr": [1e-5, 2e-5]}}}
    pipeline.main(["--config", str(write(tmp_path, raw))])
    out = tmp_path / "out"
    assert calls == [("sample", [str(tmp_path / "data")]),
                     ("train", 1e-5, str(out / "train.lr=1e-05")), ("eval", str(out / "train.lr=1e-05")),
                     ("train", 2e-5, str(out / "train.lr=2e-05")), ("eval", str(out / "train.lr=2e-05"))]
