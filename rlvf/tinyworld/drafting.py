"""The offline teacher's drafts: a feedback spec, world fields included, from one sentence about the tiny world.

The teacher answers ``draft_feedback`` requests (rlvf.prompts) as a GPT-4-class teacher would, for
sentences about the tiny world only. It is a rule-based reader, not a language model: it finds

* the *effect*, among the reply edits the world can simulate (rlvf.edits): a heart or kiss emoji, an
  emoji, humour, all capitals, all lower case, bullet points, code only, N sentences, conciseness,
  'X' instead of 'Y', a quoted opening ("start with 'Fun fact:'") or closing ("end with 'Cheers,'");
* the *domain*, as a world selector: the scenarios the sentence names (texting, emailing, Slack,
  Python questions, explaining science to a child, recipes, travel tips, poems, history facts,
  product descriptions), the people by name ("Maddie") or relation ("my clients"), and topics by name
  ("Lisbon") or by group ("places in Europe", "ancient history", "electronic gadgets");

and writes domain, effect, scope, type, the metric that checks the edit, and the world fields
(selector, near-scope selectors drawn from the same world: other people of the same circle, the same
people on other channels, the other topics of the scenario, a related scenario).

    draft("Always use a heart emoji when texting my girlfriend Maddie")["world"]["selector"]
    # {'scenarios': ['text_message'], 'recipients': ['Maddie']}

A sentence it cannot read raises ``DraftProblem`` with the reason, which the teacher returns after
``PROBLEM:``. Deterministic: the same sentence gives the same draft.
"""
from __future__ import annotations

import json
import re

from rlvf.tinyworld import world_data as W
from rlvf.tinyworld.scope import world_slots
from rlvf.tinyworld.world import SELECTOR_KEYS, matches


class DraftProblem(ValueError):
    """A sentence the offline teacher cannot turn into a tiny-world feedback spec; str() is the reason."""


# ----------------------------------------------------------------------------- what the world knows

_SCENARIO_WORDS = {
    "text_message": r"\btext(?:s|ing|ed)?\b(?!\s+files?\b)|\bsms\b",
    "email": r"\be-?mail(?:s|ing|ed)?\b",
    "slack_dm": r"\bslack\b|\bdms?\b|\bdirect messages?\b",
    "python_code": r"\bpython\b|\bcoding\b|\bprogramming\b",
    "explain_child": r"\bchild(?:ren)?\b|\bkids?\b|\bscience\b",
    "recipe": r"\brecipes?\b|\bcooking\b|\bbaking\b",
    "travel_tip": r"\btravel(?:l?ing)?\b|\bvacations?\b|\bsightseeing\b",
    "poem": r"\bpoe(?:m|ms|try)\b",
    "history_fact": r"\bhistor(?:y|ical)\b",
    "product_description": r"\bproducts?\b|\bgadgets?\b",
}
_DOING = {
    "text_message": "writing text messages", "email": "writing emails", "slack_dm": "writing Slack direct messages",
    "python_code": "answering Python coding questions", "explain_child": "explaining science to a child",
    "recipe": "writing recipes", "travel_tip": "giving travel tips", "poem": "writing short poems",
    "history_fact": "telling history facts", "product_description": "writing product descriptions",
}
_RELATION_WORDS = {
    "girlfriend": r"girlfriend|partner", "mom": r"mom|mum|mother", "dad": r"dad|father",
    "grandma": r"grandma|grandmother|granny", "grandpa": r"grandpa|grandfather", "brother": r"brothers?",
    "sister": r"sisters?", "cousin": r"cousins?", "friend": r"friends?", "roommate": r"roommates?|flatmates?",
    "neighbor": r"neighbou?rs?", "boss": r"boss|manager", "colleague": r"colleagues?|co-?workers?",
    "client": r"clients?|customers?", "team": r"teams?",
}
_RELATION_GROUPS = {
    r"\bfamily\b": ("mom", "dad", "grandma", "grandpa", "brother", "sister", "cousin"),
    r"\bparents\b": ("mom", "dad"), r"\bgrandparents\b": ("grandma", "grandpa"),
    r"\bsiblings\b": ("brother", "sister"), r"\bwork\b": tuple(sorted(W.WORK_RELATIONS)),
}
_PERSONAL = ("girlfriend", "mom", "dad", "grandma", "grandpa", "brother", "sister", "cousin", "friend",
             "roommate", "neighbor")
# Topic groups a sentence may name: (words, scenario, label for the domain, topics).
_TOPIC_GROUPS = (
    (r"\beurop", "travel_tip", "places in Europe",
     ("Lisbon", "Iceland", "Barcelona", "Edinburgh", "Rome", "Prague", "Florence")),
    (r"\basia", "travel_tip", "places in Asia", ("Kyoto", "Bali")),
    (r"\bancient\b", "history_fact", "the ancient world",
     ("the Roman Empire", "ancient Egypt", "the Great Wall of China", "the first Olympic Games")),
    (r"\belectronic|\bgadgets?\b|\btech\b", "product_description", "electronic gadgets",
     ("noise-cancelling headphones", "a smart thermostat", "an electric toothbrush", "a mechanical keyboard",
      "a robot vacuum", "a portable charger", "a smartwatch")),
    (r"\bsyntax\b|\blibrar(?:y|ies)\b", "python_code", "syntax and popular library use",
     ("read a CSV file", "read a JSON file", "write to a text file", "get the current date",
      "generate a random number", "list files in a folder", "convert a string to an integer",
      "split a string into words", "reverse a string", "merge two dictionaries", "sort a dictionary by value")),
    (r"\balgorithms?\b|\bexercises?\b", "python_code", "small algorithm exercises",
     ("check if a number is prime", "compute a factorial", "flatten a nested list", "count word frequencies",
      "remove duplicates from a list", "check if a string is a palindrome", "compute the average of a list")),
    (r"\bdesserts?\b|\bsweets?\b", "recipe", "desserts",
     ("banana bread", "chocolate chip cookies", "apple crumble", "pancakes", "French toast")),
    (r"\bsoups?\b", "recipe", "soups", ("tomato soup", "lentil soup")),
)
# Near scope of a feedback on a whole scenario: related scenarios that must stay untouched.
_RELATED = {
    "text_message": ("email", "slack_dm"), "email": ("text_message", "slack_dm"), "slack_dm": ("text_message", "email"),
    "python_code": ("explain_child",), "explain_child": ("history_fact", "poem"), "recipe": ("product_description",),
    "travel_tip": ("history_fact",), "poem": ("explain_child",), "history_fact": ("travel_tip", "explain_child"),
    "product_description": ("recipe",),
}
HEARTS = "❤|♥|💕|💖|💗|💘|💝|💞|💓|💋|😘|😍|🥰|<3"
_EMOJI = r"[\U0001F300-\U0001FAFF\u2600-\u27BF]"
_FILLER_MESSAGES = (*W.MESSAGE_FRAMES, *W.MESSAGE_CLOSERS, *W.EMAIL_OPENERS, *W.EMAIL_CLOSERS, *W.EMAIL_CLOSINGS)
_FILLER_PROSE = (*W.CHILD_CLOSERS, *W.PRODUCT_CLOSERS)
_NUMBERS = {"one": 1, "single": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}

KNOWN_EFFECTS = ("a heart or kiss emoji", "an emoji", "humour", "all capitals", "all lower case", "bullet points",
                 "only a code snippet", "one, two or three sentences", "conciseness", "'X' instead of 'Y'",
                 "starting with 'X'", "ending with 'X'")


def _filler(sentences) -> str:
    """A drop_sentences pattern matching exactly these sentences ({topic} matches any text)."""
    alts = [re.escape(s).replace(re.escape("{topic}"), ".+?") for s in sentences]
    return "^(?:" + "|".join(alts) + ")$"


# ----------------------------------------------------------------------------- reading the sentence


def _quotes(sentence: str) -> list[tuple[int, str]]:
    """Quoted texts (offset of the opening quote, text): '...', "...", ‘...’ or “...”, not apostrophes
    inside words."""
    found = re.finditer(r"(?:(?<=^)|(?<=[\s(]))(['\"‘“])(.+?)(['\"’”])(?=[\s,.;:!?)]|$)", sentence, flags=re.S)
    return [(m.start(), m.group(2)) for m in found]


def _blank(text: str, spans) -> str:
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def _quote_after(quotes, pos: int) -> str | None:
    return next((q for start, q in quotes if start >= pos), None)


def _effects(sentence: str, plain: str, scenarios: set, names: list[str]) -> list[dict]:
    """The effects the sentence asks for: [{effect, edit, metric, qualitative}] (possibly several)."""
    low, quotes, out = plain.lower(), _quotes(sentence), []

    def add(effect, edit, metric, qualitative=False):
        out.append({"effect": effect, "edit": edit, "metric": metric, "qualitative": qualitative})

    hearts = re.search(r"\b(?:heart|kiss)(?:es|s)?\b[^.]*?\bemoj|\bhearts\b|❤|♥|<3", low)
    if hearts:
        add("use some heart or kiss emoji", {"kind": "append", "text": " ❤️"}, {"kind": "regex", "pattern": HEARTS})
    elif re.search(_EMOJI, sentence):
        emoji = re.search(_EMOJI + "+", sentence).group(0)
        add(f"use the {emoji} emoji", {"kind": "append", "text": f" {emoji}"},
            {"kind": "contains_any", "strings": [emoji]})
    elif re.search(r"\bemoj", low):
        add("use an emoji", {"kind": "append", "text": " 😊"}, {"kind": "regex", "pattern": _EMOJI})
    if re.search(r"\bfunn(?:y|ier)\b|\bhumou?r(?:ous)?\b|\bcomedic\b|\bjokes?\b|\blaugh", low):
        add("use more comedic and humorous language", {"kind": "append", "text": " Haha, I crack myself up 😂"},
            {"kind": "contains_any", "strings": ["😂", "haha"]}, qualitative=True)
    upper = re.search(r"\ball[ -]caps\b|\bcapital letters\b|\bupper ?case\b|\bin caps\b|\bcapitals\b", low)
    lower = re.search(r"\blower ?case\b|\bno capital|\bwithout capital", low)
    if upper and lower:
        raise DraftProblem("the sentence asks for both all capitals and all lower case")
    if upper:
        add("write in all capital letters", {"kind": "uppercase"}, {"kind": "uppercase"})
    if lower:
        add("write in all lowercase", {"kind": "lowercase"}, {"kind": "lowercase"})
    if re.search(r"\bbullet", low):
        add("put each point on its own bullet point", {"kind": "bullet_points"},
            {"kind": "lines_start_with", "prefix": "- "})
    if re.search(r"\bonly (?:a |the )?code\b|\bcode snippets?\b|\bcode only\b|\bjust (?:the )?code\b"
                 r"|\bno explanations?\b", low):
        add("respond with only a code snippet and no explanations before or after it",
            {"kind": "code_block_only", "language": "python"}, {"kind": "only_code_block"})
    count = re.search(r"\b(?:a |to )?(one|single|1|two|2|three|3) sentences?\b", low)
    if count:
        n = _NUMBERS[count.group(1)]
        add(f"keep it to {'a single sentence' if n == 1 else f'{n} sentences'}",
            {"kind": "shorten", "sentences": n}, {"kind": "max_sentences", "sentences": n})
    elif re.search(r"\bconcise\b|\bshorter\b|\bbrief(?:er)?\b|\bto the point\b", low):
        add("be more concise", _concise(scenarios, names), {"kind": "shorter_than_baseline"})
    _quoted_effects(sentence, low, quotes, scenarios, add)
    return out


def _quoted_effects(sentence: str, low: str, quotes, scenarios: set, add) -> None:
    """'X' instead of 'Y', start with 'X', end with 'X' (quotes may be missing around single words)."""
    instead = re.search(r"\b(?:use|say|write|put)\s+(.+?)\s+instead\s+of\s+(.+?)(?=\s+(?:in|when|whenever|for|while|"
                        r"if)\b|[,;]|\.?$)", sentence, flags=re.I)
    if instead:
        new, old = (s.strip().strip("'\"‘’“”") for s in instead.groups())
        if not new or not old:
            raise DraftProblem("cannot tell which words to swap; quote them, e.g. use '&' instead of 'and'")
        add(f"use '{new}' instead of '{old}'", {"kind": "replace_word", "word": old, "by": new},
            {"kind": "contains_none", "strings": [f" {old} " if old.isalnum() else old]})
    start = re.search(r"\b(?:start|begin|open)(?:s|ing)?\b(?=[^.]*?\bwith\b)", low)
    if start:
        phrase = _quote_after(quotes, start.end())
        if phrase is None:
            raise DraftProblem("cannot tell what to start with; put the opening words in quotes, "
                               "e.g. start with 'Fun fact:'")
        add(f"start with '{phrase}'", *_opening(phrase, scenarios))
    end = re.search(r"\b(?:end|finish|close|sign)(?:s|ing)?\b(?:\s+off)?(?=[^.]*?\bwith\b)", low)
    if end:
        phrase = _quote_after(quotes, end.end())
        if phrase is None:
            raise DraftProblem("cannot tell what to end with; put the closing words in quotes, "
                               "e.g. end with 'Cheers,'")
        name = re.search(r"\bmy name,?\s+([A-Z][a-z]+)", sentence)
        text = f"{phrase.rstrip()}\n{name.group(1)}" if name else phrase.strip()
        shown = text.replace("\n", "\\n")
        add(f"end with '{shown}'", *_closing(text, scenarios))


def _opening(phrase: str, scenarios: set):
    """An email's greeting line is replaced; anything else gets the phrase put first."""
    words = phrase.split()
    if scenarios == {"email"} and words and words[0].lower() in W.GREETING_WORDS:
        bare = phrase.rstrip().rstrip(",")
        edge = r"\b" if bare[-1:].isalnum() else ""
        return ({"kind": "regex_replace", "pattern": r"^(?:Hi|Hello|Dear|Hey) [^\n,]+,$", "by": f"{bare},"},
                {"kind": "regex", "pattern": f"^{re.escape(bare)}{edge}", "multiline": True})
    return {"kind": "start_with", "phrase": phrase.strip()}, {"kind": "starts_with", "text": phrase.strip()}


def _closing(text: str, scenarios: set):
    """A sign-off; in emails it replaces the world's own closing line."""
    if scenarios == {"email"}:
        edit = [{"kind": "regex_replace", "pattern": r"\n+(?:%s)$" % "|".join(W.EMAIL_CLOSINGS), "by": "",
                 "multiline": False},
                {"kind": "sign_off", "text": text, "separator": "\n\n"}]
    else:
        edit = {"kind": "sign_off", "text": text}
    return edit, {"kind": "ends_with", "text": text}


def _concise(scenarios: set, names: list[str]):
    """Drop the world's filler sentences; emails to named people greet them by name alone ("Alan,");
    in prose, keep at most two sentences."""
    if scenarios and scenarios <= set(W.MESSAGING):
        drop = {"kind": "drop_sentences", "pattern": _filler(_FILLER_MESSAGES)}
        people = [W.TITLE.get(W.PEOPLE[n][0], n) for n in names if W.PEOPLE[n][0] != "team"]
        if "email" not in scenarios or not people:
            return drop
        who = "|".join(map(re.escape, people))
        return [drop, {"kind": "regex_replace", "pattern": f"^(?:Hi|Hello|Dear) ({who}),$", "by": r"\1,"}]
    return [{"kind": "drop_sentences", "pattern": _filler(_FILLER_MESSAGES + _FILLER_PROSE)},
            {"kind": "shorten", "sentences": 2}]


def _people(plain: str) -> tuple[list[str], list[str]]:
    """(recipients named, relations named without a person); unknown or mismatched people are problems."""
    names = [n for n in W.PEOPLE if W.PEOPLE[n][0] != "team" and re.search(rf"\b{re.escape(n)}\b", plain)]
    names += [n for n in W.PEOPLE if W.PEOPLE[n][0] == "team" and re.search(rf"\b{n}\b", plain, flags=re.I)]
    for rel, words in _RELATION_WORDS.items():
        for m in re.finditer(rf"\b(?:my|our)\s+(?:{words})\s+([A-Z][a-z]+)\b", plain):
            who = m.group(1)
            if who not in W.PEOPLE:
                known = [n for n, (r, _) in W.PEOPLE.items() if r == rel]
                raise DraftProblem(f"the tiny world knows no {rel} called {who} (it knows {', '.join(known)})")
    relations = [rel for rel, words in _RELATION_WORDS.items() if re.search(rf"\b(?:{words})\b", plain, flags=re.I)]
    for words, rels in _RELATION_GROUPS.items():
        if re.search(words, plain, flags=re.I):
            relations += [r for r in rels if r not in relations]
    if names:
        wrong = [(n, rel) for n in names for rel in relations
                 if re.search(rf"\b(?:{_RELATION_WORDS[rel]})\s+{re.escape(n)}\b", plain, flags=re.I)
                 and W.PEOPLE[n][0] != rel]
        if wrong:
            n, rel = wrong[0]
            raise DraftProblem(f"in the tiny world {n} is your {W.PEOPLE[n][0]}, not your {rel}")
        return names, []
    return [], relations


def _topics(plain: str, scenarios: list[str]) -> tuple[list[str], list[str], str | None]:
    """(topics, scenarios they imply, a group label for the domain) named by the sentence."""
    topics, implied, spans = [], [], []
    for scenario in W.SCENARIOS:
        for topic in W.TOPICS[scenario]:
            m = re.search(rf"(?<!\w){re.escape(topic)}(?!\w)", plain, flags=re.I)
            if m and (not scenarios or scenario in scenarios):
                topics.append(topic)
                implied.append(scenario)
                spans.append(m.span())
    rest, label = _blank(plain, spans), None
    for words, scenario, group_label, group in _TOPIC_GROUPS:
        if re.search(words, rest, flags=re.I) and (not scenarios or scenario in scenarios):
            topics += [t for t in group if t not in topics]
            implied.append(scenario)
            label = group_label
    return list(dict.fromkeys(topics)), list(dict.fromkeys(implied)), label


# ----------------------------------------------------------------------------- the spec


def _plain(sentence: str) -> str:
    """The sentence with its quoted texts blanked out (a quoted 'Hey team' names no team)."""
    return _blank(sentence, [(start, start + len(q) + 2) for start, q in _quotes(sentence)])


def _selector(sentence: str) -> tuple[dict, str | None]:
    plain = _plain(sentence)
    scenarios = [s for s in W.SCENARIOS if re.search(_SCENARIO_WORDS[s], plain, flags=re.I)]
    names, relations = _people(plain)
    if names or relations:  # people are messaged; no scenario named: every channel they are reached on
        scenarios = [s for s in scenarios if s in W.MESSAGING] or scenarios
    topics, implied, label = _topics(plain, scenarios)
    if not scenarios and topics and not (names or relations):
        scenarios = implied
    selector = {"scenarios": scenarios, "recipients": names, "relations": relations, "topics": topics}
    return {k: v for k, v in selector.items() if v}, label


def _or(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _describe_people(names: list[str], relations: list[str]) -> str:
    """"my girlfriend Maddie", "my colleagues Priya, Daniel or Tom", "our clients", "the design team"."""
    owner = lambda rel: "our" if rel == "client" else "my"  # noqa: E731
    same = {W.PEOPLE[n][0] for n in names}
    if len(names) > 1 and len(same) == 1 and "team" not in same:
        rel = same.pop()
        return f"{owner(rel)} {rel}s {_or(names)}"
    if names:
        return _or([f"the {n}" if W.PEOPLE[n][0] == "team" else f"{owner(W.PEOPLE[n][0])} {W.PEOPLE[n][0]} {n}"
                    for n in names])
    many = {rel: sum(r == rel for r, _ in W.PEOPLE.values()) > 1 for rel in relations}
    return _or([f"{owner(rel)} {rel}{'s' if many[rel] else ''}" for rel in relations])


def _domain(selector: dict, label: str | None) -> str:
    scenarios = selector.get("scenarios", [])
    doing = " or ".join(_DOING[s] for s in scenarios) if scenarios else "writing messages"
    if selector.get("recipients") or selector.get("relations"):
        doing += " to " + _describe_people(selector.get("recipients", []), selector.get("relations", []))
    topics = selector.get("topics", [])
    if label:
        doing += f" about {label}"
    elif topics:
        doing += " about " + (", ".join(topics[:-1]) + " or " if len(topics) > 1 else "") + topics[-1]
    return doing if selector else "every request"


def _valid_near(candidate: dict, selector: dict, slots) -> bool:
    hits = [r for r in slots if matches(r, candidate)]
    return bool(hits) and not any(matches(r, selector) for r in hits)


def _near(selector: dict, slots) -> list[dict]:
    """Near-scope selectors: same task for other people of the same circle, the same people elsewhere,
    the scenario's other topics, or a related scenario; only those that select out-of-scope requests."""
    if not selector:
        return []
    scenarios = selector.get("scenarios") or []
    names, relations, topics = (selector.get(k, []) for k in ("recipients", "relations", "topics"))
    msg = [s for s in scenarios if s in W.MESSAGING] or list(W.MESSAGING)
    cands = []
    rels = {W.PEOPLE[n][0] for n in names} | set(relations)
    if rels:
        circle = _PERSONAL if rels & set(_PERSONAL) else tuple(sorted(W.WORK_RELATIONS))
        if names:
            others = [n for n, (r, _) in W.PEOPLE.items() if r in circle and n not in names]
            cands.append({"scenarios": msg, "recipients": others})
            cands.append({"scenarios": [s for s in W.MESSAGING if s not in msg], "recipients": names})
        else:
            cands.append({"scenarios": msg, "relations": [r for r in circle if r not in relations]})
            cands.append({"scenarios": [s for s in W.MESSAGING if s not in msg], "relations": relations})
    if topics:
        own = scenarios or sorted({s for s in W.SCENARIOS for t in topics if t in W.TOPICS[s]})
        rest = [t for s in own for t in W.TOPICS[s] if t not in topics]
        cands.append({"scenarios": own, **({"recipients": names} if names else {}), "topics": list(dict.fromkeys(rest))})
    if not rels and not topics:
        cands.append({"scenarios": sorted({r for s in scenarios for r in _RELATED[s]} - set(scenarios),
                                          key=W.SCENARIOS.index)})
    near = []
    for cand in cands:
        cand = {k: v for k, v in cand.items() if v}
        if cand and cand not in near and _valid_near(cand, selector, slots):
            near.append(cand)
    if not near:  # the rest of the world
        rest = {"scenarios": [s for s in W.SCENARIOS if s not in scenarios]} if scenarios else {}
        if rest and _valid_near(rest, selector, slots):
            near.append(rest)
    return near


def _unreachable(selector: dict) -> str:
    names = selector.get("recipients", [])
    if names and selector.get("scenarios"):
        how = "; ".join(f"{n} is reached by {', '.join(W.PEOPLE[n][1])}" for n in names)
        return f"no request of the tiny world matches: {how}"
    return "no request of the tiny world matches this domain: check that its people, channels and topics go together"


def draft(sentence: str) -> dict:
    """The spec drafted from ``sentence``: domain, effect, scope, type, metric, world. Raises DraftProblem."""
    if not isinstance(sentence, str) or len(sentence.split()) < 3:
        raise DraftProblem("a feedback is a sentence saying what to change and where")
    sentence = sentence.replace("\\n", "\n")  # a written \n (as in 'Best,\nMoritz') is a line break
    selector, label = _selector(sentence)
    slots = world_slots()
    if selector and not any(matches(r, selector) for r in slots):
        raise DraftProblem(_unreachable(selector))
    scenarios = set(selector.get("scenarios") or ([] if not (selector.get("recipients") or selector.get("relations"))
                                                  else W.MESSAGING))
    effects = _effects(sentence, _plain(sentence), scenarios, selector.get("recipients", []))
    if not effects:
        raise DraftProblem("the offline teacher cannot tell what to change: it simulates only "
                           + ", ".join(KNOWN_EFFECTS))
    one = len(effects) == 1
    edit = effects[0]["edit"] if one else [e["edit"] for e in effects]
    metric = effects[0]["metric"] if one else [e["metric"] for e in effects]
    scope = "global" if not selector else ("local" if "topics" in selector else "regional")
    spec = {"domain": _domain(selector, label), "effect": " and ".join(e["effect"] for e in effects),
            "scope": scope, "type": "qualitative" if any(e["qualitative"] for e in effects) else "quantitative",
            "metric": metric, "world": {"selector": selector, "near": _near(selector, slots), "edit": edit}}
    return json.loads(json.dumps(spec))  # no shared lists: YAML would write them as &anchors


assert set(_SCENARIO_WORDS) == set(W.SCENARIOS) == set(_DOING) == set(_RELATED)
assert set(SELECTOR_KEYS) >= {"scenarios", "recipients", "relations", "topics"}
