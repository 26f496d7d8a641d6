"""VisRL's pair pipeline: square-padded IoU, the bad-box replacement, the published filter, pair records."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from PIL import Image

from vrl.lit.preference import side_row
from vrl.methods.visrl import (
    BOX_INSTRUCTION,
    VisRLPairs,
    box_coverage,
    pair_record,
    replace_bad_box,
    select_pair,
    square_box,
    target_box,
)
from vrl.rewards.iou import box_iou


def test_square_box_by_hand():
    # a 200 x 100 image padded to 200 x 200: y shifts by 50 px; [0, 0, 0.5, 1] -> x 0..100 px, y 50..150 px
    assert square_box([0.0, 0.0, 0.5, 1.0], 200, 100) == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_bad_box_has_the_good_size_and_does_not_overlap():
    good = [0.1, 0.1, 0.4, 0.3]  # 0.3 x 0.2
    for seed in range(20):
        bad = replace_bad_box(good, random.Random(seed))
        assert box_iou(bad, good) == 0.0
        assert 0.7 * 0.3 <= bad[2] - bad[0] <= 1.3 * 0.3 and 0.7 * 0.2 <= bad[3] - bad[1] <= 1.3 * 0.2
        assert 0.0 <= bad[0] < bad[2] <= 1.0 and 0.0 <= bad[1] < bad[3] <= 1.0


def _t(s_ans, s_box, name):
    return {"s_ans": s_ans, "s_box": s_box, "box_text": name, "box": None, "answer": name}


def test_the_published_filter():
    trajs = [_t(0.5, 0.9, "a"), _t(1.0, 0.5, "b"), _t(1.0, 0.9, "c"), _t(0.0, 0.1, "d"), _t(0.0, 0.05, "e")]
    chosen, rejected = select_pair(trajs)
    assert (chosen["answer"], rejected["answer"]) == ("c", "d")  # the first max with s_box >= 0.8; the first min
    assert select_pair([_t(0.7, 0.9, "a"), _t(0.0, 0.1, "b")]) is None  # max s_ans < 0.8
    assert select_pair([_t(1.0, 0.9, "a"), _t(0.3, 0.1, "b")]) is None  # min s_ans > 0.2
    assert select_pair([_t(1.0, 0.9, "a"), _t(1.0, 0.9, "b")]) is None  # max == min
    assert select_pair([_t(1.0, 0.5, "a"), _t(0.0, 0.1, "b")]) is None  # no max with a good crop


def test_coverage_and_target_box():
    assert box_coverage([0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]) == pytest.approx(0.25)
    assert box_coverage(None, [0, 0, 1, 1]) == 0.0
    row = {"meta": json.dumps({"target": [{"bbox": [10, 20, 30, 40]}], "image_size": [100, 200]})}
    assert target_box(row) == pytest.approx([0.1, 0.1, 0.3, 0.2])


ROW = {"prompt": "<image>\nWhat colour is the square?", "images": [Image.new("RGB", (100, 100), "red")],
       "answer": "red", "answer_type": "text",
       "meta": json.dumps({"target": [{"bbox": [0, 0, 50, 50]}], "image_size": [100, 100]})}  # fmt: skip


def test_stage_two_records_hold_both_steps_each_answer_on_its_own_crop():
    chosen = {"box_text": "[0, 0, 0.5, 0.5]", "box": [0, 0, 0.5, 0.5], "answer": "red"}
    rejected = {"box_text": "[0.6, 0.6, 0.9, 0.9]", "box": [0.6, 0.6, 0.9, 0.9], "answer": "blue"}
    one = pair_record(3, ROW, chosen, rejected, stage=1)
    assert one["segments"] == [{"prompt": ROW["prompt"] + BOX_INSTRUCTION, "chosen": "[0, 0, 0.5, 0.5]",
                                "rejected": "[0.6, 0.6, 0.9, 0.9]", "weight": 1.0}]  # fmt: skip
    two = pair_record(3, ROW, chosen, rejected, stage=2)
    assert [s["weight"] for s in two["segments"]] == [0.5, 0.5]
    answer = two["segments"][1]
    c, r = side_row(ROW, answer, "chosen"), side_row(ROW, answer, "rejected")
    assert len(c["images"]) == 2 and c["images"][1].size == (56, 56)  # a 50 px crop scaled to the 56 px minimum
    assert c["images"][1].getpixel((0, 0)) == (255, 0, 0) and "[0, 0, 0.5, 0.5]" in c["prompt"]
    assert "[0.6, 0.6, 0.9, 0.9]" in r["prompt"] and r["images"][0] is ROW["images"][0]


class ScriptedPolicy:
    """Canned box and answer texts (the policy is not under test); the run's real accuracy reward judges."""

    def __init__(self, boxes, answers):
        self.boxes, self.answers = boxes, answers

    def generate(self, rows, group_size=1, **sampling):
        asked_box = rows[0]["prompt"].endswith(BOX_INSTRUCTION)
        return SimpleNamespace(responses=list(self.boxes if asked_box else self.answers))


def test_trajectories_replace_an_overlapping_bad_box_and_build_a_pair():
    from vrl.rewards import Accuracy
    from vrl.rewards.combine import RewardSet

    policy = ScriptedPolicy(["[0, 0, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]"], ["red", "blue"])
    ctx = SimpleNamespace(generate=policy.generate, reward=RewardSet({"accuracy": Accuracy()}))
    builder = VisRLPairs(stage=2, attempts=1)
    trajs = builder.trajectories(ctx, ROW, 0)
    good, bad = trajs
    assert good["box"] == [0, 0, 0.5, 0.5] and good["s_ans"] == 1.0 and good["s_box"] == 1.0
    # the bad box overlapped the good one (IoU 0.64 > 0.05): replaced by a disjoint box of similar size
    assert box_iou(bad["box"], good["box"]) == 0.0 and bad["box_text"] != "[0.1, 0.1, 0.5, 0.5]"
    assert bad["s_ans"] == 0.0 and bad["s_box"] <= 0.2
    records, stats = builder.build(ctx, [ROW], [0])
    assert len(records) == 1 and stats == {"dpo/pairs_built": 1.0, "dpo/questions": 1.0}
    assert records[0]["segments"][1]["chosen"] == "red" and records[0]["segments"][1]["rejected"] == "blue"
