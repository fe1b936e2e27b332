"""Models named by Hugging Face Hub id (rlvf/hub_models.py), offline, through a cache built here.

The cache is huggingface_hub's layout (``models--<owner>--<name>/{refs/<ref>, blobs/<sha256>,
snapshots/<commit>/<file> -> ../../blobs/<sha256>}``) holding two tiny random Llamas: seed 0 at
COMMIT_MAIN ('main') and seed 1 at COMMIT_V1 (tag 'v1'). Every command runs in a fresh process with
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing there, so nothing reaches the network and the
environment is clean. Oracles: the safetensors files each snapshot was built from, and PEFT, which
loads a saved adapter's base model from the id and revision the adapter records.

The Hub's own error answers (missing repository, gated repository, missing revision) come from a
stand-in Hub on a loopback port (``HF_ENDPOINT``) that answers every request with the status and
``X-Error-Code`` header huggingface.co sends for that case.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from rlvf.random_llama import build_tiny_model

REPO = "tiny-org/tiny-llama"
COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40
TOY = Path(__file__).resolve().parent.parent / "configs" / "data" / "maddie-heart"
PY = sys.executable


def add_snapshot(cache: Path, repo: str, commit: str, src: Path, refs=(), skip=()) -> Path:
    """``src``'s files as snapshot ``commit`` of ``repo`` in the hub cache; each of ``refs`` points to it."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.name in skip:
            continue
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model_dir):
    """(cache dir, {commit: source model dir}) with REPO at main (seed 0) and v1 (seed 1), and
    broken/* repos lacking config.json or weights."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    seed1 = build_tiny_model(root / "seed1", seed=1)
    add_snapshot(cache, REPO, COMMIT_MAIN, Path(tiny_model_dir), ["main"])
    add_snapshot(cache, REPO, COMMIT_V1, seed1, ["v1"])
    add_snapshot(cache, "broken/no-config", COMMIT_MAIN, Path(tiny_model_dir), ["main"], skip={"config.json"})
    add_snapshot(cache, "broken/no-weights", COMMIT_MAIN, Path(tiny_model_dir), ["main"], skip={"model.safetensors"})
    return cache, {COMMIT_MAIN: Path(tiny_model_dir), COMMIT_V1: seed1}


def hub_env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(cache.parent), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1", **extra)
    return env


def python(code: str, env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


LOADER = """
import json, sys, torch
from rlvf.errors import UserError
from rlvf.modeling import load_model, load_tokenizer
out = {}
for label, name, rev in json.loads(sys.argv[1]):
    try:
        tok = load_tokenizer(name, revision=rev)
        model = load_model(name, torch.float32, torch.device("cpu"), revision=rev)
        out[label] = {"weight": model.model.embed_tokens.weight[:2, :4].tolist(), "name": model.name_or_path,
                      "tokenizer": tok.name_or_path}
    except UserError as err:
        out[label] = {"error": str(err)}
print(json.dumps(out))
"""


def embed_rows(model_dir: Path) -> list:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"][:2, :4].tolist()


def test_hub_ids_load_from_the_cache_at_each_revision_offline(hub, tmp_path):
    """main, a tag and a commit each load their own snapshot's weights; a local directory of the same
    name wins over the id; what the cache lacks is one line naming the id, the revision and the cache."""
    cache, sources = hub
    cases = [["main", REPO, None], ["tag", REPO, "v1"], ["commit", REPO, COMMIT_V1],
             ["unknown", "nobody/no-such-model", None], ["bad-rev", REPO, "v9"],
             ["no-config", "broken/no-config", None], ["no-weights", "broken/no-weights", None],
             ["local-rev", "tiny-org/tiny-llama", "v1"]]
    local = tmp_path / "tiny-org" / "tiny-llama"  # a local directory named like the id, used for the last case
    proc = python(LOADER, hub_env(cache), tmp_path, json.dumps(cases[:-1]))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["main"]["weight"] == embed_rows(sources[COMMIT_MAIN])
    assert got["tag"]["weight"] == got["commit"]["weight"] == embed_rows(sources[COMMIT_V1])
    assert got["main"]["weight"] != got["tag"]["weight"]
    assert got["main"]["name"] == got["main"]["tokenizer"] == REPO  # as from_pretrained(REPO) names them
    assert got["unknown"]["error"].startswith(f"model.path: nobody/no-such-model does not exist (relative to the "
                                              f"working directory {tmp_path}), and cannot reach the Hub to download "
                                              "nobody/no-such-model (HF_HUB_OFFLINE is set)")
    assert f"the Hugging Face cache {cache} has no copy of it" in got["unknown"]["error"]
    assert f"cannot reach the Hub to download {REPO} at revision 'v9' (HF_HUB_OFFLINE" in got["bad-rev"]["error"]
    assert "holds only revision(s) main, v1 of it" in got["bad-rev"]["error"]
    assert re.match(rf"model\.path: broken/no-config \(commit {COMMIT_MAIN[:7]}; cached at .*\) has no config\.json",
                    got["no-config"]["error"])
    assert re.match(r"model\.path: broken/no-weights .* has no \*\.safetensors weights", got["no-weights"]["error"])
    # a local directory of that name always wins (so a revision is a mistake there)
    build_tiny_model(local, seed=2)
    proc = python(LOADER, hub_env(cache), tmp_path, json.dumps([["local", REPO, None], cases[-1]]))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["local"]["weight"] == embed_rows(local)
    assert got["local-rev"]["error"] == ("model.revision: 'v1' applies only to a Hugging Face Hub id, but model.path "
                                         "tiny-org/tiny-llama is a local path; leave model.revision unset")


def train_config(tmp_path: Path, **model) -> Path:
    raw = {
        "model": {"path": REPO, "dtype": "float32", "gradient_checkpointing": False, **model},
        "data": {"dirs": [str(TOY)], "max_length": 128, "max_prompt_length": 64, "val_fraction": 0.0},
        "output_dir": str(tmp_path / "run"),
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "method": {"name": "c3po"},
        "train": {"lr": 5e-3, "batch_size": 2, "grad_accum": 1, "max_steps": 2, "progress": False, "seed": 0},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


PEFT_CHECK = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from rlvf.modeling import load_model
from rlvf.peft_format import load_adapter
peft = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ours = load_model(sys.argv[2], torch.float32, torch.device("cpu"), revision=sys.argv[3])
load_adapter(ours, sys.argv[1])
ids = torch.tensor([[1, 5, 9, 14, 20, 33]])
with torch.no_grad():
    diff = (peft(input_ids=ids).logits - ours.eval()(input_ids=ids).logits).abs().max().item()
base = peft.get_base_model().model.embed_tokens.weight[:2, :4].tolist()
print(json.dumps({"diff": diff, "base": base}))
"""


def test_train_by_hub_id_records_the_id_and_revision(hub, tmp_path):
    """`python -m rlvf.train` with model.path = the id and model.revision = v1 trains 2 steps; the adapter
    records the id and revision as PEFT does, and PEFT, loading the base from them through the same
    cache, gets the v1 weights and the logits rlvf's own loader gives with the adapter."""
    cache, sources = hub
    cfg = train_config(tmp_path, revision="v1")
    env = hub_env(cache)
    proc = subprocess.run([PY, "-m", "rlvf.train", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    adapter = tmp_path / "run" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == REPO and config["revision"] == "v1"
    (checkpoint,) = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))  # its adapter records them too
    config = json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == REPO and config["revision"] == "v1"
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 2
    proc = python(PEFT_CHECK, env, tmp_path, str(adapter), REPO, "v1")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["base"] == embed_rows(sources[COMMIT_V1])
    assert got["diff"] < 1e-4


def test_train_with_an_unknown_id_offline_is_one_line(hub, tmp_path):
    cache, _ = hub
    cfg = train_config(tmp_path, path="nobody/no-such-model")
    proc = subprocess.run([PY, "-m", "rlvf.train", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=300, env=hub_env(cache), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.path: nobody/no-such-model does not exist") and \
        "cannot reach the Hub to download nobody/no-such-model (HF_HUB_OFFLINE is set)" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_serve_by_hub_id_and_revision(hub, tmp_path):
    """`python -m rlvf.serve --model <id> --revision v1` serves the id by name and answers as the v1
    model does (served from its local directory in this process); an unknown id is one line, exit 2."""
    from rlvf.serve import start_server

    cache, sources = hub
    env = hub_env(cache)
    request = {"model": REPO, "messages": [{"role": "user", "content": "Hello there"}], "temperature": 0,
               "max_tokens": 8}
    with start_server(str(sources[COMMIT_V1]), served_model_name=REPO, device="cpu") as server:
        want = httpx.post(f"{server.base_url}/chat/completions", json=request, timeout=60).json()
    with start_server(str(sources[COMMIT_MAIN]), served_model_name=REPO, device="cpu") as server:
        other = httpx.post(f"{server.base_url}/chat/completions", json=request, timeout=60).json()
    proc = subprocess.Popen([PY, "-m", "rlvf.serve", "--model", REPO, "--revision", "v1", "--port", "0",
                             "--device", "cpu"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=tmp_path)
    try:
        line = _ready_line(proc, 180)
        match = re.fullmatch(rf"serving {re.escape(REPO)} at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        got = httpx.post(f"{match[1]}/chat/completions", json=request, timeout=60).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    content = got["choices"][0]["message"]["content"]
    assert got["model"] == REPO and content == want["choices"][0]["message"]["content"]
    assert content != other["choices"][0]["message"]["content"]  # the revision matters
    proc = subprocess.run([PY, "-m", "rlvf.serve", "--model", "nobody/no-such-model", "--port", "0"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model: nobody/no-such-model does not exist") and \
        "cannot reach the Hub to download nobody/no-such-model (HF_HUB_OFFLINE is set)" in lines[0], proc.stderr


def _ready_line(proc, timeout: float) -> str:
    found = {}

    def read():
        for line in proc.stderr:
            if line.startswith(("serving ", "error: ")):
                found["line"] = line.strip()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert "line" in found, "the server printed no 'serving ... at URL' line"
    return found["line"]


# ----------------------------------------------------------------------------- the Hub's own answers


class _StandInHub(http.server.BaseHTTPRequestHandler):
    """Answers as huggingface.co does: owner 'missing' -> 404 RepoNotFound, 'gated' -> 403 GatedRepo,
    revision 'nope' -> 404 RevisionNotFound, anything else -> 500."""

    def do_GET(self):  # noqa: N802 - the base class's name
        path = self.path
        if "/api/models/missing/" in path:
            status, code = 404, "RepoNotFound"
        elif "/api/models/gated/" in path:
            status, code = 403, "GatedRepo"
        elif "/revision/nope" in path:
            status, code = 404, "RevisionNotFound"
        else:
            status, code = 500, None
        body = json.dumps({"error": "stand-in"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_hub_errors_are_one_line(hub, tmp_path):
    """Missing repository, gated repository, missing revision, a Hub that fails, and no network at all
    (a port nobody listens on): each is one line naming the key and what to do."""
    cache, _ = hub
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cases = [["missing", "missing/model", None], ["gated", "gated/model", None], ["revision", REPO, "nope"],
                 ["down", "other/model", None]]
        env = hub_env(cache, HF_ENDPOINT=f"http://127.0.0.1:{httpd.server_address[1]}")
        del env["HF_HUB_OFFLINE"]
        proc = python(LOADER, env, tmp_path, json.dumps(cases))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    got = {k: v["error"] for k, v in json.loads(proc.stdout).items()}
    assert got["missing"].startswith("model.path: missing/model does not exist (relative to the working directory")
    assert got["missing"].endswith("and the Hub has no model repository missing/model (if it is private, log in "
                                   "with hf auth login, or set HF_TOKEN)")
    assert got["gated"] == ("model.path: gated/model is a gated repository on the Hub: accept its terms at "
                            "https://huggingface.co/gated/model and log in (hf auth login, or HF_TOKEN)")
    assert got["revision"] == f"model.revision: 'nope' is not a branch, tag or commit of {REPO} on the Hub"
    assert "and cannot reach the Hub to download other/model (HfHubHTTPError: Server error '500" in got["down"]
    with socket_nobody_listens_on() as port:
        env = hub_env(cache, HF_ENDPOINT=f"http://127.0.0.1:{port}")
        del env["HF_HUB_OFFLINE"]
        proc = python(LOADER, env, tmp_path, json.dumps([["none", "other/model", None], ["cached", REPO, "v1"]]))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "and cannot reach the Hub to download other/model (ConnectError" in got["none"]["error"], got
    assert "weight" in got["cached"], got  # no network, but cached: used as is


class socket_nobody_listens_on:
    """A loopback port that refuses connections (bound, never listened on)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
