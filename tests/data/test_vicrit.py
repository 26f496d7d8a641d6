"""ViCrit's synthetic caption corruption: one phrase altered, false for the image, the answer its changed words;
the loader of the published row schemas."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from vrl.data.scene import Scene, SceneObject
from vrl.data.vicrit import build_vicrit, caption_spans, changed_segment, corrupt, load_vicrit, region


def test_changed_segment_strips_the_common_prefix_and_suffix():
    assert changed_segment("small red circle", "small blue circle") == ["blue"]
    assert changed_segment("one shape", "two shapes") == ["two", "shapes"]  # no common word: all of "after"
    assert changed_segment("left of the red star", "right of the red star") == ["right"]
    assert changed_segment("a b a", "a b b a") == ["b"]  # prefix "a b", then suffix "a" (not overlapping)
    assert changed_segment("same words", "same words") == []


def test_region_is_the_cell_of_a_three_by_three_grid():
    # 112 px canvas: column 3*x // 112 -> x=20: 0 (left), x=56: 1 (middle), x=100: 2 (right); rows likewise
    assert region(SceneObject("circle", "red", "small", 20, 20, 8), 112, 112) == "top left"
    assert region(SceneObject("circle", "red", "small", 56, 56, 8), 112, 112) == "centre"
    assert region(SceneObject("circle", "red", "small", 56, 100, 8), 112, 112) == "bottom"
    assert region(SceneObject("circle", "red", "small", 100, 56, 8), 112, 112) == "right"


def test_wrong_phrases_are_false_for_the_scene():
    # red circle (left) and blue circle (right): boxes (12..28) and (72..88) are disjoint along x
    red = SceneObject("circle", "red", "small", 20, 20, 8)
    blue = SceneObject("circle", "blue", "small", 80, 20, 8)
    scene = Scene(112, 112, (red, blue))
    for seed in range(20):
        spans = caption_spans(scene, random.Random(seed))
        count = spans[0]
        assert count.sentence() == "The image holds two shapes."
        described = len(spans) - 1 - sum("relation" in s.wrong for s in spans)
        # wrong counts: range(max(1, described), 8) without the true 2, e.g. 2 described -> three..seven
        words = ["one", "two", "three", "four", "five", "six", "seven"]
        assert count.wrong["count"] == [
            f"{w} shape" + ("" if w == "one" else "s") for w in words[described - 1 :] if w != "two"
        ]
        for span in spans[1:]:
            for phrase in span.wrong.get("attribute", []) + span.wrong.get("object", []):
                assert phrase not in ("small red circle", "small blue circle")  # never another object's name
            if "relation" in span.wrong:
                assert span.sentence() in (
                    "The red circle is left of the blue circle.",
                    "The blue circle is right of the red circle.",
                )


def test_rows_alter_exactly_one_sentence_and_answer_its_changed_words():
    rows = build_vicrit(num_samples=60, seed=0, mode="stream")
    kinds = set()
    for i in range(len(rows)):
        row, meta = rows[i], json.loads(rows[i]["meta"])
        kinds.add(meta["error_type"])
        original, changed = meta["original_caption"].split(". "), meta["changed_caption"].split(". ")
        differ = [(a, b) for a, b in zip(original, changed) if a != b]
        assert len(original) == len(changed) and len(differ) == 1
        assert meta["original_noun_phrases"] in differ[0][0] and meta["changed_noun_phrases"] in differ[0][1]
        assert row["answer"] == " ".join(changed_segment(meta["original_noun_phrases"], meta["changed_noun_phrases"]))
        assert row["answer"] and meta["changed_caption"] in row["prompt"] and row["task"] == "vicrit"
        n = len(meta["scene"]["objects"])
        assert meta["original_caption"].startswith(
            f"The image holds {['', 'one', 'two', 'three', 'four', 'five', 'six'][n]} shape"
        )
    assert kinds == {"object", "attribute", "count", "relation"}
    only = build_vicrit(num_samples=10, seed=0, error_types=["count"], mode="stream")
    assert {json.loads(only[i]["meta"])["error_type"] for i in range(10)} == {"count"}


def test_rows_are_deterministic_and_materialize_equals_stream():
    a, b = build_vicrit(num_samples=3, seed=2), build_vicrit(num_samples=3, seed=2, mode="stream")
    for i in range(3):
        assert (a[i]["prompt"], a[i]["answer"], a[i]["uid"]) == (b[i]["prompt"], b[i]["answer"], b[i]["uid"])
    with pytest.raises(ValueError, match="error_types"):
        build_vicrit(num_samples=1, error_types=["colour"])


def test_corrupt_refuses_kinds_the_caption_lacks():
    spans = caption_spans(Scene(112, 112, (SceneObject("circle", "red", "small", 20, 20, 8),)), random.Random(0))
    with pytest.raises(ValueError, match="relation"):
        corrupt(spans, random.Random(0), ("relation",))  # one object: no relation sentence


def test_load_vicrit_reads_the_published_schemas(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "a.png")
    bench = {
        "image": "a.png",
        "changed_caption": "A blue square.",
        "original_noun_phrases": "A red square",
        "changed_noun_phrases": "A blue square",
    }
    (tmp_path / "bench.jsonl").write_text(json.dumps(bench) + "\n")
    rows = load_vicrit(str(tmp_path / "bench.jsonl"), schema="bench")
    assert rows[0]["answer"] == "blue" and "Description: A blue square." in rows[0]["prompt"]
    assert rows[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)
    assert json.loads(rows[0]["meta"])["original_noun_phrases"] == "A red square"
    train = {
        "image_path": "a.png",
        "problem": "Find the error.",
        "original_caption": "x",
        "changed_caption": "y",
        "solution_original": "red",
        "solution_target": "blue",
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(train) + "\n")
    rows = load_vicrit(str(tmp_path / "train.jsonl"), schema="train")
    assert (rows[0]["prompt"], rows[0]["answer"]) == ("<image>\nFind the error.", "blue")
    del train["solution_target"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(train) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 0: field 'solution_target'"):
        load_vicrit(str(tmp_path / "bad.jsonl"), schema="train")
