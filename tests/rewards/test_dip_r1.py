"""DIP-R1's rewards (our formulas for an unreleased method): weighted precision/recall, the group-aware look reward."""

from __future__ import annotations

import pytest
from PIL import Image

from vrl.rewards.dip_r1 import (
    LookReward,
    PrecisionRecall,
    coverage_map,
    disagreement,
    look_score,
    precision_recall,
)

GOLD = [[0, 0, 9, 9], [20, 0, 29, 9]]


def respond(answer: str, look: str = "[]") -> str:
    return f"<think>crowded</think><look>{look}</look><answer>{answer}</answer>"


def test_precision_recall_with_optimal_matching():
    # [21, 0, 30, 9] vs [20, 0, 29, 9]: intersection 8 x 9 = 72, union 81 + 81 - 72 = 90, IoU 0.8 > 0.5: a match;
    # [50, 50, 59, 59] overlaps nothing. TP 2 of 3 predictions and of 2 ground truths: P = 2/3, R = 1
    assert precision_recall([[0, 0, 9, 9], [50, 50, 59, 59], [21, 0, 30, 9]], GOLD) == (2 / 3, 1.0)
    assert precision_recall([[0, 0, 9, 9], [0, 0, 9, 9]], [[0, 0, 9, 9]]) == (
        0.5,
        1.0,
    )  # one-to-one: a duplicate misses
    assert precision_recall([], []) == (1.0, 1.0) and precision_recall([], GOLD) == (0.0, 0.0)


def test_precision_recall_reward_weights_recall_more():
    row = {"answer": "[[0, 0, 9, 9], [20, 0, 29, 9]]", "uid": "u"}
    responses = [
        respond("[[0, 0, 9, 9], [50, 50, 59, 59], [21, 0, 30, 9]]"),  # 0.4 * 2/3 + 0.6 * 1 = 0.8667
        respond("[[0, 0, 9, 9]]"),  # P = 1, R = 1/2: 0.4 + 0.3 = 0.7
        respond("[]"),  # nothing found: 0
        "<answer>[[0, 0, 9</answer>",  # unreadable list: 0
        "[[0, 0, 9, 9]]",  # no answer tag: 0
    ]
    got = PrecisionRecall()(responses, [row] * 5)
    assert got == pytest.approx([0.4 * 2 / 3 + 0.6, 0.7, 0.0, 0.0, 0.0], abs=1e-12)
    assert PrecisionRecall(w_precision=1.0, w_recall=0.0)([responses[0]], [row]) == pytest.approx([2 / 3])
    with pytest.raises(ValueError, match="uid='u'"):
        PrecisionRecall()([responses[0]], [{**row, "answer": "three boxes"}])


def test_disagreement_and_look_score_by_hand():
    # 4 x 4 image; one answer covers the top-left 2 x 2 pixels, the other nothing: p = 1/2 there, v = 4 * 1/4 = 1
    v = disagreement([[[0, 0, 1, 1]], []], 4, 4)
    assert v.sum() == 4.0 and v[:2, :2].min() == 1.0
    assert coverage_map([[1, 1, 2, 2]], 4, 4).sum() == 4  # inclusive corners
    exact, whole, pixel = (
        coverage_map([[0, 0, 1, 1]], 4, 4),
        coverage_map([[0, 0, 3, 3]], 4, 4),
        coverage_map([[0, 0, 0, 0]], 4, 4),
    )
    assert look_score(exact, v) == 1.0  # precision 4/4, coverage 4/4
    # whole image: precision 4/16 = 0.25, coverage 1: f1 = 2 * 0.25 / 1.25 = 0.4; one pixel: precision 1, coverage 0.25
    assert look_score(whole, v) == pytest.approx(0.4) and look_score(pixel, v) == pytest.approx(0.4)
    assert look_score(whole, v, "coverage") == 1.0 and look_score(whole, v, "precision") == 0.25
    assert look_score(exact, 0 * v) == 0.0  # the group agrees: nothing to look at


def test_look_reward_is_computed_per_group():
    image = Image.new("RGB", (4, 4))
    a, b = {"uid": "a", "images": [image]}, {"uid": "b", "images": [image]}
    responses = [
        respond("[[0, 0, 1, 1]]", look="[[0, 0, 1, 1]]"),
        respond("[]", look="[[0, 0, 3, 3]]"),
        respond("[[0, 0, 1, 1]]", look="nothing"),
        respond("[[0, 0, 1, 1]]", look="[[0, 0, 1, 1]]"),  # group b has one member: no disagreement map
    ]
    # group a (three readable answers, two covering the top-left 2 x 2): p = 2/3 there, v = 4 * 2/3 * 1/3 = 8/9.
    # Look 1, exactly that region: precision (4 * 8/9) / 4 = 8/9, coverage 1: f1 = 2 * 8/9 / (17/9) = 16/17.
    # Look 2, the whole image: precision (4 * 8/9) / 16 = 2/9, coverage 1: f1 = 2 * 2/9 / (11/9) = 4/11.
    # Look 3 is unreadable: 0. Group b has one member: no disagreement map, 0.
    got = LookReward()(responses, [a, a, a, b])
    assert got == pytest.approx([16 / 17, 4 / 11, 0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="mode"):
        LookReward(mode="variance")
