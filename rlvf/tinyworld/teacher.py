"""The offline teacher: a simulator that answers the C3PO pipeline's teacher requests for the tiny world.

It is NOT a language model. It reads the requests built by ``rlvf.prompts`` (the same ones a
GPT-4-class teacher receives), recognises the feedback by its sentence among the feedback specs it
was given, and answers from the world's generators and the spec's selector, edit and metric, in the
layout the request asks for (THOUGHTS / numbered lists / REVISED_CATEGORIES: / IMPROVED_RESPONSE: /
BETTER_RESPONSE: / SCORE: / SPEC:), so the pipeline's parsers serve it and a real teacher alike. It also
drafts feedback specs from one sentence about the tiny world (``draft_feedback``, rlvf.tinyworld.drafting). It is
exposed through rlvf's OpenAI-compatible server for offline runs and tests. A request it does not
know (another task, an unknown feedback or category) raises ``TeacherError`` instead of a guess.

Answers are deterministic given the request text and its ``seed``.

Revisions come in two kinds (``revision=``): ``"edit"`` (default) applies the feedback's edit to the
response it is given, so the revision is the student's own reply plus exactly the change; ``"rewrite"``
answers the prompt afresh in the world's words (another draw of ``world.baseline_reply``) and applies
the edit to that, as a GPT-4-class reviser rewrites more than the feedback asks for.
"""
from __future__ import annotations

import hashlib
import json
import random

from rlvf.edits import apply_edit
from rlvf.feedback import Feedback, to_yaml
from rlvf.prompts import ParseError, TeacherRequest, read_request
from rlvf.tinyworld import drafting
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.scope import in_scope
from rlvf.tinyworld.world_data import MESSAGING, SCENARIO_OF

_LABELS = {
    "text_message": "text messages", "email": "emails", "slack_dm": "Slack direct messages",
    "python_code": "Python coding questions", "explain_child": "explaining science to a child",
    "recipe": "recipes", "travel_tip": "travel tips", "poem": "short poems", "history_fact": "history facts",
    "product_description": "product descriptions",
}


class TeacherError(ValueError):
    """A request the offline teacher cannot answer (unknown task, feedback, category or prompt)."""


def _pins(selector: dict, rng: random.Random) -> dict:
    """One concrete value for each list-valued selector key: {"recipient": ..., ...}."""
    out = {}
    for key in ("recipients", "relations", "topics"):
        if selector.get(key):
            field = tiny_world.SELECTOR_KEYS[key][0]  # the Request field: "recipients" pins "recipient"
            out[field] = rng.choice(list(selector[key]))
    if "recipient" in out:
        out.pop("relation", None)  # the person fixes the relation
    return out


def _scenarios(selector: dict) -> list[str]:
    if selector.get("scenarios"):
        return list(selector["scenarios"])
    if selector.get("channels"):
        return [SCENARIO_OF[c] for c in selector["channels"]]
    if selector.get("recipients") or selector.get("relations"):
        return list(MESSAGING)
    return list(tiny_world.SCENARIOS)


def categories(fb: Feedback) -> dict[str, dict]:
    """Every category the teacher may propose for ``fb``: text → {"scenario", "topic"}."""
    sel = fb.world.selector
    out = {}
    for scenario in _scenarios(sel):
        for topic in tiny_world.TOPICS[scenario]:
            if not sel.get("topics") or topic in sel["topics"]:
                out[f"{_LABELS[scenario]} ({fb.domain}) about {topic}"] = {"scenario": scenario, "topic": topic}
    return out


REVISIONS = ("edit", "rewrite")


class OfflineTeacher:
    """``complete(messages, seed)`` → the reply text a teacher model would give."""

    def __init__(self, feedbacks: list[Feedback], revision: str = "edit"):
        if revision not in REVISIONS:
            raise ValueError(f"revision must be one of {', '.join(REVISIONS)}, got {revision!r}")
        self.revision = revision
        missing = [f.name for f in feedbacks if f.world is None]
        if missing:
            raise ValueError(f"feedbacks without tiny-world fields cannot be simulated: {', '.join(missing)}")
        self.feedbacks = {f.content: f for f in feedbacks}
        # the judge is asked about the feedback's effect (as the original's eval does), the rest about its content
        self.by_effect = {f.effect: f for f in reversed(list(feedbacks))}

    def complete(self, messages: list[dict], seed: int | None = 0) -> str:
        try:
            req = read_request(messages)
        except ParseError as err:
            raise TeacherError(f"not a request the offline teacher knows: {err}") from None
        key = json.dumps([messages, seed], sort_keys=True).encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        return getattr(self, f"_{req.task}")(req, rng)

    # ------------------------------------------------------------------------- helpers

    def _feedback(self, req: TeacherRequest) -> Feedback:
        text = req.fields.get("FEEDBACK")
        fb = self.feedbacks.get(text) or self.by_effect.get(text)
        if fb is None:
            raise TeacherError(f"unknown feedback {text!r}; the offline teacher knows {len(self.feedbacks)} feedbacks")
        return fb

    def _count(self, req: TeacherRequest) -> int:
        try:
            return max(1, int(req.fields["COUNT"]))
        except (KeyError, ValueError):
            raise TeacherError("request has no valid COUNT") from None

    def _category(self, fb: Feedback, req: TeacherRequest) -> dict:
        text = req.fields.get("CATEGORY", "")
        cats = categories(fb)
        if text not in cats:
            raise TeacherError(f"unknown category {text!r} for feedback {fb.name!r}")
        return cats[text]

    def _request(self, req: TeacherRequest) -> tiny_world.Request | None:
        return tiny_world.parse_request(req.blocks.get("PROMPT", ""))

    @staticmethod
    def _numbered(items: list[str]) -> str:
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))

    def _sample(self, rng, scenario: str, topic: str | None, selector: dict, want_in: bool, fb: Feedback):
        """A request of ``scenario`` (about ``topic`` when the scenario has it) matching ``selector``,
        in scope for ``fb`` iff ``want_in``; None if 50 tries find none."""
        for _ in range(50):
            pins = _pins(selector, rng)
            if topic in tiny_world.TOPICS[scenario] and "topic" not in pins:
                pins["topic"] = topic
            try:
                r = tiny_world.sample_request(rng, scenario, **pins)
            except ValueError:
                continue
            if tiny_world.matches(r, selector) and in_scope(fb, r) == want_in:
                return r
        return None

    # ------------------------------------------------------------------------- tasks

    def _categories(self, req, rng) -> str:
        fb, count = self._feedback(req), self._count(req)
        cats = list(categories(fb))
        rng.shuffle(cats)
        chosen = cats[:count]
        draft = chosen + cats[count:count + 1]  # the draft has one too many; the revision drops it
        return (f"THOUGHTS: The feedback applies to {fb.domain}; categories vary the subject while staying "
                f"inside it.\nCATEGORIES:\n{self._numbered(draft)}\nREVISED_CATEGORIES:\n{self._numbered(chosen)}")

    def _in_scope_prompts(self, req, rng) -> str:
        fb, count = self._feedback(req), self._count(req)
        cat = self._category(fb, req)
        sel = {**fb.world.selector, "scenarios": [cat["scenario"]]}
        prompts = self._distinct(count, lambda: self._sample(rng, cat["scenario"], cat["topic"], sel, True, fb))
        return f"PROMPTS:\n{self._numbered(prompts)}"

    def _near_scope_prompts(self, req, rng) -> str:
        fb, count = self._feedback(req), self._count(req)
        cat = self._category(fb, req)
        near = fb.world.near
        if not near:  # global feedback, or a spec without near selectors: no world request is near scope
            raise TeacherError(f"feedback {fb.name!r} has no near scope (world.near is empty)")

        def one():
            sel = rng.choice(near)
            return self._sample(rng, rng.choice(_scenarios(sel)), cat["topic"], sel, False, fb)

        prompts = self._distinct(count, one)
        draft = list(prompts)
        slip = self._sample(rng, cat["scenario"], cat["topic"], {**fb.world.selector, "scenarios": [cat["scenario"]]},
                            True, fb)
        if slip is not None and draft:  # a first draft with one in-scope slip, caught by the revision
            draft[rng.randrange(len(draft))] = slip.prompt
        return (f"THOUGHTS: Near-scope prompts keep the task and subject of the category but change who or "
                f"where it is for, so the feedback does not apply.\nPROMPTS:\n{self._numbered(draft)}\n"
                f"REVISED_PROMPTS:\n{self._numbered(prompts)}")

    @staticmethod
    def _distinct(count: int, draw) -> list[str]:
        out = []
        for _ in range(20 * count):
            r = draw()
            if r is not None and r.prompt not in out:
                out.append(r.prompt)
            if len(out) == count:
                break
        if not out:
            raise TeacherError("the world cannot produce prompts for this request")
        return out

    def _revise(self, req, rng) -> str:
        fb = self._feedback(req)
        response = req.blocks.get("RESPONSE")
        if response is None:
            raise TeacherError("revise request without a RESPONSE block")
        request = self._request(req)
        applies = req.fields.get("APPLY") == "always" or (request is not None and in_scope(fb, request))
        if applies and self.revision == "rewrite" and request is not None:
            response = tiny_world.baseline_reply(rng, request)
        return f"IMPROVED_RESPONSE:\n{apply_edit(fb.world.edit, response) if applies else response}"

    def _judge(self, req, rng) -> str:
        fb = self._feedback(req)
        r1, r2 = req.blocks.get("RESPONSE_1"), req.blocks.get("RESPONSE_2")
        if r1 is None or r2 is None:
            raise TeacherError("judge request needs RESPONSE_1 and RESPONSE_2 blocks")
        # the spec's metric (or, for a qualitative spec without one, "the edit is already applied")
        # stands in for a judge's reading; length metrics compare each response with the other
        f1, f2 = fb.follows(r1, baseline=r2), fb.follows(r2, baseline=r1)
        score = 3 if f1 == f2 else (5 if f2 else 1)
        said = {True: "follows", False: "does not follow"}
        return (f"THOUGHTS: Response 1 {said[f1]} the feedback; response 2 {said[f2]} it.\n"
                f"BETTER_RESPONSE: {score}")

    def _draft_feedback(self, req, rng) -> str:
        """A feedback spec drafted from the sentence (rlvf.tinyworld.drafting), or the reason it cannot be."""
        sentence = req.fields.get("FEEDBACK", "")
        try:
            spec = drafting.draft(sentence)
        except drafting.DraftProblem as problem:
            return f"THOUGHTS: The sentence does not describe a feedback the tiny world can simulate.\nPROBLEM: {problem}"
        body = to_yaml(spec)
        return (f"THOUGHTS: The feedback applies to {spec['domain']}; the change is to {spec['effect']}.\n"
                f"SPEC:\n{body}")

    def _quality(self, req, rng) -> str:
        request, response = self._request(req), req.blocks.get("RESPONSE")
        if request is None or response is None:
            raise TeacherError("the offline teacher rates only replies to tiny-world prompts")
        ok = tiny_world.on_topic(request, response)
        score = 5 if ok else 1
        return f"THOUGHTS: The response is {'on' if ok else 'off'} topic for the request.\nSCORE: {score}"
