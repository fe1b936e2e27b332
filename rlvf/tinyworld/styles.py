"""Rare style variants of the tiny world's corpus replies (``world.corpus``).

A real chat model has seen every way of writing a reply that a user's feedback may ask for — all
capitals, all lower case, bullet points, an opening phrase, a sign-off with a name, a joke, an
ampersand — and gives each some probability in every context. A teacher's revision is then a
plausible reply for it, and preference training (DPO, C3PO) only has to move probability towards
it. The tiny model learns from its corpus alone: trained on plain replies only, it gave revisions
10 to 1,400 nats less than its own reply (an all-caps text: −1,420 against −4; a "Fun fact:"
opening: −62 against −2), a gap no DPO-family loss closes before its sigmoid saturates, so the
tiny world could not show what those methods do with a real model.

So ``world.corpus`` writes a small share of its replies (``STYLE_RATE``) in one style drawn from
those that fit the reply (``applicable``), for any scenario and any person: no style is tied to a
feedback's scope, and each is rare enough (about 1–2 % of the replies it fits) that the greedy
reply stays the plain one. ``world.baseline_reply`` itself never writes a style.

    rng = random.Random(0)
    restyle(rng, request, "Hi Maddie, are we still on for dinner?")   # e.g. 'HI MADDIE, ARE WE ...'

Each style is one of the edits that feedbacks use (``rlvf.edits``), so the corpus holds, rarely and
anywhere, exactly the kinds of rewrite that a feedback later asks for in its scope. Every function
here is pure text; the request is only read for its ``scenario``.
"""
from __future__ import annotations

import random
import re

from rlvf.edits import EDITS, split_sentences
from rlvf.tinyworld.world_data import MESSAGING

STYLE_RATE = 0.1  # share of corpus replies written in one of STYLES

OPENERS = ("Fun fact:", "Quick tip:", "In short:", "Here you go:")
LAUGHS = (" Haha!", " Haha 😂", " Lol!", " Haha, that made me laugh.")
SIGN_OFFS = ("Warm regards", "Kind regards", "Best wishes", "Many thanks")
SENDERS = ("Jordan", "Alex", "Chris", "Taylor", "Morgan")

_EMAIL_GREETING = re.compile(r"^(?:Hi|Hello|Dear) ", re.MULTILINE)

# Each style is an edit of rlvf.edits (the library the feedbacks' edits come from) with its
# parameters; a parameter given as a function of the rng is drawn anew for each reply.
STYLES: dict[str, tuple[str, dict]] = {
    "upper": ("uppercase", {}),
    "lower": ("lowercase", {}),
    "bullets": ("bullet_points", {}),
    "opener": ("start_with", {"phrase": lambda rng: rng.choice(OPENERS)}),
    "laugh": ("append", {"text": lambda rng: rng.choice(LAUGHS)}),
    "sign_off": ("sign_off", {"separator": "\n\n",
                              "text": lambda rng: f"{rng.choice(SIGN_OFFS)},\n{rng.choice(SENDERS)}"}),
    "hey": ("regex_replace", {"pattern": _EMAIL_GREETING.pattern, "by": "Hey "}),
    "ampersand": ("replace_word", {"word": "and", "by": "&"}),
}


def apply_style(rng: random.Random, name: str, reply: str) -> str:
    """``reply`` written in style ``name`` (its edit, with parameters drawn from ``rng``)."""
    kind, params = STYLES[name]
    drawn = {k: v(rng) if callable(v) else v for k, v in params.items()}
    return EDITS[kind].fn(reply, **drawn)


def applicable(scenario: str, reply: str) -> list[str]:
    """The styles that fit a reply of ``scenario``, in STYLES order.

    Code is never re-cased or bulleted; bullets and openers go to plain prose, laughs to texts and
    Slack DMs, sign-offs and "Hey" salutations to emails (the latter where the salutation is not
    one already), ampersands wherever the reply has the word "and".
    """
    prose = scenario not in MESSAGING and scenario not in ("python_code", "poem")
    fits = {
        "upper": scenario != "python_code",
        "lower": scenario != "python_code",
        "bullets": prose and len(split_sentences(reply)) >= 2,
        "opener": prose,
        "laugh": scenario in ("text_message", "slack_dm"),
        "sign_off": scenario == "email" and not reply.endswith("regards"),
        "hey": scenario == "email" and bool(_EMAIL_GREETING.search(reply)),
        "ampersand": bool(re.search(r"(?i)(?<!\w)and(?!\w)", reply)) and scenario != "python_code",
    }
    return [name for name in STYLES if fits[name]]


def restyle(rng: random.Random, request, reply: str) -> str:
    """``reply`` in one style drawn uniformly from those that fit it (unchanged if none does)."""
    names = applicable(request.scenario, reply)
    return apply_style(rng, rng.choice(names), reply) if names else reply


_SIGNED = re.compile(r"\n\n(?:%s),\n(?:%s)$" % ("|".join(SIGN_OFFS), "|".join(SENDERS)))


def detect(reply: str) -> str | None:
    """The style a reply is written in (the first of STYLES that matches), or None for a plain one.

    Judges text alone, so a plain reply that happens to say " & " or "Haha" counts as styled; the
    world's baseline replies never do (tests/test_styles.py).
    """
    letters = [c for c in reply if c.isalpha()]
    checks = {
        "upper": bool(letters) and all(c.isupper() for c in letters),
        "lower": bool(letters) and all(c.islower() for c in letters),
        "bullets": reply.startswith("- "),
        "opener": reply.startswith(OPENERS),
        "laugh": reply.endswith(LAUGHS),
        "sign_off": bool(_SIGNED.search(reply)),
        "hey": bool(re.search(r"^Subject: .*\n\nHey ", reply)),
        "ampersand": "&" in reply,
    }
    return next((name for name in STYLES if checks[name]), None)
