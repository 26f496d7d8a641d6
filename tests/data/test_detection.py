"""Synthetic detection rows: deterministic, boxes equal to the scene's objects, answers the reward reads."""

from __future__ import annotations

import json

import pytest

from vrl.data.detection import build_detection
from vrl.rewards.visual_rft import DetectionReward, parse_gold_boxes


def test_rows_are_deterministic_and_materialize_equals_stream():
    a, b = build_detection(num_samples=4, seed=3), build_detection(num_samples=4, seed=3, mode="stream")
    for i in range(4):
        assert {k: a[i][k] for k in ("prompt", "answer", "uid")} == {k: b[i][k] for k in ("prompt", "answer", "uid")}
        assert a[i]["images"][0].tobytes() == b[i]["images"][0].tobytes()
    assert build_detection(num_samples=1, seed=3, split="val", mode="stream")[0]["uid"] != b[0]["uid"]


def test_answers_are_the_category_boxes_and_score_full_marks():
    rows = build_detection(num_samples=24, seed=0, mode="stream")
    for i in range(len(rows)):
        row = rows[i]
        meta = json.loads(row["meta"])
        objects = meta["scene"]["objects"]
        kind = meta["category"]
        expected = [o["bbox"] for o in objects if kind == "all" or meta["target"].startswith(o[kind])]
        assert parse_gold_boxes(row["answer"]) == expected and expected  # present categories have a box
        exact = "<think>.</think><answer>" + json.dumps([{"Position": b, "Confidence": 1.0} for b in expected])
        assert DetectionReward("iou")([exact + "</answer>"], [row]) == [1.0]
    assert {json.loads(rows[i]["meta"])["category"] for i in range(len(rows))} == {"color", "shape", "all"}


def test_absent_categories_answer_no_objects():
    rows = build_detection(num_samples=12, seed=1, categories=["color"], absent_fraction=0.5, mode="stream")
    answers = [rows[i]["answer"] for i in range(12)]
    assert "No Objects" in answers and any(a != "No Objects" for a in answers)
    with pytest.raises(ValueError, match="absent_fraction"):
        build_detection(num_samples=1, absent_fraction=1.0)


def test_v_triune_answers_and_the_mixture_tags_rows():
    from vrl.data.mixture import build_mixture
    from vrl.rewards.v_triune import DetectionVerifier

    det = build_detection(num_samples=3, seed=2, answer_format="v_triune", mode="stream")
    row = det[0]
    boxes = json.loads(row["answer"])
    assert all(set(b) == {"bbox_2d", "label"} for b in boxes) and '"bbox_2d"' in row["prompt"]
    exact = f"<answer>{json.dumps(boxes)}</answer>"
    assert DetectionVerifier(iou_threshold=0.99)([exact], [row]) == [1.0]
    mixed = build_mixture({"a": [{"x": 1}, {"x": 2}], "b": det}, {"a": "math", "b": {"verifier": "detection"}})
    assert len(mixed) == 5
    assert (mixed[1]["x"], mixed[1]["data_source"], mixed[1]["reward_spec"]) == (2, "a", {"verifier": "math"})
    assert (mixed[-1]["data_source"], mixed[-1]["uid"]) == ("b", det[2]["uid"])
    with pytest.raises(ValueError, match=r"sources \['b'\] have no spec"):
        build_mixture({"a": [], "b": det}, {"a": "math"})
