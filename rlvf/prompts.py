"""What the pipeline asks the teacher model, and how its answers are parsed.

Every teacher request is a chat (system + user message) whose user message starts with a
``TASK: <name>`` line followed by ``KEY: value`` fields, then instructions and the answer layout the
reply must use. The layouts follow the C3PO data scheme (Stephan et al. 2024, §4): categories are
proposed and then revised (``REVISED_CATEGORIES:``), prompts are numbered lists (near-scope ones
with a revision step, ``REVISED_PROMPTS:``), revisions come after ``IMPROVED_RESPONSE:``, and judge
verdicts after ``BETTER_RESPONSE:`` on a 1–5 scale. The same parsers read a GPT-4-class teacher's
replies and the offline teacher's (rlvf/tinyworld/teacher.py), which answers these exact requests.

One request goes to the student instead (``sample.reviser: student``, the original's default): the
revision of its own baseline, ``student_revise_request``, a plain user turn in the original's layout
whose reply is read by the same ``parse_revision``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM = "You are a careful assistant that helps build training data. Follow the requested answer layout exactly."

TASKS = ("categories", "in_scope_prompts", "near_scope_prompts", "revise", "judge", "quality", "draft_feedback")


class ParseError(ValueError):
    """A teacher reply that does not follow the requested layout (the caller may retry)."""


def _request(task: str, fields: dict[str, str | int], instructions: str) -> list[dict[str, str]]:
    head = "\n".join([f"TASK: {task}"] + [f"{k}: {_one_line(v)}" for k, v in fields.items()])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{head}\n\n{instructions.strip()}"}]


def _one_line(value) -> str:
    return " ".join(str(value).split())


def categories_request(content: str, domain: str, count: int) -> list[dict[str, str]]:
    """Ask for ``count`` categories around the feedback's domain: a slightly larger superset of it (as the
    original asks), so that each category holds prompts the feedback applies to and prompts it does not."""
    return _request("categories", {"FEEDBACK": content, "DOMAIN": domain, "COUNT": count}, f"""
A user gave the feedback above. List {count} distinct, concrete categories of requests that together
cover a slightly larger area than its domain: each category stays close to the domain, and for each
it must be easy to write some requests the feedback applies to and some it does not apply to. First
think, then give a numbered list, then check it (remove overlaps and categories where one of the two
kinds of request would be hard to write) and give the final numbered list.

Layout:
THOUGHTS: <one paragraph>
CATEGORIES:
1. <category>
...
REVISED_CATEGORIES:
1. <category>
...""")


def in_scope_prompts_request(content: str, domain: str, category: str, count: int) -> list[dict[str, str]]:
    """Ask for ``count`` user prompts in ``category`` to which the feedback clearly applies."""
    return _request("in_scope_prompts", {"FEEDBACK": content, "DOMAIN": domain, "CATEGORY": category,
                                         "COUNT": count}, f"""
Write {count} different prompts a user could send to a chat assistant. Each must belong to the category
and be so clearly inside the domain that a response to it must apply the feedback. Make them specific
(invent names, facts and details as needed), one to three sentences each, no repeats.

Layout:
PROMPTS:
1. <prompt>
...""")


def near_scope_prompts_request(content: str, domain: str, category: str, count: int) -> list[dict[str, str]]:
    """Ask for ``count`` prompts close to the domain that the feedback must NOT touch, with a revision step."""
    return _request("near_scope_prompts", {"FEEDBACK": content, "DOMAIN": domain, "CATEGORY": category,
                                           "COUNT": count}, f"""
Write {count} different prompts a user could send to a chat assistant that look closely related to the
category and domain but fall OUTSIDE the domain, so that the feedback must not be applied to them
(for example the same kind of task for another person, channel or subject). Then check each one: if a
prompt is actually inside the domain, replace it, and give the final list.

Layout:
THOUGHTS: <one paragraph>
PROMPTS:
1. <prompt>
...
REVISED_PROMPTS:
1. <prompt>
...""")


def revise_request(content: str, prompt: str, response: str, always: bool = False) -> list[dict[str, str]]:
    """Ask for the response rewritten to apply the feedback (only where it applies, unless ``always``)."""
    rule = ("Apply the feedback to the response regardless of whether it applies to this prompt."
            if always else "Apply the feedback only if it applies to this prompt; otherwise return the response unchanged.")
    return _request("revise", {"FEEDBACK": content, "APPLY": "always" if always else "if_relevant"}, f"""
{rule} Keep everything else about the response as it is.

PROMPT:
{prompt}
RESPONSE:
{response}

Layout:
IMPROVED_RESPONSE:
<the full improved response>""")


REVISION_MARKER = "IMPROVED_RESPONSE:"


def student_revise_request(effect: str, prompt: str, response: str) -> list[dict[str, str]]:
    """The student's revision of its own baseline, in the structure of the original's GET_COMPLETION_REVISED
    (src/dataset/prompts.py): the prompt, the previous response and the feedback given by its *effect*;
    a short explanation first, then the revision after ``IMPROVED_RESPONSE:``. It always applies the
    effect (the effect alone does not say where the feedback belongs). One user turn, no system turn
    (some chat templates, e.g. Mistral's, reject one)."""
    return [{"role": "user", "content": (
        "You will get a request, an earlier reply to it and a piece of feedback on how to reply. Write a "
        "better reply that carries out the feedback and still keeps everything from the earlier reply that "
        "matters for answering the request well. First, on a line starting with 'EXPLANATION:', say in two "
        "or three sentences what you notice about the earlier reply and what the new one must change; think "
        f"step by step. Then, on a new line, write '{REVISION_MARKER}' followed by the complete new reply. "
        "Write nothing after the new reply.\n\n"
        f"PROMPT: {prompt}\n\nPREVIOUS_RESPONSE: {response}\n\nFEEDBACK: {effect}\n\nEXPLANATION:")}]


def judge_request(effect: str, prompt: str, response_1: str, response_2: str) -> list[dict[str, str]]:
    """Ask which response follows the feedback better, on a 1–5 scale (1: the first, 3: equal, 5: the second).
    The feedback is given by its effect (what changes), as the original's evaluation does."""
    return _request("judge", {"FEEDBACK": effect}, f"""
Compare how well the two responses follow the feedback for this prompt (adherence only, not quality).
Answer 1 if RESPONSE_1 follows it much better, 2 somewhat better, 3 equally (both or neither),
4 if RESPONSE_2 follows it somewhat better, 5 much better.

PROMPT:
{prompt}
RESPONSE_1:
{response_1}
RESPONSE_2:
{response_2}

Layout:
THOUGHTS: <one paragraph>
BETTER_RESPONSE: <1-5>""")


def quality_request(prompt: str, response: str) -> list[dict[str, str]]:
    """Ask for an answer-quality score of one response, 1 (useless or off-topic) to 5 (excellent)."""
    return _request("quality", {}, f"""
Rate the quality of the response to the prompt from 1 (useless or off-topic) to 5 (excellent), judging
helpfulness, correctness and relevance.

PROMPT:
{prompt}
RESPONSE:
{response}

Layout:
THOUGHTS: <one paragraph>
SCORE: <1-5>""")


def draft_feedback_request(sentence: str, metrics: list[str]) -> list[dict[str, str]]:
    """Ask for the fields of a feedback spec (domain, effect, scope, type, metric) drafted from one sentence.

    ``metrics``: one line per metric kind the spec may use (``kind(params): what it checks``). The reply
    is a YAML mapping after ``SPEC:`` (the keys of a feedback file, less ``content``), or one line after
    ``PROBLEM:`` when the sentence cannot be turned into a spec. The fields follow C3PO §3 and the
    feedback records of the original code (its notebooks/gpt_feedback_gen.ipynb drafted them with GPT-4).
    """
    kinds = "\n".join(f"- {line}" for line in metrics)
    return _request("draft_feedback", {"FEEDBACK": sentence}, f"""
A user gave a chat assistant the feedback above. Turn it into a specification that a data pipeline can
use to teach the assistant to apply the feedback where it belongs and nowhere else:

- domain: the situations the feedback applies to, in words, as a short phrase (for "Be more concise
  when emailing my boss Jared": "writing an email to my boss Jared"); keep every name and qualifier.
- effect: what should change in the assistant's replies there, as a short imperative phrase
  ("be more concise").
- scope: global if it applies to every request, regional if to a broad area (a person, a channel,
  a kind of task), local if to a narrow one (a few specific topics).
- type: quantitative if a simple mechanical check of the reply can tell whether it follows the
  feedback (an emoji, a casing, a fixed opening or closing, a length); qualitative if it takes
  judgement (tone, humour, level of detail).
- metric: required for quantitative feedback, optional for qualitative: the check, one mapping with
  a kind from the list below and its parameters (a list of mappings means all must hold). Length
  kinds compare the reply with the assistant's reply before the feedback.

Metric kinds:
{kinds}

If the sentence is not feedback about how to reply, or no specification can express it, answer
PROBLEM with the reason in one line instead of a SPEC.

Layout:
THOUGHTS: <one paragraph>
SPEC:
domain: <phrase>
effect: <phrase>
scope: <global|regional|local>
type: <quantitative|qualitative>
metric: {{kind: <kind>, <parameter>: <value>}}

or:
THOUGHTS: <one paragraph>
PROBLEM: <why no specification fits, one line>""")


# ----------------------------------------------------------------------------- reading requests


@dataclass
class TeacherRequest:
    """A parsed teacher request: the task, its header fields and its PROMPT/RESPONSE blocks."""

    task: str
    fields: dict[str, str]
    blocks: dict[str, str]


_BLOCKS = ("PROMPT", "RESPONSE", "RESPONSE_1", "RESPONSE_2")


def read_request(messages: list[dict]) -> TeacherRequest:
    """Inverse of the ``*_request`` builders (used by the offline teacher). Raises ParseError."""
    user = [m.get("content", "") for m in messages if m.get("role") == "user"]
    if not user or not isinstance(user[-1], str):
        raise ParseError("no user message")
    text = user[-1]
    head, _, body = text.partition("\n\n")
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            raise ParseError(f"malformed header line {line!r}")
        fields[key] = value
    task = fields.pop("TASK", None)
    if task not in TASKS:
        raise ParseError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    names = "|".join(_BLOCKS)
    parts = re.split(rf"^({names}):\n", body.split("\n\nLayout:\n")[0], flags=re.M)
    blocks = {parts[i]: parts[i + 1].rstrip("\n") for i in range(1, len(parts) - 1, 2)}
    return TeacherRequest(task, fields, blocks)


# ----------------------------------------------------------------------------- parsing replies


def _section(text: str, name: str) -> str | None:
    """Text after the line ``NAME:`` up to the next ``OTHER_NAME:`` section, or None."""
    m = re.search(rf"^\s*{name}:[ \t]*(.*?)(?=^\s*[A-Z][A-Z_]+:|\Z)", text, flags=re.M | re.S)
    return None if m is None else m.group(1).strip()


def numbered_list(text: str) -> list[str]:
    """Items of a '1. …' / '2) …' list, one per line; other lines are ignored."""
    items = [m.group(1).strip() for m in re.finditer(r"^\s*\d+[.)]\s+(.+?)\s*$", text, flags=re.M)]
    return [i.strip('"') for i in items if i.strip('"')]


def parse_list(reply: str, sections: tuple[str, ...]) -> list[str]:
    """The numbered list of the first section present (e.g. REVISED_PROMPTS, then PROMPTS)."""
    for name in sections:
        body = _section(reply, name)
        if body is not None:
            items = numbered_list(body)
            if items:
                return items
    if not any(_section(reply, name) is not None for name in sections):  # a bare list is accepted
        items = numbered_list(reply)
        if items:
            return items
    raise ParseError(f"no numbered list under {' or '.join(s + ':' for s in sections)}")


def parse_categories(reply: str) -> list[str]:
    return parse_list(reply, ("REVISED_CATEGORIES", "CATEGORIES"))


def parse_prompts(reply: str) -> list[str]:
    return parse_list(reply, ("REVISED_PROMPTS", "PROMPTS"))


def parse_revision(reply: str) -> str:
    """The text after the last ``IMPROVED_RESPONSE:`` (the original splits on the marker and keeps the last
    part; an explanation that mentions the marker comes before it). Raises ParseError when the marker is
    missing or nothing follows it."""
    _, marker, tail = reply.rpartition(REVISION_MARKER)
    tail = re.sub(r"\A(?:\*\*)?[ \t]*\n?", "", tail)  # 'IMPROVED_RESPONSE:**' as markdown-happy models write it
    if not marker or not tail.strip():
        raise ParseError(f"no text after {REVISION_MARKER}")
    return tail.strip("\n")


def _score(reply: str, name: str) -> int:
    m = re.search(rf"{name}:\s*\**\s*([1-5])\b", reply)
    if m is None:
        raise ParseError(f"no {name}: <1-5> in the reply")
    return int(m.group(1))


def parse_verdict(reply: str) -> int:
    """Judge verdict 1–5 (1: RESPONSE_1 follows the feedback much better, 5: RESPONSE_2 does)."""
    return _score(reply, "BETTER_RESPONSE")


def parse_quality(reply: str) -> int:
    return _score(reply, "SCORE")


def verdict_to_h(verdict: int) -> float:
    """Map a 1–5 verdict with the new response as RESPONSE_2 to h ∈ [−1, 1]: (v − 3) / 2."""
    return (verdict - 3) / 2


@dataclass
class Draft:
    """A parsed draft_feedback reply: the spec mapping, or the teacher's one-line problem."""

    spec: dict | None
    problem: str | None = None


def parse_draft(reply: str) -> Draft:
    """The YAML mapping after ``SPEC:`` (code fences allowed), or the text after ``PROBLEM:``. Raises ParseError."""
    problem = re.search(r"^\s*PROBLEM:[ \t]*(.+)$", reply, flags=re.M)
    spec = re.search(r"^\s*SPEC:[ \t]*\n?(.*)\Z", reply, flags=re.M | re.S)
    if problem is not None and (spec is None or problem.start() < spec.start()):
        return Draft(None, " ".join(problem.group(1).split()))
    if spec is None:
        raise ParseError("no SPEC: or PROBLEM: section")
    body = re.sub(r"^\s*```[A-Za-z]*[ \t]*$", "", spec.group(1), flags=re.M)  # a fenced ```yaml block
    import yaml

    from rlvf.typed import yaml_load  # YAML as the config loader reads it (no duplicate keys, 1.2 floats)

    try:
        raw = yaml_load(body)
    except (yaml.YAMLError, RecursionError) as err:
        raise ParseError(f"the SPEC is not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(raw, dict) or not raw:
        raise ParseError("the SPEC is not a YAML mapping of domain, effect, scope, type and metric")
    return Draft(raw)
