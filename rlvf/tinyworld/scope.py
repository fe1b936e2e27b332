"""Feedback scopes in the tiny world: which world requests a feedback's selectors take in.

A feedback's ``world`` spec (rlvf/feedback.py) names its in-scope requests with a selector such as
``{scenarios: [text_message], recipients: [Maddie]}`` and its near scope with more selectors; the keys
and the Request fields they test are ``world.SELECTOR_KEYS``. Here: the values the world knows, every
request slot it can generate, matching and drawing requests, and the scope tests the sampler and the
offline teacher use. Functions take any feedback object with ``.world`` (selector, near) and ``.scope``.
"""
from __future__ import annotations

import functools

from rlvf.errors import UserError
from rlvf.tinyworld import world as tiny_world
from rlvf.tinyworld.world import SELECTOR_KEYS


def copy_selector(sel: dict) -> dict:
    return {k: list(v) for k, v in sel.items()}


def world_values() -> dict:
    """Values the tiny world knows for each selector key."""
    return {
        "scenarios": set(tiny_world.SCENARIOS),
        "topics": {t for ts in tiny_world.TOPICS.values() for t in ts},
        "recipients": set(tiny_world.PEOPLE),
        "relations": {rel for rel, _ in tiny_world.PEOPLE.values()},
        "channels": set(tiny_world.CHANNEL_OF.values()),
    }


def world_slots() -> list:
    """Every (scenario, topic, recipient, relation, channel) the world can generate, as prompt-less Requests.

    A messaging scenario goes to each person reachable on its channel, about any message topic
    (``sample_request`` accepts any such pin); the other scenarios have a topic only.
    """
    out = []
    for scenario in tiny_world.SCENARIOS:
        channel = tiny_world.CHANNEL_OF.get(scenario)
        for topic in tiny_world.TOPICS[scenario]:
            if channel is None:
                out.append(tiny_world.Request(scenario, "", topic))
                continue
            for person, (relation, channels) in tiny_world.PEOPLE.items():
                if channel in channels:
                    out.append(tiny_world.Request(scenario, "", topic, person, relation, channel))
    return out


@functools.lru_cache(maxsize=1)
def _world_slots_cached() -> tuple:
    return tuple(world_slots())


def matches(request, selector: dict) -> bool:
    """Does ``request`` match ``selector``? Every given key must list the request's value (tiny_world.matches)."""
    return tiny_world.matches(request, selector)


def sample_from_selector(rng, selector: dict, exclude: dict | None = None, tries: int = 200):
    """A world request matching ``selector`` (and not ``exclude``), drawn with pins taken from the selector.

    Each try picks a scenario among those the selector allows and one value of each of its
    topics / recipients / relations / channels, then calls ``world.sample_request``; pins the world
    cannot satisfy together are redrawn. Raises ValueError after ``tries`` misses.
    """
    scenarios = list(selector.get("scenarios") or tiny_world.SCENARIOS)
    for _ in range(tries):
        pins = {SELECTOR_KEYS[k][0]: rng.choice(list(v)) for k, v in sorted(selector.items()) if k != "scenarios"}
        if "recipient" in pins:
            pins.pop("relation", None)  # the person fixes the relation; matches() re-checks it
        try:
            request = tiny_world.sample_request(rng, rng.choice(scenarios), **pins)
        except ValueError:
            continue
        if matches(request, selector) and not (exclude is not None and matches(request, exclude)):
            return request
    raise ValueError(f"no world request matches {selector} after {tries} tries")


def _describe(r) -> str:
    who = f" to {r.recipient} ({r.relation})" if r.recipient else ""
    return f"{r.scenario}{who} about {r.topic}"


def check_near(fb, where: str) -> None:
    """Each near selector must select some world request, and never an in-scope one."""
    slots = _world_slots_cached()
    in_sc = [matches(r, fb.world.selector) for r in slots]
    if not any(in_sc):
        raise UserError(f"{where}: world.selector: selects no request the tiny world can generate; "
                        f"check that its scenarios, people and topics go together")
    for i, sel in enumerate(fb.world.near):
        hits = [(r, s) for r, s in zip(slots, in_sc) if matches(r, sel)]
        if not hits:
            raise UserError(f"{where}: world.near[{i}]: selects no request the tiny world can generate; "
                            f"check that its scenarios, people and topics go together")
        inside = [r for r, s in hits if s]
        if len(inside) == len(hits):
            raise UserError(f"{where}: world.near[{i}]: can only produce in-scope requests "
                            f"(e.g. {_describe(inside[0])}); near scope must lie outside world.selector")
        if inside:
            raise UserError(f"{where}: world.near[{i}]: also selects in-scope requests (e.g. {_describe(inside[0])}); "
                            f"narrow it so that no near-scope request matches world.selector")


def in_scope(feedback, request) -> bool:
    """Does ``feedback`` apply to this world ``request``?"""
    if feedback.world is None:
        raise ValueError(f"feedback '{feedback.name or feedback.content}' has no world spec")
    return matches(request, feedback.world.selector)


def near_selectors(feedback) -> list:
    """The near-scope selectors of ``feedback`` (copies); none for global feedback or without a world spec."""
    if feedback.world is None or feedback.scope == "global":
        return []
    return [copy_selector(s) for s in feedback.world.near]


def in_near_scope(feedback, request) -> bool:
    """Is ``request`` near scope: matched by a near selector (and, by validation, out of scope)?"""
    return any(matches(request, s) for s in near_selectors(feedback)) and not in_scope(feedback, request)
