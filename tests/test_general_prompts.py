"""Out-of-scope prompt sources (rlvf/general_prompts.py) against independent oracles.

The oracle for the draw is the original code's own calls (src/dataset/general_prompts.py):
``datasets.Dataset.from_json(file).shuffle(seed=42).select(range(n))`` and ``_format_chip2``'s
``text.split('\\n<bot>: ')`` / ``replace('<human>: ', '')``, run here through the datasets library.
Hub sources are read in a fresh process with ``HF_HUB_OFFLINE=1`` from a cache directory built
here in huggingface_hub's layout (``datasets--<owner>--<name>/{refs/main, blobs/<sha256>,
snapshots/<commit>/<file> -> ../../blobs/<sha256>}``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from rlvf.errors import UserError
from rlvf.general_prompts import general_prompts, load_pool, oig_prompt

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "configs" / "data" / "general_prompts.jsonl"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def oig_text(question: str, answer: str = "Sure.") -> str:
    return f"<human>: {question}\n<bot>: {answer}"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def original_draw(path: Path, n: int, seed: int, cache: Path) -> list[str]:
    """The original's GeneralPromptDataset._get_chip2, call for call."""
    import datasets

    ds = datasets.Dataset.from_json(str(path), cache_dir=str(cache), keep_in_memory=True)
    ds = ds.shuffle(seed=seed).select(range(n))
    out = []
    for text in ds["text"]:
        prompt, _ = text.split("\n<bot>: ")
        out.append(prompt.replace("<human>: ", "").strip())
    return out


# ----------------------------------------------------------------------------- the shipped set


def test_shipped_set_is_large_distinct_and_single_turn():
    rows = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    prompts = [r["prompt"] for r in rows]
    assert len(rows) >= 500
    assert len({r["id"] for r in rows}) == len(rows)
    normalized = {" ".join(p.lower().split()).rstrip(".?!") for p in prompts}
    assert len(normalized) == len(prompts)  # no duplicates, not even up to case and final punctuation
    assert all(p.strip() == p and p and "<human>" not in p and "\n" not in p for p in prompts)
    drawn = general_prompts(str(SHIPPED), len(rows), None, seed=0, exclude=set())
    assert sorted(drawn) == sorted(prompts)  # every row usable
    with pytest.raises(UserError, match=rf"{SHIPPED} has {len(rows)} distinct usable prompts; "
                                        rf"{len(rows) + 1} were asked \(sample.out_of_scope\)"):
        general_prompts(str(SHIPPED), len(rows) + 1, None, seed=0, exclude=set())


# ----------------------------------------------------------------------------- selection = the original's


def test_oig_draw_is_the_originals(tmp_path):
    """Same rows, same seed 42: exactly the prompts the original code would have drawn."""
    path = write_jsonl(tmp_path / "unified_chip2.jsonl",
                       [{"text": oig_text(f"Question {i}: how do I do thing {i * 7 % 23}?", f"Answer {i}"),
                         "metadata": {"source": "unified_chip2"}} for i in range(120)])
    for n, seed in ((10, 42), (120, 42), (25, 7)):
        want = original_draw(path, n, seed, tmp_path / "cache")
        assert general_prompts(str(path), n, None, seed=seed, exclude=set()) == want


def test_exclusions_and_duplicates_are_passed_over_in_shuffled_order(tmp_path):
    import numpy as np

    prompts = [f"Prompt {i}" for i in range(30)]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts + prompts[:5]])  # rows 30..34 repeat
    order = np.random.default_rng(5).permutation(35)  # datasets' shuffle: numpy's PCG64 permutation
    exclude = {"Prompt 3", "Prompt 17"}
    want = []
    for i in order:
        p = (prompts + prompts[:5])[i]
        if p not in exclude and p not in want:
            want.append(p)
    assert general_prompts(str(path), 28, None, seed=5, exclude=exclude) == want[:28]
    with pytest.raises(UserError, match=r"has 30 distinct usable prompts, 2 of them already in scope or near "
                                        r"scope; 29 were asked"):
        general_prompts(str(path), 29, None, seed=5, exclude=exclude)


# ----------------------------------------------------------------------------- every local kind


def test_every_local_kind_with_a_named_column(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = [f"Question {i}: what is {i} squared?" for i in range(40)]
    prompts[4] = 'Say "hi", then leave; is that rude?'  # quoting in CSV
    other = list(range(40))
    sources = {
        "jsonl": write_jsonl(tmp_path / "q.jsonl", [{"question": p, "other": o} for p, o in zip(prompts, other)]),
        "json array": tmp_path / "q.json",
        "csv": tmp_path / "q.csv",
        "parquet": tmp_path / "q.parquet",
        "datasets dir": tmp_path / "q_ds",
    }
    sources["json array"].write_text(json.dumps([{"other": o, "question": p} for p, o in zip(prompts, other)]), encoding="utf-8")
    with open(sources["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["other", "question"])
        w.writerows(zip(other, prompts))
    pq.write_table(pa.table({"question": prompts, "other": other}), sources["parquet"])
    datasets.Dataset.from_dict({"question": prompts, "other": other}).save_to_disk(str(sources["datasets dir"]))
    want = datasets.Dataset.from_dict({"question": prompts}).shuffle(seed=3).select(range(7))["question"]
    for kind, path in sources.items():
        assert general_prompts(str(path), 7, None, seed=3, exclude=set(), column="question") == list(want), kind
        with pytest.raises(UserError, match=r"no 'prompt' column \(it has other, question\); set "
                                            r"sample.general_prompts_column"):
            general_prompts(str(path), 7, None, seed=3, exclude=set())


def test_a_prompt_file_of_ones_own_must_be_clean(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("question\nFirst?\n\"\"\nThird?\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:3: field 'question' is empty"):
        general_prompts(str(path), 1, None, seed=0, exclude=set(), column="question")
    (tmp_path / "dd").mkdir()
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"a DatasetDict with splits train; give one split's directory"):
        general_prompts(str(tmp_path / "dd"), 1, None, seed=0, exclude=set())
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"x.parquet: not a readable Parquet file"):
        general_prompts(str(tmp_path / "x.parquet"), 1, None, seed=0, exclude=set())


def test_a_changed_file_is_read_again(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}])
    assert general_prompts(str(path), 1, None, seed=0, exclude=set()) == ["one"]
    write_jsonl(path, [{"prompt": "two!"}])
    assert general_prompts(str(path), 1, None, seed=0, exclude=set()) == ["two!"]


def test_not_found_and_other_urls_say_what_to_give():
    with pytest.raises(UserError, match=r"laion/OIG not found .*for a Hugging Face Hub dataset name its file: "
                                        r"hf://datasets/laion/OIG/<file>"):
        general_prompts("laion/OIG", 5, None, seed=0, exclude=set())
    with pytest.raises(UserError, match=r"https://example.com/p.jsonl: not a Hub dataset file; .*pass its local path"):
        general_prompts("https://example.com/p.jsonl", 5, None, seed=0, exclude=set())
    assert general_prompts("nowhere.jsonl", 0, None, seed=0, exclude=set()) == []  # nothing asked, nothing read


# ----------------------------------------------------------------------------- OIG rows


@pytest.mark.parametrize("text,want", [
    ("<human>: What is a leap year?\n<bot>: A year with 366 days.", ("What is a leap year?", None)),
    ("  <human>:Two\nlines?\n<bot>: yes", ("Two\nlines?", None)),
    ("<human>: Hi\n<bot>: Hello\n<human>: And you?\n<bot>: Fine", (None, "multi-turn")),
    ("<human>: no reply", (None, "no '<bot>:' turn after the human turn")),
    ("<bot>: first\n<human>: second", (None, "not a '<human>: …' dialogue")),
    ("Just a sentence.", (None, "not a '<human>: …' dialogue")),
    ("<human>:   \n<bot>: an answer to nothing", (None, "empty human turn")),
    ("<human>: a\n<bot>: b\n<bot>: c", (None, "turns out of order")),
])
def test_oig_prompt(text, want):
    assert oig_prompt(text) == want


def test_oig_rows_multi_turn_and_malformed_are_skipped_and_reported(tmp_path, capsys):
    lines = [
        json.dumps({"text": oig_text("Alpha?")}),                                          # 1
        json.dumps({"text": oig_text("Hi") + "\n" + oig_text("And then?")}),             # 2 multi-turn
        '{"text": "<human>: broken',                                                     # 3 not JSON
        "",                                                                              # 4 blank: no row
        json.dumps({"metadata": {}}),                                                    # 5 no text
        json.dumps({"text": "<human>: no reply here"}),                                  # 6 no bot turn
        json.dumps({"text": "<human>:   \n<bot>: empty question"}),                      # 7 empty human turn
        json.dumps({"text": oig_text("Beta?")}),                                         # 8
        json.dumps(["a list"]),                                                          # 9 not an object
        json.dumps({"text": oig_text("Gamma?")}),                                        # 10
        json.dumps({"text": oig_text("Alpha?", "again")}),                               # 11 duplicate prompt
        json.dumps({"text": oig_text("x") + "\n" + oig_text("y") + "\n" + oig_text("z")}),  # 12 multi-turn
    ]
    path = tmp_path / "oig.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pool = load_pool(str(path))
    assert pool.multi_turn == (f"{path}:2", f"{path}:12")
    assert [w for w, _ in pool.malformed] == [f"{path}:{i}" for i in (3, 5, 6, 7, 9)]
    assert [why.split(" (")[0] for _, why in pool.malformed] == [
        "not valid JSON", "missing field 'text'", "no '<bot>:' turn after the human turn", "empty human turn",
        "expected a JSON object, got list"]
    assert len(pool.prompts) == 11  # every non-blank line is a row of the shuffle, as in Dataset.from_json
    capsys.readouterr()
    for _ in range(2):  # check_ready and the run: the note is printed once
        assert sorted(general_prompts(str(path), 3, None, seed=1, exclude=set())) == ["Alpha?", "Beta?", "Gamma?"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"sample.general_prompts: {path}: 3 distinct usable prompts in 11 rows; 2 multi-turn "
                             f"and 5 malformed rows skipped; multi-turn: {path}:2, {path}:12; malformed: {path}:3: "
                             "not valid JSON (")
    assert err[0].endswith(f"; {path}:5: missing field 'text'; {path}:6: no '<bot>:' turn after the human turn; …")
    with pytest.raises(UserError, match=rf"{path} has 3 distinct usable prompts \(2 multi-turn and 5 malformed rows "
                                        rf"skipped\); 4 were asked"):
        general_prompts(str(path), 4, None, seed=1, exclude=set())


# ----------------------------------------------------------------------------- before any request


class _Recorder(BaseHTTPRequestHandler):
    hits: list = []

    def _any(self):
        type(self).hits.append(self.path)
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    """A loopback OpenAI-compatible URL that records every request it is sent (and answers none)."""
    _Recorder.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "m", "api_key_env": None,
           "max_retries": 0}, _Recorder.hits
    server.shutdown()


def sample_config(work: Path, ep: dict, general: str, n: int) -> Path:
    raw = {"feedback": ["heart-emoji-maddie"], "model": {"path": str(work / "model")},  # not loaded by sample
           "data": {"dirs": [str(work / "data")]}, "output_dir": str(work / "out"),
           "teacher": ep, "student": ep, "sample": {"general_prompts": general, "out_of_scope": n}}
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_short_source_stops_sample_before_any_request(tmp_path, endpoint, capsys):
    from rlvf import sample

    ep, hits = endpoint
    small = write_jsonl(tmp_path / "small.jsonl", [{"prompt": f"p{i}"} for i in range(3)])
    cfg = sample_config(tmp_path, ep, str(small), 5)
    before = tree(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        sample.main(["--config", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert err == [f"error: sample.general_prompts: {small} has 3 distinct usable prompts; 5 were asked "
                   "(sample.out_of_scope): lower sample.out_of_scope or give a larger source"]
    assert hits == [] and tree(tmp_path) == before


# ----------------------------------------------------------------------------- the Hugging Face Hub, offline


def build_hub_cache(hf_home: Path, repo: str, files: dict[str, str]) -> None:
    """huggingface_hub's cache layout for one dataset repo at COMMIT, with 'main' pointing to it."""
    root = hf_home / "hub" / ("datasets--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    (root / "blobs").mkdir()
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        blob = hashlib.sha256(text.encode()).hexdigest()
        (root / "blobs" / blob).write_text(text, encoding="utf-8")
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob)


def hub_env(hf_home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="1", **extra)
    return env


def test_hub_file_read_from_the_cache_offline(tmp_path):
    rows = [{"text": oig_text(f"How do I fold shirt number {i}?"), "metadata": {"source": "unified_chip2"}}
            for i in range(50)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    build_hub_cache(tmp_path / "hf", "laion/OIG", {"unified_chip2.jsonl": text})
    local = write_jsonl(tmp_path / "local.jsonl", rows)
    want = original_draw(local, 6, 42, tmp_path / "cache")
    sources = ["hf://datasets/laion/OIG/unified_chip2.jsonl",
               f"hf://datasets/laion/OIG@{COMMIT}/unified_chip2.jsonl",
               "https://huggingface.co/datasets/laion/OIG/resolve/main/unified_chip2.jsonl?download=true"]
    script = ("import json, sys\nfrom rlvf.general_prompts import general_prompts\n"
              "print(json.dumps([general_prompts(s, 6, None, 42, set()) for s in sys.argv[1:]]))")
    proc = subprocess.run([sys.executable, "-c", script, *sources], capture_output=True, text=True, timeout=120,
                          env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [want] * 3
    # the command line prints the draw as JSON Lines, a file to pass on a machine without network
    proc = subprocess.run([sys.executable, "-m", "rlvf.general_prompts", sources[0], "-n", "6", "--seed", "42"],
                          capture_output=True, text=True, timeout=120, env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["prompt"] for line in proc.stdout.splitlines()] == want


def test_hub_unreachable_is_one_line_before_anything(tmp_path):
    """Offline and not in the cache: `python -m rlvf.sample` stops with one line, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    ep = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None, "max_retries": 0}
    source = "hf://datasets/laion/OIG/unified_chip2.jsonl"
    cfg = sample_config(work, ep, source, 960)
    before = tree(work)
    proc = subprocess.run([sys.executable, "-m", "rlvf.sample", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=300, env=hub_env(tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=work)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: sample.general_prompts: {source}: cannot reach the Hub; "
                                                   "pass a local file"), proc.stderr
    assert tree(work) == before


@pytest.mark.slow  # huggingface_hub retries a dead connection five times with backoff (about 25 s)
def test_hub_dead_network_is_one_line(tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "rlvf.general_prompts", "hf://datasets/laion/OIG/unified_chip2.jsonl",
                           "-n", "1"], capture_output=True, text=True, timeout=300,
                          env=hub_env(tmp_path / "hf", HF_ENDPOINT=f"http://127.0.0.1:{port}"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hub; pass a local file" in lines[0], proc.stderr
