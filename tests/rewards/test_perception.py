"""Perception-R1 reward terms: r_vis over judge verdicts, and the 20-gram repetition penalty."""

from __future__ import annotations

import json

import pytest
from hydra.utils import instantiate

from vrl.data.scene import Scene, SceneObject
from vrl.judges import JudgeItem, RuleJudge, Verdict, parse_verdict
from vrl.rewards import RepetitionPenalty, VisualPerception
from vrl.rewards.combine import RewardSet

EPS = 1e-6
ONE_CIRCLE = json.dumps({"scene": Scene(112, 112, (SceneObject("circle", "green", "small", 50, 50, 8),)).to_dict()})
# its facts: "there is 1 object", "the circle is green"


class ScriptedJudge:
    """Answers with prepared judge replies, one per call position; records what it was asked."""

    def __init__(self, replies: list[str]):
        self.replies, self.calls = replies, []

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        self.calls.append(list(items))
        return [parse_verdict(self.replies[k], len(item.annotations)) for k, item in enumerate(items)]


def kvi(*facts: str) -> dict:
    return {"visual_key_info": "".join(f"<info{k}>{f}</info{k}>" for k, f in enumerate(facts, 1))}


def test_r_vis_is_the_fraction_of_annotations_stated():
    judge = ScriptedJudge(["<info1>1</info1><info2>0</info2><info3>1</info3>", "<info1>yes</info1><info2>2</info2>"])
    term = VisualPerception(judge)
    values = term(["r1", "r2"], [kvi("a", "b", "c"), kvi("d", "e")])
    # (1 + 0 + 1) / (3 + 1e-6); (1 + clamp(2) = 1) / (2 + 1e-6)
    assert values == pytest.approx([2 / (3 + EPS), 2 / (2 + EPS)], abs=1e-12)
    assert values[1] < 1.0  # the published epsilon keeps r_vis just below 1
    assert len(judge.calls) == 1 and judge.calls[0] == [JudgeItem(("a", "b", "c"), "r1"), JudgeItem(("d", "e"), "r2")]


def test_denominator_annotations_vs_judged():
    reply = ["<info1>1</info1><info2>0</info2>"]  # m = 3 but only K = 1, 2 came back
    by_m = VisualPerception(ScriptedJudge(reply))(["r"], [kvi("a", "b", "c")])
    by_judged = VisualPerception(ScriptedJudge(reply), denominator="judged")(["r"], [kvi("a", "b", "c")])
    assert by_m == pytest.approx([1 / (3 + EPS)], abs=1e-12)  # the skipped item counts as not stated
    assert by_judged == pytest.approx([1 / (2 + EPS)], abs=1e-12)  # published: len(visual_scores) = 2
    with pytest.raises(ValueError, match="denominator"):
        VisualPerception(RuleJudge(), denominator="m")


def test_no_annotations_and_failed_judgements_score_the_default_and_are_counted():
    judge = ScriptedJudge(["no tags here", "<info1>1</info1>"])
    term = VisualPerception(judge)
    samples = [kvi("a"), {"visual_key_info": ""}, {"prompt": "text only"}, kvi("b")]
    assert term(["r1", "r2", "r3", "r4"], samples) == pytest.approx([0.0, 0.0, 0.0, 1 / (1 + EPS)], abs=1e-12)
    assert [i.response for i in judge.calls[0]] == ["r1", "r4"]  # samples without annotations are not judged
    assert term.pop_stats() == {
        "reward/visual/samples": 4.0,
        "reward/visual/no_annotations": 2.0,
        "reward/visual/failed": 1.0,
    }
    assert term.pop_stats()["reward/visual/failed"] == 0.0  # reset
    assert VisualPerception(ScriptedJudge(["garbage"]), failure_value=0.25)(["r"], [kvi("a")]) == [0.25]


def test_scene_graph_rows_with_the_rule_judge():
    term = VisualPerception(RuleJudge())
    row = {"meta": ONE_CIRCLE}
    values = term(["I see one green circle.", "There is one object, a green circle.", "blue"], [row] * 3)
    # facts {1, object} and {circle, green}: the first response lacks "object" -> 1/2; the second has both -> 2/2
    assert values == pytest.approx([1 / (2 + EPS), 2 / (2 + EPS), 0.0], abs=1e-12)
    assert term.pop_stats()["judge/visual/items"] == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" ".join(["a"] * 21), -1.0),  # 21 words -> 2 twenty-grams, both equal: 1 unique -> -2 * (1 - 1/2)
        (" ".join(["A", "a"] * 10 + ["a"]), -1.0),  # lowercased first: the same as above
        (" ".join(f"w{i}" for i in range(20)), 0.0),  # 1 gram, 1 unique
        (" ".join(["a"] * 19), 0.0),  # below n words: no penalty
        ("", 0.0),
        # x1..x20 twice: 21 grams, the grams at 0 and 20 are equal, the 19 between are new -> 20 unique
        (" ".join([f"x{i}" for i in range(1, 21)] * 2), -2 * (1 - 20 / 21)),
    ],
)
def test_repetition_penalty(text, expected):
    assert RepetitionPenalty().score(text) == pytest.approx(expected, abs=1e-12)


def test_repetition_penalty_knobs():
    assert RepetitionPenalty(n=2, max_penalty=4.0).score("a b a b") == pytest.approx(-4 * (1 - 2 / 3))  # ab ba ab
    assert RepetitionPenalty(lowercase=False).score(" ".join(["A", "a"] * 10 + ["a"])) == 0.0  # 2 different grams
    assert RepetitionPenalty()(["x", "y"], [{}, {}]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="n >= 1"):
        RepetitionPenalty(n=0)


def test_preset_reward_is_the_published_weighted_sum(compose):
    reward = RewardSet(instantiate(compose(["+method=perception_r1"]).reward))
    assert {n: t.weight for n, t in reward.terms.items()} == {
        "accuracy": 0.9,
        "format": 0.1,
        "visual": 0.7,
        "repetition": 1.0,
    }
    row = {"meta": ONE_CIRCLE, "answer": "green", "answer_type": "text", "uid": "0"}
    good = "<think>\nthere is one object, a green circle\n</think>\n<answer>\n\\boxed{green}\n</answer>"
    # 22 words, no tags: accuracy 0 (the whole text is not "green"), format 0, visual 1 of 2 facts ("object" is
    # missing); 3 twenty-grams starting green / circle / green, the first and last equal -> 2 unique -> -2 (1 - 2/3)
    loop = " ".join(["green circle"] * 11)
    total, parts = reward([good, loop], [row, row])
    # good: 0.9 * 1 + 0.1 * 1 + 0.7 * 2 / (2 + 1e-6) + 0; loop: 0 + 0 + 0.7 * 1 / (2 + 1e-6) - 2/3
    assert total.tolist() == pytest.approx([1.0 + 0.7 * 2 / (2 + EPS), 0.7 / (2 + EPS) - 2 / 3], abs=1e-6)
    assert parts["repetition"].tolist() == pytest.approx([0.0, -2 / 3])
    assert parts["accuracy"].tolist() == [1.0, 0.0] and parts["format"].tolist() == [1.0, 0.0]


def test_a_fact_every_row_of_the_task_states_earns_nothing():
    # a single_color row: "there is 1 object" holds on every row of the task (vrl.data.annotations.constant_facts)
    meta = json.loads(ONE_CIRCLE) | {"task": "single_color", "difficulty": 1}
    row = {"meta": json.dumps(meta)}
    gamed = "There is one object."
    assert VisualPerception(RuleJudge())([gamed], [row]) == [0.0]  # only "the circle is green" is left to state
    # with drop_constant_facts=false (the old behaviour): 1 of 2 facts for saying nothing about the image
    assert VisualPerception(RuleJudge(), drop_constant_facts=False)([gamed], [row]) == pytest.approx([1 / (2 + EPS)])
    assert VisualPerception(RuleJudge())(["a green circle"], [row]) == pytest.approx([1 / (1 + EPS)])
