"""The bad-input corpus: every malformed input a user can hand rlvf stops the command with ONE line
``error: <file>: <problem>``, exit code 2, and nothing written.

Each case runs through a real CLI entry point (``main(argv)`` in-process, which is the code
``python -m rlvf.<cli>`` runs; ``test_cli_subprocesses`` runs three cases as real processes).
Text inputs live in tests/bad_inputs/<category>/; binary ones (model folders, adapters, a 100 MB
line) are made at test time from good ones by the functions in the tables below. Every
case is copied into tmp_path first; after the run the tree under tmp_path must be unchanged
(same files, sizes and mtimes), so "writes nothing" covers output dirs, caches and temp files.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import rlvf.eval as evaluation
from rlvf import adapters, pipeline, sample, train

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_inputs"
TOY = ROOT / "configs" / "data" / "maddie-heart"
PREFIX = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj"
CLIS = {"train": train.main, "sample": sample.main, "eval": evaluation.main, "pipeline": pipeline.main,
        "adapters": adapters.main}


# ----------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


def run_cli(cli: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        CLIS[cli](argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code, lines, fragment: str, names: Path | str) -> None:
    assert code == 2, (code, lines)
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in lines[0]
    assert fragment in lines[0], lines[0]
    assert str(names) in lines[0], f"the message does not name {names}: {lines[0]}"


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def train_config(tmp: Path, model, data=None, **sections) -> Path:
    raw = {"model": {"path": str(model), "dtype": "float32", "gradient_checkpointing": False},
           "data": {"dirs": [str(data or TOY)], "max_length": 96, "max_prompt_length": 48, "val_fraction": 0.0},
           "output_dir": str(tmp / "out"), "lora": {"r": 2, "alpha": 4},
           "train": {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "progress": False}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return write_yaml(tmp / "cfg.yaml", raw)


UNREACHABLE = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None, "max_retries": 0,
               "timeout_s": 2}


def pipeline_config(tmp: Path, **sections) -> Path:
    raw = {"feedback": ["heart-emoji-maddie"], "model": {"path": str(tmp / "model")},
           "data": {"dirs": [str(tmp / "data")]}, "output_dir": str(tmp / "out"),
           "teacher": UNREACHABLE, "student": UNREACHABLE}
    raw.update(sections)
    return write_yaml(tmp / "cfg.yaml", raw)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def good_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A PEFT adapter for the tiny model: r=2 on q_proj and v_proj, non-zero B."""
    from transformers import AutoModelForCausalLM

    from rlvf.lora import inject_lora, lora_modules
    from rlvf.peft_format import save_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, dropout=0.0, seed=0)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.normal_(generator=torch.Generator().manual_seed(1))
    return save_adapter(model, tmp_path_factory.mktemp("adapters") / "good", base_model_name_or_path="tiny")


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    """tmp_path as the working directory, so that a relative output_dir would land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- configs

# (corpus file, CLI, expected fragment); relative paths in the files resolve inside tmp_path
CONFIG_CASES = [
    ("unknown_key.yaml", "train", "train.lrr: unknown key (did you mean 'train.lr'?)"),
    ("wrong_type.yaml", "train", "train.lr: expected a number, got 'fast'"),
    ("bad_syntax.yaml", "train", "invalid YAML at line 5"),
    ("negative_lr.yaml", "train", "train.lr: must be positive, got -0.0001"),
    ("missing_required.yaml", "train", "model.path: missing required value"),
    ("sweep_length.yaml", "train", "sweep.values[0]: has 2 values for 1 params"),
    ("sweep_unknown_key.yaml", "train", "train.lrr: unknown key"),
    ("sweep_bad_point.yaml", "train", "(sweep point lora.r=-1): lora.r: must be positive"),
    ("sweep_values_not_lists.yaml", "train", "sweep.values[0]: expected a list"),
    ("top_level_list.yaml", "train", "expected a mapping at the top level"),
    ("empty.yaml", "train", "config file is empty"),
    ("duplicate_key.yaml", "train", "duplicate key 'train' (first given at line 5)"),
    ("python_tag.yaml", "train", "could not determine a constructor for the tag"),
    ("non_utf8.yaml", "train", "cannot read config file"),
    ("nan_lr.yaml", "train", "train.lr: expected a number, got nan"),
    ("impossible_combination.yaml", "train", "method.constraint: 'kd' needs the reference model"),
    ("section_not_mapping.yaml", "train", "train: expected a mapping of TrainConfig fields, got 5"),
    ("prompt_longer_than_max.yaml", "train", "data.max_prompt_length: must be in [1, data.max_length=128]"),
    ("empty_data_dirs.yaml", "train", "data.dirs: needs at least one data directory"),
    ("api_key_literal.yaml", "pipeline", "teacher.api_key: credentials are never written in config files"),
    ("api_key_env_holds_key.yaml", "sample", "teacher.api_key_env: must be the NAME of an environment variable"),
    ("url_with_credentials.yaml", "eval", "student.base_url: holds credentials"),
    ("unknown_eval_method.yaml", "pipeline", "eval.methods[1]: expected one of 'adapter', 'base', 'in_context', 'cot', "
                                             "'revised', got 'magic'"),
    ("output_dir_is_a_file.yaml", "train", "output_dir: output_dir_is_a_file.yaml exists and is not a directory"),
    ("alias_bomb.yaml", "pipeline", "more than 100,000 values once its aliases (*name) are expanded"),
    ("nested_too_deep.yaml", "train", "invalid YAML: nested too deeply"),
    # numbers beyond any real run, checked at load with the bound named (issue 16)
    ("batch_size_huge.yaml", "train", "train.batch_size: must be at most 65,536, got 100000000000000000000"),
    ("lora_rank_huge.yaml", "train", "lora.r: must be at most 65,536 (wider than any model's hidden size)"),
    ("seed_too_large.yaml", "train", "train.seed: must be at most 4,294,967,295 (the range numpy and torch seeds share)"),
    ("items_per_category_huge.yaml", "sample", "sample.in_scope_per_category: must be at most 1000 (items one teacher "
                                               "request may ask for), got 100000000"),
    ("max_tokens_huge.yaml", "pipeline", "sample.teacher_sampling.max_tokens: must be at most 1,048,576"),
    ("integer_5000_digits.yaml", "train", "invalid YAML at line 5: an integer of 5,000 digits is too long"),
    ("repeated_data_dirs.yaml", "train", "data.dirs: entry 1 ('./data/') repeats entry 0 ('data'); each feedback needs "
                                         "its own data directory"),
    ("empty_sweep_grid.yaml", "train", "sweep.grid.train.lr: no values: an empty list would leave no run at all"),
    ("sweep_not_for_train.yaml", "train", "sweep: python -m rlvf.train reads none of the swept keys (sample.categories)"),
    ("eval_without_feedback.yaml", "eval", "feedback: missing required value: rlvf.eval needs the feedback"),
    ("relative_model_path.yaml", "train", "model.path: no/such/model does not exist (relative to the working directory"),
    ("output_dir_holds_model.yaml", "train", "output_dir: out is, or holds, model.path out/model"),
]


@pytest.mark.parametrize("name,cli,fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(in_tmp, capsys, name, cli, fragment):
    path = in_tmp / name
    shutil.copyfile(CORPUS / "config" / name, path)
    before = snapshot(in_tmp)
    code, lines = run_cli(cli, ["--config", name], capsys)
    assert_one_line_error(code, lines, fragment, name)
    assert "sk-corpus" not in "\n".join(lines)  # a key put in the wrong place is never echoed
    assert snapshot(in_tmp) == before


def test_bad_override(in_tmp, capsys):
    shutil.copyfile(CORPUS / "config" / "unknown_key.yaml", in_tmp / "cfg.yaml")
    before = snapshot(in_tmp)
    code, lines = run_cli("train", ["--config", "cfg.yaml", "--set", "lora.r=[8"], capsys)
    assert_one_line_error(code, lines, "value is not valid YAML", "--set lora.r=[8")
    assert snapshot(in_tmp) == before


SET_CASES = [  # (CLI, --set overrides of good_for_set.yaml, expected fragment); the message names --set, not the file
    ("train", ["lr=1e-4"], "--set lr=1e-4: lr: unknown key (did you mean 'train.lr'?)"),
    ("train", ["train.seed=1e23"], "--set train.seed=1e23: train.seed: expected an integer, got 1e+23"),
    ("train", ["train.lr=abc"], "--set train.lr=abc: train.lr: expected a number, got 'abc'"),
    ("train", ["sweep.grid={train.lr: []}"], "--set sweep.grid={train.lr: []}: sweep.grid.train.lr: no values"),
    ("sample", ["data.dirs=[d, d]"], "--set data.dirs=[d, d]: data.dirs: entry 1 ('d') repeats entry 0 ('d')"),
    ("pipeline", ["train.seed=" + "9" * 5000], "--set train.seed=999999999999"),
    ("eval", ["student={base_url: 'http://127.0.0.1:1/v1', model: m, max_concurrency: 100000}"],
     "student.max_concurrency: must be at most 4096"),
]


@pytest.mark.parametrize("cli,overrides,fragment", SET_CASES, ids=[c[2][:40] for c in SET_CASES])
def test_bad_set_override(in_tmp, capsys, cli, overrides, fragment):
    shutil.copyfile(CORPUS / "config" / "good_for_set.yaml", in_tmp / "cfg.yaml")
    before = snapshot(in_tmp)
    code, lines = run_cli(cli, ["--config", "cfg.yaml"] + [a for o in overrides for a in ("--set", o)], capsys)
    assert_one_line_error(code, lines, fragment, "--set ")
    assert "cfg.yaml" not in lines[0] and len(lines[0]) < 400
    assert snapshot(in_tmp) == before


def test_missing_config_file(in_tmp, capsys):
    code, lines = run_cli("train", ["--config", "nope.yaml"], capsys)
    assert_one_line_error(code, lines, "config file not found", "nope.yaml")
    assert snapshot(in_tmp) == {}


# ----------------------------------------------------------------------------- feedback YAML

FEEDBACK_CASES = [
    ("malformed.yaml", "invalid YAML at line"),
    ("missing_effect.yaml", "effect: missing required value"),
    ("unknown_edit_kind.yaml", "world.edit.kind: unknown edit kind 'apend' (did you mean 'append'?)"),
    ("unknown_metric_kind.yaml", "metric.kind: unknown metric kind 'regexp' (did you mean 'regex'?)"),
    ("quantitative_without_metric.yaml", "metric: quantitative feedback needs a metric"),
    ("bad_regex.yaml", "metric.pattern: invalid regular expression"),
    ("unknown_key.yaml", "efect: unknown key (did you mean 'effect'?)"),
    ("bad_scope.yaml", "scope: expected one of global, regional, local, got 'national'"),
    ("near_overlaps_scope.yaml", "world.near[0]: also selects in-scope requests"),
    ("unknown_person.yaml", "unknown person 'Madie' in the tiny world (did you mean 'Maddie'?)"),
    ("edit_missing_param.yaml", "world.edit.text: missing required parameter of edit 'append'"),
    ("metric_param_wrong_type.yaml", "metric.ratio: expected a number, got 'half'"),
    ("empty.yaml", "feedback file is empty"),
    ("content_not_string.yaml", "content: expected a string"),
    ("bad_replacement.yaml", "world.edit.by: invalid replacement (invalid group reference 2"),
]


@pytest.mark.parametrize("name,fragment", FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES])
def test_bad_feedback(tmp_path, capsys, name, fragment):
    fb = tmp_path / "feedback" / name
    fb.parent.mkdir()
    shutil.copyfile(CORPUS / "feedback" / name, fb)
    path = pipeline_config(tmp_path, feedback=[str(fb)])
    before = snapshot(tmp_path)
    code, lines = run_cli("sample", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, fragment, fb)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- training data


def _put(name: str, scope_file: str):
    def put(data: Path) -> Path:
        shutil.copyfile(CORPUS / "data" / name, data / scope_file)
        return data / scope_file
    return put


def _remove(scope_file: str):
    def remove(data: Path) -> Path:
        (data / scope_file).unlink()
        return data / scope_file
    return remove


DATA_CASES = {  # id: (make the bad file in a copy of the toy data dir -> its path, fragment after the path)
    "missing field": (_put("missing_revised.jsonl", "in_scope_train.jsonl"), ":1: missing field 'revised'"),
    "wrong type": (_put("baseline_not_string.jsonl", "near_scope_train.jsonl"), ":1: field 'baseline' must be a string, got int"),
    "non-utf8": (_put("non_utf8.jsonl", "out_of_scope_train.jsonl"), ":2: not valid UTF-8 (byte 0xe9"),
    "empty file": (_put("empty.jsonl", "in_scope_train.jsonl"), ": no rows"),
    "bad json": (_put("bad_json.jsonl", "near_scope_train.jsonl"), ":2: not valid JSON"),
    "duplicate id": (_put("duplicate_id.jsonl", "out_of_scope_train.jsonl"), ":2: duplicate id 'a'"),
    "not an object": (_put("not_object.jsonl", "near_scope_train.jsonl"), ":1: expected a JSON object, got list"),
    "empty prompt": (_put("empty_prompt.jsonl", "out_of_scope_train.jsonl"), ":1: field 'prompt' is empty"),
    "lone surrogate": (_put("lone_surrogate.jsonl", "near_scope_train.jsonl"), ":1: field 'prompt' holds an unpaired surrogate"),
    "null id": (_put("null_id.jsonl", "out_of_scope_train.jsonl"), ":1: field 'id' must be a non-empty string or an integer"),
    "missing file": (_remove("near_scope_train.jsonl"), ": data file not found"),
    "5000-digit id": (_put("huge_id.jsonl", "near_scope_train.jsonl"), ":1: not valid JSON (holds an integer of more "
                                                                      "than 4,300 digits; write long ids as strings)"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_training_data(tmp_path, tiny_model_dir, capsys, case):
    make, fragment = DATA_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(TOY, data)
    bad = make(data)
    path = train_config(tmp_path, tiny_model_dir, data)
    before = snapshot(tmp_path)
    code, lines = run_cli("train", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, f"{bad}{fragment}", bad)
    assert snapshot(tmp_path) == before


def test_100_mb_single_line_is_refused_without_reading_it(tmp_path, tiny_model_dir, capsys):
    """One 100 MB line (valid JSON): refused at 16 MiB, before the rest is read or tokenized."""
    data = tmp_path / "data"
    shutil.copytree(TOY, data)
    bad = data / "out_of_scope_train.jsonl"
    with open(bad, "wb") as f:
        f.write(b'{"id": "a", "baseline": "ok", "prompt": "')
        chunk = b"All work and no play makes Jack a dull boy. " * 1024
        f.writelines(chunk for _ in range(100 * 2**20 // len(chunk)))
        f.write(b'"}\n')
    assert bad.stat().st_size > 100 * 10**6
    path = train_config(tmp_path, tiny_model_dir, data)
    before = snapshot(tmp_path)
    try:
        code, lines = run_cli("train", ["--config", str(path)], capsys)
        assert_one_line_error(code, lines, f"{bad}:1: line longer than 16 MiB", bad)
        assert snapshot(tmp_path) == before
    finally:
        bad.unlink()  # do not keep 100 MB in pytest's kept temp dirs


def test_bad_test_data_in_eval(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(TOY, data)
    bad = _put("baseline_not_string.jsonl", "near_scope_test.jsonl")(data)
    path = pipeline_config(tmp_path, eval={"methods": ["revised"]}, student=None, teacher=None)
    before = snapshot(tmp_path)
    code, lines = run_cli("eval", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, f"{bad}:1: field 'baseline' must be a string", bad)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- model folders


def _edit_weights(edit: Callable[[dict], dict]):
    def do(model: Path) -> Path:
        tensors = load_file(model / "model.safetensors")
        save_file(edit(tensors), model / "model.safetensors", metadata={"format": "pt"})
        return model
    return do


def _no_weights(model: Path) -> Path:
    (model / "model.safetensors").unlink()
    return model


def _pickle_only(model: Path) -> Path:
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def _config_not_json(model: Path) -> Path:
    (model / "config.json").write_text("{'vocab_size': 5,}")
    return model / "config.json"


def _truncated(model: Path) -> Path:
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return model


def _no_chat_template(model: Path) -> Path:
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


def _no_tokenizer(model: Path) -> Path:
    (model / "tokenizer.json").unlink()
    return model


def _tokenizer_not_json(model: Path) -> Path:
    path = model / "tokenizer.json"
    path.write_text(path.read_text()[:500])
    return path


def _not_a_dir(model: Path) -> Path:
    shutil.rmtree(model)
    model.write_text("not a model")
    return model


MODEL_CASES = {  # id: (break a copy of the tiny model -> the path the message names, fragment)
    "config.json but no safetensors": (_no_weights, "has no *.safetensors weights"),
    "pickle weights only": (_pickle_only, "found only pytorch_model.bin (pickle files are never loaded"),
    "config.json not json": (_config_not_json, "not valid JSON"),
    "missing tensor": (_edit_weights(lambda t: {k: v for k, v in t.items() if "q_proj" not in k}),
                       "lack 2 tensor(s) the model needs, e.g. model.layers.0.self_attn.q_proj.weight"),
    "wrong tensor shape": (_edit_weights(lambda t: {**t, f"{Q0}.weight": torch.zeros(3, 5)}),
                           f"tensor {Q0}.weight has shape (3, 5) but config.json needs (64, 64)"),
    "truncated safetensors": (_truncated, "cannot read the safetensors weights"),
    "no chat template": (_no_chat_template, "the tokenizer has no chat template"),
    "no tokenizer files": (_no_tokenizer, "has no tokenizer (tokenizer.json or tokenizer.model"),
    "tokenizer.json not json": (_tokenizer_not_json, "tokenizer.json: not valid JSON"),
    "not a directory": (_not_a_dir, "is not a directory"),
    # refused at load, not blamed on train.lr at the first step (nor on the architecture by the log-prob check)
    "NaN weights": (_edit_weights(lambda t: {**t, f"{Q0}.weight": t[f"{Q0}.weight"].index_fill(1, torch.tensor([3]),
                                                                                               float("nan"))}),
                    f"tensor {Q0}.weight holds NaN or infinite values (64 of 4,096 as float32); the checkpoint is "
                    "damaged"),
    "infinite weights": (_edit_weights(lambda t: {**t, "model.norm.weight": torch.full((64,), float("-inf"))}),
                         "tensor model.norm.weight holds NaN or infinite values (64 of 64 as float32)"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_folder(tmp_path, tiny_model_dir, capsys, case):
    break_it, fragment = MODEL_CASES[case]
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    named = break_it(model)
    path = train_config(tmp_path, model)
    before = snapshot(tmp_path)
    code, lines = run_cli("train", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, fragment, named)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("cli", ["pipeline", "sample", "eval"])
def test_bad_model_folder_served_locally(tmp_path, tiny_model_dir, capsys, cli):
    """With serve.student the command starts rlvf's server on model.path: a broken model folder is
    blamed on model.path (the key the user wrote), never on the server's --model option."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _no_weights(model)
    path = pipeline_config(tmp_path, serve={"teacher": True, "student": True}, sample={"reviser": "teacher"},
                           eval={"methods": ["base"]})
    before = snapshot(tmp_path)
    code, lines = run_cli(cli, ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, f"model.path: {model} has no *.safetensors weights", model)
    assert "--model" not in lines[0]
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- adapter folders


def _adapter_tensors(edit: Callable[[dict], dict]):
    def do(adapter: Path) -> Path:
        path = adapter / "adapter_model.safetensors"
        save_file(edit(load_file(path)), path, metadata={"format": "pt"})
        return path
    return do


def _adapter_config(**changes):
    def do(adapter: Path) -> Path:
        path = adapter / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return adapter  # the message names the file that disagrees with it, in this folder
    return do


def _rename_module(old: str, new: str):
    return _adapter_tensors(lambda t: {k.replace(old + ".lora_", new + ".lora_"): v for k, v in t.items()})


def _adapter_pickle_only(adapter: Path) -> Path:
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    return adapter / "adapter_model.safetensors"


def _unlink(name: str):
    def do(adapter: Path) -> Path:
        (adapter / name).unlink()
        return adapter / name
    return do


def _overwrite(name: str, data: bytes | None):
    """Replace file ``name`` by ``data`` (None: its own first 100 bytes)."""
    def do(adapter: Path) -> Path:
        path = adapter / name
        path.write_bytes(path.read_bytes()[:100] if data is None else data)
        return path
    return do


QA, QB = f"{PREFIX}{Q0}.lora_A.weight", f"{PREFIX}{Q0}.lora_B.weight"
ADAPTER_CASES = {  # id: (break a copy of the good adapter -> the file the message names, fragment)
    "missing adapter_config.json": (_unlink("adapter_config.json"), "not found; a PEFT LoRA adapter folder holds"),
    "adapter_config.json not json": (_overwrite("adapter_config.json", b"{r: 2"), "not valid JSON"),
    "key for a module not in the model": (_rename_module(Q0, Q0.replace("layers.0", "layers.7")),
                                          "names module 'model.layers.7.self_attn.q_proj', which does not exist"),
    "key without peft prefix": (_rename_module(PREFIX + Q0, Q0), "lacks PEFT's 'base_model.model.' prefix"),
    "not a lora key": (_adapter_tensors(lambda t: {**t, PREFIX + "model.norm.weight": torch.zeros(64)}),
                       "is not a LoRA weight"),
    "lora_B missing": (_adapter_tensors(lambda t: {k: v for k, v in t.items() if k != QB}),
                       "has ['lora_A'] but needs lora_A and lora_B"),
    "wrong shape for the model": (_adapter_tensors(lambda t: {**t, QA: torch.zeros(2, 65)}),
                                  f"{QA} has shape (2, 65), expected (2, 64)"),
    "A and B ranks disagree": (_adapter_tensors(lambda t: {**t, QB: torch.zeros(64, 3)}),
                               "their ranks (A rows, B columns) must agree"),
    "rank differs from config r": (_adapter_config(r=8), "has rank 2 but adapter_config.json gives it r = 8"),
    "target module not in model": (_adapter_config(target_modules=["q_proj", "v_proj", "qkv_proj"]),
                                   "target_modules entry 'qkv_proj' matches no linear layer of LlamaForCausalLM"),
    "weights outside target_modules": (_adapter_config(target_modules=["q_proj"]),
                                       "v_proj has LoRA weights but is not in adapter_config.json target_modules"),
    "NaN weights": (_adapter_tensors(lambda t: {**t, QB: torch.full_like(t[QB], float("nan"))}),
                    "holds NaN or infinite values"),
    "integer weights": (_adapter_tensors(lambda t: {**t, QA: t[QA].to(torch.int32)}), "has dtype torch.int32"),
    "pickle weights only": (_adapter_pickle_only, "not found (adapter_model.bin is not supported"),
    "truncated safetensors": (_overwrite("adapter_model.safetensors", None), "cannot read safetensors"),
    "dora adapter": (_adapter_config(use_dora=True), "use_dora = True is not supported"),
    "layers_to_transform leaves weights out": (_adapter_config(layers_to_transform=[0]),
                                               "layers.1.self_attn.q_proj has LoRA weights but adapter_config.json "
                                               "layers_to_transform [0] leaves it out (layer 1)"),
    "exclude_modules leaves weights out": (_adapter_config(exclude_modules=["v_proj"]),
                                           "v_proj has LoRA weights but adapter_config.json exclude_modules"),
    "init that rewrites the base": (_adapter_config(init_lora_weights="pissa"),
                                    "init_lora_weights = 'pissa' is not supported (PEFT rewrites the base weights"),
    "layer replication": (_adapter_config(layer_replication=[[0, 2], [1, 2]]), "layer_replication = [[0, 2], [1, 2]]"),
    "no target_modules": (_adapter_config(target_modules=None), "target_modules is missing"),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_bad_adapter_export(tmp_path, tiny_model_dir, good_adapter, capsys, case):
    """`python -m rlvf.adapters export`: the adapter is checked against the model before --out is made."""
    break_it, fragment = ADAPTER_CASES[case]
    adapter = tmp_path / "adapter"
    shutil.copytree(good_adapter, adapter)
    named = break_it(adapter)
    before = snapshot(tmp_path)
    argv = ["export", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(tmp_path / "merged")]
    code, lines = run_cli("adapters", argv, capsys)
    assert_one_line_error(code, lines, fragment, named)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["key for a module not in the model", "rank differs from config r"])
def test_bad_adapter_as_lora_init_from(tmp_path, tiny_model_dir, good_adapter, capsys, case):
    """Training from a broken adapter (lora.init_from) stops before the run directory is made."""
    break_it, fragment = ADAPTER_CASES[case]
    adapter = tmp_path / "adapter"
    shutil.copytree(good_adapter, adapter)
    named = break_it(adapter)
    path = train_config(tmp_path, tiny_model_dir, lora={"init_from": str(adapter)})
    before = snapshot(tmp_path)
    code, lines = run_cli("train", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, fragment, named)
    assert snapshot(tmp_path) == before


def test_bad_adapter_mix(tmp_path, good_adapter, capsys):
    other = tmp_path / "other"
    shutil.copytree(good_adapter, other)
    wide = _adapter_tensors(lambda t: {k: (torch.zeros(2, 65) if k == QA else v) for k, v in t.items()})
    wide(other)
    before = snapshot(tmp_path)
    out = str(tmp_path / "mix")
    cases = [
        (["--adapter", str(good_adapter), "--adapter", f"{other}:0.5"], "but (64, 64) in an earlier adapter",
         other / "adapter_model.safetensors"),
        (["--adapter", f"{good_adapter}:nan"], "the weight must be a finite number", f"{good_adapter}:nan"),
        (["--adapter", f"{good_adapter}:half"], "expected PATH or PATH:WEIGHT", f"{good_adapter}:half"),
        (["--adapter", str(tmp_path / "nowhere")], "not found", tmp_path / "nowhere" / "adapter_config.json"),
    ]
    for argv, fragment, named in cases:
        code, lines = run_cli("adapters", ["mix", *argv, "--out", out], capsys)
        assert_one_line_error(code, lines, fragment, named)
    assert snapshot(tmp_path) == before


def _user_files(out: Path) -> Path:
    (out / "drafts").mkdir(parents=True)
    (out / "thesis.txt").write_text("four years of work")
    (out / "drafts" / "chapter1.txt").write_text("it was a dark and stormy night")
    return out


OUT_CASES = {  # id: (argv after the subcommand, given tmp, model dir, adapter -> (argv, named), fragment)
    "mix into a non-empty dir": (lambda t, m, a: (["mix", "--adapter", str(a), "--out", str(_user_files(t / "o"))],
                                                  t / "o"), "directory is not empty (it holds drafts, thesis.txt)"),
    "export into a non-empty dir": (lambda t, m, a: (["export", "--model", str(m), "--adapter", str(a), "--out",
                                                      str(_user_files(t / "o"))], t / "o"), "directory is not empty"),
    "export over the base model": (lambda t, m, a: (["export", "--model", str(m), "--adapter", str(a), "--out", str(m),
                                                     "--overwrite"], m), "is --model"),
    "export over the adapter": (lambda t, m, a: (["export", "--model", str(m), "--adapter", str(a), "--out", str(a),
                                                  "--overwrite"], a), "is --adapter"),
    "mix over its input": (lambda t, m, a: (["mix", "--adapter", f"{a}:0.5", "--out", str(a), "--overwrite"], a),
                           "is --adapter"),
    "out above the model": (lambda t, m, a: (["export", "--model", str(m), "--adapter", str(a), "--out", str(m.parent),
                                              "--overwrite"], m.parent), "holds --model"),
    "out is a file": (lambda t, m, a: (["mix", "--adapter", str(a), "--out", str(a / "adapter_config.json")],
                                       a / "adapter_config.json"), "exists and is not a directory"),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_adapters_out_never_destroys_inputs_or_user_files(tmp_path, tiny_model_dir, good_adapter, capsys, case):
    """`python -m rlvf.adapters mix|export --out`: refused before any work, nothing touched."""
    make, fragment = OUT_CASES[case]
    model, adapter = tmp_path / "models" / "base", tmp_path / "adapter"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(good_adapter, adapter)
    argv, named = make(tmp_path, model, adapter)
    before = snapshot(tmp_path)
    code, lines = run_cli("adapters", argv, capsys)
    assert_one_line_error(code, lines, fragment, f"--out {named}")
    assert snapshot(tmp_path) == before


KEY_CASES = [  # (corpus file, value of RLVF_CORPUS_KEY, fragment)
    ("api_key_malformed.yaml", "sk-corpus-0123456789abcdefghij\nsk-corpus-second-key-000", "contains a line break"),
    ("api_key_malformed.yaml", "sk-corpus-0123456789abcdefghij\u2019", "contains a non-ASCII character"),
]


@pytest.mark.parametrize("name,key,fragment", KEY_CASES, ids=["newline", "non-ascii"])
def test_malformed_api_key(in_tmp, capsys, monkeypatch, name, key, fragment):
    """A key no HTTP header can carry: one line naming the variable (never the key), before any request."""
    monkeypatch.setenv("RLVF_CORPUS_KEY", key)
    shutil.copyfile(CORPUS / "config" / name, in_tmp / name)
    before = snapshot(in_tmp)
    code, lines = run_cli("sample", ["--config", name], capsys)
    assert_one_line_error(code, lines, f"environment variable RLVF_CORPUS_KEY: the API key in it {fragment}",
                          "RLVF_CORPUS_KEY")
    assert "sk-corpus" not in lines[0] and "0123456789" not in lines[0]
    assert snapshot(in_tmp) == before


# ----------------------------------------------------------------------------- sampling inputs


@pytest.mark.parametrize("name,fragment", [("empty_prompt.jsonl", ":2: field 'prompt' is empty"),
                                           ("not_json.jsonl", ":2: not valid JSON")])
def test_bad_general_prompts_file(tmp_path, capsys, name, fragment):
    bad = tmp_path / name
    shutil.copyfile(CORPUS / "general_prompts" / name, bad)
    path = pipeline_config(tmp_path, sample={"general_prompts": str(bad)})
    before = snapshot(tmp_path)
    code, lines = run_cli("sample", ["--config", str(path)], capsys)
    assert_one_line_error(code, lines, f"{bad}{fragment}", bad)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- directories that cannot be written

HAS_PROC = Path("/proc/self").is_dir()  # Linux: nothing can be created in /proc, not even by root
# (CLI, config values over pipeline_config's, what to make in tmp first, expected fragment); the stage's
# check_stage finds out by trying, so each is refused before a server starts or a byte is written
UNWRITABLE_CASES = {
    "train output_dir in /proc": ("train", {"output_dir": "/proc/rlvf-test"}, None,
                                  "output_dir: /proc/rlvf-test cannot be created in /proc (No such file or directory)"),
    "pipeline output_dir in /proc": ("pipeline", {"output_dir": "/proc/rlvf-test/run"}, None,
                                     "output_dir: /proc/rlvf-test/run cannot be created in /proc"),
    "sample data dir in /proc": ("sample", {"data": {"dirs": ["/proc/rlvf-data"]}}, None,
                                 "data.dirs[0]: /proc/rlvf-data cannot be created in /proc (No such file or directory)"),
    "eval out_dir in /proc": ("eval", {"eval": {"out_dir": "/proc/rlvf-eval"}}, None,
                              "eval.out_dir: /proc/rlvf-eval cannot be created in /proc"),
    "eval output_dir in /proc": ("eval", {"output_dir": "/proc/rlvf-test"}, None,
                                 "output_dir: /proc/rlvf-test/eval cannot be created in /proc"),
    "eval out_dir under a file": ("eval", {"eval": {"out_dir": "cfg.yaml/eval"}}, None,
                                  "eval.out_dir: cfg.yaml/eval cannot be created: "),
    "output_dir a FIFO": ("train", {"output_dir": "fifo"}, "fifo",
                          "output_dir: fifo exists and is not a directory (a FIFO)"),
    "output_dir a symlink loop": ("pipeline", {"output_dir": "loop"}, "loop", "output_dir: loop is a symbolic link loop"),
    "data dir a symlink loop": ("sample", {"data": {"dirs": ["loop"]}}, "loop",
                                "data.dirs[0]: loop is a symbolic link loop"),
    "output_dir through a symlink loop": ("eval", {"output_dir": "loop/run"}, "loop",
                                          "output_dir: loop/run passes through a symbolic link loop"),
    "output_dir a dangling symlink": ("train", {"output_dir": "dangling"}, "dangling",
                                      "output_dir: dangling is a symbolic link to nowhere/at/all, which does not exist"),
    "read-only directory": ("train", {"output_dir": "ro/out"}, "ro",
                            "output_dir: ro/out cannot be created in ro (Permission denied)"),
}


def _make(tmp: Path, what: str | None) -> None:
    if what == "fifo":
        os.mkfifo(tmp / "fifo")
    elif what == "loop":
        (tmp / "loop").symlink_to("loop2")
        (tmp / "loop2").symlink_to("loop")
    elif what == "dangling":
        (tmp / "dangling").symlink_to("nowhere/at/all")
    elif what == "ro":
        (tmp / "ro").mkdir(mode=0o500)


@pytest.mark.parametrize("case", list(UNWRITABLE_CASES))
def test_unwritable_dir(in_tmp, capsys, case):
    """An output or data directory the stage cannot write: one line naming the key, exit 2, nothing
    written (the write test leaves nothing behind), for train, sample, eval and the pipeline."""
    cli, values, make, fragment = UNWRITABLE_CASES[case]
    if "/proc" in fragment and not HAS_PROC:
        pytest.skip("needs Linux's /proc")
    if make == "ro" and os.geteuid() == 0:
        pytest.skip("root may write into a mode-0500 directory; the /proc cases cover what root cannot write")
    (in_tmp / "model").mkdir()
    _make(in_tmp, make)
    pipeline_config(Path("."), **{"output_dir": "out", "model": {"path": "model"}, "data": {"dirs": ["data"]},
                                  **values})
    before = snapshot(in_tmp)
    code, lines = run_cli(cli, ["--config", "cfg.yaml"], capsys)
    assert_one_line_error(code, lines, fragment, "cfg.yaml")
    assert snapshot(in_tmp) == before
    assert not [p for p in in_tmp.iterdir() if p.name.startswith(".rlvf-write-test")]


def test_writable_dir_probe_leaves_nothing(tmp_path):
    """The probe writes and removes: a writable new or existing directory is fine and stays as it was."""
    from rlvf.atomic import check_writable_dir, writable_dir_problem

    assert writable_dir_problem(tmp_path / "a" / "b") is None
    assert writable_dir_problem(tmp_path) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match=r"^k: .*file/sub cannot be created: .*file is not a directory \(a file\)$"):
        check_writable_dir(tmp_path / "file" / "sub", "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bad_pipeline_stage(tmp_path, capsys):
    path = pipeline_config(tmp_path)
    before = snapshot(tmp_path)
    code, lines = run_cli("pipeline", ["--config", str(path), "--stages", "sample,tune"], capsys)
    assert_one_line_error(code, lines, "unknown stage tune; choose from sample, train, eval", "--stages")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- real processes


def test_cli_subprocesses(tmp_path, tiny_model_dir):
    """Three cases as real `python -m` processes, run side by side: stderr is exactly one line."""
    shutil.copyfile(CORPUS / "config" / "duplicate_key.yaml", tmp_path / "cfg.yaml")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _pickle_only(model)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = {
        "train": (["-m", "rlvf.train", "--config", "cfg.yaml"], "cfg.yaml: invalid YAML at line 6: duplicate key 'train'"),
        "serve": (["-m", "rlvf.serve", "--model", str(model), "--port", "0"], f"--model: {model} has no *.safetensors"),
        "mix": (["-m", "rlvf.adapters", "mix", "--adapter", "a:inf", "--out", "mixed"], "--adapter a:inf: the weight"),
    }
    procs = {name: subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, (argv, _) in commands.items()}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            lines = err.strip().splitlines()
            assert proc.returncode == 2, (name, err)
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
            assert commands[name][1] in lines[0], (name, lines[0])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
    assert snapshot(tmp_path) == before


def test_every_corpus_file_has_a_case():
    used = {
        "config": {c[0] for c in CONFIG_CASES} | {c[0] for c in KEY_CASES} | {"good_for_set.yaml"},
        "feedback": {c[0] for c in FEEDBACK_CASES},
        "data": {"missing_revised.jsonl", "baseline_not_string.jsonl", "non_utf8.jsonl", "empty.jsonl",
                 "bad_json.jsonl", "duplicate_id.jsonl", "not_object.jsonl", "empty_prompt.jsonl",
                 "lone_surrogate.jsonl", "null_id.jsonl", "huge_id.jsonl"},
        "general_prompts": {"empty_prompt.jsonl", "not_json.jsonl"},
    }
    for category, names in used.items():
        assert names == {p.name for p in (CORPUS / category).iterdir()}, category
    n = (len(CONFIG_CASES) + len(FEEDBACK_CASES) + len(DATA_CASES) + len(MODEL_CASES) + len(ADAPTER_CASES))
    assert n >= 30
