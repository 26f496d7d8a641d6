"""Step splitting, aggregation, best-of-N and VL-PRM's greedy candidate score on scripted step scores."""

from __future__ import annotations

import math

import pytest

from vrl.prm.steps import aggregate, best_index, candidate_score, join_steps, pick_candidate, split_steps


def test_split_and_join_steps():
    text = "[Visual Elements]\n  a red circle \n\n[Reasoning]\nso red\n"
    assert split_steps(text) == ["[Visual Elements]", "a red circle", "[Reasoning]", "so red"]
    assert split_steps("Step 1: a Step 2: b", r"Step \d+:") == ["a", "b"]
    assert split_steps(join_steps(["x", "y"])) == ["x", "y"]


def test_aggregates_by_hand():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate(s, "product") == pytest.approx(0.36)  # 0.9 * 0.5 * 0.8
    assert aggregate(s, "last") == 0.8
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregate must be one of"):
        aggregate(s, "max")


def test_best_of_n_by_each_aggregate_picks_different_solutions():
    solutions = [[0.9, 0.2], [0.6, 0.6], [0.3, 0.95]]
    # min: 0.2, 0.6, 0.3 -> 1; mean: 0.55, 0.6, 0.625 -> 2; product: 0.18, 0.36, 0.285 -> 1; last: 0.2, 0.6, 0.95 -> 2
    picks = {how: best_index([aggregate(s, how) for s in solutions]) for how in ("min", "mean", "product", "last")}
    assert picks == {"min": 1, "mean": 2, "product": 1, "last": 2}
    assert best_index([0.5, math.nan, 0.5]) == 0  # ties: the first; NaN never wins


def test_greedy_candidate_score_and_pick():
    # "+" wins: 0.8^0.3 / 10^0.6 = 0.935248 / 3.981072 = 0.234924
    assert candidate_score(0.8, 10) == pytest.approx(0.8**0.3 / 10**0.6)
    assert candidate_score(0.8, 10) == pytest.approx(0.234924, abs=1e-6)
    assert candidate_score(0.4, 10) == -1.0  # "-" wins
    # 0.9 at 40 tokens: 0.96889 / 9.14610 = 0.10594; 0.6 at 8 tokens: 0.85790 / 3.48220 = 0.24637 -> the shorter
    assert pick_candidate([0.9, 0.6, 0.3], [40, 8, 2]) == 1
    # every candidate reads "-": the lowest P(-) = the highest P(+)
    assert pick_candidate([0.1, 0.45, 0.3], [5, 50, 5]) == 1
    with pytest.raises(ValueError, match="2 readouts but 1 lengths"):
        pick_candidate([0.1, 0.2], [3])
