"""Perception-R1 annotations: the published ``visual_key_info`` tags, and facts read off synthetic scene graphs."""

from __future__ import annotations

import json

import pytest

from vrl.data.annotations import (
    annotations_from_scene,
    format_visual_key_info,
    parse_visual_key_info,
    sample_annotations,
)
from vrl.data.scene import Chart, Scene, SceneObject
from vrl.data.tasks import TASKS, generate, row_rng, vocabulary, words

# x extents (the triangle's polygon spans x-r..x+r, the circle's box x-r..x+r): triangle 12..28, square 42..58,
# circle 67..93, so triangle < square < circle from left to right with gaps.
SCENE = Scene(
    112,
    112,
    (
        SceneObject("triangle", "red", "small", 20, 20, 8),
        SceneObject("circle", "blue", "large", 80, 30, 13),
        SceneObject("square", "red", "small", 50, 80, 8),
    ),
)
CHART = Chart(112, 112, ("cat", "dog", "fox"), (3, 7, 5), ("red", "green", "blue"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<info1>$JKLM$ is a parallelogram.</info1>\n<info2>JK = 3f - 6</info2>",
            ["$JKLM$ is a parallelogram.", "JK = 3f - 6"],
        ),
        ("< INFO1 >  a\n b </info1><info2>c", ["a b", "c"]),  # case, inner whitespace, unclosed last tag
        ("<info1>a</info1><info3>c</info3><info1>A</info1>", ["A", "c"]),  # last K wins; gap closed
        ("<info1> </info1><info2>b</info2>", ["b"]),  # empty items dropped
        ("The triangle is red.", ["The triangle is red."]),  # untagged text: one annotation
        ("", []),
        ("  \n", []),
        (None, []),  # a missing value in a parquet column
    ],
)
def test_parse_visual_key_info(text, expected):
    assert parse_visual_key_info(text) == expected


def test_format_round_trips():
    annotations = ["the circle is blue", "AB = 12"]
    text = format_visual_key_info(annotations)
    assert text == "<info1>the circle is blue</info1>\n<info2>AB = 12</info2>"
    assert parse_visual_key_info(text) == annotations


def test_scene_facts_target_first_then_scene_then_others():
    meta = {"scene": SCENE.to_dict(), "target": [SCENE.objects[1].to_dict()]}  # the question is about the circle
    assert annotations_from_scene(meta) == [
        # tier 0: facts that involve the blue circle, in reading order
        "the circle is blue",
        "the red triangle is left of the blue circle",
        "the red square is left of the blue circle",
        # tier 1: the scene as a whole
        "there are 3 objects",
        # tier 2: the rest; "there are 2 red objects" comes from both red objects but is kept once
        "the triangle is red",
        "the square is red",
        "there are 2 red objects",
        "the red triangle is left of the red square",
    ]
    assert annotations_from_scene(meta, max_items=2) == [
        "the circle is blue",
        "the red triangle is left of the blue circle",
    ]


def test_repeated_shapes_are_stated_by_name_and_one_object_by_singular():
    two = Scene(
        112, 112, (SceneObject("star", "red", "small", 20, 20, 8), SceneObject("star", "blue", "small", 80, 80, 8))
    )
    facts = annotations_from_scene({"scene": two.to_dict()}, max_items=None)
    assert facts[:3] == ["there are 2 objects", "there is a red star", "there is a blue star"]
    one = Scene(112, 112, (SceneObject("circle", "green", "small", 50, 50, 8),))
    assert annotations_from_scene(one.to_dict()) == ["there is 1 object", "the circle is green"]  # a bare scene dict


def test_chart_facts():
    meta = {"scene": CHART.to_dict(), "target": [CHART.bars()[1]]}  # about the dog bar
    assert annotations_from_scene(json.dumps(meta), max_items=None) == [
        "the tallest bar is dog",  # 7 is the unique maximum, and dog is the target
        "the dog bar is 7",
        "the dog bar is green",
        "there are 3 bars",
        "the cat bar is 3",
        "the cat bar is red",
        "the fox bar is 5",
        "the fox bar is blue",
    ]


def test_sample_annotations_prefers_the_published_column_even_when_empty():
    meta = json.dumps({"scene": SCENE.to_dict()})
    assert sample_annotations({"meta": meta, "visual_key_info": "<info1>x</info1>"}) == ("x",)
    assert sample_annotations({"meta": meta, "visual_key_info": ""}) == ()  # published rows without info get none
    assert sample_annotations({"meta": meta})[0] == "there are 3 objects"  # synthetic rows: the scene graph
    assert sample_annotations({"meta": meta}, max_items=2) == ("there are 3 objects", "the triangle is red")
    assert sample_annotations({"meta": json.dumps({"source": "geo3k"})}) == ()
    assert sample_annotations({"prompt": "text only"}) == ()
    assert sample_annotations({"meta": meta, "kvi": "<info1>y</info1>"}, key="kvi") == ("y",)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_synthetic_task_gets_facts_in_the_tiny_vocabulary(task):
    vocab = set(vocabulary())
    for k in range(20):
        q = generate(task, TASKS[task].formats[0], row_rng("annotations", task, k), difficulty=1 + k % 3)
        meta = q.meta()
        facts = annotations_from_scene(meta)
        assert 1 <= len(facts) <= 8 and len(set(facts)) == len(facts)
        assert facts == annotations_from_scene(json.loads(json.dumps(meta)))  # deterministic, JSON-stable
        unknown = {w for f in annotations_from_scene(meta, max_items=None) for w in words(f)} - vocab - {"bars"}
        assert not unknown, f"{task}: {unknown}"  # a tiny policy can say (almost) every fact with its own tokens
        graph = meta["scene"]
        n = len(graph["objects"]) if graph["kind"] == "shapes" else len(graph["categories"])
        noun = "object" if graph["kind"] == "shapes" else "bar"
        count = f"there {'is' if n == 1 else 'are'} {n} {noun}{'' if n == 1 else 's'}"
        assert count in annotations_from_scene(meta, max_items=None)


def test_constant_facts_are_the_ones_every_row_of_the_task_states():
    from vrl.data.annotations import constant_facts

    # one object per row: its count is the same fact on every row; which colour / shape it has varies
    assert constant_facts("single_color") == {"there is 1 object"}
    assert constant_facts("half") == {"there is 1 object"}  # a testbed task
    assert constant_facts("spatial", 1) == {"there are 2 objects"}  # difficulty 1: max(2, 1..2) objects = 2
    assert constant_facts("chart", 1) == {"there are 3 bars"}  # difficulty 1: three bars
    assert constant_facts("count", 1) == frozenset()  # 1 or 2 objects: the count is information
    assert constant_facts("classify") == frozenset()  # not a generated task: nothing is known constant


def test_sample_annotations_can_drop_the_constant_count():
    scene = Scene(56, 56, (SceneObject("circle", "green", "large", 28, 28, 20),))
    meta = json.dumps({"scene": scene.to_dict(), "task": "single_color", "difficulty": 1})
    assert sample_annotations({"meta": meta}) == ("there is 1 object", "the circle is green")
    assert sample_annotations({"meta": meta}, drop_constant=True) == ("the circle is green",)
    no_task = json.dumps({"scene": scene.to_dict()})  # without a task nothing is known to be constant
    assert sample_annotations({"meta": no_task}, drop_constant=True) == ("there is 1 object", "the circle is green")
