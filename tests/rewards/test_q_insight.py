"""Q-Insight's rewards as the released code computes them: score hit, class + severity, comparison, strict format."""

from __future__ import annotations

import json

import pytest

from vrl.rewards.context import CONTEXT_KEY, RewardContext
from vrl.rewards.q_insight import ComparisonMatch, DistortionMatch, QInsightFormat, ScoreHit, parse_rating
from vrl.rewards.routing import RoutedReward


def rating(value: str) -> str:
    return f'<think>\nlooks noisy\n</think>\n<answer>\n{{"rating": {value}}}\n</answer>'


def test_score_hit_is_strictly_within_the_threshold():
    row = {"answer": "3.40", "task": "score", "uid": "u"}
    values = ["3.70", "3.06", "3.80", "3.0", "4.5.2"]
    # |3.70 - 3.40| = 0.30 < 0.35: 1; |3.06 - 3.40| = 0.34: 1; 0.40: 0; 0.40: 0; "4.5.2" does not float: 0
    assert ScoreHit()([rating(v) for v in values], [row] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert ScoreHit()(['{"rating": 3.4}'], [row]) == [0.0]  # no answer tag
    assert ScoreHit(threshold=0.5)([rating("3.80")], [row]) == [1.0]  # 0.40 < 0.5
    assert parse_rating(rating("2.50")) == 2.5
    with pytest.raises(ValueError, match="uid='u'"):
        ScoreHit()([rating("3")], [{**row, "answer": "good"}])


def test_score_hit_keeps_validation_pairs_only():
    term, row = ScoreHit(), {"answer": "4.20", "task": "score"}
    train = {**row, CONTEXT_KEY: RewardContext(step=1, total_steps=10)}
    val = {**row, CONTEXT_KEY: RewardContext(step=1, total_steps=10, training=False)}
    term([rating("4.00"), rating("x"), rating("1.00")], [train, val, val])
    assert term.pop_val_pairs() == [(None, 4.2), (1.0, 4.2)] and term.pop_val_pairs() == []


def test_distortion_class_then_severity():
    row = {"answer": json.dumps({"distortion_class": "blur", "severity": "moderate"}), "uid": "u"}

    def answer(text: str) -> str:
        return f"<think>\n.\n</think>\n<answer>\n{text}\n</answer>"

    responses = [
        answer('{"distortion_class": "blur", "severity": "moderate"}'),  # 0.25 + 0.75
        answer('{"distortion_class": "blur", "severity": "serious"}'),  # class only: 0.25
        answer('{"distortion_class": "noise", "severity": "moderate"}'),  # wrong class: 0 whatever the severity
        answer('{"severity": "moderate", "distortion_class": "blur"}'),  # released regex wants class first: 0
        answer('{"distortion_class": "Blur", "severity": "moderate"}'),  # case-sensitive: 0
    ]
    assert DistortionMatch()(responses, [row] * 5) == [1.0, 0.25, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="uid='u'"):
        DistortionMatch()([responses[0]], [{**row, "answer": "blur"}])


def test_comparison_is_an_exact_answer():
    row = {"answer": "Image A"}
    responses = ["<answer> Image A </answer>", "<answer>image a</answer>", "<answer>Image A is better</answer>"]
    assert ComparisonMatch()(responses, [row] * 3) == [1.0, 0.0, 0.0]


def test_format_is_the_released_strict_regex():
    good = rating("3.10")
    one_line = '<think>x</think><answer>{"rating": 3.1}</answer>'  # tags must sit on their own lines
    nested = '<think>\nx\n</think>\n<answer>\n{"a": {"b": 1}}\n</answer>'  # no nested braces
    free = "<think>\nx\n</think>\n<answer>\nImage B\n</answer>"
    assert QInsightFormat()([good, one_line, nested, free], [{}] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert QInsightFormat(json_answer=False)([good, one_line, free], [{}] * 3) == [1.0, 0.0, 1.0]


def test_rows_route_by_their_task_field():
    routed = RoutedReward({"score": ScoreHit(), "dist": DistortionMatch(), "comparison": ComparisonMatch()}, key="task")
    rows = [
        {"task": "score", "answer": "2.60"},
        {"task": "comparison", "answer": "Image B"},
        {"task": "dist", "answer": json.dumps({"distortion_class": "darken", "severity": "slight"})},
    ]
    responses = [
        rating("2.50"),
        "<answer>Image B</answer>",
        '<answer>{"distortion_class": "darken", "severity": "x"}</answer>',
    ]
    assert routed(responses, rows) == [1.0, 1.0, 0.25]  # |2.5 - 2.6| = 0.1; exact; class only
