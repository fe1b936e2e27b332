"""sample.reviser: the student revises its own baselines (the original's scheme), or the teacher does.

The student is the fake OpenAI-compatible server (fake_openai.py) answering as a scripted chat model
would; the teacher's replies come from the real offline tiny-world teacher, so sampling runs its
whole course and the server's records show who was asked what.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeOpenAI
from rlvf import prompts as P
from rlvf import sample
from rlvf.config import Config, SampleConfig, load_config
from rlvf.data import SCOPES, scope_file
from rlvf.feedback import load_feedbacks
from rlvf.tinyworld.teacher import OfflineTeacher

ROOT = Path(__file__).resolve().parent.parent
FEEDBACK = "heart-emoji-maddie"
TEACHER, STUDENT = "tinyworld-teacher", "student"
RETRIES = 2


def test_the_default_reviser_is_the_student_as_in_the_original():
    assert SampleConfig().reviser == "student" and Config().sample.reviser == "student"
    tiny = load_config(ROOT / "configs" / "tinyworld-c3po.yaml")
    assert tiny.sample.reviser == "teacher"  # the tiny model cannot follow instructions


def test_student_revision_prompt_has_the_originals_parts():
    (fb,) = load_feedbacks([FEEDBACK])
    (turn,) = P.student_revise_request(fb.effect, "Text Maddie about dinner.", "See you at 7.")
    text = turn["content"]
    assert turn["role"] == "user"  # no system turn: Mistral's template rejects one
    assert "PROMPT: Text Maddie about dinner." in text and "PREVIOUS_RESPONSE: See you at 7." in text
    assert f"FEEDBACK: {fb.effect}" in text and fb.content not in text  # the effect, not the sentence
    assert text.index("PROMPT:") < text.index("PREVIOUS_RESPONSE:") < text.index("FEEDBACK:")
    assert text.endswith("EXPLANATION:") and "IMPROVED_RESPONSE:" in text


def test_parse_revision_reads_the_last_marker():
    assert P.parse_revision("EXPLANATION: I will write IMPROVED_RESPONSE: next.\nIMPROVED_RESPONSE: Hi ❤️") == "Hi ❤️"
    assert P.parse_revision("IMPROVED_RESPONSE:**\nHi ❤️\nBye") == "Hi ❤️\nBye"  # bold marker, lines kept
    assert P.parse_revision("IMPROVED_RESPONSE:\n  indented") == "  indented"
    for bad in ("EXPLANATION: no marker", "EXPLANATION: x\nIMPROVED_RESPONSE:  \n"):
        with pytest.raises(P.ParseError):
            P.parse_revision(bad)


# ----------------------------------------------------------------------------- a sampling run


def _field(text: str, name: str, until: str) -> str:
    return re.search(rf"{name}: (.*?)\n\n{until}:", text, flags=re.S).group(1)


def _bucket(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4


class Student:
    """A scripted chat model: baseline 'Reply to: <prompt>'; a revision request gets an explanation
    and '<its baseline> ❤️' after the marker, except prompts in bucket 0 (never the marker) and
    bucket 1 (no marker at the first seed, a good reply at the next)."""

    def __init__(self):
        self.revisions: list[dict] = []  # the revision requests' bodies

    def __call__(self, body: dict) -> list[str]:
        text = body["messages"][-1]["content"]
        if "PREVIOUS_RESPONSE:" not in text:
            return [f"Reply to: {text}"]
        self.revisions.append(body)
        prompt = _field(text, "PROMPT", "PREVIOUS_RESPONSE")
        baseline = _field(text, "PREVIOUS_RESPONSE", "FEEDBACK")
        if _bucket(prompt) == 0 or (_bucket(prompt) == 1 and body["seed"] == 0):
            return ["EXPLANATION: I am not sure what to do."]
        return [f"EXPLANATION: The reply needs a heart.\nIMPROVED_RESPONSE: {baseline} ❤️"]


def replies(student: Student):
    teacher = OfflineTeacher(load_feedbacks([FEEDBACK]))
    return lambda body: [teacher.complete(body["messages"], seed=body["seed"])] if body["model"] == TEACHER \
        else student(body)


def write_config(tmp_path: Path, server: FakeOpenAI, **sample_keys) -> Path:
    endpoint = {"base_url": server.base_url, "api_key_env": None, "max_concurrency": 4, "max_retries": 0,
                "timeout_s": 5}
    raw = {"feedback": [FEEDBACK], "model": {"path": str(tmp_path / "unused-model")},
           "data": {"dirs": [str(tmp_path / "data")]}, "output_dir": str(tmp_path / "run"),
           "teacher": {**endpoint, "model": TEACHER}, "student": {**endpoint, "model": STUDENT},
           "sample": {"categories": 2, "in_scope_per_category": 4, "near_scope_per_category": 4, "out_of_scope": 6,
                      "general_prompts": "tinyworld", "test_fraction": 0.25, "max_parse_retries": RETRIES,
                      "student_sampling": {"temperature": 0.7, "top_p": 0.7, "max_tokens": 64}, **sample_keys}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def rows(data_dir: Path) -> dict[str, list[dict]]:
    return {f"{scope}_{part}": [json.loads(line) for line in scope_file(data_dir, scope, part).read_text().splitlines()]
            for scope in SCOPES for part in ("train", "test")}


def test_the_student_revises_its_own_baselines_from_the_effect(tmp_path):
    (fb,) = load_feedbacks([FEEDBACK])
    student = Student()
    with FakeOpenAI(models=[TEACHER, STUDENT], respond=replies(student)) as server:
        sample.main(["--config", str(write_config(tmp_path, server))])
        to_teacher = [r.body["messages"][-1]["content"] for r in server.chat_requests if r.body["model"] == TEACHER]
    assert not any(t.startswith("TASK: revise") for t in to_teacher)  # the teacher revises nothing
    data, meta = rows(tmp_path / "data"), json.loads((tmp_path / "data" / "sample_meta.json").read_text())

    # the requests: the effect and the student's own baseline, with the student's sampling, seeds 0, 1, 2
    asked: dict[str, list[int]] = {}
    for body in student.revisions:
        text = body["messages"][-1]["content"]
        prompt = _field(text, "PROMPT", "PREVIOUS_RESPONSE")
        assert _field(text, "PREVIOUS_RESPONSE", "FEEDBACK") == f"Reply to: {prompt}"  # its own baseline
        assert f"FEEDBACK: {fb.effect}\n" in text and fb.content not in text
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.7, 64)
        asked.setdefault(prompt, []).append(body["seed"])
    expected = {0: list(range(RETRIES + 1)), 1: [0, 1], 2: [0], 3: [0]}
    assert all(sorted(seeds) == expected[_bucket(p)] for p, seeds in asked.items())
    assert {_bucket(p) for p in asked} == {0, 1, 2, 3}  # every case occurs in this data

    # which rows were revised: in scope (train and test) and near/out test; near/out train need none
    in_scope = [r["prompt"] for part in ("in_scope_train", "in_scope_test") for r in data[part]]
    tests = [r["prompt"] for part in ("near_scope_test", "out_of_scope_test") for r in data[part]]
    trains = [r["prompt"] for part in ("near_scope_train", "out_of_scope_train") for r in data[part]]
    assert set(in_scope) | set(tests) <= set(asked) and not set(trains) & set(asked)
    assert all("revised" not in r for part in ("near_scope_train", "out_of_scope_train") for r in data[part])

    # the parsed revisions land in the rows; unparseable ones are counted, their in-scope rows left out
    for part, part_rows in data.items():
        for r in part_rows:
            if "revised" in r:
                assert r["revised"] == f"Reply to: {r['prompt']} ❤️" and _bucket(r["prompt"]) != 0
    assert all("revised" in r and _bucket(r["prompt"]) != 0 for r in data["in_scope_train"] + data["in_scope_test"])
    never = sorted(p for p in asked if _bucket(p) == 0)
    unparsed = [u for u in meta["unparsed"] if u["task"] == f"{FEEDBACK}: student revisions"]
    assert len(unparsed) == len(never) == len(meta["unparsed"])
    dropped = len([p for p in never if p not in tests])  # in-scope rows without a revision are incomplete
    assert meta["incomplete_rows"] == dropped > 0


def test_the_teacher_reviser_asks_the_teacher_with_the_content(tmp_path):
    (fb,) = load_feedbacks([FEEDBACK])
    student = Student()
    with FakeOpenAI(models=[TEACHER, STUDENT], respond=replies(student)) as server:
        sample.main(["--config", str(write_config(tmp_path, server, reviser="teacher"))])
        revise = [r.body["messages"][-1]["content"] for r in server.chat_requests
                  if r.body["model"] == TEACHER and r.body["messages"][-1]["content"].startswith("TASK: revise")]
    assert student.revisions == [] and revise and all(f"FEEDBACK: {fb.content}" in t for t in revise)
    data = rows(tmp_path / "data")
    assert all(r["revised"] for r in data["in_scope_train"])


# ----------------------------------------------------------------------------- the tiny model cannot revise


def tiny_config(tmp_path: Path, model: str, **sample_keys) -> Path:
    raw = {"feedback": [FEEDBACK], "serve": {"teacher": True, "student": True}, "model": {"path": model},
           "data": {"dirs": [str(tmp_path / "data")]}, "output_dir": str(tmp_path / "run"),
           "sample": {"general_prompts": "tinyworld", "out_of_scope": 4, **sample_keys}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("entry", ["sample", "pipeline"])
def test_a_student_reviser_on_the_shipped_tiny_model_is_refused_up_front(tmp_path, capsys, entry):
    from rlvf import pipeline

    path = tiny_config(tmp_path, str(ROOT / "rlvf" / "tinyworld" / "model"))
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        {"sample": sample.main, "pipeline": pipeline.main}[entry](["--config", str(path)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert line.startswith(f"error: {path}: sample.reviser: student would have the served ")
    assert line.endswith("cannot follow instructions; set sample.reviser: teacher")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no server started


def test_the_refusal_names_the_override_and_spares_teacher_and_other_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped config's relative paths
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        sample.main(["--config", "configs/tinyworld-c3po.yaml", "--set", "sample.reviser=student",
                     "--set", f"data.dirs=[{tmp_path / 'data'}]"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and line.startswith("error: --set sample.reviser=student: sample.reviser: ")

    copy = tmp_path / "copy"  # a copy of the shipped model is the same model
    copy.mkdir()
    shutil.copy(ROOT / "rlvf" / "tinyworld" / "model" / "build_stats.json", copy)
    assert sample.is_shipped_tiny_model(str(copy)) and sample.is_shipped_tiny_model("rlvf/tinyworld/model")
    assert not sample.is_shipped_tiny_model(str(tmp_path)) and not sample.is_shipped_tiny_model(None)

    shipped = str(ROOT / "rlvf" / "tinyworld" / "model")
    sample.check_ready(load_config(tiny_config(tmp_path, shipped, reviser="teacher")), "x.yaml")  # no error
    cfg = load_config(tiny_config(tmp_path, shipped))
    cfg.serve.student = False  # a remote student endpoint: it may serve any model
    sample.check_ready(cfg, "x.yaml")
