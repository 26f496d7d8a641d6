"""Multi-label classify rows: answers follow the scene, multi-select happens, and the rewards accept them."""

from __future__ import annotations

import json

import pytest

from vrl.data.multilabel import ATTRIBUTES, build_with_classify
from vrl.data.tasks import OPTION_LETTERS
from vrl.rewards import Accuracy
from vrl.rewards.set_iou import LabelSetAccuracy

N = 120


@pytest.fixture(scope="module")
def rows():
    data = build_with_classify(formats=["yesno", "mc", "open"], num_samples=N, image_size=56, difficulties=[2, 3])
    return [data[i] for i in range(N)]


def _present(row: dict) -> set[str]:
    meta = json.loads(row["meta"])
    attribute = meta["question"].removeprefix("classify_")
    return {obj[attribute] for obj in meta["scene"]["objects"]}


def test_classify_is_one_task_of_six_and_rows_are_reproducible(rows):
    share = sum(r["task"] == "classify" for r in rows) / N
    assert 0.08 < share < 0.3  # 1/6 expected; 120 draws
    again = build_with_classify(formats=["yesno", "mc", "open"], num_samples=N, image_size=56, difficulties=[2, 3])
    assert [again[i]["answer"] for i in range(N)] == [r["answer"] for r in rows]
    assert {r["uid"] for r in rows if r["task"] == "classify"}.isdisjoint(
        {r["uid"] for r in rows if r["task"] != "classify"}
    )


def test_answers_follow_the_scene_in_every_format(rows):
    classify = [r for r in rows if r["task"] == "classify"]
    assert {r["format"] for r in classify} == {"yesno", "mc", "open"}
    for row in classify:
        present = _present(row)
        options = json.loads(row["meta"])["options"]
        if row["format"] == "open":
            assert row["answer"] == ", ".join(sorted(present))
        elif row["format"] == "mc":
            expected = [OPTION_LETTERS[k] for k, o in enumerate(options) if o in present]
            assert row["answer"] == ",".join(expected) and expected
        else:
            value = next(v for v in ATTRIBUTES["color"] + ATTRIBUTES["shape"] if f" {v} " in row["prompt"])
            assert row["answer"] == ("yes" if value in present else "no")


def test_some_multiple_choice_questions_have_several_correct_options(rows):
    letters = [len(r["answer"].split(",")) for r in rows if r["task"] == "classify" and r["format"] == "mc"]
    assert max(letters) >= 2


def test_the_gold_answer_scores_one_and_a_partial_list_scores_its_set_iou(rows):
    classify = [r for r in rows if r["task"] == "classify"]
    assert Accuracy()([r["answer"] for r in classify], classify) == [1.0] * len(classify)
    multi = next(r for r in classify if r["format"] == "open" and "," in r["answer"])
    labels = multi["answer"].split(", ")
    term = LabelSetAccuracy(tasks=["classify"])
    assert term([labels[0]], [multi]) == [pytest.approx(1 / len(labels))]
    assert Accuracy()([labels[0]], [multi]) == [0.0]  # the exact check gives no partial credit
