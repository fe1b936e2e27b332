"""A deterministic synthetic chat world: user requests across everyday scenarios and assistant replies."""
from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = (
    "text_message",         # texting a named person: partner, family, friend, colleague
    "email",                # emails to a boss, a team, clients or named people
    "slack_dm",             # Slack direct messages to named colleagues
    "python_code",          # Python coding questions
    "explain_child",        # explaining science to a child
    "recipe",               # recipes
    "travel_tip",           # travel tips
    "poem",                 # short poems
    "history_fact",         # history facts
    "product_description",  # product descriptions
)


@dataclass(frozen=True)
class Request:
    """One user request of the world, with the slots it was generated from."""

    scenario: str                 # one of SCENARIOS
    prompt: str                   # the user's message, as sent to the model
    topic: str                    # what it is about: "dinner plans", "photosynthesis", "pancakes", ...
    recipient: str | None = None  # named person for messaging scenarios: "Maddie", "Alan", ...
    relation: str | None = None   # the recipient's relation: "girlfriend", "boss", "brother", "team", "client", ...
    channel: str | None = None    # "text", "email" or "slack" for messaging scenarios
