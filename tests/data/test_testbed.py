"""The calibrated testbed (vrl/data/testbed.py): rows right by construction, blind baselines, the dataset builder."""

from __future__ import annotations

import json

import pytest

from vrl.data.testbed import (
    QUADRANTS,
    TESTBED,
    TestbedSpec,
    blind_baseline,
    build_testbed,
    chance,
)


def _rows(task, difficulty=1, n=40, size=56):
    spec = TestbedSpec((task,), 0, "train", size, difficulty)
    return [spec.row(i) for i in range(n)]


def _painted_columns(image):
    """x of every non-white pixel (the background is white)."""
    w, h = image.size
    px = image.load()
    return {(x, y) for x in range(w) for y in range(h) if px[x, y] != (255, 255, 255)}


def test_half_and_quadrant_answers_match_the_pixels():
    for row in _rows("half", 3):
        painted = _painted_columns(row["images"][0])
        side = {"left" if x < 28 else "right" for x, _ in painted}
        assert side == {row["answer"]}  # every painted pixel lies in the answered half
    for row in _rows("quadrant", 2):
        painted = _painted_columns(row["images"][0])
        cells = {QUADRANTS[(y >= 28) * 2 + (x >= 28)] for x, y in painted}
        assert cells == {row["answer"]}


def test_count_and_colour_rows():
    for row in _rows("big_count", 3):
        scene = json.loads(row["meta"])["scene"]
        assert row["answer"] == str(len(scene["objects"])) and 1 <= len(scene["objects"]) <= 4
        boxes = [o["bbox"] for o in scene["objects"]]  # one per quadrant: disjoint
        assert all(a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1] for i, a in enumerate(boxes)
                   for b in boxes[i + 1 :])  # fmt: skip
    for row in _rows("big_color", 1):
        assert row["answer"] in ("red", "blue")  # difficulty 1: two colours
        (obj,) = json.loads(row["meta"])["scene"]["objects"]
        assert obj["color"] == row["answer"] and obj["radius"] == 20  # round(0.35 * 56)


def test_prompts_are_constant_per_task_and_rows_are_pure():
    for task in TESTBED:
        rows = _rows(task, n=10)
        assert len({r["prompt"] for r in rows}) == 1
        again = TestbedSpec((task,), 0, "train", 56, 1).row(3)
        assert {k: v for k, v in again.items() if k != "images"} == {k: v for k, v in rows[3].items() if k != "images"}
    assert TestbedSpec(("half",), 0, "val", 56, 1).row(0)["uid"] != _rows("half", n=1)[0]["uid"]


def test_blind_baseline_by_hand_and_chance():
    rows = [{"prompt": "p", "answer": "a"}, {"prompt": "p", "answer": "a"}, {"prompt": "p", "answer": "b"}]
    rows.append({"prompt": "q", "answer": "c"})
    assert blind_baseline(rows) == 3 / 4  # prompt p: best blind answer "a" gets 2 of 3; prompt q: 1 of 1
    assert [chance("big_color", d) for d in (1, 2, 3)] == [1 / 2, 1 / 3, 1 / 6]
    assert (chance("half"), chance("quadrant"), chance("big_count", 3)) == (1 / 2, 1 / 4, 1 / 4)
    for task in TESTBED:  # a most frequent answer covers at least 1/k of the rows (pigeonhole)
        assert blind_baseline(_rows(task, 2, n=60)) >= chance(task, 2)
    with pytest.raises(ValueError, match="unknown testbed task"):
        chance("shape")


def test_builder_modes_agree_and_bad_specs_fail(tmp_path):
    made = build_testbed(["half", "big_count"], num_samples=6, cache_dir=str(tmp_path))
    streamed = build_testbed(["half", "big_count"], num_samples=6, mode="stream")
    assert [r["answer"] for r in made] == [streamed[i]["answer"] for i in range(6)]
    assert list(made[0]["images"][0].getdata()) == list(streamed[0]["images"][0].getdata())
    assert len(build_testbed(["half", "big_count"], num_samples=6, cache_dir=str(tmp_path))) == 6  # reloaded
    with pytest.raises(ValueError, match="testbed tasks"):
        TestbedSpec(("shape",), 0, "train")
    with pytest.raises(ValueError, match="difficulty"):
        TestbedSpec(("half",), 0, "train", 56, 4)


def test_experiment_config_trains_a_step(compose, tiny_overrides):
    from vrl.build import build_module, build_trainer

    cfg = compose([*tiny_overrides, "experiment=testbed", "data.train.tasks=[quadrant]", "data.train.cache_dir=null",
                   "trainer.max_steps=1", "trainer.limit_val_batches=0"])  # fmt: skip
    module = build_module(cfg)
    build_trainer(cfg).fit(module)
    assert module.train_data[0]["task"] == "quadrant" and cfg.data.val.tasks == ["quadrant"]


def test_a_list_of_difficulties_mixes_levels_and_one_level_rows_are_unchanged():
    mixed = TestbedSpec(("big_color",), 0, "train", 56, (1, 3))
    levels = {json.loads(mixed.row(i)["meta"])["difficulty"] for i in range(30)}
    assert levels == {1, 3}
    one = TestbedSpec(("big_color",), 0, "train", 56, (2,)).row(5)
    assert one["answer"] == TestbedSpec(("big_color",), 0, "train", 56, 2).row(5)["answer"]
    with pytest.raises(ValueError, match="difficulty"):
        TestbedSpec(("half",), 0, "train", 56, ())
