"""Q-Insight's validation correlations: PLCC / SRCC by hand, and the score terms found inside routed rewards."""

from __future__ import annotations

import pytest

from vrl.methods.q_insight import correlations, score_terms
from vrl.rewards.combine import RewardSet
from vrl.rewards.q_insight import ComparisonMatch, ScoreHit
from vrl.rewards.routing import RoutedReward


def test_correlations_by_hand():
    # x = 1, 2, 3, 4 (mean 2.5), y = 1, 2, 3, 5 (mean 2.75): dx = -1.5, -.5, .5, 1.5; dy = -1.75, -.75, .25, 2.25
    # sum dx dy = 2.625 + .375 + .125 + 3.375 = 6.5; sum dx^2 = 5; sum dy^2 = 8.75 -> PLCC = 6.5 / sqrt(43.75)
    plcc, srcc = correlations([1, 2, 3, 4], [1, 2, 3, 5])
    assert plcc == pytest.approx(6.5 / 43.75**0.5, abs=1e-12)
    assert srcc == pytest.approx(1.0, abs=1e-12)  # same order
    # reversed ranks: SRCC -1
    assert correlations([4, 3, 2, 1], [1, 2, 3, 5])[1] == pytest.approx(-1.0, abs=1e-12)
    assert correlations([3.0], [3.0]) == (0.0, 0.0)  # one pair
    assert correlations([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == (0.0, 0.0)  # no spread in the predictions


def test_score_terms_are_found_inside_routed_terms():
    hit = ScoreHit()
    reward = RewardSet({"accuracy": RoutedReward({"score": hit, "comparison": ComparisonMatch()}, key="task")})
    assert score_terms(reward) == [hit]
