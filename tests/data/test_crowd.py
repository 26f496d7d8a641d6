"""Crowded synthetic scenes: many small shapes, the answer the boxes of the category, full marks for it."""

from __future__ import annotations

import json

import pytest

from vrl.data.crowd import build_crowd
from vrl.rewards.dip_r1 import PrecisionRecall


def test_rows_are_crowded_and_answer_the_category_boxes():
    rows = build_crowd(num_samples=10, seed=0, mode="stream")
    for i in range(len(rows)):
        row, meta = rows[i], json.loads(rows[i]["meta"])
        objects = meta["scene"]["objects"]
        assert 8 <= len(objects) <= 14 and all(o["radius"] == 6 for o in objects)  # round(0.05 * 112) = 6
        kind = meta["category"]
        expected = [o["bbox"] for o in objects if kind == "all" or meta["target"].startswith(o[kind])]
        assert json.loads(row["answer"]) == expected and expected
        exact = f"<think>.</think><look>[]</look><answer>{row['answer']}</answer>"
        assert PrecisionRecall()([exact], [row]) == [pytest.approx(1.0)]  # 0.4 * 1 + 0.6 * 1
    a, b = build_crowd(num_samples=2, seed=0), build_crowd(num_samples=2, seed=0, mode="stream")
    assert a[1]["answer"] == b[1]["answer"] and a[1]["images"][0].tobytes() == b[1]["images"][0].tobytes()
    with pytest.raises(ValueError, match="min_objects"):
        build_crowd(num_samples=1, min_objects=10, max_objects=5)
