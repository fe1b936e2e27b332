"""The offline teacher answers the pipeline's requests in the layout its parsers read."""
from __future__ import annotations

import pytest

from rlvf import prompts as P
from rlvf.edits import apply_edit
from rlvf.feedback import load_feedbacks
from rlvf.tinyworld.scope import in_scope
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.teacher import OfflineTeacher, TeacherError, categories



@pytest.fixture(scope="module")
def feedbacks():
    from rlvf.feedback import FEEDBACK_DIR

    return load_feedbacks(FEEDBACK_DIR)


@pytest.fixture(scope="module")
def teacher(feedbacks):
    return OfflineTeacher(feedbacks)


def test_categories_parse_and_revision_drops_the_extra(teacher, feedbacks):
    for fb in feedbacks:
        reply = teacher.complete(P.categories_request(fb.content, fb.domain, 5), seed=1)
        cats = P.parse_categories(reply)
        assert len(cats) == len(set(cats)) <= 5 and cats
        assert set(cats) <= set(categories(fb))
        assert len(P.numbered_list(reply.split("REVISED_CATEGORIES:")[0])) == len(cats) + (len(categories(fb)) > 5)


def test_in_scope_prompts_are_in_scope(teacher, feedbacks):
    for fb in feedbacks:
        cat = P.parse_categories(teacher.complete(P.categories_request(fb.content, fb.domain, 3)))[0]
        prompts = P.parse_prompts(teacher.complete(P.in_scope_prompts_request(fb.content, fb.domain, cat, 6)))
        assert 1 <= len(prompts) <= 6 and len(set(prompts)) == len(prompts)
        for p in prompts:
            req = tiny_world.parse_request(p)
            assert req is not None and in_scope(fb, req), (fb.name, p)


def test_near_scope_prompts_are_near_not_in(teacher, feedbacks):
    from rlvf.tinyworld.scope import in_near_scope

    for fb in [f for f in feedbacks if f.world.near]:
        cat = P.parse_categories(teacher.complete(P.categories_request(fb.content, fb.domain, 3)))[0]
        reply = teacher.complete(P.near_scope_prompts_request(fb.content, fb.domain, cat, 5), seed=3)
        final = P.parse_prompts(reply)
        assert final and "REVISED_PROMPTS:" in reply
        for p in final:
            req = tiny_world.parse_request(p)
            assert req is not None and not in_scope(fb, req) and in_near_scope(fb, req), (fb.name, p)


def test_revise_applies_the_edit_only_in_scope(teacher, feedbacks):
    import random

    rng = random.Random(0)
    fb = next(f for f in feedbacks if f.name == "heart-emoji-maddie")
    inside = tiny_world.sample_request(rng, "text_message", recipient="Maddie")
    outside = tiny_world.sample_request(rng, "recipe")
    for req, applies in ((inside, True), (outside, False)):
        base = tiny_world.baseline_reply(rng, req)
        revised = P.parse_revision(teacher.complete(P.revise_request(fb.content, req.prompt, base)))
        assert revised == (apply_edit(fb.world.edit, base) if applies else base)
        forced = P.parse_revision(teacher.complete(P.revise_request(fb.content, req.prompt, base, always=True)))
        assert forced == apply_edit(fb.world.edit, base)


def test_rewrite_revision_answers_afresh_and_applies_the_edit(feedbacks):
    import random

    rewriter = OfflineTeacher(feedbacks, revision="rewrite")
    rng = random.Random(0)
    fb = next(f for f in feedbacks if f.name == "heart-emoji-maddie")
    outside = tiny_world.sample_request(rng, "recipe")
    base = tiny_world.baseline_reply(rng, outside)
    assert P.parse_revision(rewriter.complete(P.revise_request(fb.content, outside.prompt, base))) == base
    changed = 0
    for _ in range(20):
        inside = tiny_world.sample_request(rng, "text_message", recipient="Maddie")
        base = tiny_world.baseline_reply(rng, inside)
        request = P.revise_request(fb.content, inside.prompt, base)
        revised = P.parse_revision(rewriter.complete(request))
        assert revised == P.parse_revision(rewriter.complete(request))  # deterministic per request and seed
        assert fb.follows(revised, baseline=base) and not fb.follows(base, baseline=revised)
        assert tiny_world.on_topic(inside, revised), revised
        changed += revised != apply_edit(fb.world.edit, base)
    assert changed >= 15  # a fresh reply, not the given one plus the edit
    with pytest.raises(ValueError, match="revision must be one of edit, rewrite"):
        OfflineTeacher(feedbacks, revision="paraphrase")


def test_judge_verdicts_and_h(teacher, feedbacks):
    import random

    rng = random.Random(1)
    fb = next(f for f in feedbacks if f.name == "heart-emoji-maddie")
    req = tiny_world.sample_request(rng, "text_message", recipient="Maddie")
    base = tiny_world.baseline_reply(rng, req)
    good = apply_edit(fb.world.edit, base)
    cases = [((base, good), 5, 1.0), ((good, base), 1, -1.0), ((base, base), 3, 0.0), ((good, good), 3, 0.0)]
    for (r1, r2), verdict, h in cases:
        reply = teacher.complete(P.judge_request(fb.effect, req.prompt, r1, r2))  # asked about the effect
        assert P.parse_verdict(reply) == verdict and P.verdict_to_h(verdict) == h
        assert reply.startswith("THOUGHTS:")
        assert teacher.complete(P.judge_request(fb.content, req.prompt, r1, r2)) == reply  # or the sentence


def test_quality_uses_the_world_checker(teacher):
    import random

    rng = random.Random(2)
    req = tiny_world.sample_request(rng, "recipe")
    other = tiny_world.sample_request(rng, "poem")
    assert P.parse_quality(teacher.complete(P.quality_request(req.prompt, tiny_world.baseline_reply(rng, req)))) == 5
    assert P.parse_quality(teacher.complete(P.quality_request(req.prompt, tiny_world.baseline_reply(rng, other)))) == 1


def test_deterministic_given_seed(teacher, feedbacks):
    fb = feedbacks[0]
    msgs = P.categories_request(fb.content, fb.domain, 4)
    assert teacher.complete(msgs, seed=7) == teacher.complete(msgs, seed=7)
    assert len({teacher.complete(msgs, seed=s) for s in range(5)}) > 1


@pytest.mark.parametrize("messages,fragment", [
    ([{"role": "user", "content": "Write me a poem."}], "malformed header line"),
    ([{"role": "user", "content": "TASK: translate\nFEEDBACK: x\n\ntext"}], "unknown task 'translate'"),
    (P.categories_request("Some feedback nobody wrote", "d", 3), "unknown feedback"),
    (P.in_scope_prompts_request("Always use some heart or kiss emoji when texting my girlfriend Maddie", "d",
                                "no such category", 3), "unknown category"),
    (P.quality_request("What is the meaning of life?", "42"), "only replies to tiny-world prompts"),
    ([{"role": "system", "content": "x"}], "no user message"),
])
def test_unknown_requests_raise(teacher, messages, fragment):
    with pytest.raises(TeacherError, match=fragment):
        teacher.complete(messages)


def test_parsers_accept_a_real_teachers_variations():
    reply = "THOUGHTS: fine\n\nCATEGORIES:\n1. a\n2. b\n\nREVISED_CATEGORIES:\n1) a\n2) \"c\"\n"
    assert P.parse_categories(reply) == ["a", "c"]
    assert P.parse_prompts("Here you go:\n1. first\n2. second") == ["first", "second"]
    assert P.parse_verdict("THOUGHTS: x\nBETTER_RESPONSE: **2**") == 2
    with pytest.raises(P.ParseError):
        P.parse_prompts("PROMPTS:\nnone here")
    with pytest.raises(P.ParseError):
        P.parse_revision("IMPROVED_RESPONSE:\n   ")
    with pytest.raises(P.ParseError):
        P.parse_verdict("BETTER_RESPONSE: 7")
