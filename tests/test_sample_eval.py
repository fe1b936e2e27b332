"""Data generation over HTTP on the offline teacher, the paper's scores, and the whole pipeline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlvf.config import Config, load_config
from rlvf.data import SCOPES, read_rows, scope_file
from rlvf.eval import TINY_MODEL_DIR, caveats, h_metric, scores
from rlvf.feedback import load_feedbacks
from rlvf.report import chart_title, markdown, table, write_reports
from rlvf.sample import cot_answer, split

ROOT = Path(__file__).resolve().parent.parent


def pipeline_config(tmp_path, model_dir, feedback="heart-emoji-maddie", **sections) -> Path:
    raw = {
        "feedback": [feedback],
        "serve": {"teacher": True, "student": True},
        "model": {"path": str(model_dir), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"dirs": [str(tmp_path / "data")], "max_length": 256, "max_prompt_length": 96, "val_fraction": 0.1},
        "output_dir": str(tmp_path / "run"),
        "sample": {"categories": 2, "in_scope_per_category": 4, "near_scope_per_category": 4, "out_of_scope": 8,
                   "reviser": "teacher",  # a tiny model cannot follow instructions: the offline teacher revises
                   "student_sampling": {"temperature": 0.0, "max_tokens": 24}},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "progress": False},
        "eval": {"methods": ["base", "adapter", "in_context", "cot", "revised"],
                 "sampling": {"temperature": 0.0, "max_tokens": 24}},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_scores_match_hand_computation():
    h = {"in_scope": [1, 1, 0, -1], "near_scope": [0, 1, -1, 0], "out_of_scope": [0, 0, 0, 1, 0]}
    s = scores(h)
    assert s["S_in"] == pytest.approx(0.25)  # (1 + 1 + 0 − 1) / 4
    assert s["S_near"] == pytest.approx(0.5)  # (0 + 1 + 1 + 0) / 4
    assert s["S_general"] == pytest.approx(0.2)  # 1 / 5
    assert s["S_out"] == pytest.approx((0.5 + 0.2) / 2)  # the two sets weigh the same (4 and 5 prompts)
    assert s["S_overall"] == pytest.approx((0.25 + 1 - 0.35) / 2)
    only_near = scores({"in_scope": [1], "near_scope": [1, 0], "out_of_scope": []})
    assert only_near["S_out"] == pytest.approx(0.5) and only_near["S_general"] is None
    assert scores({"in_scope": [], "near_scope": [], "out_of_scope": []})["S_overall"] is None


def test_h_from_the_metric():
    (fb,) = load_feedbacks(["heart-emoji-maddie"])
    base, hearted = "Hi Maddie, see you at 7.", "Hi Maddie, see you at 7. ❤️"
    assert h_metric(fb, hearted, base) == 1 and h_metric(fb, base, hearted) == -1
    assert h_metric(fb, base, base) == 0 and h_metric(fb, hearted, hearted) == 0
    (concise,) = load_feedbacks(["concise-email-alan"])  # a length metric: compared with each other
    assert h_metric(concise, "Alan, done.", "Hi Alan, it is done. Best regards") == 1
    assert h_metric(concise, "same", "same") == 0


def test_reports_are_written(tmp_path):
    entry = lambda s_in: {"scores": scores({"in_scope": [s_in], "near_scope": [0], "out_of_scope": [0]})}  # noqa: E731
    results = {"fb-a": {"dpo": entry(1), "c3po": entry(0)}, "fb-b": {"dpo": entry(0), "c3po": entry(1)}}
    md = write_reports(results, tmp_path)
    assert "| **mean of 2** | c3po | | 0.500 |" in md
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["fb-a"]["dpo"]["scores"]["S_in"] == 1
    assert len(table(results).splitlines()) == 2 + 4 + 2  # header, 4 rows, a mean per method
    assert chart_title(results) == "C3PO evaluation (mean over 2 feedbacks)"
    assert chart_title({"fb-a": results["fb-a"]}) == "C3PO evaluation: fb-a"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_report_states_counts_methods_formula_and_examples():
    h = {"in_scope": [1, 0, 1], "near_scope": [0, -1], "out_of_scope": [0, 0, 0, 0]}
    responses = {scope: [f"new {scope} {i}" for i in range(len(v))] for scope, v in h.items()}
    rows = {scope: [{"prompt": f"prompt {scope} {i}", "baseline": f"old {scope} {i}"} for i in range(len(v))]
            for scope, v in h.items()}
    results = {"fb": {"base": {"scores": scores(h), "h": h, "responses": responses},
                      "adapter": {"scores": scores(h), "h": h, "responses": responses}}}
    md = markdown(results, {"fb": rows}, {"adapter": "the adapter of this run"}, ["a caveat"])
    assert "| fb | adapter | 3/2/4 |" in md  # n per scope: in / near / general
    assert "S_overall = (S_in + 1 − S_out) / 2" in md and "- `adapter`: the adapter of this run" in md
    assert "- `base`: the untrained model" in md and "> **Caveat.** a caveat" in md
    examples = md.split("## Examples")[1]
    assert "### fb: adapter" in examples and "### fb: base" not in examples  # base is the baseline again
    # changed rows first: in scope rows 0 and 2 (h = 1), near scope row 1 (h = −1) before row 0
    assert examples.index("prompt in_scope 0") < examples.index("prompt in_scope 2")
    assert "prompt in_scope 1" not in examples  # 2 per scope, and h = 0 comes last
    assert examples.index("prompt near_scope 1") < examples.index("prompt near_scope 0")
    assert "| near scope | prompt near_scope 1 | old near_scope 1 | new near_scope 1 | −1 (only the baseline follows) |" in examples


def test_caveat_for_prompted_baselines_on_the_tiny_model(tmp_path):
    cfg = Config()
    cfg.model.path, cfg.eval.methods = str(TINY_MODEL_DIR), ["adapter", "in_context", "cot"]
    (line,) = caveats(cfg)
    assert line.startswith("in_context and cot prompt the shipped tiny-world model")
    cfg.model.path = str(tmp_path)  # any other model: the baselines mean what they say
    assert caveats(cfg) == []


def test_helpers():
    assert cot_answer("I think it applies.\nRESPONSE: Hi ❤️") == "Hi ❤️"
    assert cot_answer("no marker") == "no marker"
    train, test = split(list(range(10)), 0.2, seed=1)
    assert len(test) == 2 and sorted(train + test) == list(range(10)) and split([1], 0.5, 0) == ([1], [])


def test_sample_and_eval_on_the_offline_teacher(tmp_path, tiny_model_dir):
    """The documented files come out of sampling; evaluation scores every method."""
    from rlvf.pipeline import run

    path = pipeline_config(tmp_path, tiny_model_dir)
    cfg = load_config(path)
    results = run(cfg, ["sample", "train", "eval"], str(path))
    data = tmp_path / "data"
    (fb,) = load_feedbacks(cfg.feedback)
    for scope in SCOPES:
        for split_name in ("train", "test"):
            rows = read_rows(scope_file(data, scope, split_name), ("baseline",))
            assert rows, (scope, split_name)
            for row in rows:
                assert {"id", "prompt", "category", "baseline"} <= set(row)
                if scope == "in_scope":
                    assert fb.follows(row["revised"], row["baseline"])
                if split_name == "test":
                    assert {"in_context", "cot", "revised"} <= set(row)
    meta = json.loads((data / "sample_meta.json").read_text())
    assert meta["counts"]["in_scope_train"] + meta["counts"]["in_scope_test"] + meta["filtered_pairs"] <= 8
    assert meta["unparsed"] == [] and meta["request_failures"] == []
    per = results["heart-emoji-maddie"]
    assert set(per) == {"base", "adapter", "in_context", "cot", "revised"}
    assert per["revised"]["scores"]["S_in"] == 1.0 and per["revised"]["scores"]["S_out"] == 0.0
    assert per["base"]["scores"]["S_in"] == 0.0  # greedy base = the greedy baseline responses
    for name in ("results.json", "report.md", "chart.png"):
        assert (tmp_path / "run" / "eval" / name).is_file()
    report = (tmp_path / "run" / "eval" / "report.md").read_text(encoding="utf-8")
    test_rows = {scope: read_rows(scope_file(data, scope, "test"), ()) for scope in SCOPES}
    n = "/".join(str(len(test_rows[scope])) for scope in SCOPES)
    assert f"| heart-emoji-maddie | adapter | {n} |" in report
    assert "### heart-emoji-maddie: adapter" in report
    assert any(" ".join(r["prompt"].split())[:40] in report for r in test_rows["in_scope"])


def test_a_data_dir_holding_another_feedback_is_refused(tmp_path, tiny_model_dir, capsys):
    from rlvf.pipeline import main
    from rlvf.sample import META_NAME, _run_record

    data = tmp_path / "data"
    data.mkdir()
    meta = {"runs": [_run_record({"counts": {}}, "hey-team-email", None, None, None)]}
    (data / META_NAME).write_text(json.dumps(meta), encoding="utf-8")
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(pipeline_config(tmp_path, tiny_model_dir))])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert f"data.dirs[0]: {data} holds the data of feedback 'hey-team-email'" in err[-1]
    assert "give 'heart-emoji-maddie' a directory of its own" in err[-1]
    assert sorted(p.name for p in data.iterdir()) == before and not (tmp_path / "run").exists()


def test_pipeline_errors_are_one_line(tmp_path, tiny_model_dir, capsys):
    from rlvf.pipeline import main

    cases = [
        ({"feedback": "no-such-feedback"}, "no-such-feedback: no such feedback"),
        ({"serve": {"teacher": False}}, "teacher: no endpoint configured"),
        ({"eval": {"methods": ["magic"]}}, "eval.methods[0]: expected one of 'adapter', 'base'"),
    ]
    for change, fragment in cases:
        path = pipeline_config(tmp_path, tiny_model_dir, **change)
        with pytest.raises(SystemExit) as exc:
            main(["--config", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and fragment in err[-1]
        assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_main_job_runs_end_to_end(tmp_path):
    """The README's main job on the embedded default (shipped model, offline teacher)."""
    out = tmp_path / "tw"
    proc = subprocess.run(
        [sys.executable, "-m", "rlvf.pipeline", "--config", str(ROOT / "configs" / "tinyworld-c3po.yaml"),
         "--set", f"data.dirs=[{out / 'data'}]", "--set", f"output_dir={out / 'run'}", "--set", "train.progress=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| heart-emoji-maddie | adapter |" in proc.stdout
    assert (out / "run" / "eval" / "chart.png").is_file()


def test_general_prompt_sources(tmp_path):
    from rlvf.errors import UserError
    from rlvf.sample import general_prompts

    (fb,) = load_feedbacks(["heart-emoji-maddie"])
    shipped = ROOT / "configs" / "data" / "general_prompts.jsonl"
    got = general_prompts(str(shipped), 10, fb, seed=0, exclude=set())
    assert len(got) == len(set(got)) == 10 and got == general_prompts(str(shipped), 10, fb, seed=0, exclude=set())
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a?", "b?", "c?"]}).save_to_disk(str(tmp_path / "ds"))
    assert sorted(general_prompts(str(tmp_path / "ds"), 2, fb, seed=0, exclude={"b?"})) == ["a?", "c?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'prompt' is empty"):
        general_prompts(str(bad), 5, fb, seed=0, exclude=set())
    from rlvf.tinyworld.scope import in_near_scope, in_scope
    from rlvf.tinyworld import world as tiny_world

    for p in general_prompts("tinyworld", 30, fb, seed=1, exclude=set()):
        req = tiny_world.parse_request(p)
        assert not in_scope(fb, req) and not in_near_scope(fb, req)


def test_qualitative_feedback_is_scored_by_the_teachers_judge():
    from rlvf.client import ChatClient, EndpointConfig, Sampling
    from rlvf.eval import Scorer
    from rlvf.edits import apply_edit
    from rlvf.serve import start_server

    (fb,) = load_feedbacks(["funny-texts-sam"])
    assert fb.type == "qualitative"
    base = "Hey Sam, the game starts at eight."
    funny = apply_edit(fb.world.edit, base)
    rows = [{"prompt": "Text my brother Sam about the game.", "baseline": base}] * 3
    with start_server(teacher=[fb.source]) as srv:
        client = ChatClient(EndpointConfig(base_url=srv.base_url, model="tinyworld-teacher", api_key_env=None),
                            progress=False)
        scorer = Scorer(fb, client, Sampling(temperature=0.0))
        # new = funny (judge 5 → h 1), new = baseline (identical: h 0 without asking), reversed (judge 1 → −1)
        assert scorer.h(rows[:2], [funny, base]) == [1.0, 0.0]
        assert scorer.h([{**rows[0], "baseline": funny}], [base]) == [-1.0]


def test_the_judge_is_asked_about_the_feedbacks_effect():
    """As the original's evaluation: the judge prompt carries the effect, not the feedback sentence."""
    from types import SimpleNamespace

    from rlvf.client import Sampling
    from rlvf.eval import Scorer

    (fb,) = load_feedbacks(["funny-texts-sam"])
    sent = []

    class Recorder:
        def run(self, requests, desc):
            sent.extend(requests)
            return [SimpleNamespace(key=r.key, texts=["THOUGHTS: x\nBETTER_RESPONSE: 5"]) for r in requests], []

    scorer = Scorer(fb, Recorder(), Sampling(temperature=0.0))
    assert scorer.h([{"prompt": "Text Sam.", "baseline": "Hi Sam."}], ["Hi Sam. Haha!"]) == [1.0]
    (request,) = sent
    text = "\n".join(m["content"] for m in request.messages)
    assert f"FEEDBACK: {fb.effect}" in text and fb.content not in text


def test_eval_prompts_are_selected_as_the_original(tmp_path):
    """75 per set by default: datasets' shuffle(seed=42).select(range(n)) of each test split."""
    from datasets import Dataset

    from rlvf.eval import test_rows

    for k, scope in enumerate(SCOPES):
        rows = [{"id": f"{scope}-{i}", "prompt": f"p{k}-{i}", "baseline": f"b{i}"} for i in range(100 + k)]
        scope_file(tmp_path, scope, "test").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert Config().eval.prompts_per_set == 75
    picked = test_rows(tmp_path, 75)
    for scope in SCOPES:
        every = read_rows(scope_file(tmp_path, scope, "test"), ())
        original = Dataset.from_list(every).shuffle(seed=42).select(range(75))
        assert [r["id"] for r in picked[scope]] == original["id"]
    assert [len(v) for v in test_rows(tmp_path, 500).values()] == [100, 101, 102]  # fewer: all of them
    assert [r["id"] for r in test_rows(tmp_path)["in_scope"]][:3] == ["in_scope-0", "in_scope-1", "in_scope-2"]


def test_in_context_and_cot_prompts_have_the_originals_structure():
    from rlvf.sample import COT_MARKER, cot_messages, in_context_messages

    fb, prompt = "Always use a heart emoji when texting Maddie", "Text Maddie that I am late."
    (msg,) = in_context_messages(fb, prompt)
    assert msg["role"] == "user" and msg["content"].startswith(prompt)  # the request first, as asked
    assert msg["content"].endswith(f"{fb})") and "if it is relevant" in msg["content"]  # then the feedback, if it applies
    (cot,) = cot_messages(fb, prompt)
    text = cot["content"]
    # reason first (whether and how it applies), then the reply after the marker; request before feedback
    assert text.index("EXPLANATION:") < text.index(COT_MARKER) and "whether" in text
    assert text.index(f"REQUEST: {prompt}") < text.index(f"FEEDBACK: {fb}") and text.endswith("EXPLANATION:")
