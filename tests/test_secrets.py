"""Secrets and trust: API keys come only from environment variables and are never written; weights
load only from safetensors; pickled state loads with weights_only; the server binds loopback.

The key test plants a unique key in the variable the config names, runs the sample, train and eval
stages against endpoints that use it (rlvf's own server, which ignores the Authorization header but
records it here, so the test knows the key was really sent), then reads EVERY file the run left
— data, caches, saved configs, metrics, checkpoints, adapters, reports, binary files too — as bytes.
"""
from __future__ import annotations

import inspect
import os
import pickle
import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from rlvf import pipeline
from rlvf.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "configs" / "data" / "maddie-heart"
KEY_ENV = "RLVF_TEST_KEY"


def run_main(main, argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


# ----------------------------------------------------------------------------- keys in configs

BASE = {"feedback": ["heart-emoji-maddie"], "model": {"path": "model"}, "data": {"dirs": ["data"]},
        "output_dir": "out"}
LITERAL = "sk-literal-" + "0123456789abcdef" * 2
ENDPOINT = {"base_url": "https://api.openai.com/v1", "model": "gpt-4o"}

KEY_IN_CONFIG = [  # (config additions, --set overrides, expected fragment)
    ({"teacher": {**ENDPOINT, "api_key": LITERAL}}, [], "teacher.api_key: credentials are never written"),
    ({"student": {**ENDPOINT, "apiKey": LITERAL}}, [], "student.apiKey: credentials are never written"),
    ({"teacher": {**ENDPOINT, "token": LITERAL}}, [], "teacher.token: credentials are never written"),
    ({"teacher": ENDPOINT}, [f"teacher.api_key={LITERAL}"], "teacher.api_key: credentials are never written"),
    ({"teacher": {**ENDPOINT, "api_key_env": LITERAL}}, [], "teacher.api_key_env: must be the NAME of"),
    ({"teacher": {**ENDPOINT, "base_url": f"https://me:{LITERAL}@api.example.com/v1"}}, [],
     "teacher.base_url: holds credentials"),
]


@pytest.mark.parametrize("extra,overrides,fragment", KEY_IN_CONFIG, ids=[c[2][:30] for c in KEY_IN_CONFIG])
def test_key_written_in_the_config_is_refused(tmp_path, monkeypatch, capsys, extra, overrides, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**BASE, **extra}), encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    argv = ["--config", "cfg.yaml"] + [a for o in overrides for a in ("--set", o)]
    code, lines = run_main(pipeline.main, argv, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "api_key_env" in lines[0]  # says where the key's variable goes
    assert LITERAL not in lines[0] and "0123456789abcdef" not in lines[0]  # and never echoes the key
    assert sorted(tmp_path.rglob("*")) == before


# ----------------------------------------------------------------------------- the planted key


@pytest.fixture()
def recorded_auth(monkeypatch) -> list:
    """Authorization headers the local server received (it ignores them otherwise)."""
    from rlvf import serve

    seen, dispatch = [], serve._Handler._dispatch

    def recording(self, method):
        seen.append(self.headers.get("Authorization"))
        return dispatch(self, method)

    monkeypatch.setattr(serve._Handler, "_dispatch", recording)
    return seen


def _scan(root: Path, needles: list[bytes]) -> list[str]:
    """Files under ``root`` (any depth, hidden ones too) whose bytes contain any needle."""
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)} holds {n[:12]!r}…" for n in needles if n in data]
    return hits


def test_planted_key_is_sent_but_never_written(tmp_path, tiny_model_dir, monkeypatch, capsys, recorded_auth):
    from rlvf.serve import start_server

    secret = uuid.uuid4().hex + uuid.uuid4().hex
    key = f"sk-planted-{secret}"
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    cfg = {
        "feedback": ["heart-emoji-maddie"],
        "model": {"path": str(tiny_model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"dirs": [str(work / "data")], "max_length": 160, "max_prompt_length": 64, "val_fraction": 0.1},
        "output_dir": str(work / "run"),
        "sample": {"categories": 2, "in_scope_per_category": 3, "near_scope_per_category": 3, "out_of_scope": 6,
                   "reviser": "teacher",  # a random tiny student cannot follow a revision instruction
                   "student_sampling": {"temperature": 0.0, "max_tokens": 16}},
        "lora": {"r": 2, "alpha": 4},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "save_every": 1, "progress": False},
        "eval": {"methods": ["base", "adapter", "in_context", "revised"], "judge_quality": True,
                 "sampling": {"temperature": 0.0, "max_tokens": 16}},
    }

    def endpoints(url: str) -> dict:
        return {role: {"base_url": url, "model": name, "api_key_env": KEY_ENV, "max_retries": 1}
                for role, name in (("teacher", "tinyworld-teacher"), ("student", "student"))}

    fb = str(ROOT / "rlvf" / "tinyworld" / "feedbacks" / "heart-emoji-maddie.yaml")
    with start_server(tiny_model_dir, teacher=[fb], served_model_name="student") as srv:
        path = tmp_path / "sample-train.yaml"
        path.write_text(yaml.safe_dump({**cfg, **endpoints(srv.base_url)}), encoding="utf-8")
        pipeline.main(["--config", str(path), "--stages", "sample,train"])
    adapter = work / "run" / "adapter"
    with start_server(tiny_model_dir, {"adapter": adapter}, teacher=[fb], served_model_name="student") as srv:
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump({**cfg, **endpoints(srv.base_url)}), encoding="utf-8")
        pipeline.main(["--config", str(path), "--stages", "eval"])
    out, err = capsys.readouterr()

    # the key was in play: every request carried it
    assert len(recorded_auth) > 20 and set(recorded_auth) == {f"Bearer {key}"}
    # everything the stages were meant to write is there ...
    for rel in ("data/in_scope_train.jsonl", "data/sample_meta.json", "run/config.yaml", "run/metrics.jsonl",
                "run/adapter/adapter_model.safetensors", "run/checkpoints/latest", "run/eval/results.json",
                "run/eval/report.md", "run/eval/chart.png"):
        assert (work / rel).is_file(), rel
    assert any((work / "data" / ".cache").rglob("*.json")) and any((work / "run" / "eval" / ".cache").rglob("*.json"))
    # ... and no file anywhere under tmp_path holds the key, nor its secret part, in UTF-8 or UTF-16
    needles = [key.encode(), secret.encode(), secret.encode("utf-16-le")]
    assert _scan(tmp_path, needles) == []
    canary = work / "run" / "checkpoints" / ".canary.bin"  # the scan does find a key where there is one
    canary.write_bytes(b"\x00\x01" + secret.encode("utf-16-le") + b"\xff")
    assert _scan(tmp_path, needles) == ["work/run/checkpoints/.canary.bin holds " + repr(needles[2][:12]) + "…"]
    assert secret not in out and secret not in err
    assert KEY_ENV in (tmp_path / "sample-train.yaml").read_text()  # the config names the variable only
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert "teacher" not in saved and "student" not in saved


# ----------------------------------------------------------------------------- weights only from safetensors


class _Evil:
    """Unpickling this creates ``marker``: what any code could do when a pickle is loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pickle(path: Path, marker: Path, torch_format: bool = True) -> None:
    if torch_format:
        torch.save({"weights": _Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Evil(marker)))


def test_the_evil_pickle_is_really_evil(tmp_path):
    """The fixture of the tests below: unpickled without weights_only, it runs code."""
    marker = tmp_path / "pwned"
    _evil_pickle(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_model_folder_with_only_a_pickle_is_refused_unread(tmp_path, tiny_model_dir, capsys):
    from rlvf import train

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _evil_pickle(model / "pytorch_model.bin", marker)
    cfg = {"model": {"path": str(model)}, "data": {"dirs": [str(TOY)]}, "output_dir": str(tmp_path / "out")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, lines = run_main(train.main, ["--config", str(tmp_path / "cfg.yaml")], capsys)
    assert code == 2 and len(lines) == 1
    assert f"{model} has no *.safetensors weights" in lines[0] and "pytorch_model.bin" in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_adapter_folder_with_only_a_pickle_is_refused_unread(tmp_path, tiny_model_dir, capsys):
    from rlvf import adapters

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4, '
                                                 '"target_modules": ["q_proj"]}')
    marker = tmp_path / "pwned"
    _evil_pickle(adapter / "adapter_model.bin", marker)
    argv = ["export", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(tmp_path / "merged")]
    code, lines = run_main(adapters.main, argv, capsys)
    assert code == 2 and len(lines) == 1
    assert "adapter_model.safetensors: not found (adapter_model.bin is not supported" in lines[0]
    assert not marker.exists() and not (tmp_path / "merged").exists()


# ----------------------------------------------------------------------------- checkpoint state


@pytest.fixture()
def checkpoint(tmp_path, tiny_model_dir):
    """(checkpoint dir, load()) for a one-step checkpoint of a LoRA model."""
    from transformers import AutoModelForCausalLM

    from rlvf import checkpoint as ckpt
    from rlvf.lora import inject_lora, trainable_parameters

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, dropout=0.0, seed=0)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    path = ckpt.save_checkpoint(tmp_path / "run", 1, model, optimizer, scheduler, {"step": 1}, "tiny", 2)
    return path, lambda: ckpt.load_checkpoint(path, model, optimizer, scheduler)


def _pickles_in(path: Path) -> list[Path]:
    """Every pickle-based file of a checkpoint: torch.save files and the DCP metadata."""
    return sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix == ".pt" or p.name == ".metadata"))


def test_checkpoint_round_trip_loads(checkpoint):
    path, load = checkpoint
    assert load()["step"] == 1
    assert [p.name for p in _pickles_in(path)]  # the tests below have something to attack


@pytest.mark.parametrize("name", ["trainer_state.pt", "rank-00000.pt"])
def test_malicious_torch_save_in_checkpoint_is_refused(checkpoint, tmp_path, name):
    """torch.load(weights_only=True): a pickle naming any callable but tensor rebuilders is refused."""
    path, load = checkpoint
    (target,) = [p for p in _pickles_in(path) if p.name == name]
    marker = tmp_path / "pwned"
    _evil_pickle(target, marker)
    with pytest.raises((pickle.UnpicklingError, UserError), match="(?i)weights_only|unpickl|refus|not allowed"):
        load()
    assert not marker.exists()


def test_malicious_dcp_metadata_in_checkpoint_is_refused(checkpoint, tmp_path):
    path, load = checkpoint
    (target,) = [p for p in _pickles_in(path) if p.name == ".metadata"]
    marker = tmp_path / "pwned"
    _evil_pickle(target, marker, torch_format=False)
    with pytest.raises((pickle.UnpicklingError, UserError)):
        load()
    assert not marker.exists()


# ----------------------------------------------------------------------------- the server


def test_server_binds_loopback_by_default(monkeypatch, capsys):
    from rlvf import serve

    assert inspect.signature(serve.start_server).parameters["host"].default == "127.0.0.1"
    with serve.start_server(teacher=True) as srv:
        assert srv.address[0] == "127.0.0.1" and srv.base_url.startswith("http://127.0.0.1:")
    # the CLI's default too: capture what main() passes on, stop before anything listens
    seen = {}

    def fake_start_server(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(serve, "start_server", fake_start_server)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)  # keep pytest's own handlers
    code, lines = run_main(serve.main, ["--teacher", "--port", "0"], capsys)
    assert code == 2 and lines == ["error: stop here"]
    assert seen["host"] == "127.0.0.1"


def test_api_key_not_in_client_repr_or_request_body(monkeypatch):
    """The key lives in the Authorization header only: not in the cached request body, nor a repr."""
    from rlvf.client import ChatClient, ChatRequest, EndpointConfig, Sampling

    key = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    client = ChatClient(EndpointConfig(base_url="https://api.example.com/v1", model="m", api_key_env=KEY_ENV),
                        progress=False)
    body = client.request_body(ChatRequest("k", [{"role": "user", "content": "hi"}], Sampling(temperature=0.0)))
    assert key not in repr(body) and key not in repr(client) and key not in repr(client.endpoint)
    assert os.environ[KEY_ENV] == key
