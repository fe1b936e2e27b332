"""rlvf.sample interrupted, failing and re-run: only what is missing is ever sent again.

The teacher and the student are the fault-injecting fake server (fake_openai.py); its teacher
replies come from the real offline tiny-world teacher, so sampling runs its whole course, and its
records show exactly which requests each run sent.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeOpenAI, Fault, expected_texts
from rlvf import sample
from rlvf.client import cache_key
from rlvf.data import SCOPES, scope_file
from rlvf.feedback import load_feedbacks
from rlvf.tinyworld.teacher import OfflineTeacher

ROOT = Path(__file__).resolve().parent.parent
FEEDBACK = "heart-emoji-maddie"
TEACHER, STUDENT = "tinyworld-teacher", "student"
CONCURRENCY = 4


def tinyworld_replies() -> callable:
    """The fake server's replies: the offline teacher's for the teacher model, echoes for the student."""
    teacher = OfflineTeacher(load_feedbacks([FEEDBACK]))

    def respond(body: dict) -> list[str]:
        if body["model"] != TEACHER:
            return expected_texts(body)
        return [teacher.complete(body["messages"], seed=body["seed"])]
    return respond


def fake_server(plan=None) -> FakeOpenAI:
    return FakeOpenAI(plan=plan, models=[TEACHER, STUDENT], respond=tinyworld_replies())


def sample_config(tmp_path: Path, server: FakeOpenAI, name: str = "data", max_retries: int = 3) -> Path:
    endpoint = {"base_url": server.base_url, "api_key_env": None, "max_concurrency": CONCURRENCY,
                "max_retries": max_retries, "timeout_s": 5}
    raw = {"feedback": [FEEDBACK], "model": {"path": str(ROOT / "rlvf" / "tinyworld" / "model")},
           "data": {"dirs": [str(tmp_path / name)]}, "output_dir": str(tmp_path / "run"),
           "teacher": {**endpoint, "model": TEACHER}, "student": {**endpoint, "model": STUDENT},
           "sample": {"categories": 2, "in_scope_per_category": 3, "near_scope_per_category": 3, "out_of_scope": 4,
                      "reviser": "teacher",  # the offline teacher revises, as with the tiny model
                      "student_sampling": {"temperature": 0.0, "max_tokens": 24}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def keys_sent(server: FakeOpenAI, since: int = 0) -> list[str]:
    """Cache keys of the chat requests the server received, from arrival number ``since`` on."""
    return [cache_key(server.base_url, r.body) for r in server.chat_requests[since:]]


def settle(server: FakeOpenAI, quiet_s: float = 0.3) -> None:
    """Wait until the server has received nothing for ``quiet_s`` (bytes a killed client sent last
    still arrive after its death): only then are its records the whole run."""
    count = -1
    while count != server.chat_count:
        count = server.chat_count
        time.sleep(quiet_s)


def cached(data_dir: Path) -> set[str]:
    return {p.stem for p in (data_dir / ".cache").rglob("*.json")}


def outputs(data_dir: Path) -> dict[str, str]:
    return {f"{scope}_{part}": scope_file(data_dir, scope, part).read_text(encoding="utf-8")
            for scope in SCOPES for part in ("train", "test")}


def meta(data_dir: Path) -> dict:
    return json.loads((data_dir / "sample_meta.json").read_text(encoding="utf-8"))


def test_a_killed_run_resends_only_what_was_in_flight(tmp_path):
    """SIGKILL mid-run, then resume: the requests sent again are exactly those in flight at the kill;
    the data equals an uninterrupted run's; a third run sends nothing."""
    kill_at, victim = 16, []  # arrival 16 is among the student's baseline responses

    def kill_then_delay(index: int, body: dict, attempt: int) -> Fault:
        if index == kill_at:
            os.kill(victim[0].pid, signal.SIGKILL)  # while request 16 is being served
        return Fault.delay(0.02)

    with fake_server(kill_then_delay) as server:
        config = sample_config(tmp_path, server)
        victim.append(subprocess.Popen([sys.executable, "-m", "rlvf.sample", "--config", str(config)], cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        _, err = victim[0].communicate(timeout=120)
        assert victim[0].returncode == -signal.SIGKILL, err.decode()[-2000:]
        settle(server)
        first = keys_sent(server)
        kept = cached(tmp_path / "data")
        in_flight = set(first) - kept  # sent, but no reply reached the cache
        assert first[kill_at] in in_flight and len(in_flight) <= CONCURRENCY
        assert not (tmp_path / "data" / "sample_meta.json").exists()

        server.plan = None
        sample.main(["--config", str(config)])  # resume
        second = keys_sent(server, len(first))
        sample.main(["--config", str(config)])  # complete: nothing to send
        third = keys_sent(server, len(first) + len(second))

        sample.main(["--config", str(sample_config(tmp_path, server, "reference"))])  # uninterrupted
    assert set(second) & set(first) == in_flight  # re-sent: exactly the requests in flight
    assert len(second) == len(set(second)) and not set(second) & kept
    assert third == [] and meta(tmp_path / "data")["requests"]["student"]["sent"] == 0
    assert outputs(tmp_path / "data") == outputs(tmp_path / "reference")
    assert cached(tmp_path / "data") == cached(tmp_path / "reference")


def test_a_request_out_of_retries_is_reported_then_filled_in(tmp_path, capsys):
    """One request fails for good: the run names it on one line and exits 2, keeping the rest;
    once the server recovers, a re-run sends that request alone and completes the data."""
    doomed: list[str] = []
    feedback = load_feedbacks([FEEDBACK])[0].content  # in-context requests end with it, after the prompt

    def fail_one_in_context(index: int, body: dict, attempt: int) -> Fault | None:
        content = body["messages"][-1]["content"]
        if body["model"] == STUDENT and content.endswith(f"{feedback})") and not doomed:
            doomed.append(content)  # the first in-context request to arrive: nothing depends on its reply
        if doomed and content == doomed[0]:
            return Fault.error(503, "overloaded", retry_after_ms="5")
        return None

    with fake_server(fail_one_in_context) as server:
        config = sample_config(tmp_path, server, max_retries=2)
        with pytest.raises(SystemExit) as exc:
            sample.main(["--config", str(config)])
        before = server.chat_count
        err = capsys.readouterr().err.strip().splitlines()[-1]
        failed = meta(tmp_path / "data")

        server.plan = None
        sample.main(["--config", str(config)])
        resent = server.chat_requests[before:]
    (failure,) = failed["request_failures"]
    assert exc.value.code == 2
    assert err == (f"error: 1 request failed ({FEEDBACK}: {failure['key']}; last error after 3 attempts: "
                   f"HTTP 503: overloaded): the data in {tmp_path / 'data'} is incomplete (sample_meta.json lists "
                   "them); re-run the same command to send only these, the completed requests are cached")
    assert failure["key"].startswith("in_context/") and failed["incomplete_rows"] == 1
    assert sum(1 for r in server.chat_requests[:before] if r.body["messages"][-1]["content"] == doomed[0]) == 3
    assert [r.body["messages"][-1]["content"] for r in resent] == doomed  # that request, once, and nothing else
    done = meta(tmp_path / "data")
    assert done["request_failures"] == [] and done["incomplete_rows"] == 0
    assert sum(done["counts"].values()) == sum(failed["counts"].values()) + 1

    # sample_meta.json keeps both runs: the first's failure and usage are not overwritten by the fill-in.
    first, second = done["runs"]
    assert failed["runs"] == [first]
    assert first["request_failures"] == [failure] and first["filled_in"] == [] and first["incomplete_rows"] == 1
    assert second["request_failures"] == [] and second["filled_in"] == [failure["key"]]
    assert second["requests"]["student"]["sent"] == 1 and second["requests"]["teacher"]["sent"] == 0
    assert first["started"] <= first["finished"] <= second["started"] <= second["finished"]
    assert first["requests"] == failed["requests"] and second["requests"] == done["requests"]
    totals = done["totals"]
    assert totals["runs"] == 2 and totals["request_failures"] == 1 and totals["filled_in"] == 1
    for role in ("teacher", "student"):
        for field in ("sent", "requests", "retries", "prompt_tokens", "completion_tokens"):
            assert totals["requests"][role][field] == first["requests"][role][field] + second["requests"][role][field]
    assert totals["requests"]["student"]["retry_reasons"] == {"HTTP 503": 2}
    assert totals["requests"]["teacher"]["sent"] + totals["requests"]["student"]["sent"] == server.chat_count


def test_a_sample_meta_from_before_the_history_becomes_its_first_run(tmp_path):
    old = {"feedback": {"name": FEEDBACK}, "counts": {"in_scope_train": 3}, "request_failures": [
        {"key": "cot/1", "error": "read timeout", "attempts": 7}], "unparsed": [], "incomplete_rows": 1,
        "filtered_pairs": 0, "teacher": "…", "student": "…",
        "requests": {"teacher": {"sent": 5}, "student": {"sent": 9}}}
    (tmp_path / "sample_meta.json").write_text(json.dumps(old), encoding="utf-8")
    (run,) = sample.read_runs(tmp_path / "sample_meta.json")
    assert run["started"] is None and run["feedback"] == FEEDBACK and run["request_failures"] == old["request_failures"]
    assert sample.totals([run])["requests"] == {"teacher": {"sent": 5}, "student": {"sent": 9}}
    assert sample.read_runs(tmp_path / "none.json") == []


def test_a_first_request_out_of_retries_names_its_cause(tmp_path, capsys):
    """The teacher's very first request (categories) fails for good: the one line gives the HTTP
    cause, points to no file, and nothing is written."""
    source = load_feedbacks([FEEDBACK])[0].source
    with fake_server(lambda index, body, attempt: Fault.error(503, "overloaded", retry_after_ms="5")) as server:
        config = sample_config(tmp_path, server, max_retries=2)
        with pytest.raises(SystemExit) as exc:
            sample.main(["--config", str(config)])
        sent = server.chat_count
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and sent == 3
    assert err == (f"error: {source}: the teacher's categories request to {server.base_url} failed after 3 attempts "
                   "(HTTP 503: overloaded); re-run the same command once the teacher answers; nothing was written")
    assert not (tmp_path / "data").exists()


def test_the_failure_line_names_a_few_and_counts_the_rest():
    fbs = load_feedbacks([FEEDBACK, "concise-email-alan"])
    def fail(*keys: str) -> dict:
        return {"request_failures": [{"key": k, "error": "read timeout", "attempts": 7} for k in keys]}
    err = sample.failures_error([(fbs[0], "a", fail("in/0", "in/1", "baseline/3")),
                                 (fbs[1], "b", fail("revise/1", "revise/2", "revise/5", "cot/2"))])
    assert str(err) == (f"7 requests failed ({FEEDBACK}: in/0, in/1, baseline/3; concise-email-alan: "
                        "revise/1, revise/2 and 2 more; last error after 7 attempts: read timeout): the data in a, b "
                        "is incomplete (sample_meta.json lists them); re-run the same command to send only these, "
                        "the completed requests are cached")


# ----------------------------------------------------------------------------- the embedded servers


def test_served_namespace_follows_the_files_not_the_port(tmp_path):
    from rlvf.endpoints import served_namespace

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    first = served_namespace("student", [model])
    assert served_namespace("student", [model]) == first != served_namespace("adapter", [model])
    os.utime(model / "model.safetensors", ns=(1, 1))  # rewritten weights (a retrained model)
    assert served_namespace("student", [model]) != first


def test_embedded_sample_rerun_on_a_new_port_sends_nothing(tmp_path, tiny_model_dir, monkeypatch):
    """The pipeline's local server binds a new port each run; the cache still answers everything."""
    import rlvf.serve
    from rlvf.config import load_config
    from rlvf.pipeline import run
    from test_sample_eval import pipeline_config

    ports, start_server = [], rlvf.serve.start_server

    def recording(*args, **kwargs):
        srv = start_server(*args, **kwargs)
        ports.append(srv.port)
        return srv
    monkeypatch.setattr(rlvf.serve, "start_server", recording)
    small = {"categories": 1, "in_scope_per_category": 3, "near_scope_per_category": 3, "out_of_scope": 3,
             "baselines": [], "student_sampling": {"temperature": 0.0, "max_tokens": 8}}
    path = pipeline_config(tmp_path, tiny_model_dir, sample=small, eval={"methods": ["base"]})
    cfg = load_config(path)
    data = tmp_path / "data"
    run(cfg, ["sample"], str(path))
    first, files = meta(data), outputs(data)
    with socket.socket() as busy:  # the first run's port stays taken: the re-run must get another
        busy.bind(("127.0.0.1", ports[0]))
        run(cfg, ["sample"], str(path))
    again = meta(data)
    assert ports[0] != ports[1]
    for role in ("teacher", "student"):
        assert first["requests"][role]["sent"] > 0
        assert again["requests"][role]["sent"] == 0
        assert again["requests"][role]["cache_hits"] == again["requests"][role]["requests"] > 0
    assert outputs(data) == files
