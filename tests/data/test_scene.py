"""Scene graphs: determinism, JSON round trip, non-overlap, and boxes that match the drawn pixels."""

import json
import random

import numpy as np
import pytest

from vrl.data.scene import (
    BACKGROUND,
    GAP,
    PALETTE,
    SHAPES,
    SIZES,
    Chart,
    Scene,
    SceneObject,
    from_dict,
    render,
    sample_chart,
    sample_scene,
)


def color_pixels(img, color: str) -> np.ndarray:
    """Boolean [H, W] mask of pixels that have exactly ``color``'s RGB."""
    return (np.asarray(img) == np.array(PALETTE[color])).all(axis=-1)


def extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_same_seed_same_scene_and_pixels_different_seed_differs():
    a = sample_scene(random.Random(7), 5)
    b = sample_scene(random.Random(7), 5)
    c = sample_scene(random.Random(8), 5)
    assert a == b
    assert render(a).tobytes() == render(b).tobytes()
    assert a != c
    assert render(a).tobytes() != render(c).tobytes()


@pytest.mark.parametrize("seed", range(3))
def test_scene_and_chart_round_trip_through_json(seed):
    rng = random.Random(seed)
    for graph in (sample_scene(rng, 6), sample_chart(rng, 5, value_labels=bool(seed % 2))):
        back = from_dict(json.loads(json.dumps(graph.to_dict())))
        assert back == graph
        assert render(back).tobytes() == render(graph).tobytes()


def test_objects_never_overlap_and_pairs_are_unique():
    for seed in range(100):
        scene = sample_scene(random.Random(seed), 6)
        boxes = [o.bbox for o in scene.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                # Separated by more than GAP pixels along at least one axis.
                assert a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1]
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)
        assert all(0 <= v < scene.width for o in scene.objects for v in o.bbox)


def test_crowded_scene_drops_objects_instead_of_overlapping():
    # 24 (colour, shape) pairs cannot all fit on a 64 px canvas with 8 px radii (17x17 boxes + 3 px gaps:
    # at most (64 / 20)^2 ~ 10), so placement must give up on some rather than overlap.
    scene = sample_scene(random.Random(0), 24, size=64, max_tries=50)
    assert 1 <= len(scene.objects) < 24


@pytest.mark.parametrize(("unique", "attr"), [("shape", "shape"), ("color", "color")])
def test_unique_attribute_is_unique(unique, attr):
    for seed in range(30):
        scene = sample_scene(random.Random(seed), 6, unique=unique)
        values = [getattr(o, attr) for o in scene.objects]
        assert len(set(values)) == len(values)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", list(SIZES))
def test_box_is_the_tight_extent_of_the_drawn_pixels(shape, size):
    radius = round(SIZES[size] * 112)
    obj = SceneObject(shape, "blue", size, 50, 60, radius)
    img = render(Scene(112, 112, (obj,)))
    mask = color_pixels(img, "blue")
    # No anti-aliasing: every non-background pixel is the shape's exact colour.
    assert mask.sum() == (np.asarray(img) != np.array(BACKGROUND)).any(axis=-1).sum()
    drawn = extent(mask)
    assert all(abs(d - b) <= 1 for d, b in zip(drawn, obj.bbox)), (drawn, obj.bbox)


def test_every_pixel_of_a_colour_lies_in_its_object_box():
    for seed in range(20):
        scene = sample_scene(random.Random(seed), 6, unique="color")  # one object per colour
        img = render(scene)
        for obj in scene.objects:
            x1, y1, x2, y2 = extent(color_pixels(img, obj.color))
            bx1, by1, bx2, by2 = obj.bbox
            assert bx1 - 1 <= x1
            assert by1 - 1 <= y1
            assert x2 <= bx2 + 1
            assert y2 <= by2 + 1


def test_chart_bars_are_filled_in_their_boxes_and_heights_follow_values():
    chart = sample_chart(random.Random(3), 5)
    assert len(set(chart.values)) == 5  # distinct: "tallest" is unique
    img = np.asarray(render(chart))
    bars = chart.bars()
    for bar in bars:
        x1, y1, x2, y2 = bar["bbox"]
        assert (img[y1 : y2 + 1, x1 : x2 + 1] == np.array(PALETTE[bar["color"]])).all()
    heights = [b["bbox"][3] - b["bbox"][1] for b in bars]
    order_by_value = sorted(range(5), key=lambda k: bars[k]["value"])
    assert sorted(heights) == [heights[k] for k in order_by_value]


def test_value_labels_knob_changes_the_drawing():
    rng_a, rng_b = random.Random(1), random.Random(1)
    with_labels = sample_chart(rng_a, 4, value_labels=True)
    without = sample_chart(rng_b, 4, value_labels=False)
    assert with_labels.values == without.values
    assert render(with_labels).tobytes() != render(without).tobytes()


def test_render_at_another_size_scales_the_boxes():
    obj = SceneObject("square", "red", "large", 30, 40, 10)
    img = render(Scene(112, 112, (obj,)), size=224)
    assert img.size == (224, 224)
    # Nearest-neighbour upsampling by 2: the box [20, 30, 40, 50] covers pixels 40..81 and 60..101.
    assert extent(color_pixels(img, "red")) == (40, 60, 81, 101)


def test_chart_is_a_chart_after_round_trip():
    chart = sample_chart(random.Random(0), 3)
    assert isinstance(from_dict(chart.to_dict()), Chart)
    assert from_dict(chart.to_dict()).bars() == chart.to_dict()["bars"]
