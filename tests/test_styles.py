"""The corpus's rare reply styles (rlvf.tinyworld.styles): rare, varied, scope-free, detectable."""
from __future__ import annotations

import collections
import random

import pytest

from rlvf.tinyworld import styles
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.styles import STYLES, applicable, apply_style, detect, restyle


@pytest.fixture(scope="module")
def both():
    """The same 6,000 requests with plain and with styled replies."""
    return tiny_world.corpus(0, 6000, style_rate=0), tiny_world.corpus(0, 6000)


def test_plain_replies_are_never_detected_as_styled(both):
    plain, _ = both
    assert collections.Counter(detect(y) for _, y in plain) == {None: len(plain)}


def test_styled_share_and_every_style_occurs(both):
    """About STYLE_RATE of the replies carry a style, each style is rare, and all of them occur."""
    _, styled = both
    counts = collections.Counter(detect(y) for _, y in styled)
    share = 1 - counts[None] / len(styled)
    assert abs(share - styles.STYLE_RATE) < 0.02, share
    assert set(counts) - {None} == set(STYLES)
    assert max(n for name, n in counts.items() if name) / len(styled) < 0.04  # each style is rare


def test_styles_are_not_tied_to_a_scope(both):
    """A feedback's edit appears outside its scope too: caps in texts to anyone, bullets in every
    prose scenario, sign-offs to clients and others, "Fun fact:" beyond history."""
    _, styled = both
    upper_to = {r.recipient for r, y in styled if r.scenario == "text_message" and detect(y) == "upper"}
    bullets_in = {r.scenario for r, y in styled if detect(y) == "bullets"}
    signed_to = {r.relation for r, y in styled if detect(y) == "sign_off"}
    fun_fact_in = {r.scenario for r, y in styled if y.startswith("Fun fact:")}
    assert len(upper_to) >= 8
    assert bullets_in >= {"recipe", "travel_tip", "history_fact", "product_description", "explain_child"}
    assert len(signed_to) >= 3
    assert len(fun_fact_in) >= 3


def test_styled_replies_stay_on_topic_and_keep_their_requests(both):
    plain, styled = both
    assert [r for r, _ in plain] == [r for r, _ in styled]  # a style rewrites the reply, not the request
    for r, y in styled:
        assert tiny_world.on_topic(r, y), (r.prompt, y)


@pytest.mark.parametrize("name,scenario,reply,expected", [
    ("upper", "text_message", "Hi Ruth, see you on Sunday.", "HI RUTH, SEE YOU ON SUNDAY."),
    ("lower", "slack_dm", "Hey Priya, the Demo is at Noon.", "hey priya, the demo is at noon."),
    ("bullets", "travel_tip", "Go early. Eat late!", "- Go early.\n- Eat late!"),
    ("hey", "email", "Subject: X\n\nDear team,\n\nThe Plan is ready.", "Subject: X\n\nHey team,\n\nThe Plan is ready."),
    ("ampersand", "recipe", "Salt and pepper.", "Salt & pepper."),
])
def test_each_style_rewrites_as_documented(name, scenario, reply, expected):
    assert name in applicable(scenario, reply)
    assert apply_style(random.Random(0), name, reply) == expected
    assert detect(expected) == name


def test_applicability_keeps_code_and_messages_sane():
    code = "Use int().\n\n```python\nvalue = int(\"42\")\n```"
    assert applicable("python_code", code) == []
    assert restyle(random.Random(0), tiny_world.Request("python_code", "x", "t"), code) == code
    assert "sign_off" in applicable("email", "Subject: X\n\nHi Alan,\n\nDone.")
    assert "sign_off" not in applicable("email", "Subject: X\n\nHi Alan,\n\nDone.\n\nBest regards")
    assert not {"bullets", "opener"} & set(applicable("text_message", "Hi Sam. Two. Three."))
    assert "laugh" not in applicable("email", "Subject: X\n\nHi Alan,\n\nDone.")


def test_sign_off_and_opener_draw_from_their_tables():
    rng = random.Random(3)
    signed = {apply_style(rng, "sign_off", "Subject: X\n\nHi Helen,\n\nDone.") for _ in range(200)}
    assert {s.rsplit("\n\n", 1)[1] for s in signed} == {f"{c},\n{n}" for c in styles.SIGN_OFFS for n in styles.SENDERS}
    opened = {apply_style(rng, "opener", "Rome is old.") for _ in range(100)}
    assert opened == {f"{o} Rome is old." for o in styles.OPENERS}
