"""A deterministic synthetic chat world: user requests across everyday scenarios and assistant replies.

The world is the embedded default's stand-in for real users and a real chat model.
It is built to sit close to the paper's feedback domains (Stephan et al. 2024, Sec. 4: "texting my
girlfriend Maddie", emails to a boss, coding questions, ...) and to overlap the way the paper's
near-scope prompts do: the same person can be texted, emailed or messaged on Slack, and the same
everyday topic can come up with a partner, a parent or a colleague.

    rng = random.Random(0)
    request = sample_request(rng, "text_message", recipient="Maddie", topic="dinner plans")
    request.prompt                  # 'Hi. Text Maddie about dinner plans. Thank you!'
    reply = baseline_reply(rng, request)
    reply                           # 'Hi Maddie! Are we still on for dinner tonight? I was thinking ...'
    parse_request(request.prompt) == request   # True: the prompt alone gives back every slot
    on_topic(request, reply)        # True: the world's checker, used to judge a model's replies
    matches(request, {"recipients": ["Maddie"], "channels": ["text"]})   # True: feedback scopes

Everything is a pure function of an explicit ``random.Random``; nothing touches global random state.
The tables it draws from (people, topics with their sentences, prompt templates, reply pieces) are
in ``rlvf.tinyworld.world_data``.

What prompts look like: one of >= 6 templates per scenario around the topic and, for messages, the
recipient, named by name and often by relation ("my girlfriend Maddie", "Maddie", "my coworker
Priya", "our client Helen", "the design team"; parents and grandparents as "my mom", "Mom" or "my
mom Linda"), with an optional neutral opener ("Hi. ") and closer (" Thanks."). Work contacts are
mostly asked about work topics and the others about personal ones, but any person x topic pin works.
Templates are compiled into regexes over the known names and topics, so ``parse_request`` inverts
``sample_request`` exactly.

What replies look like (so that feedbacks have something to change):
  * texts and Slack DMs: a greeting naming the recipient ("Hi Maddie, ...", "Hey Mom! ...") and 1-4
    plain sentences; never a sign-off at the end. About one text in eight ends with an emoji, as
    a real model's texts sometimes do (``TEXT_EMOJI``: by relation, so the model knows the emoji
    tokens; never a heart or a laughing face to the people whose feedbacks ask for those: Maddie
    gets at most a smile, family gets hearts, friends laugh). Slack DMs and everything else: none.
  * emails: a "Subject:" line, a salutation ("Hi Alan,", "Dear team,"), a 1-4 sentence body and, in
    about one email in twelve, the only closing the world writes: ``EMAIL_CLOSINGS`` ("Best regards"),
    without a name.
  * python_code: one explanatory sentence and one short fenced ```python block (either order); no
    other scenario ever writes a code fence.
  * poems: 3-4 short lines; everything else: 1-4 plain sentences. All replies but those texts are ASCII, in sentence
    case, at most ~60 words, and open in varied ways (no fixed "Sure!" / "Great question").

That is ``baseline_reply``. The training corpus (``corpus``) also writes a tenth of its replies in
one rare style (``rlvf.tinyworld.styles``: all caps, lower case, bullets, an opening phrase, a laugh,
a sign-off with a name, a "Hey" salutation, ampersands), for any scenario and person, so that the
model gives the edits a feedback asks for some probability, as a real chat model does.
"""
from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from rlvf.tinyworld.styles import STYLE_RATE, restyle
from rlvf.tinyworld.world_data import (CHANNEL_OF, CHILD_CLOSERS, DOMAIN_TOPICS, EMAIL_CLOSERS,
                                       EMAIL_CLOSINGS, EMAIL_GREETINGS, EMAIL_OPENERS, EXTRA_SLOTS,
                                       GREETING_WORDS, MESSAGE_CLOSERS, MESSAGE_FRAMES, MESSAGE_TOPICS,
                                       MESSAGING, PEOPLE, PERSONAL_TOPICS, POEM_TOPICS, PREFIXES,
                                       PRODUCT_CLOSERS, PYTHON_TOPICS, RELATION_WORDS, SCENARIOS,
                                       SLACK_GREETINGS, SUBJECTS, SUFFIXES, TEAM_ADDRESS,
                                       TEAM_EMAIL_GREETINGS, TEMPLATES, TEXT_EMOJI, TEXT_GREETINGS, TITLE,
                                       TOPICS, TOPIC_TABLE, WORK_EMOJI, WORK_RELATIONS, WORK_TOPICS)


@dataclass(frozen=True)
class Request:
    """One user request of the world, with the slots it was generated from."""

    scenario: str                 # one of SCENARIOS
    prompt: str                   # the user's message, as sent to the model
    topic: str                    # what it is about: "dinner plans", "photosynthesis", "pancakes", ...
    recipient: str | None = None  # named person for messaging scenarios: "Maddie", "Alan", ...
    relation: str | None = None   # the recipient's relation: "girlfriend", "boss", "brother", "team", "client", ...
    channel: str | None = None    # "text", "email" or "slack" for messaging scenarios


SCENARIO_WEIGHTS = {s: (1.5 if s in MESSAGING else 1.0) for s in SCENARIOS}  # corpus() mix
MAX_REPLY_WORDS = 120  # on_topic rejects longer replies (baseline replies stay under ~60 words)
_PIN_KEYS = ("topic", "recipient", "relation", "channel")
# The one table of feedback selector keys: key -> (the Request field it tests, what one value names).
SELECTOR_KEYS = {"scenarios": ("scenario", "scenario"), "topics": ("topic", "topic"),
                 "recipients": ("recipient", "person"), "relations": ("relation", "relation"),
                 "channels": ("channel", "channel")}


# --------------------------------------------------------------------------------------------------
# People helpers.

def _who_forms(name: str) -> tuple[str, ...]:
    """The ways a prompt names this recipient: "my girlfriend Maddie", "Maddie", "Mom", "the sales team"."""
    relation = PEOPLE[name][0]
    if relation == "team":
        return (f"the {name}", f"everyone on the {name}")
    if relation in TITLE:
        return (f"my {relation}", TITLE[relation], f"my {relation} {name}")
    owner = "our" if relation == "client" else "my"
    words = RELATION_WORDS.get(relation, (relation,))
    return tuple(f"{owner} {w} {name}" for w in words) + (name,)


def _address(name: str) -> str:
    """How a reply greets the recipient: the first name, a title ("Mom") or "team"."""
    relation = PEOPLE[name][0]
    return TEAM_ADDRESS[0] if relation == "team" else TITLE.get(relation, name)


def _recipient_words(name: str) -> tuple[str, ...]:
    """Words that, in a reply, name this recipient (name, title, relation words)."""
    relation = PEOPLE[name][0]
    if relation == "team":
        return (name, *TEAM_ADDRESS)
    words = (name, relation, *RELATION_WORDS.get(relation, ()))
    return words + ((TITLE[relation],) if relation in TITLE else ())


@functools.lru_cache(maxsize=None)
def _words_re(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(?:%s)\b" % "|".join(map(re.escape, words)), re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def _addressee_words() -> dict[str, frozenset[str]]:
    """Lower-cased greeting word -> the recipients it may address ("mom" -> {"Linda"}, "team" -> teams)."""
    table: dict[str, set[str]] = {}
    for name, (relation, _) in PEOPLE.items():
        words = TEAM_ADDRESS if relation == "team" else (name, TITLE.get(relation, name))
        for word in words:
            table.setdefault(word.lower(), set()).add(name)
    return {w: frozenset(names) for w, names in table.items()}


def _greeted(text: str) -> set[str]:
    """Known recipients the reply opens by addressing ("Hi Maddie, ..." / "Mom, ..." -> that person).

    The opening clause counts as a greeting when it starts with a greeting word or has at most
    three words, so "Everyone is coming to the family dinner." greets no one.
    """
    body = re.sub(r"^\s*subject\s*:[^\n]*\n", "", text, flags=re.IGNORECASE).lstrip()
    words = re.findall(r"[A-Za-z]+", re.split(r"[,.!?:;\n]", body, maxsplit=1)[0])
    if not words or (len(words) > 3 and words[0].lower() not in GREETING_WORDS):
        return set()
    table = _addressee_words()
    return {name for word in words for name in table.get(word.lower(), ())}


# --------------------------------------------------------------------------------------------------
# Requests.

def topic_pattern(scenario: str, topic: str) -> re.Pattern:
    """The keyword regex that marks a reply as being about ``topic`` (case-insensitive, word start)."""
    try:
        keyword = TOPIC_TABLE[scenario][topic][0]
    except KeyError:
        raise ValueError(f"unknown scenario/topic {scenario!r}/{topic!r}; see TOPICS") from None
    return _keyword_re(keyword)


@functools.lru_cache(maxsize=None)
def _keyword_re(keyword: str) -> re.Pattern:
    return re.compile(r"\b(?:%s)" % keyword, re.IGNORECASE)


def _eligible(scenario: str, pins: dict) -> list[str]:
    """Recipients of a messaging scenario that satisfy the recipient / relation / channel pins."""
    channel = CHANNEL_OF[scenario]
    if pins.get("channel", channel) != channel:
        return []
    return [name for name, (relation, channels) in PEOPLE.items()
            if channel in channels and pins.get("recipient", name) == name
            and pins.get("relation", relation) == relation]


def _pin_error(scenario: str, pins: dict) -> str | None:
    """Why ``pins`` cannot hold for ``scenario``, or None when they can."""
    if "topic" in pins and pins["topic"] not in TOPICS[scenario]:
        return f"topic {pins['topic']!r} is not a {scenario} topic (see TOPICS[{scenario!r}])"
    if scenario not in CHANNEL_OF:
        extra = sorted(set(pins) - {"topic"})
        return f"{scenario} requests have no {'/'.join(extra)}" if extra else None
    if not _eligible(scenario, pins):
        return f"no recipient matches {pins} for {scenario} (channel {CHANNEL_OF[scenario]!r})"
    return None


def _check_pins(fixed: dict) -> dict:
    """Drop None pins; reject unknown keys, names and relations with one clear line."""
    unknown = sorted(set(fixed) - set(_PIN_KEYS))
    if unknown:
        raise ValueError(f"unknown pin(s) {unknown}; expected a subset of {list(_PIN_KEYS)}")
    pins = {k: v for k, v in fixed.items() if v is not None}
    if "recipient" in pins and pins["recipient"] not in PEOPLE:
        raise ValueError(f"unknown recipient {pins['recipient']!r}; see PEOPLE")
    if "relation" in pins and pins["relation"] not in {r for r, _ in PEOPLE.values()}:
        raise ValueError(f"unknown relation {pins['relation']!r}; see PEOPLE")
    return pins


def sample_request(rng: random.Random, scenario: str | None = None, **fixed) -> Request:
    """Draw one request; ``fixed`` pins any of topic / recipient / relation / channel.

    With no scenario, one is drawn uniformly among those the pins allow. A relation pin draws a
    person with that relation. Impossible pins (a recipient on python_code, an unknown name, a
    topic of another scenario, Maddie on Slack) raise ValueError.
    """
    pins = _check_pins(fixed)
    if scenario is None:
        options = [s for s in SCENARIOS if _pin_error(s, pins) is None]
        if not options:
            raise ValueError(f"no scenario satisfies the pins {pins}")
        scenario = rng.choice(options)
    elif scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {list(SCENARIOS)}")
    elif (error := _pin_error(scenario, pins)) is not None:
        raise ValueError(error)
    if scenario not in CHANNEL_OF:
        topic = pins.get("topic") or rng.choice(TOPICS[scenario])
        return Request(scenario, _render_prompt(rng, scenario, topic), topic)
    name = rng.choice(_eligible(scenario, pins))
    topic = pins.get("topic") or _message_topic(rng, name)
    prompt = _render_prompt(rng, scenario, topic, who=rng.choice(_who_forms(name)))
    return Request(scenario, prompt, topic, name, PEOPLE[name][0], CHANNEL_OF[scenario])


def _message_topic(rng: random.Random, name: str) -> str:
    """Mostly work topics for work contacts and personal ones for the rest; 15% the other way."""
    work = PEOPLE[name][0] in WORK_RELATIONS
    if rng.random() < 0.15:
        work = not work
    return rng.choice(tuple(WORK_TOPICS if work else PERSONAL_TOPICS))


def _fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def _render_prompt(rng: random.Random, scenario: str, topic: str, who: str | None = None) -> str:
    template = rng.choice(TEMPLATES[scenario])
    slots = {"topic": topic, "who": who}
    for field in _fields(template):
        if field in EXTRA_SLOTS:
            slots[field] = rng.choice(EXTRA_SLOTS[field])
    return rng.choice(PREFIXES) + template.format(**slots) + rng.choice(SUFFIXES)


# --------------------------------------------------------------------------------------------------
# Parsing: one compiled regex per template; topics and names come from the known lists.

def _alternation(options) -> str:
    return "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True))


def _template_regex(scenario: str, template: str, who_map: dict[str, str]) -> re.Pattern:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field == "topic":
            parts.append(f"(?P<topic>{_alternation(TOPICS[scenario])})")
        elif field == "who":
            parts.append(f"(?P<who>{_alternation(who_map)})")
        elif field:
            parts.append(f"(?:{_alternation(EXTRA_SLOTS[field])})")
    prefix = _alternation(p for p in PREFIXES if p)
    suffix = _alternation(s for s in SUFFIXES if s)
    return re.compile(f"(?:{prefix})?{''.join(parts)}(?:{suffix})?")


@functools.lru_cache(maxsize=None)
def _parsers() -> tuple[tuple[str, re.Pattern, dict[str, str]], ...]:
    """(scenario, regex, who-form -> recipient) for every template of the world."""
    parsers = []
    for scenario, templates in TEMPLATES.items():
        who_map = {}
        if scenario in CHANNEL_OF:
            who_map = {form: name for name, (_, channels) in PEOPLE.items()
                       if CHANNEL_OF[scenario] in channels for form in _who_forms(name)}
        parsers += [(scenario, _template_regex(scenario, t, who_map), who_map) for t in templates]
    return tuple(parsers)


def parse_request(prompt: str) -> Request | None:
    """Recover the Request behind a prompt ``sample_request`` can produce; None for any other text.

    Exact inverse: ``parse_request(r.prompt) == r``. Returns None too if a text were to match two
    different requests (the templates are written so that none does; the tests check it).
    """
    if not isinstance(prompt, str):
        return None
    found = set()
    for scenario, pattern, who_map in _parsers():
        m = pattern.fullmatch(prompt)
        if m is None:
            continue
        if scenario in CHANNEL_OF:
            name = who_map[m["who"]]
            found.add(Request(scenario, prompt, m["topic"], name, PEOPLE[name][0], CHANNEL_OF[scenario]))
        else:
            found.add(Request(scenario, prompt, m["topic"]))
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------
# Baseline replies.

def _pick(rng: random.Random, keyword: str, pool: tuple[str, ...], lo: int, hi: int) -> list[str]:
    """``lo``..``hi`` sentences of ``pool`` in their order, at least one matching the topic keyword."""
    pattern = _keyword_re(keyword)
    chosen = sorted(rng.sample(range(len(pool)), rng.randint(lo, min(hi, len(pool)))))
    if not any(pattern.search(pool[i]) for i in chosen):
        hits = [i for i, s in enumerate(pool) if pattern.search(s)]
        chosen = sorted(chosen[1:] + [rng.choice(hits)])
    return [pool[i] for i in chosen]


def _after_greeting(greeting: str, sentence: str) -> str:
    """Join a greeting and the first sentence: "Hi Maddie, " + "Are we ..." -> "Hi Maddie, are we ..."."""
    if greeting.endswith((", ", ": ")) and not re.match(r"I\b", sentence):
        sentence = sentence[0].lower() + sentence[1:]
    return greeting + sentence


def _message_body(rng: random.Random, topic: str, openers: tuple[str, ...], closers: tuple[str, ...]) -> list[str]:
    """1-4 sentences of a message: [opener] [frame] topic sentences [closer]."""
    _, pool = MESSAGE_TOPICS[topic]
    body = [pool[i] for i in sorted(rng.sample(range(len(pool)), rng.choice((1, 2, 2, 3))))]
    if len(body) < 3 and rng.random() < 0.35:
        body.insert(0, rng.choice(MESSAGE_FRAMES).format(topic=topic))
    if openers and len(body) < 4 and rng.random() < 0.35:
        body.insert(0, rng.choice(openers))
    if len(body) < 4 and rng.random() < 0.3:
        body.append(rng.choice(closers))
    return body


TEXT_EMOJI_RATE = 0.125  # share of texts that end with an emoji (TEXT_EMOJI)


def _chat_reply(rng: random.Random, request: Request) -> str:
    greetings = SLACK_GREETINGS if request.channel == "slack" else TEXT_GREETINGS
    greeting = rng.choice(greetings).format(a=_address(request.recipient))
    first, *rest = _message_body(rng, request.topic, (), MESSAGE_CLOSERS)
    text = " ".join([_after_greeting(greeting, first), *rest])
    if request.channel == "text" and rng.random() < TEXT_EMOJI_RATE:
        text += " " + rng.choice(TEXT_EMOJI.get(request.relation, WORK_EMOJI))
    return text


def _subject(rng: random.Random, topic: str) -> str:
    title = re.sub(r"^(?:the|a|an) ", "", topic)
    return rng.choice(SUBJECTS).format(title=title[0].upper() + title[1:], topic=topic)


def _email_reply(rng: random.Random, request: Request) -> str:
    subject = _subject(rng, request.topic)
    if request.relation == "team":
        greeting = rng.choice(TEAM_EMAIL_GREETINGS)
    else:
        greeting = rng.choice(EMAIL_GREETINGS).format(a=_address(request.recipient))
    body = " ".join(_message_body(rng, request.topic, EMAIL_OPENERS, EMAIL_CLOSERS))
    reply = f"Subject: {subject}\n\n{greeting}\n\n{body}"
    if rng.random() < 1 / 12:
        reply += "\n\n" + rng.choice(EMAIL_CLOSINGS)
    return reply


def _python_reply(rng: random.Random, request: Request) -> str:
    _, code, explanations = PYTHON_TOPICS[request.topic]
    block = f"```python\n{code}\n```"
    parts = [rng.choice(explanations), block]
    return "\n\n".join(parts if rng.random() < 0.5 else parts[::-1])


def _prose_reply(lo: int, hi: int, closers: tuple[str, ...] = (), p_closer: float = 0.0):
    """A reply writer that picks ``lo``..``hi`` sentences of the topic and maybe a closer."""
    def write(rng: random.Random, request: Request) -> str:
        keyword, pool = DOMAIN_TOPICS[request.scenario][request.topic]
        sentences = _pick(rng, keyword, pool, lo, hi)
        if closers and len(sentences) < 4 and rng.random() < p_closer:
            sentences.append(rng.choice(closers))
        return " ".join(sentences)
    return write


def _poem_reply(rng: random.Random, request: Request) -> str:
    keyword, pool = POEM_TOPICS[request.topic]
    return "\n".join(_pick(rng, keyword, pool, 3, 4)) + "."


_WRITERS = {
    "text_message": _chat_reply,
    "email": _email_reply,
    "slack_dm": _chat_reply,
    "python_code": _python_reply,
    "explain_child": _prose_reply(2, 3, CHILD_CLOSERS, 0.2),
    "recipe": _prose_reply(2, 4),
    "travel_tip": _prose_reply(2, 3),
    "poem": _poem_reply,
    "history_fact": _prose_reply(1, 3),
    "product_description": _prose_reply(2, 3, PRODUCT_CLOSERS, 0.25),
}


def baseline_reply(rng: random.Random, request: Request) -> str:
    """The world's plain assistant reply to ``request``: on topic, addressed, 1-4 sentences.

    See the module docstring for what replies contain (and, on purpose, do not: emoji, sign-offs
    at the end of texts, code fences outside python_code, all-caps, fixed openings).
    """
    if request.topic not in TOPIC_TABLE.get(request.scenario, {}):
        raise ValueError(f"unknown scenario/topic {request.scenario!r}/{request.topic!r}; see TOPICS")
    if request.scenario in CHANNEL_OF and request.recipient not in PEOPLE:
        raise ValueError(f"unknown recipient {request.recipient!r}; see PEOPLE")
    return _WRITERS[request.scenario](rng, request)


# --------------------------------------------------------------------------------------------------
# The checker.

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n.*?```", re.DOTALL | re.IGNORECASE)
_SUBJECT_LINE = re.compile(r"^\s*subject\s*:", re.IGNORECASE | re.MULTILINE)
# A message greets, or speaks in the first person ("I'm running late", "are we still on ...").
_MESSAGE_LIKE = re.compile(r"^\s*(?:hi|hey|hello|dear|good morning|morning)\b"
                           r"|\b(?:I|I'm|I'll|I've|I'd|me|my|let's|are we|shall we)\b", re.IGNORECASE)


def _poem_like(text: str) -> bool:
    """At least two lines, or at least three short line-like clauses."""
    if sum(1 for line in text.splitlines() if line.strip()) >= 2:
        return True
    clauses = [c for c in re.split(r"[,;.!?]", text) if c.strip()]
    return len(clauses) >= 3 and all(len(c.split()) <= 12 for c in clauses)


def _addressed_to(request: Request, text: str) -> bool:
    """A message to the request's recipient: it names them, or reads as a message greeting no one else."""
    greeted = _greeted(text)
    if greeted and request.recipient not in greeted:
        return False
    if _words_re(_recipient_words(request.recipient)).search(text):
        return True
    return bool(_MESSAGE_LIKE.search(text))


def on_topic(request: Request, reply: str) -> bool:
    """The world's judge: is ``reply`` an answer to ``request`` (its scenario, topic and recipient)?

    Every reply must mention the topic (``topic_pattern``), be 3..MAX_REPLY_WORDS words long, not be
    a world prompt itself (an echo), and hold
    a code fence exactly when the scenario is python_code. Messages must be addressed to the
    recipient (named, or a message that greets no one else); texts and Slack DMs have no
    "Subject:" line; other scenarios must not greet a known person; a poem has >= 2 lines or >= 3
    short clauses. Paraphrases pass: nothing is compared with the world's own templates.
    """
    text = reply.strip()
    if not 3 <= len(text.split()) <= MAX_REPLY_WORDS or parse_request(text) is not None:
        return False  # empty, degenerate, or a user request (an echoed prompt) rather than an answer
    if request.scenario == "python_code":
        if not _CODE_BLOCK.search(text):
            return False
    elif "```" in text:
        return False
    if not topic_pattern(request.scenario, request.topic).search(text):
        return False
    if request.scenario in CHANNEL_OF:
        if request.channel != "email" and _SUBJECT_LINE.search(text):
            return False
        return _addressed_to(request, text)
    if _greeted(text):
        return False
    return request.scenario != "poem" or _poem_like(text)


# --------------------------------------------------------------------------------------------------
# Corpora, evaluation requests and selectors.

def corpus(seed: int, n: int, style_rate: float = STYLE_RATE) -> list[tuple[Request, str]]:
    """``n`` (request, reply) pairs drawn from ``random.Random(seed)``: the model's training corpus.

    Scenarios are drawn per pair with SCENARIO_WEIGHTS (messaging 1.5, others 1.0: ~13% and ~8.7%
    each), so ``corpus(s, m)`` is a prefix of ``corpus(s, n)`` for m <= n. Each reply is the
    ``baseline_reply``, except that a share ``style_rate`` of them is rewritten in one rare style
    (``rlvf.tinyworld.styles``: all caps, bullets, a sign-off, ...; see there why), drawn from a
    stream of its own: any ``style_rate`` gives the same requests, and 0 the plain replies.
    """
    rng, style_rng = random.Random(seed), random.Random(f"style:{seed}")  # styles: their own stream
    weights = [SCENARIO_WEIGHTS[s] for s in SCENARIOS]
    pairs = []
    for _ in range(n):
        request = sample_request(rng, rng.choices(SCENARIOS, weights)[0])
        reply = baseline_reply(rng, request)
        if style_rng.random() < style_rate:
            reply = restyle(style_rng, request, reply)
        pairs.append((request, reply))
    return pairs


def held_out_requests(seed: int, n: int, exclude: Iterable[str] = frozenset()) -> list[Request]:
    """``n`` evaluation requests with distinct prompts, none of them in ``exclude``.

    Drawn from their own stream (``random.Random(f"held-out:{seed}")``, never the stream of
    ``corpus(seed, ...)``), cycling through SCENARIOS so that each is equally represented. To keep
    evaluation prompts out of the training data pass the training prompts:
    ``held_out_requests(1, 200, exclude={r.prompt for r, _ in corpus(0, 20000)})``.
    """
    rng = random.Random(f"held-out:{seed}")
    seen, requests = set(exclude), []
    for _ in range(1000 + 200 * n):
        if len(requests) == n:
            break
        request = sample_request(rng, SCENARIOS[len(requests) % len(SCENARIOS)])
        if request.prompt not in seen:
            seen.add(request.prompt)
            requests.append(request)
    if len(requests) < n:
        raise ValueError(f"could not draw {n} distinct held-out prompts outside the excluded ones; "
                         f"ask for fewer or exclude fewer")
    return requests


def matches(request: Request, selector: dict) -> bool:
    """Whether ``request`` falls in a feedback's scope.

    ``selector`` maps any of scenarios / topics / recipients / relations / channels to a list of
    allowed values; every given key must contain the request's value (None never matches). An
    empty selector matches every request. Unknown keys or non-list values raise ValueError.
    """
    for key, values in selector.items():
        if key not in SELECTOR_KEYS:
            raise ValueError(f"unknown selector key {key!r}; expected a subset of {list(SELECTOR_KEYS)}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__contains__"):
            raise ValueError(f"selector key {key!r} must map to a list of values, got {values!r}")
    return all(getattr(request, SELECTOR_KEYS[k][0]) is not None
               and getattr(request, SELECTOR_KEYS[k][0]) in v for k, v in selector.items())
