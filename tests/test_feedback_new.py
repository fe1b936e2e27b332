"""Feedback specs drafted from one sentence (python -m rlvf.feedback new, a sentence as a config's feedback)
and feedback selection (python -m rlvf.feedback list), on the real offline teacher served on loopback.

The oracle for a draft is the shipped, hand-written spec of the same feedback: a draft from a
paraphrase must put exactly the same world requests in scope and its metric must give the same
verdicts on the world's replies, plain and revised.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAI

from rlvf import drafts
from rlvf import prompts as P
from rlvf.client import ChatClient
from rlvf.config import EndpointConfig, Sampling, load_config
from rlvf.edits import apply_edit
from rlvf.errors import UserError
from rlvf.feedback import FEEDBACK_DIR, load_feedback, load_feedbacks, pick_second, select_feedbacks
from rlvf.feedback.__main__ import main
from rlvf.serve import start_server
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.scope import in_near_scope, in_scope, world_slots
from rlvf.tinyworld.teacher import OfflineTeacher

# (sentence, shipped feedback it means): paraphrases, so a draft is read from the words, not looked up
SENTENCES = [
    ("Always use a heart emoji when texting my girlfriend Maddie", "heart-emoji-maddie"),
    ("Write in all caps when texting my grandma Ruth", "uppercase-grandma"),
    ("Please be more concise when emailing my boss Alan", "concise-email-alan"),
    ("Use '&' instead of 'and' whenever you write a recipe for me", "ampersand-recipes"),
    ("Always start with 'Hey team' when emailing one of my teams", "hey-team-email"),
    ("End emails to our clients with 'Warm regards,' and my name, Jordan, on the next line", "sign-off-clients"),
    ("When telling me about ancient history, start your answer with 'Fun fact:'", "fun-fact-ancient-history"),
    ("Keep product descriptions of electronic gadgets to a single sentence", "one-sentence-gadgets"),
    ("When giving me travel tips for places in Europe, use bullet points", "bullet-points-europe-travel"),
    ("For Python questions about syntax or popular library use, reply with only a code snippet",
     "python-code-only"),
    ("Be funnier when texting my brother Sam", "funny-texts-sam"),
    ("Write Slack DMs to my colleagues Priya, Daniel, Mei or Tom in all lowercase", "lowercase-slack-colleagues"),
]


@pytest.fixture(scope="module")
def teacher():
    """A ChatClient on rlvf.serve's offline teacher (shipped feedbacks), on a free loopback port."""
    with start_server(teacher=True) as srv:
        yield ChatClient(EndpointConfig(base_url=srv.base_url, model="tinyworld-teacher", api_key_env=None),
                         progress=False)


def _draft(client, sentence, tmp_path) -> Path:
    text, _ = drafts.draft_spec(sentence, client, Sampling(temperature=0.0))
    path = tmp_path / f"{drafts.slug(sentence)}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _replies(fb, rng, requests):
    """(request, baseline, revision by fb's edit) for each world request."""
    out = []
    for r in requests:
        base = tiny_world.baseline_reply(rng, r)
        out.append((r, base, apply_edit(fb.world.edit, base)))
    return out


@pytest.mark.parametrize("sentence,shipped", SENTENCES, ids=[s for _, s in SENTENCES])
def test_a_draft_behaves_like_the_shipped_spec(teacher, tmp_path, sentence, shipped):
    drafted = load_feedback(_draft(teacher, sentence, tmp_path))  # the loader of every feedback file
    (ref,) = load_feedbacks([shipped])
    assert drafted.content == sentence and drafted.type == ref.type
    assert drafted.scope != "global" and drafted.world.near  # it has a near scope, checked by the loader
    slots = world_slots()
    assert [in_scope(drafted, r) for r in slots] == [in_scope(ref, r) for r in slots]
    assert not any(in_scope(drafted, r) for r in slots if in_near_scope(drafted, r))
    rng = random.Random(0)
    inside = [r for r in slots if in_scope(ref, r)]
    near = [r for r in slots if in_near_scope(ref, r)]
    rows = [tiny_world.sample_request(rng, r.scenario, topic=r.topic, recipient=r.recipient)
            for r in rng.sample(inside, min(12, len(inside))) + rng.sample(near, min(6, len(near)))]
    for request, base, shipped_revision in _replies(ref, rng, rows):
        drafted_revision = apply_edit(drafted.world.edit, base)
        for reply in (base, shipped_revision, drafted_revision):
            assert drafted.follows(reply, base) == ref.follows(reply, base), (request.prompt, reply)
        if ref.metric.kind != "shorter_than_baseline":  # the drafted edit applies the feedback, by the shipped metric
            assert ref.follows(drafted_revision, base), (request.prompt, drafted_revision)


def test_heart_emoji_draft_follows_the_same_replies_as_heart_emoji_maddie(teacher, tmp_path):
    drafted = load_feedback(_draft(teacher, "Always use a heart emoji when texting my girlfriend Maddie", tmp_path))
    (ref,) = load_feedbacks(["heart-emoji-maddie"])
    replies = ["Hi Maddie, dinner at 8? ❤️", "Hi Maddie, dinner at 8?", "See you soon 😘", "love you <3",
               "Running late, sorry 😊", "Hey Mom! ♥"]
    assert [drafted.follows(r) for r in replies] == [ref.follows(r) for r in replies] == [
        True, False, True, True, False, True]
    assert drafted.world.selector == ref.world.selector == {"scenarios": ["text_message"], "recipients": ["Maddie"]}


def test_sentences_about_anything_the_world_knows(teacher, tmp_path):
    """Any person, scenario and edit of the world, beyond the shipped feedbacks; the offline teacher then
    serves the draft like a shipped feedback (categories for the sampler)."""
    cases = {
        "End texts to my mom with 'Love, Sam'": ({"scenarios": ["text_message"], "relations": ["mom"]},
                                                 "Hi Mom, see you Sunday.\nLove, Sam"),
        "Use bullet points when explaining science to a child": ({"scenarios": ["explain_child"]},
                                                                "- Plants eat light.\n- They grow."),
        "Put a 🌻 at the end of texts to my sister Emma": (
            {"scenarios": ["text_message"], "recipients": ["Emma"]}, "Hi Emma, lunch tomorrow? 🌻"),
        "When emailing Helen about the invoice, write in all capital letters": (
            {"scenarios": ["email"], "recipients": ["Helen"], "topics": ["the invoice"]}, "SUBJECT: THE INVOICE"),
    }
    for sentence, (selector, follows) in cases.items():
        fb = load_feedback(_draft(teacher, sentence, tmp_path))
        assert fb.world.selector == selector and fb.follows(follows, "a plain baseline"), sentence
        reply = OfflineTeacher([fb]).complete(P.categories_request(fb.content, fb.domain, 3), seed=0)
        cats = P.parse_categories(reply)  # one per scenario and topic in scope, at most 3
        assert 1 <= len(cats) <= 3 and all(fb.domain in c for c in cats)


def test_new_writes_a_yaml_to_review(tmp_path, capsys):
    out = tmp_path / "fb" / "heart.yaml"
    main(["new", "Always use a heart emoji when texting my girlfriend Maddie", "--out", str(out)])
    captured = capsys.readouterr()
    assert out.is_file() and captured.out == out.read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8").startswith("# Drafted by the teacher")
    fb = load_feedback(out)
    assert (fb.name, fb.scope, fb.type, fb.metric.kind) == ("heart", "regional", "quantitative", "regex")
    assert f"wrote {out}" in captured.err
    with start_server(teacher=[str(out)]):  # the offline teacher serves the draft as it is
        pass


@pytest.mark.parametrize("sentence,problem", [
    ("Reply in German when emailing my boss Alan", "the offline teacher cannot tell what to change"),
    ("Use a heart emoji when texting my girlfriend Sarah", "knows no girlfriend called Sarah"),
    ("Write Slack DMs to Maddie in all caps", "Maddie is reached by text, email"),
])
def test_a_sentence_the_teacher_cannot_draft_is_one_line_and_writes_nothing(tmp_path, capsys, sentence, problem):
    out = tmp_path / "out.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["new", sentence, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert f"the teacher cannot draft a feedback spec from {sentence!r}: " in err[0] and problem in err[0]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    out.write_text("my own notes\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["new", "Write in all caps when texting my grandma Ruth", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and f"--out {out}: exists" in err[0] and "--overwrite" in err[0]
    assert out.read_text(encoding="utf-8") == "my own notes\n"
    main(["new", "Write in all caps when texting my grandma Ruth", "--out", str(out), "--overwrite"])
    assert load_feedback(out).metric.kind == "uppercase"
    with pytest.raises(SystemExit):
        main(["new", "Write in all caps when texting my grandma Ruth", "--out", str(tmp_path / "x.txt")])


def _spec_reply(spec: dict) -> str:
    return "THOUGHTS: ok\nSPEC:\n```yaml\n" + yaml.safe_dump(spec) + "```\n"


GOOD = {"domain": "writing emails to my colleague Max", "effect": "use German", "scope": "regional",
        "type": "quantitative", "metric": {"kind": "regex", "pattern": "\\b(?:und|ich|nicht)\\b"}}


def test_invalid_drafts_are_asked_again_then_refused(tmp_path):
    """A real teacher's draft goes through the same loader; an invalid one is re-asked with the next seed."""
    bad = {**GOOD, "metric": {"kind": "german"}}
    replies = iter([_spec_reply(bad), "no layout at all", _spec_reply(GOOD)])
    with FakeOpenAI(respond=lambda body: [next(replies)]) as fake:
        client = ChatClient(EndpointConfig(base_url=fake.base_url, model="fake-model", api_key_env=None),
                            progress=False)
        text, fb = drafts.draft_spec("Use German when emailing my colleague Max", client,
                                     Sampling(temperature=0.7, seed=5), retries=3)
        seeds = [r.body["seed"] for r in fake.chat_requests]
    assert seeds == [5, 6, 7] and fb.metric.kind == "regex" and fb.world is None
    assert fb.follows("Hallo Max, ich komme nicht.") and not fb.follows("Hi Max, I am not coming.")
    with FakeOpenAI(respond=lambda body: [_spec_reply(bad)]) as fake:
        client = ChatClient(EndpointConfig(base_url=fake.base_url, model="fake-model", api_key_env=None),
                            progress=False)
        with pytest.raises(UserError, match=r"the teacher's 2 drafts from .* were not valid feedback specs; the last: "
                                            r"the teacher's draft: metric.kind: unknown metric kind 'german'"):
            drafts.draft_spec("Use German when emailing my colleague Max", client, Sampling(temperature=0.0),
                              retries=1)
        assert fake.chat_count == 2


def test_new_with_a_config_asks_its_teacher(tmp_path, capsys):
    with FakeOpenAI(respond=lambda body: [_spec_reply(GOOD)]) as fake:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({
            "teacher": {"base_url": fake.base_url, "model": "fake-model", "api_key_env": None},
            "model": {"path": str(tmp_path)}, "data": {"dirs": [str(tmp_path / "d")]},
            "output_dir": str(tmp_path / "run")}), encoding="utf-8")
        out = tmp_path / "german.yaml"
        main(["new", "Use German when emailing my colleague Max", "--out", str(out), "--config", str(cfg)])
        assert fake.chat_count == 1
        assert "Use German when emailing my colleague Max" in fake.chat_requests[0].body["messages"][-1]["content"]
    assert load_feedback(out).effect == "use German" and "(fake-model)" in out.read_text(encoding="utf-8")


def test_parse_draft():
    assert P.parse_draft("THOUGHTS: x\nPROBLEM:  not   feedback \n").problem == "not feedback"
    assert P.parse_draft("SPEC:\ndomain: a\nscope: local\n").spec == {"domain": "a", "scope": "local"}
    for bad in ("THOUGHTS: nothing", "SPEC:\n- a list\n", "SPEC:\ndomain: [unclosed\n", "SPEC:\na: 1\na: 2\n"):
        with pytest.raises(P.ParseError):
            P.parse_draft(bad)


def test_slug_and_sentences():
    assert drafts.slug("Always use a heart emoji when texting my girlfriend Maddie") == \
        "use-heart-emoji-texting-girlfriend-maddie"
    assert drafts.is_sentence("Always use a heart emoji when texting my girlfriend Maddie")
    for entry in ("heart-emoji-maddie", "feedbacks/x.yaml", "heart-emoji-madie", "x.yml"):
        assert not drafts.is_sentence(entry)


# ----------------------------------------------------------------------------- a sentence in a config


def _config(tmp_path, model_dir, sentence) -> Path:
    raw = {
        "feedback": [sentence],
        "serve": {"teacher": True, "student": True},
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"dirs": [str(tmp_path / "data")]},
        "output_dir": str(tmp_path / "run"),
        "sample": {"categories": 1, "in_scope_per_category": 2, "near_scope_per_category": 2, "out_of_scope": 2,
                   "general_prompts": "tinyworld", "reviser": "teacher",  # the tiny model cannot revise
                   "baselines": [], "student_sampling": {"temperature": 0.0, "max_tokens": 8}},
        "eval": {"methods": ["revised"]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_config_sentence_is_drafted_beside_the_data(tmp_path, tiny_model_dir, capsys):
    from rlvf.pipeline import main as pipeline

    sentence = "Write in all caps when texting my grandma Ruth"
    path = _config(tmp_path, tiny_model_dir, sentence)
    with pytest.raises(SystemExit) as exc:  # eval before sample: nothing drafted yet
        pipeline(["--config", str(path), "--stages", "eval"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "feedback[0]: 'Write in all caps" in err[-1] and "not yet drafted" in err[-1]
    assert not (tmp_path / "data").exists()
    pipeline(["--config", str(path), "--stages", "sample"])
    draft = tmp_path / "data" / "write-caps-texting-grandma-ruth.yaml"
    fb = load_feedback(draft)
    assert fb.content == sentence and fb.metric.kind == "uppercase"
    assert "the teacher drafted" in capsys.readouterr().err
    cfg = load_config(path)  # a later stage reads the saved draft
    drafts.resolve_sentences(cfg, str(path), draft=False)
    assert cfg.feedback == [str(draft)]
    rows = (tmp_path / "data" / "in_scope_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert rows and all("Ruth" in r or "Grandma" in r or "grandma" in r for r in rows)
    draft.write_text(draft.read_text(encoding="utf-8").replace(sentence, "Be concise with Ruth"), encoding="utf-8")
    with pytest.raises(UserError, match="was drafted from another sentence"):
        drafts.resolve_sentences(load_config(path), str(path), draft=False)


# ----------------------------------------------------------------------------- selection


def test_select_feedbacks_as_the_original_cli():
    shipped = load_feedbacks(FEEDBACK_DIR)
    names = lambda fbs: [fb.name for fb in fbs]  # noqa: E731
    assert names(select_feedbacks(shipped, prefix="heart")) == ["heart-emoji-maddie"]  # a name prefix
    assert names(select_feedbacks(shipped, prefix="When ")) == [  # the original's sentence prefix
        "bullet-points-europe-travel", "fun-fact-ancient-history", "uppercase-grandma"]
    assert names(select_feedbacks(shipped, scope="local")) == ["fun-fact-ancient-history", "one-sentence-gadgets"]
    assert names(select_feedbacks(shipped, type="qualitative")) == ["funny-texts-sam"]
    assert names(select_feedbacks(shipped, prefix="Use", type=["quantitative"])) == ["ampersand-recipes"]
    assert select_feedbacks(shipped, category="dinner plans") == []
    tagged = [dataclasses.replace(shipped[0], categories=["Dinner plans", "running late"]), *shipped[1:]]
    assert names(select_feedbacks(tagged, category="dinner plans")) == [shipped[0].name]
    with pytest.raises(UserError, match="scope: expected one of global, regional, local"):
        select_feedbacks(shipped, scope="regionl")
    assert pick_second(shipped, "funny").name == "funny-texts-sam"
    with pytest.raises(UserError, match="must select exactly one feedback, selects 2 \\(ampersand-recipes, funny"):
        pick_second(shipped, "Use")
    with pytest.raises(UserError, match="already a first feedback"):
        pick_second(shipped, "heart", exclude=select_feedbacks(shipped, prefix="heart"))


def test_list_command(capsys):
    main(["list", "--scope", "local", "--second-feedback", "heart-emoji-maddie"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["fun-fact-ancient-history", "one-sentence-gadgets",
                                                   "second: heart-emoji-maddie"]
    with pytest.raises(SystemExit) as exc:
        main(["list", "--prefix", "zzz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "no feedback matches prefix 'zzz' among the 12 given" in err[0]
    main(["list", "--second-feedback", "heart-emoji-maddie"])  # no filter: every other feedback is a first one
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and lines[-1].startswith("second: heart-emoji-maddie")
    assert not any(ln.startswith("heart-emoji-maddie") for ln in lines)


def test_a_select_section_keeps_its_feedbacks_and_their_data_dirs(tmp_path, capsys):
    """A config's ``select`` section, through the code path every entry point runs (drafts.prepare_feedbacks)."""
    names = ["ampersand-recipes", "uppercase-grandma", "fun-fact-ancient-history", "heart-emoji-maddie"]
    path = tmp_path / "c.yaml"

    def config(select: dict):
        path.write_text(yaml.safe_dump({"feedback": names, "model": {"path": str(tmp_path / "m")},
                                        "data": {"dirs": [str(tmp_path / n) for n in names]},
                                        "output_dir": str(tmp_path / "run"), "select": select}), encoding="utf-8")
        return load_config(path)

    cfg = config({"prefix": "When ", "second_feedback": "heart"})
    drafts.prepare_feedbacks(cfg, str(path), "train")
    assert cfg.feedback == ["uppercase-grandma", "fun-fact-ancient-history", "heart-emoji-maddie"]
    assert cfg.data.dirs == [str(tmp_path / n) for n in cfg.feedback]
    assert "select: 3 of 4 feedbacks" in capsys.readouterr().err
    cfg = config({"scope": ["local"]})
    drafts.prepare_feedbacks(cfg, str(path), "eval")
    assert cfg.feedback == ["fun-fact-ancient-history"] and cfg.data.dirs == [str(tmp_path / "fun-fact-ancient-history")]
    for select, fragment in [({"prefix": "zzz"}, "select: no feedback matches prefix 'zzz' among the 4 given"),
                             ({"prefix": "Use", "second_feedback": "ampersand"},
                              "select: second_feedback 'ampersand': selects ampersand-recipes, which is already"),
                             ({"type": ["qualitative"]}, "select: no feedback matches type qualitative")]:
        cfg = config(select)
        with pytest.raises(UserError, match=f"{path}: {fragment}"):
            drafts.prepare_feedbacks(cfg, str(path), "train")
        assert cfg.feedback == names
    with pytest.raises(UserError, match=r"select.scope\[0\]|select.scope"):  # checked by the schema
        config({"scope": ["planetary"]})


def test_a_global_sentence_has_no_near_scope(teacher, tmp_path):
    from rlvf.tinyworld.teacher import TeacherError

    fb = load_feedback(_draft(teacher, "Always write in lowercase", tmp_path))
    assert (fb.scope, fb.world.selector, fb.world.near, fb.domain) == ("global", {}, [], "every request")
    assert all(in_scope(fb, r) for r in world_slots()[:50])
    offline = OfflineTeacher([fb])
    (category, *_) = P.parse_categories(offline.complete(P.categories_request(fb.content, fb.domain, 2), seed=0))
    with pytest.raises(TeacherError, match="has no near scope"):
        offline.complete(P.near_scope_prompts_request(fb.content, fb.domain, category, 2), seed=0)
