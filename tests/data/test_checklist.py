import json
import random
import re

import pytest

from vrl.data.checklist import (
    ProbeItem,
    checklist_from_columns,
    checklist_from_scene,
    infer_answer_type,
    parse_probe_answers,
    probe_prompt,
)
from vrl.data.tasks import TASKS, generate, row_rng, vocabulary, words
from vrl.rewards.checklist import score_probe, score_probes


def _metas(seeds=range(6)):
    """Meta dicts of generated rows over every task, valid format and difficulty."""
    out = []
    for task, spec in TASKS.items():
        for fmt in spec.formats:
            for difficulty in (1, 2, 3):
                for seed in seeds:
                    out.append(
                        generate(task, fmt, row_rng("test", task, fmt, difficulty, seed), difficulty=difficulty).meta()
                    )
    return out


def _only(items, **attrs):
    """The single element of ``items`` matching ``attrs``; fails when there is not exactly one (ambiguity)."""
    hits = [x for x in items if all(x[k] == v for k, v in attrs.items())]
    assert len(hits) == 1, f"{attrs} matches {len(hits)} elements: the question would be ambiguous"
    return hits[0]


def _oracle(question: str, scene: dict) -> str:
    """The answer to a checklist question, recomputed from the raw scene dict (not from vrl.data.scene)."""
    if scene["kind"] == "bar_chart":
        bars = [
            {"category": c, "value": v, "color": k}
            for c, v, k in zip(scene["categories"], scene["values"], scene["colors"])
        ]
        if m := re.fullmatch(r"What is the value of the (\w+) bar\?", question):
            return str(_only(bars, category=m[1])["value"])
        if m := re.fullmatch(r"Is the value of the (\w+) bar (\d)\?", question):
            return "yes" if _only(bars, category=m[1])["value"] == int(m[2]) else "no"
        if m := re.fullmatch(r"What colour is the (\w+) bar\?", question):
            return _only(bars, category=m[1])["color"]
        if m := re.fullmatch(r"Which bar is (\w+)\?", question):
            return _only(bars, color=m[1])["category"]
        if question == "Which bar is the tallest?":
            return _only(bars, value=max(scene["values"]))["category"]
        raise AssertionError(f"unexpected chart question {question!r}")
    objs = scene["objects"]
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o["color"] == m[1] for o in objs))
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return _only(objs, shape=m[1])["color"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return _only(objs, color=m[1])["shape"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (left or right of|above or below) the (\w+) (\w+)\?", question):
        a, b = _only(objs, color=m[1], shape=m[2]), _only(objs, color=m[4], shape=m[5])
        lo, hi = (0, 2) if m[3] == "left or right of" else (1, 3)  # bbox indices of the asked axis
        assert a["bbox"][hi] < b["bbox"][lo] or b["bbox"][hi] < a["bbox"][lo], "boxes overlap on the asked axis"
        first = a["bbox"][hi] < b["bbox"][lo]
        return ("left" if first else "right") if lo == 0 else ("above" if first else "below")
    raise AssertionError(f"unexpected scene question {question!r}")


# --- checklist_from_scene -------------------------------------------------------------------------------------


def test_every_candidate_answer_matches_an_independent_recomputation():
    n_items = 0
    for meta in _metas():
        for item in checklist_from_scene(meta, max_items=100, rng=random.Random(0)):
            assert item.answer == _oracle(item.question, meta["scene"]), (item, meta["scene"])
            n_items += 1
    assert n_items > 2000  # the loop really exercised the candidates


def test_answer_words_are_in_the_tiny_vocabulary_and_questions_nearly_so():
    vocab = set(vocabulary())
    for meta in _metas(range(3)):
        for item in checklist_from_scene(meta, max_items=100):
            assert set(words(item.answer)) <= vocab, item
            assert set(words(item.question)) <= vocab | {"an"}, item  # "an orange ..." is the one extra word


def test_answer_types_follow_vrl_conventions():
    for meta in _metas(range(3)):
        for item in checklist_from_scene(meta, max_items=100):
            if item.answer_type == "yesno":
                assert item.answer in ("yes", "no")
            elif item.answer_type == "number":
                assert item.answer.isdigit()
            else:
                assert item.answer_type == "text" and item.answer.isalpha(), item  # one word


def test_deterministic_given_rng_and_by_default():
    meta = generate("spatial", "open", row_rng("det"), difficulty=3).meta()
    a = checklist_from_scene(meta, rng=random.Random(5))
    assert a == checklist_from_scene(json.dumps(meta), rng=random.Random(5))  # JSON string meta too
    assert checklist_from_scene(meta) == checklist_from_scene(meta)  # rng=None seeds from the row
    # different generators do reach different checklists (the choice is not hard-wired)
    assert len({tuple(checklist_from_scene(meta, rng=random.Random(s))) for s in range(10)}) > 1


def test_max_items_and_bare_scene_dict():
    meta = generate("count", "open", row_rng("max"), difficulty=3).meta()
    assert len(checklist_from_scene(meta, max_items=2)) == 2
    assert len(checklist_from_scene(meta["scene"], max_items=3)) == 3  # no target: any evidence
    with pytest.raises(ValueError, match="max_items"):
        checklist_from_scene(meta, max_items=0)
    with pytest.raises(ValueError, match="scene graph"):
        checklist_from_scene({"task": "color"})


def test_items_are_about_the_target_first_and_never_repeat_the_main_question():
    for seed in range(20):
        q = generate("color", "open", row_rng("target", seed), difficulty=3)
        target = q.target[0]
        items = checklist_from_scene(q.meta(), max_items=4)
        assert len(items) == 4
        # colour-task scenes of 5-6 objects offer >= 4 unambiguous items naming the target's colour or shape
        for item in items:
            assert target["color"] in item.question or target["shape"] in item.question, (item, target)
        assert all(item.question != f"What colour is the {target['shape']}?" for item in items)


def test_chart_items_prefer_the_asked_bar():
    charts = [generate("chart", "open", row_rng("chart", seed), difficulty=3) for seed in range(20)]
    rows = [q for q in charts if q.kind == "chart_value"]
    assert rows
    for q in rows:
        category = q.target[0]["category"]
        items = checklist_from_scene(q.meta(), max_items=3)
        # tier 0 of a chart_value row: the bar's colour, a wrong-value yes/no, which bar has its colour
        assert all(category in item.question or item.answer == category for item in items), items
        assert all(item.question != f"What is the value of the {category} bar?" for item in items)
    for q in [q for q in charts if q.kind == "chart_argmax"]:
        assert all(item.question != "Which bar is the tallest?" for item in checklist_from_scene(q.meta(), 100))


# --- checklist_from_columns ------------------------------------------------------------------------------------


def test_columns_parse_with_whitespace_newlines_and_unclosed_last_tags():
    problem = "<image>\n<q1> Is the sky\n blue? </q1>\n< Q2 >How many dogs?</q2><q3>What colour is the car?"
    answer = "<a1>Yes</a1>\n<a2> 3 </a2>\n<a3>red\n"
    items = checklist_from_columns(problem, answer)
    assert items == [
        ProbeItem("Is the sky blue?", "Yes", "yesno"),
        ProbeItem("How many dogs?", "3", "number"),
        ProbeItem("What colour is the car?", "red", "text"),
    ]


def test_columns_missing_answer_names_k():
    with pytest.raises(ValueError, match=r"<a2>.*K=2"):
        checklist_from_columns("<q1>a?</q1><q2>b?</q2><q3>c?</q3>", "<a1>yes</a1><a3>no</a3>")
    with pytest.raises(ValueError, match=r"<q3>.*K=3"):
        checklist_from_columns("<q1>a?</q1><q2>b?</q2>", "<a1>yes</a1><a2>no</a2><a3>no</a3>")
    with pytest.raises(ValueError, match="more than once"):
        checklist_from_columns("<q1>a?</q1><q1>b?</q1>", "<a1>yes</a1>")
    with pytest.raises(ValueError, match=r"<a1>.*empty"):
        checklist_from_columns("<q1>a?</q1>", "<a1> </a1>")


def test_columns_unclosed_inner_tag_is_not_guessed():
    # <a1> is cut off by <a2>: its content is not trusted, so the row is reported rather than mis-graded
    with pytest.raises(ValueError, match="K=1"):
        checklist_from_columns("<q1>a?</q1><q2>b?</q2>", "<a1>yes <a2>no</a2>")


def test_columns_types_given_or_inferred_and_single_question_fallback():
    items = checklist_from_columns("<q1>x?</q1><q2>y?</q2>", "<a1>B</a1><a2>2</a2>", answer_types=["choice", "text"])
    assert [i.answer_type for i in items] == ["choice", "text"]
    with pytest.raises(ValueError, match="answer_types"):
        checklist_from_columns("<q1>x?</q1>", "<a1>B</a1>", answer_types=["choice", "text"])
    assert [infer_answer_type(a) for a in ["no", "-1.5", "1,200", "3 apples", "A"]] == [
        "yesno", "number", "number", "text", "text",
    ]  # fmt: skip
    assert checklist_from_columns("<image>\nHow many legs?", "\\boxed{4}") == [
        ProbeItem("How many legs?", "4", "number")
    ]


def test_probe_item_rejects_unverifiable_ground_truth():
    with pytest.raises(ValueError, match="unverifiable"):
        ProbeItem("How many?", "several", "number")
    with pytest.raises(ValueError, match="answer_type"):
        ProbeItem("Where?", "[1, 2, 3, 4]", "bbox")
    assert ProbeItem("How many?", "0", "number").answer == "0"  # 0 is a valid number, not "missing"


# --- probe_prompt / parse_probe_answers ------------------------------------------------------------------------

ITEMS = [
    ProbeItem("How many objects are there?", "3", "number"),
    ProbeItem("What colour is the circle?", "red", "text"),
    ProbeItem("Is there a blue star?", "no", "yesno"),
]


def test_probe_prompt_tags_every_question_and_round_trips():
    prompt = probe_prompt(ITEMS)
    assert prompt.startswith("<image>\n")
    assert prompt.count("<image>") == 1
    for k, item in enumerate(ITEMS, 1):
        assert f"<q{k}>{item.question}</q{k}>" in prompt
        assert f"<a{k}>" in prompt  # the instruction shows every answer tag
    assert "<image>" not in probe_prompt(ITEMS, with_image_placeholder=False)
    answers = "".join(f"<a{k}>{i.answer}</a{k}>" for k, i in enumerate(ITEMS, 1))
    assert checklist_from_columns(prompt, answers) == ITEMS  # the published parser reads our prompt back
    assert len(prompt) < 200  # short for tiny contexts


def test_parse_probe_answers_last_wins_garbage_ignored_unclosed_last_kept():
    text = "think <a1>2</a1> no wait <a1> 3 </a1> junk </a2> <a9 <a2>red<a3>no, it is not"
    # a1: last occurrence (3); a2 unclosed and followed by <a3>: dropped; a3 unclosed at the end: kept
    assert parse_probe_answers(text) == {1: "3", 3: "no, it is not"}
    assert parse_probe_answers("no tags at all") == {}


# --- score_probe -----------------------------------------------------------------------------------------------


def test_score_denominators_hand_computed():
    response = "<a1>3</a1> <a3>yes</a3>"  # a1 correct (3 == 3), a2 absent, a3 wrong (yes != no)
    assert score_probe(response, ITEMS, "checklist") == pytest.approx(1 / 3)  # 1 correct / 3 items
    assert score_probe(response, ITEMS, "answered") == pytest.approx(1 / 2)  # 1 correct / 2 answers


def test_answering_only_the_easy_item_is_not_rewarded_under_checklist():
    response = "<a1>3</a1>"  # one easy answer, the rest skipped
    assert score_probe(response, ITEMS) == pytest.approx(1 / 3)  # 1 / len(items)
    assert score_probe(response, ITEMS, "answered") == 1.0  # 1 / 1 answered: the published loophole


def test_answers_are_checked_by_type():
    response = "<a1>3.0</a1><a2>The Red.</a2><a3>No, there is none</a3>"  # 3.0 == 3; normalised text; first word
    assert score_probe(response, ITEMS) == 1.0
    assert score_probe("<a1>three</a1><a2>reddish</a2><a3>maybe</a3>", ITEMS) == 0.0
    assert score_probe("<a1>\\boxed{3}</a1>", ITEMS[:1]) == 1.0  # a boxed span inside the tag is unwrapped
    assert score_probe("It is \\boxed{3}.", ITEMS[:1]) == 1.0  # single-question probe: \boxed{} fallback


def test_no_answers_and_out_of_range_answers():
    assert score_probe("I cannot see the image.", ITEMS, "answered") == 0.0  # 0 answers -> 0.0, not 0/0
    assert score_probe("I cannot see the image.", ITEMS) == 0.0
    assert score_probe("<a4>3</a4><a0>3</a0>", ITEMS, "answered") == 0.0  # no such questions: ignored
    with pytest.raises(ValueError, match="denominator"):
        score_probe("<a1>3</a1>", ITEMS, "answers")
    with pytest.raises(ValueError, match="empty checklist"):
        score_probe("<a1>3</a1>", [])


def test_score_probes_matches_the_loop():
    responses = ["<a1>3</a1>", "<a1>3</a1><a2>red</a2><a3>no</a3>", "", "<a2>blue</a2>"]
    checklists = [ITEMS] * 3 + [ITEMS[:2]]
    for denominator in ("checklist", "answered"):
        expected = [score_probe(r, c, denominator) for r, c in zip(responses, checklists)]
        assert score_probes(responses, checklists, denominator) == expected
    assert score_probes(responses, checklists) == pytest.approx([1 / 3, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="checklists"):
        score_probes(responses, checklists[:2])


def test_generated_checklist_scores_one_when_answered_truthfully():
    for meta in _metas(range(2)):
        items = checklist_from_scene(meta)
        truthful = "".join(f"<a{k}>{i.answer}</a{k}>" for k, i in enumerate(items, 1))
        assert score_probe(truthful, items) == 1.0
