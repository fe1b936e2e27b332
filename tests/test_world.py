"""The synthetic chat world: determinism, variety, the parse inverse, the on-topic checker, selectors."""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from rlvf.tinyworld import world as w
from rlvf.tinyworld.world import (CHANNEL_OF, EMAIL_CLOSINGS, MESSAGING, PEOPLE, SCENARIOS, TEXT_EMOJI, TOPICS, Request,
                                  baseline_reply, corpus, held_out_requests, matches, on_topic, parse_request,
                                  sample_request)

SIGN_OFF = re.compile(r"\b(?:cheers|best|regards|thanks|thank you|love|xoxo|xo|talk soon|take care|see you|"
                      r"sincerely|bye)\b[\s,.!]*\w*[.!]?\s*$", re.IGNORECASE)
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


@pytest.fixture(scope="module")
def pairs():
    """Plain baseline replies (the corpus's rare styles are tested in test_styles.py)."""
    return corpus(0, 4000, style_rate=0)


# ---------------------------------------------------------------------------------------------- sizes

def test_tables_are_large_enough():
    people = [n for n, (rel, _) in PEOPLE.items() if rel != "team"]
    assert len(people) >= 25
    assert all(len(TOPICS[s]) >= 15 for s in SCENARIOS)
    assert all(len(w.TEMPLATES[s]) >= 6 for s in SCENARIOS)
    assert set(TOPICS) == set(SCENARIOS)
    # People overlap across channels: the paper's near-scope texting/emailing/Slack contrasts exist.
    assert PEOPLE["Maddie"] == ("girlfriend", ("text", "email"))
    assert PEOPLE["Alan"][0] == "boss" and PEOPLE["Priya"][0] == "colleague"
    assert {"text", "slack", "email"} <= set(PEOPLE["Priya"][1])
    assert sum(len(chs) > 1 for _, chs in PEOPLE.values()) >= 15
    for channel in CHANNEL_OF.values():
        assert sum(channel in chs for _, chs in PEOPLE.values()) >= 8
    # Topic strings are unique across the non-messaging domains, so a topic names its scenario.
    domain_topics = [t for s in SCENARIOS if s not in MESSAGING for t in TOPICS[s]]
    assert len(domain_topics) == len(set(domain_topics))


# ---------------------------------------------------------------------------------------- determinism

def test_corpus_is_deterministic_from_its_seed(pairs):
    assert corpus(0, 4000, style_rate=0) == pairs
    assert corpus(1, 300, style_rate=0) != pairs[:300]
    assert corpus(0, 300, style_rate=0) == pairs[:300]  # a prefix of a longer corpus from the same seed
    assert corpus(0, 4000) == corpus(0, 4000) and corpus(0, 300) == corpus(0, 4000)[:300]  # styled too


def test_global_random_state_is_not_used():
    random.seed(1)
    first = corpus(7, 200)
    random.seed(2)
    random.random()
    assert corpus(7, 200) == first


def test_every_scenario_appears_roughly_evenly(pairs):
    counts = Counter(r.scenario for r, _ in pairs)
    assert set(counts) == set(SCENARIOS)
    share = {s: counts[s] / len(pairs) for s in SCENARIOS}
    assert all(0.06 <= share[s] <= 0.17 for s in SCENARIOS), share
    assert min(share[s] for s in MESSAGING) > max(share[s] for s in SCENARIOS if s not in MESSAGING)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prompt_variety(scenario):
    rng = random.Random(11)
    requests = [sample_request(rng, scenario) for _ in range(1000)]
    assert len({r.prompt for r in requests}) >= 200
    assert len({r.topic for r in requests}) >= 15
    if scenario in MESSAGING:
        assert len({r.recipient for r in requests}) >= 10


def test_many_names_and_relations_occur(pairs):
    recipients = {r.recipient for r, _ in pairs if r.recipient}
    assert len(recipients) >= 25
    relations = {r.relation for r, _ in pairs if r.relation}
    assert {"girlfriend", "mom", "dad", "brother", "sister", "grandma", "friend", "colleague", "boss",
            "client", "team"} <= relations


# ------------------------------------------------------------------------------------------- requests

def test_request_slots_are_consistent(pairs):
    for r, _ in pairs:
        assert r.topic in TOPICS[r.scenario]
        if r.scenario in MESSAGING:
            assert r.channel == CHANNEL_OF[r.scenario]
            assert r.relation == PEOPLE[r.recipient][0]
            assert r.channel in PEOPLE[r.recipient][1]
            # By name, or for parents and grandparents by what the user calls them ("Mom", "my mom").
            forms = {r.recipient, w.TITLE.get(r.relation, r.recipient).lower()}
            assert any(f in r.prompt.lower() for f in forms), r.prompt
        else:
            assert (r.recipient, r.relation, r.channel) == (None, None, None)
        assert r.topic in r.prompt


def test_sample_request_pins():
    rng = random.Random(0)
    r = sample_request(rng, "text_message", recipient="Maddie", topic="dinner plans")
    assert (r.recipient, r.relation, r.channel, r.topic) == ("Maddie", "girlfriend", "text", "dinner plans")
    assert "Maddie" in r.prompt and "dinner plans" in r.prompt
    for _ in range(50):
        r = sample_request(rng, "email", relation="boss")
        assert (r.recipient, r.channel) == ("Alan", "email")
        r = sample_request(rng, "slack_dm", relation="colleague")
        assert PEOPLE[r.recipient][0] == "colleague" and r.channel == "slack"
        r = sample_request(rng, recipient="Maddie")  # scenario drawn among those reaching Maddie
        assert r.scenario in ("text_message", "email")
        r = sample_request(rng, topic="pancakes")
        assert r.scenario == "recipe"
        r = sample_request(rng, channel="slack")
        assert r.scenario == "slack_dm"
        r = sample_request(rng, "poem", recipient=None, channel=None)  # None pins are no pins
        assert r.recipient is None
    assert {sample_request(rng, "text_message", relation="sister").recipient for _ in range(60)} == {"Emma", "Nora"}


@pytest.mark.parametrize("scenario, pins", [
    ("python_code", {"recipient": "Maddie"}),
    ("recipe", {"channel": "text"}),
    ("text_message", {"recipient": "Jessica"}),
    ("text_message", {"relation": "wizard"}),
    ("slack_dm", {"recipient": "Maddie"}),           # Maddie is not on Slack
    ("email", {"recipient": "Helen", "relation": "boss"}),
    ("email", {"channel": "text"}),
    ("text_message", {"topic": "pancakes"}),
    ("poem", {"topic": "dinner plans"}),
    ("text_message", {"mood": "happy"}),
    ("tweet", {}),
    (None, {"recipient": "Maddie", "topic": "pancakes"}),
])
def test_sample_request_rejects_impossible_pins(scenario, pins):
    with pytest.raises(ValueError):
        sample_request(random.Random(0), scenario, **pins)


def test_parse_request_inverts_sample_request(pairs):
    rng = random.Random(3)
    requests = [r for r, _ in pairs] + [sample_request(rng, s) for s in SCENARIOS for _ in range(100)]
    assert len(requests) >= 2000
    assert all(parse_request(r.prompt) == r for r in requests)


@pytest.mark.parametrize("text", [
    "", "hello", "What is the capital of France?",
    "Text my girlfriend Jessica about dinner plans.",           # unknown name
    "Text my girlfriend Maddie about the weather.",             # unknown topic
    "Text my boss Maddie about dinner plans.",                  # wrong relation for the name
    "Write a Slack DM to my girlfriend Maddie about dinner plans.",  # Maddie is not on Slack
    "text my girlfriend Maddie about dinner plans.",            # case matters
    "Text my girlfriend Maddie about dinner plans. Also call her.",
    "How do I reverse a string in Rust?",
    "Explain photosynthesis to a 45-year-old.",
])
def test_parse_request_rejects_foreign_text(text):
    assert parse_request(text) is None


def test_parse_request_accepts_only_strings():
    assert parse_request(None) is None  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- replies

def test_replies_are_plain_and_short(pairs):
    for r, y in pairs:
        assert y.strip() == y and y
        if r.channel == "text":  # texts may end with one emoji (world.TEXT_EMOJI), nothing else
            y = y.removesuffix(next((" " + e for e in {*sum(TEXT_EMOJI.values(), ()), "👍", "🙂"}
                                     if y.endswith(" " + e)), ""))
        assert y.isascii() and not EMOJI.search(y)
        assert y != y.upper()
        assert not re.match(r"(?i)(sure|of course|certainly|great question|absolutely)\b", y)
        assert len(y.split()) <= 60, y
    lengths = [len(y.split()) for _, y in pairs]
    assert 15 <= sum(lengths) / len(lengths) <= 40


def test_texts_and_dms_have_no_sign_off_and_greet_the_recipient(pairs):
    for r, y in pairs:
        if r.channel in ("text", "slack"):
            assert not SIGN_OFF.search(y), y
            assert "Subject:" not in y
            first = re.split(r"[,.!:]", y)[0]
            assert r.recipient in first or w.TITLE.get(r.relation, "") in first, y


def test_email_closings_are_rare_and_documented(pairs):
    emails = [y for r, y in pairs if r.scenario == "email"]
    closed = [y for y in emails if SIGN_OFF.search(y)]
    assert all(y.rsplit("\n\n", 1)[1] in EMAIL_CLOSINGS for y in closed)
    assert 0 < len(closed) / len(emails) < 0.15
    assert all(y.startswith("Subject: ") for y in emails)


def test_code_fences_only_in_python_answers(pairs):
    for r, y in pairs:
        if r.scenario == "python_code":
            assert y.count("```python\n") == 1 and y.count("```") == 2, y
            prose = re.sub(r"```python\n.*?```", "", y, flags=re.DOTALL).strip()
            assert len(re.findall(r"[.!?](?:\s|$)", prose)) == 1, prose  # one explanatory sentence
        else:
            assert "```" not in y


def test_poems_have_lines(pairs):
    poems = [y for r, y in pairs if r.scenario == "poem"]
    assert poems and all(3 <= len(y.splitlines()) <= 4 for y in poems)


def test_replies_vary(pairs):
    for scenario in SCENARIOS:
        replies = [y for r, y in pairs if r.scenario == scenario]
        assert len(set(replies)) >= min(100, 0.3 * len(replies)), scenario
        openings = Counter(" ".join(y.split()[:2]) for y in replies)
        assert openings.most_common(1)[0][1] <= 0.5 * len(replies), (scenario, openings.most_common(3))


def test_baseline_reply_rejects_unknown_slots():
    with pytest.raises(ValueError):
        baseline_reply(random.Random(0), Request("recipe", "x", "dinner plans"))
    with pytest.raises(ValueError):
        baseline_reply(random.Random(0), Request("text_message", "x", "dinner plans", "Jessica", "girlfriend", "text"))


# --------------------------------------------------------------------------------------------- checker

def test_on_topic_accepts_baseline_replies(pairs):
    hits = sum(on_topic(r, y) for r, y in pairs)
    assert hits >= 0.99 * len(pairs)


def test_every_slot_samples_parses_and_answers_on_topic():
    """Exhaustive over (scenario, topic, recipient): any pin works and its reply passes the checker."""
    rng = random.Random(2)
    slots = 0
    for scenario in SCENARIOS:
        channel = CHANNEL_OF.get(scenario)
        names = [n for n, (_, chs) in PEOPLE.items() if channel in chs] if channel else [None]
        for topic in TOPICS[scenario]:
            assert w.topic_pattern(scenario, topic).search(topic)  # a topic names itself
            for name in names:
                request = sample_request(rng, scenario, topic=topic, recipient=name)
                assert parse_request(request.prompt) == request
                assert on_topic(request, baseline_reply(rng, request)), request
                slots += 1
    assert slots > 2000


def test_on_topic_rejects_cross_paired_replies(pairs):
    rng = random.Random(5)
    checked = rejected = 0
    for r, _ in pairs:
        other, y = pairs[rng.randrange(len(pairs))]
        if (other.scenario, other.topic, other.recipient) == (r.scenario, r.topic, r.recipient):
            continue
        checked += 1
        rejected += not on_topic(r, y)
    assert rejected >= 0.9 * checked


def test_on_topic_near_scope_pairs():
    """Same topic, different recipient or channel: the checker tells them apart where it should."""
    rng = random.Random(0)
    maddie_text = sample_request(rng, "text_message", recipient="Maddie", topic="dinner plans")
    priya_text = sample_request(rng, "text_message", recipient="Priya", topic="dinner plans")
    maddie_email = sample_request(rng, "email", recipient="Maddie", topic="dinner plans")
    to_priya = baseline_reply(rng, priya_text)
    email = baseline_reply(rng, maddie_email)
    assert not on_topic(maddie_text, to_priya)        # addressed to someone else
    assert not on_topic(maddie_text, email)           # an email is not a text
    assert on_topic(maddie_email, email)


@pytest.mark.parametrize("scenario, pins, reply, expected", [
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "Hey Maddie, want to get dinner at the pizza place tonight?", True),
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "Are we still doing dinner? I can book a table.", True),                 # a message, greets no one else
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "Hi Alan, are we still on for dinner tonight?", False),                  # wrong person
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "Hi Maddie, the quarterly report is almost done.", False),               # wrong topic
    ("text_message", {"recipient": "Linda", "topic": "the rent"},
     "Hi Mom, I just paid the rent for this month.", True),                    # title instead of the name
    ("email", {"recipient": "design team", "topic": "the team meeting"},
     "Subject: Meeting\n\nHi team,\n\nThe meeting moves to Friday.", True),
    ("email", {"recipient": "Alan", "topic": "the budget review"},
     "Subject: Budget\n\nHi Priya,\n\nThe budget review is on Thursday.", False),
    ("slack_dm", {"recipient": "Priya", "topic": "a code review"},
     "Subject: Review\n\nHi Priya, can you do a code review?", False),        # e-mail layout on Slack
    ("python_code", {"topic": "reverse a string"},
     "Use slicing to reverse it:\n\n```\ns = 'abc'[::-1]\n```", True),
    ("python_code", {"topic": "reverse a string"}, "Reverse a string with s[::-1] in Python.", False),
    ("python_code", {"topic": "reverse a string"}, "```python\nimport json\n```\n\nThis loads JSON.", False),
    ("recipe", {"topic": "pancakes"}, "Mix flour, milk and eggs, then fry the pancakes in butter.", True),
    ("recipe", {"topic": "pancakes"}, "```python\npancakes = 3\n```\n\nMake pancakes.", False),
    ("recipe", {"topic": "pancakes"}, "Hi Maddie, the pancakes are ready.", False),  # a message, not a recipe
    ("poem", {"topic": "the ocean"}, "The ocean sings\nIts waves come home.", True),
    ("poem", {"topic": "the ocean"}, "The ocean is a large body of salt water.", False),
    ("history_fact", {"topic": "the Titanic"}, "The Titanic sank in 1912 after hitting an iceberg.", True),
    ("history_fact", {"topic": "the Titanic"}, "", False),
    ("history_fact", {"topic": "the Titanic"}, "Titanic " * 200, False),      # degenerate length
    ("text_message", {"recipient": "Maddie", "topic": "a family dinner"},
     "Everyone is coming to the family dinner, I hope you can make it.", True),      # "Everyone" is no greeting
    ("python_code", {"topic": "reverse a string"}, "```python\nprint(text[::-1])\n```", True),  # code only
    ("recipe", {"topic": "pancakes"}, "How do I make pancakes?", False),       # an echoed prompt
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "Text my girlfriend Maddie about dinner plans.", False),
    ("text_message", {"recipient": "Maddie", "topic": "dinner plans"},
     "HI MADDIE, ARE WE STILL ON FOR DINNER TONIGHT?", True),                 # an uppercase edit stays on topic
])
def test_on_topic_cases(scenario, pins, reply, expected):
    request = sample_request(random.Random(0), scenario, **pins)
    assert on_topic(request, reply) is expected


# ------------------------------------------------------------------------------------------- held out

def test_held_out_requests_exclude_given_prompts(pairs):
    train = {r.prompt for r, _ in pairs}
    held = held_out_requests(0, 300, exclude=train)
    assert len(held) == 300 and len({r.prompt for r in held}) == 300
    assert not train & {r.prompt for r in held}
    assert Counter(r.scenario for r in held) == {s: 30 for s in SCENARIOS}
    assert held == held_out_requests(0, 300, exclude=train)
    assert held_out_requests(1, 50) != held_out_requests(0, 50)
    unfiltered = held_out_requests(0, 300)
    assert train & {r.prompt for r in unfiltered}  # the exclusion did real work
    assert all(parse_request(r.prompt) == r for r in held)


# ------------------------------------------------------------------------------------------- selectors

def test_matches_semantics():
    rng = random.Random(0)
    maddie = sample_request(rng, "text_message", recipient="Maddie", topic="dinner plans")
    alan = sample_request(rng, "email", recipient="Alan", topic="the budget review")
    poem = sample_request(rng, "poem", topic="the ocean")
    assert matches(maddie, {})
    assert matches(maddie, {"scenarios": ["text_message"], "recipients": ["Maddie"]})
    assert not matches(alan, {"scenarios": ["text_message"], "recipients": ["Maddie"]})
    assert matches(alan, {"relations": ["boss", "client"], "channels": ["email"]})
    assert not matches(maddie, {"channels": ["email"]})
    assert matches(poem, {"topics": ["the ocean", "the stars"]})
    assert matches(poem, {"scenarios": ("poem",)})
    assert not matches(poem, {"recipients": ["Maddie"]})
    assert not matches(poem, {"channels": [None]})  # None never matches


@pytest.mark.parametrize("selector", [{"scenario": ["poem"]}, {"people": ["Maddie"]}, {"recipients": "Maddie"}])
def test_matches_rejects_bad_selectors(selector):
    with pytest.raises(ValueError):
        matches(sample_request(random.Random(0), "text_message"), selector)
