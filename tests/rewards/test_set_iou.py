"""LabelSetAccuracy: soft set-IoU on label rows (Curr-ReFT's open classification), exact checks elsewhere."""

from __future__ import annotations

import pytest

from vrl.rewards import Accuracy
from vrl.rewards.set_iou import LabelSetAccuracy, label_set, set_iou


def test_label_set_splits_on_commas_whitespace_and_and():
    assert label_set("Red, blue and red") == {"red", "blue"}
    assert label_set("  ") == frozenset()


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ({"red", "blue"}, {"red"}, 1 / 2),  # one extra label: 1 shared / 2 in the union
        ({"red"}, {"red", "blue", "green"}, 1 / 3),
        ({"green"}, {"red"}, 0.0),
        (set(), {"red"}, 0.0),
    ],
)
def test_set_iou(pred, gold, expected):
    assert set_iou(frozenset(pred), frozenset(gold)) == pytest.approx(expected)


def test_label_rows_get_partial_credit_and_other_rows_keep_their_exact_check():
    term = LabelSetAccuracy(Accuracy(synonyms={"grey": "gray"}), tasks=["color", "shape"])
    color = {"answer": "red", "answer_type": "text", "task": "color"}
    spatial = {"answer": "left", "answer_type": "text", "task": "spatial"}  # text, but not a label task
    count = {"answer": "3", "answer_type": "number", "task": "count"}
    grey = {"answer": "gray", "answer_type": "text", "task": "color"}
    responses = ["<answer>red and blue</answer>", "Red.", "left right", "3", "grey"]
    samples = [color, color, spatial, count, grey]
    assert term(responses, samples) == [0.5, 1.0, 0.0, 1.0, 1.0]


def test_without_tasks_every_text_row_is_a_label_row():
    term = LabelSetAccuracy({"synonyms": None})
    assert term(["left right"], [{"answer": "left", "answer_type": "text", "task": "spatial"}]) == [0.5]
    assert term.name == "accuracy"  # replaces the plain accuracy term when merged over a run's reward


def test_wrapping_a_label_set_accuracy_unwraps_it_once():
    from vrl.rewards.set_iou import LabelSetAccuracy

    inner = LabelSetAccuracy()
    outer = LabelSetAccuracy(accuracy=inner)
    assert outer.accuracy is inner.accuracy
    # {red, blue} vs {red, green}: intersection 1, union 3 -> 1/3
    row = {"answer": "red, green", "answer_type": "text", "task": "classify"}
    assert outer.score("red, blue", row) == inner.score("red, blue", row) == pytest.approx(1 / 3)
