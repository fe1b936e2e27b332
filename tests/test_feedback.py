"""Feedback specs: edits and metrics on hand-written examples, YAML validation, and the shipped feedbacks
on the tiny world (each edit makes its metric hold in scope; selectors separate in- from near scope)."""
from __future__ import annotations

import json
import random
import textwrap

import pytest
import yaml

from rlvf.edits import EDITS
from rlvf.errors import UserError
from rlvf.edits import apply_edit
from rlvf.feedback import FEEDBACK_DIR, Edit, Feedback, Metric, load_feedback, load_feedbacks
from rlvf.tinyworld.scope import in_near_scope, in_scope, near_selectors, sample_from_selector, world_slots
from rlvf.feedback_metrics import METRICS
from rlvf.tinyworld import world as tiny_world

# ----------------------------------------------------------------------------- edits

EDIT_CASES = [
    ({"kind": "append", "text": " ❤️"}, "See you at 7.", "See you at 7. ❤️"),
    ({"kind": "append", "text": " ❤️"}, "See you at 7.\n", "See you at 7. ❤️"),
    ({"kind": "prepend", "text": "Hi! "}, "How are you?", "Hi! How are you?"),
    ({"kind": "start_with", "phrase": "Hey team,", "separator": "\n\n"}, "The demo is at 3.",
     "Hey team,\n\nThe demo is at 3."),
    ({"kind": "start_with", "phrase": "Hey team"}, "hey team, all good.", "hey team, all good."),
    ({"kind": "sign_off", "text": "Cheers,\nSam"}, "Thanks for the notes.  ", "Thanks for the notes.\nCheers,\nSam"),
    ({"kind": "sign_off", "text": "Best,\nJo", "separator": "\n\n"}, "Hi,\n\nDone.", "Hi,\n\nDone.\n\nBest,\nJo"),
    ({"kind": "replace_word", "word": "and", "by": "&"}, "Bread and butter. And Andes, band.",
     "Bread & butter. & Andes, band."),
    ({"kind": "remove_word", "word": "really"}, "Really good and really fast.", "good and fast."),
    ({"kind": "shorten", "sentences": 2}, "One. Two? Three! Four.", "One. Two?"),
    ({"kind": "shorten", "sentences": 2}, "Only one sentence here.", "Only one sentence here."),
    ({"kind": "shorten", "sentences": 1}, "Subject: X\n\nHi Alan,\n\nOne. Two.", "Subject: X\n\nHi Alan,\n\nOne."),
    ({"kind": "code_block_only"}, "Use this:\n```python\nx = [1, 2]\n```\nIt makes a list.",
     "```python\nx = [1, 2]\n```"),
    ({"kind": "code_block_only"}, "print(1)", "```python\nprint(1)\n```"),
    ({"kind": "uppercase"}, "Roses are red.", "ROSES ARE RED."),
    ({"kind": "lowercase"}, "Roses Are RED.", "roses are red."),
    ({"kind": "bullet_points"}, "Pack light. Book early! Eat local.", "- Pack light.\n- Book early!\n- Eat local."),
    ({"kind": "replace_text", "old": "!", "new": "."}, "Great! Thanks!", "Great. Thanks."),
    ({"kind": "regex_replace", "pattern": "^(?:Hi|Dear) (\\w+),$", "by": "\\1,"}, "Subject: X\n\nDear Alan,\n\nDone.",
     "Subject: X\n\nAlan,\n\nDone."),
    ({"kind": "drop_sentences", "pattern": "^I hope"}, "Subject: X\n\nHi,\n\nI hope you are well. Done. I hope so.",
     "Subject: X\n\nHi,\n\nDone."),
    ({"kind": "drop_sentences", "pattern": "^Best regards$"}, "Hi,\n\nDone.\n\nBest regards", "Hi,\n\nDone."),
    ([{"kind": "start_with", "phrase": "Hi Alan,"}, {"kind": "shorten", "sentences": 1}],
     "The report is done. It has ten pages.", "Hi Alan, The report is done."),
]


@pytest.mark.parametrize("spec,reply,expected", EDIT_CASES, ids=lambda x: None)
def test_edit_on_examples_and_idempotent(spec, reply, expected):
    edit = Edit.parse(spec)
    out = apply_edit(edit, reply)
    assert out == expected
    assert apply_edit(edit, out) == out, "edits are idempotent"


def test_every_edit_kind_has_an_example():
    covered = {c[0]["kind"] for c in EDIT_CASES if isinstance(c[0], dict)} | {"sequence"}
    assert covered == set(EDITS)
    assert len(EDITS) >= 8


# ----------------------------------------------------------------------------- metrics

METRIC_CASES = [
    ({"kind": "shorter_than_baseline"}, "Short.", "A much longer reply.", True),
    ({"kind": "shorter_than_baseline"}, "Same.", "Same.", False),
    ({"kind": "shorter_than_baseline", "ratio": 0.5}, "1234567", "1234567890", False),  # 7 < 0.5·10 is false
    ({"kind": "shorter_than_baseline", "unit": "words"}, "a b", "abcdefgh ij kl", True),
    ({"kind": "longer_than_baseline"}, "A much longer reply.", "Short.", True),
    ({"kind": "longer_than_baseline", "ratio": 2}, "12345678901", "12345", True),  # 11 > 2·5
    ({"kind": "contains_any", "strings": ["gabriel", "attal"]}, "Gabriel Attal is PM.", None, True),
    ({"kind": "contains_any", "strings": ["x", "y"]}, "abc", None, False),
    ({"kind": "contains_any", "strings": ["ABC"], "ignore_case": False}, "abc", None, False),
    ({"kind": "contains_all", "strings": ["neon", "green"]}, "Neon GREEN only.", None, True),
    ({"kind": "contains_all", "strings": ["neon", "green"]}, "Neon pink.", None, False),
    ({"kind": "contains_none", "strings": [" and "]}, "Salt & pepper.", None, True),
    ({"kind": "contains_none", "strings": [" and "]}, "Salt AND pepper.", None, False),
    ({"kind": "starts_with", "text": "Hey team"}, "  hey team, hi.", None, True),
    ({"kind": "starts_with", "text": "Hey team", "ignore_case": False}, "hey team, hi.", None, False),
    ({"kind": "ends_with", "text": "Best,\nSam"}, "Done.\nBest,\nSam\n", None, True),
    ({"kind": "ends_with", "text": "Best,\nSam"}, "Best,\nSam. Done.", None, False),
    ({"kind": "regex", "pattern": "[.!?]$"}, "Done!", None, True),
    ({"kind": "regex", "pattern": "^done", "ignore_case": True}, "Done", None, True),
    ({"kind": "regex", "pattern": "^b", "multiline": True}, "a\nb", None, True),
    ({"kind": "regex", "pattern": "^b"}, "a\nb", None, False),
    ({"kind": "uppercase"}, "ROSES ARE RED.", None, True),
    ({"kind": "uppercase"}, "ROSES are RED.", None, False),
    ({"kind": "lowercase"}, "roses are red.", None, True),
    ({"kind": "lowercase"}, "Roses are red.", None, False),
    ({"kind": "only_code_block"}, "```python\nx = 1\n```", None, True),
    ({"kind": "only_code_block"}, "Here:\n```python\nx = 1\n```", None, False),
    ({"kind": "only_code_block"}, "```\na\n```\n```\nb\n```", None, False),
    ({"kind": "no_code_fence"}, "x = 1", None, True),
    ({"kind": "no_code_fence"}, "```\nx = 1\n```", None, False),
    ({"kind": "max_sentences", "sentences": 2}, "One. Two.", None, True),
    ({"kind": "max_sentences", "sentences": 2}, "One. Two. Three.", None, False),
    ({"kind": "lines_start_with", "prefix": "- "}, "- a\n- b", None, True),
    ({"kind": "lines_start_with", "prefix": "- "}, "- a\nb", None, False),
    ([{"kind": "contains_all", "strings": ["&"]}, {"kind": "contains_none", "strings": [" and "]}],
     "You & me.", None, True),
    ([{"kind": "contains_all", "strings": ["&"]}, {"kind": "contains_none", "strings": [" and "]}],
     "You & me and them.", None, False),
    ({"kind": "any", "of": [{"kind": "starts_with", "text": "Hi"}, {"kind": "starts_with", "text": "Hey"}]},
     "Hey!", None, True),
    ({"kind": "not", "metric": {"kind": "contains_any", "strings": ["sorry"]}}, "Sorry!", None, False),
]


@pytest.mark.parametrize("spec,response,baseline,expected", METRIC_CASES, ids=lambda x: None)
def test_metric_on_examples(spec, response, baseline, expected):
    assert Metric.parse(spec).follows(response, baseline) is expected


def test_every_metric_kind_has_an_example():
    covered = {c[0]["kind"] for c in METRIC_CASES if isinstance(c[0], dict)} | {"all"}
    assert covered == set(METRICS)


def test_length_metric_needs_baseline():
    m = Metric.parse({"kind": "shorter_than_baseline"})
    assert m.needs_baseline
    with pytest.raises(ValueError, match="baseline"):
        m.follows("short")
    nested = Metric.parse([{"kind": "regex", "pattern": "a"}, {"kind": "longer_than_baseline"}])
    assert nested.needs_baseline
    assert not Metric.parse({"kind": "regex", "pattern": "a"}).needs_baseline


def test_programmatic_construction_validates():
    with pytest.raises(UserError, match="unknown metric kind 'regexp'.*did you mean 'regex'"):
        Metric("regexp", {"pattern": "a"})
    with pytest.raises(UserError, match="edit.sentences: must be positive, got 0"):
        Edit("shorten", {"sentences": 0})
    fb = Feedback("Be concise", "emails", "be concise", "regional", "quantitative",
                  metric=Metric("shorter_than_baseline"))
    assert fb.follows("a", baseline="abc") and not fb.follows("abc", baseline="abc")
    with pytest.raises(UserError, match="metric: quantitative feedback needs a metric"):
        Feedback("Be funny", "texts", "be funny", "regional", "quantitative")


# ----------------------------------------------------------------------------- YAML validation

GOOD = """\
# A test feedback: end recipes with a sign-off.
content: Always end recipes with 'Enjoy!'
domain: writing recipes
effect: end with 'Enjoy!'
scope: regional
type: quantitative
metric: {kind: ends_with, text: "Enjoy!"}
world:
  selector: {scenarios: [recipe]}
  near: [{scenarios: [travel_tip]}]
  edit: {kind: sign_off, text: "Enjoy!"}
"""


def _write(tmp_path, text, name="fb.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_yaml_loads(tmp_path):
    fb = load_feedback(_write(tmp_path, GOOD))
    assert fb.name == "fb" and fb.scope == "regional" and fb.metric.kind == "ends_with"
    assert fb.world.selector == {"scenarios": ["recipe"]} and fb.world.edit.kind == "sign_off"
    assert fb.follows("Mix it.\nEnjoy!") and not fb.follows("Mix it.")


BAD = [  # (old, new) replaced in GOOD, expected message after "<file>: "
    ("content:", "contnet:", r"contnet: unknown key \(did you mean 'content'\?\)"),
    ("domain: writing recipes\n", "", r"domain: missing required value"),
    ("content: Always end recipes with 'Enjoy!'", "content: 5", r"content: expected a string, got 5"),
    ("type: quantitative", "type: quantitive", r"type: expected one of quantitative, qualitative"),
    ("scope: regional", "scope: everywhere", r"scope: expected one of global, regional, local"),
    ('metric: {kind: ends_with, text: "Enjoy!"}\n', "", r"metric: quantitative feedback needs a metric"),
    ("kind: ends_with", "kind: endswith",
     r"metric.kind: unknown metric kind 'endswith' \(did you mean 'ends_with'\?\)"),
    ("kind: ends_with, text:", "kind: ends_with, txt:",
     r"metric.txt: unknown parameter of metric 'ends_with' \(did you mean 'text'\?\)"),
    ('{kind: ends_with, text: "Enjoy!"}', "{kind: ends_with}", r"metric.text: missing required parameter"),
    ('{kind: ends_with, text: "Enjoy!"}', '{kind: regex, pattern: "("}', r"metric.pattern: invalid regular expression"),
    ('{kind: ends_with, text: "Enjoy!"}', "{kind: shorter_than_baseline, ratio: half}",
     r"metric.ratio: expected a number, got 'half'"),
    ('{kind: ends_with, text: "Enjoy!"}', "{kind: shorter_than_baseline, unit: tokens}",
     r"metric.unit: expected one of 'chars', 'words', got 'tokens'"),
    ('{kind: ends_with, text: "Enjoy!"}', "[{kind: ends_with, text: x}, {kind: contains_all, strings: []}]",
     r"metric\[1\].strings: expected a non-empty list of non-empty strings"),
    ('{kind: ends_with, text: "Enjoy!"}', "{text: x}", r"metric.kind: missing \(one of: shorter_than_baseline"),
    ("{kind: sign_off, text:", "{kind: add_emoji, text:",
     r"world.edit.kind: unknown edit kind 'add_emoji' \(known: append, prepend"),
    ('{kind: sign_off, text: "Enjoy!"}', "{kind: shorten, sentences: -1}",
     r"world.edit.sentences: must be positive, got -1"),
    ('{kind: sign_off, text: "Enjoy!"}', "{kind: shorten, sentences: 1.5}", r"world.edit.sentences: expected an integer, got 1.5"),
    ('{kind: sign_off, text: "Enjoy!"}', "[{kind: uppercase}, {kind: shorten, sentence: 1}]",
     r"world.edit\[1\].sentence: unknown parameter of edit 'shorten' \(did you mean 'sentences'\?\)"),
    ('  edit: {kind: sign_off, text: "Enjoy!"}\n', "", r"world.edit: missing required value"),
    ("  selector: {scenarios: [recipe]}\n", "", r"world.selector: missing required value"),
    ("  near:", "  neer:", r"world.neer: unknown key \(did you mean 'world.near'\?\)"),
    ("near: [{scenarios: [travel_tip]}]", "near: {scenarios: [travel_tip]}",
     r"world.near: expected a list of selectors"),
    ("selector: {scenarios:", "selector: {scenario:",
     r"world.selector.scenario: unknown key \(did you mean 'world.selector.scenarios'\?\)"),
    ("selector: {scenarios: [recipe]}", "selector: {scenarios: [recipes]}",
     r"world.selector.scenarios: unknown scenario 'recipes' in the tiny world \(did you mean 'recipe'\?\)"),
    ("selector: {scenarios: [recipe]}", "selector: {scenarios: []}",
     r"world.selector.scenarios: expected a non-empty list of non-empty strings"),
    ("near: [{scenarios: [travel_tip]}]", "near: [{scenarios: [travel_tipp]}]",
     r"world.near\[0\].scenarios: unknown scenario 'travel_tipp'"),
    ("world:\n", "categories: [1]\nworld:\n", r"categories: expected a non-empty list of non-empty strings"),
    ("scope: regional", "scope: [regional", r"invalid YAML at line \d+"),
    ("selector: {scenarios: [recipe]}", "selector: {scenarios: [text_message], recipients: [Madie]}",
     r"world.selector.recipients: unknown person 'Madie' in the tiny world \(did you mean 'Maddie'\?\)"),
    ("selector: {scenarios: [recipe]}", "selector: {relations: [girlfriends]}",
     r"world.selector.relations: unknown relation 'girlfriends' in the tiny world \(did you mean 'girlfriend'\?\)"),
    ("selector: {scenarios: [recipe]}", "selector: {channels: [sms]}",
     r"world.selector.channels: unknown channel 'sms' in the tiny world \(known: email, slack, text\)"),
    ("selector: {scenarios: [recipe]}", "selector: {scenarios: [recipe], topics: [pancake]}",
     r"world.selector.topics: unknown topic 'pancake' in the tiny world \(did you mean 'pancakes'\?\)"),
    ("selector: {scenarios: [recipe]}", "selector: {scenarios: [recipe], recipients: [Maddie]}",
     r"world.selector: selects no request the tiny world can generate"),
    ("near: [{scenarios: [travel_tip]}]", "near: [{scenarios: [slack_dm], recipients: [Maddie]}]",
     r"world.near\[0\]: selects no request the tiny world can generate"),
    ("near: [{scenarios: [travel_tip]}]", "near: [{scenarios: [travel_tip]}, {topics: [pancakes, hummus]}]",
     r"world.near\[1\]: can only produce in-scope requests \(e.g. recipe about pancakes\)"),
    ("near: [{scenarios: [travel_tip]}]", "near: [{scenarios: [recipe, travel_tip]}]",
     r"world.near\[0\]: also selects in-scope requests \(e.g. recipe about"),
]


@pytest.mark.parametrize("old,new,expected", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_yaml_one_line_error(tmp_path, old, new, expected):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(UserError) as err:
        load_feedback(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert __import__("re").search(expected, msg), msg


def test_bad_top_level_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"fb.yaml: expected a mapping at the top level"):
        load_feedback(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(UserError, match=r"nope.yaml: feedback file not found"):
        load_feedback(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match=r"no such feedback file or shipped feedback"):
        load_feedbacks(["heart-emoji-madie"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no feedback files"):
        load_feedbacks(tmp_path / "empty")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a", GOOD)
    _write(tmp_path / "b", GOOD)
    with pytest.raises(UserError, match=r"b/fb.yaml: feedback name 'fb' already used by .*a/fb.yaml"):
        load_feedbacks([tmp_path / "a", tmp_path / "b"])


# ----------------------------------------------------------------------------- shipped feedbacks on the world

SHIPPED = load_feedbacks(FEEDBACK_DIR)
N_SAMPLES = 120


def test_shipped_feedbacks_load_and_vary():
    assert len(SHIPPED) >= 8
    assert all(fb.world is not None and fb.metric is not None for fb in SHIPPED)
    assert any(fb.type == "qualitative" for fb in SHIPPED)
    assert len({fb.world.edit.kind for fb in SHIPPED}) >= 8
    assert len({fb.metric.kind for fb in SHIPPED}) >= 8
    for fb in SHIPPED:
        assert fb.source.endswith(f"{fb.name}.yaml")
        assert (FEEDBACK_DIR / f"{fb.name}.yaml").read_text(encoding="utf-8").startswith("# ")
        assert load_feedbacks([fb.name])[0] == fb, "shipped feedbacks load by name"


@pytest.mark.parametrize("fb", SHIPPED, ids=[fb.name for fb in SHIPPED])
def test_edit_turns_baseline_into_following(fb):
    """On in-scope requests, world baselines mostly miss the feedback; edited baselines always follow it
    (and stay on topic for the world's checker, as the offline teacher's revisions must)."""
    rng = random.Random(0)
    base_follows = 0
    for _ in range(N_SAMPLES):
        request = sample_from_selector(rng, fb.world.selector)
        assert in_scope(fb, request) and not in_near_scope(fb, request)
        baseline = tiny_world.baseline_reply(rng, request)
        edited = apply_edit(fb.world.edit, baseline)
        base_follows += fb.metric.follows(baseline, baseline)
        assert fb.metric.follows(edited, baseline), (baseline, edited)
        assert fb.follows(edited, baseline)
        assert apply_edit(fb.world.edit, edited) == edited, "edits are idempotent"
        assert tiny_world.on_topic(request, edited), (request, edited)
    assert base_follows <= 0.1 * N_SAMPLES


@pytest.mark.parametrize("fb", SHIPPED, ids=[fb.name for fb in SHIPPED])
def test_selector_separates_in_scope_from_near_scope(fb):
    rng = random.Random(1)
    near = near_selectors(fb)
    assert near, "every shipped feedback has near-scope selectors"
    for _ in range(N_SAMPLES):
        assert in_scope(fb, sample_from_selector(rng, fb.world.selector))
    for sel in near:
        for _ in range(N_SAMPLES // len(near)):
            request = sample_from_selector(rng, sel)
            assert not in_scope(fb, request) and in_near_scope(fb, request), request
    # and the world's own sampler with pins straight from the selector agrees
    for _ in range(N_SAMPLES):
        pins = {k[:-1]: rng.choice(v) for k, v in fb.world.selector.items() if k in ("recipients", "topics")}
        request = tiny_world.sample_request(rng, rng.choice(fb.world.selector["scenarios"]), **pins)
        if "relations" in fb.world.selector and request.relation not in fb.world.selector["relations"]:
            continue
        assert in_scope(fb, request)


def test_world_slots_cover_what_the_world_samples():
    slots = {(r.scenario, r.topic, r.recipient, r.relation, r.channel) for r in world_slots()}
    rng = random.Random(2)
    for _ in range(500):
        r = tiny_world.sample_request(rng)
        assert (r.scenario, r.topic, r.recipient, r.relation, r.channel) in slots


# ----------------------------------------------------------------------------- new combinations, JSON


def test_new_combination_in_yaml_needs_no_code(tmp_path):
    """uppercase edit × regex metric on dessert recipes, near scope savoury recipes — written only in YAML."""
    path = _write(tmp_path, textwrap.dedent("""\
        # A new combination: shout dessert recipes.
        content: Write dessert recipes in capital letters
        domain: dessert recipes
        effect: write in capital letters
        scope: local
        type: quantitative
        metric: {kind: not, metric: {kind: regex, pattern: "[a-z]"}}
        world:
          selector: {scenarios: [recipe], topics: [pancakes, banana bread, chocolate chip cookies, apple crumble]}
          near: [{scenarios: [recipe], topics: [tomato soup, hummus, fried rice]}]
          edit: [{kind: uppercase}, {kind: append, text: " YUM!"}]
        """), name="shout-desserts.yaml")
    fb = load_feedback(path)
    rng = random.Random(3)
    for _ in range(50):
        request = sample_from_selector(rng, fb.world.selector)
        baseline = tiny_world.baseline_reply(rng, request)
        edited = apply_edit(fb.world.edit, baseline)
        assert not fb.metric.follows(baseline) and fb.metric.follows(edited) and edited.endswith(" YUM!")
        assert not in_scope(fb, sample_from_selector(rng, near_selectors(fb)[0]))


def test_to_dict_is_json_and_round_trips(tmp_path):
    for fb in SHIPPED:
        d = json.loads(json.dumps(fb.to_dict(), ensure_ascii=False))
        assert d["name"] == fb.name and d["world"]["selector"] == fb.world.selector
        raw = {k: v for k, v in d.items() if k not in ("name", "source") and v is not None}
        path = _write(tmp_path, yaml.safe_dump(raw, allow_unicode=True), name=f"{fb.name}.yaml")
        again = load_feedback(path)
        assert again.to_dict() | {"source": ""} == fb.to_dict() | {"source": ""}


def test_global_feedback_has_no_near_scope(tmp_path):
    text = GOOD.replace("scope: regional", "scope: global").replace("selector: {scenarios: [recipe]}", "selector: {}")
    with pytest.raises(UserError, match=r"world.near\[0\]: can only produce in-scope requests"):
        load_feedback(_write(tmp_path, text))
    fb = load_feedback(_write(tmp_path, text.replace("  near: [{scenarios: [travel_tip]}]\n", "")))
    assert near_selectors(fb) == [] and in_scope(fb, sample_from_selector(random.Random(0), {}))


def test_qualitative_without_metric_uses_the_edit(tmp_path):
    text = (GOOD.replace("type: quantitative", "type: qualitative")
            .replace('metric: {kind: ends_with, text: "Enjoy!"}\n', "categories: [soups, desserts]\n"))
    fb = load_feedback(_write(tmp_path, text))
    assert fb.metric is None and fb.categories == ["soups", "desserts"]
    assert fb.follows("Mix it.\nEnjoy!") and not fb.follows("Mix it.")  # the edit leaves it unchanged
    fb.world = None
    with pytest.raises(ValueError, match="use a judge"):
        fb.follows("Mix it.")
