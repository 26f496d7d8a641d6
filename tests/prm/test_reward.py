"""A PRM as a reward term: aggregated step scores per response, inside a reward set on the tiny PRM."""

from __future__ import annotations

import pytest

from vrl.prm.readout import PlusMinusPRM
from vrl.prm.reward import PRMReward
from vrl.rewards.combine import RewardSet


class ScriptedPRM:
    steps = {"a": 0.9, "b": 0.3, "c": 0.6}

    def step_scores(self, row, steps):
        return [self.steps[s] for s in steps]

    def outcome_score(self, row, response):
        return 0.5 if "b" in response else 0.7


def test_prm_reward_aggregates_step_scores_or_scores_the_outcome():
    responses, rows = ["a\nb\nc", "c\na", ""], [{}, {}, {}]
    assert PRMReward(ScriptedPRM(), "min")(responses, rows) == pytest.approx([0.3, 0.6, 0.0])
    assert PRMReward(ScriptedPRM(), "product")(responses, rows) == pytest.approx([0.9 * 0.3 * 0.6, 0.54, 0.0])
    assert PRMReward(ScriptedPRM(), "last")(responses, rows) == pytest.approx([0.6, 0.9, 0.0])
    assert PRMReward(ScriptedPRM(), "orm")(responses, rows) == pytest.approx([0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match="orm or one of"):
        PRMReward(ScriptedPRM(), "max")


def test_the_tiny_prm_scores_rl_responses_inside_a_reward_set():
    term = PRMReward(PlusMinusPRM("tiny:qwen2_5_vl"), aggregate="mean", weight=0.5)
    reward = RewardSet({"prm": term})
    total, components = reward(["red\nso red", "blue"], [{"prompt": "colour?"}, {"prompt": "colour?"}])
    scores = components["prm"]
    assert all(0.0 < float(s) < 1.0 for s in scores)
    assert total.tolist() == pytest.approx([0.5 * float(s) for s in scores])
