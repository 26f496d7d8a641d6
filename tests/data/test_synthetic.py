"""Dataset builders: determinism, materialize == stream, the disk cache, meta contents, pixel-true boxes."""

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from vrl.data import synthetic
from vrl.data.scene import GAP, PALETTE, from_dict, render
from vrl.data.synthetic import SyntheticSpec, SyntheticStream, build_synthetic
from vrl.data.tasks import vocabulary, words
from vrl.types import ANSWER_TYPES

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
KEYS = ["prompt", "images", "answer", "answer_type", "task", "format", "meta", "uid"]


def same_rows(a, b, n: int) -> bool:
    """Rows 0..n-1 of two datasets are equal field by field, images compared by mode, size and pixels."""
    for i in range(n):
        ra, rb = a[i], b[i]
        if any(ra[k] != rb[k] for k in KEYS if k != "images"):
            return False
        pix = [[(im.mode, im.size, im.tobytes()) for im in r["images"]] for r in (ra, rb)]
        if pix[0] != pix[1]:
            return False
    return True


@pytest.fixture(scope="module")
def mixed() -> datasets.Dataset:
    return build_synthetic(num_samples=240, seed=5)


def test_rows_follow_the_schema_and_images_come_back_as_pil(mixed):
    assert mixed.column_names == KEYS
    for row in mixed.select(range(40)):
        assert row["prompt"].count("<image>") == 1 == len(row["images"])
        assert isinstance(row["images"][0], Image.Image)
        assert row["images"][0].mode == "RGB"
        assert row["answer_type"] in ANSWER_TYPES
        meta = json.loads(row["meta"])
        assert meta["task"] == row["task"]
        assert meta["format"] == row["format"]
        assert meta["difficulty"] in (1, 2, 3)
        assert meta["image_size"] == list(row["images"][0].size) == [112, 112]
        # The target lists the objects the question is about: none only for a count whose answer is 0.
        assert meta["target"] or meta["value"] == "0"
        assert set(meta) >= {"scene", "subject", "question", "options", "value"}
        assert row["format"] != "mc" or len(meta["options"]) >= 2
    assert len(set(mixed["uid"])) == len(mixed)


def test_mix_covers_every_task_and_format(mixed):
    # 16 (task, format) pairs (grounding is open only) drawn uniformly: 240 rows give each pair 15 on
    # average, and P(a given pair never drawn) = (15/16)^240 ~ 2e-7.
    pairs = Counter(zip(mixed["task"], mixed["format"]))
    assert len(pairs) == 16
    assert ("grounding", "yesno") not in pairs


def test_same_arguments_same_rows_and_pixels_other_seed_or_split_differs(mixed):
    again = build_synthetic(num_samples=240, seed=5)
    assert same_rows(mixed, again, 30)
    other_seed = build_synthetic(num_samples=30, seed=6)
    other_split = build_synthetic(num_samples=30, seed=5, split="val")
    for other in (other_seed, other_split):
        assert not same_rows(mixed, other, 1)
        # Independent draws: an image repeats only by coincidence (a one-shape colour scene at best).
        pixels = [(mixed[i]["images"][0].tobytes(), other[i]["images"][0].tobytes()) for i in range(30)]
        assert sum(a == b for a, b in pixels) < 3


def test_materialize_and_stream_give_the_same_rows(mixed):
    stream = build_synthetic(num_samples=240, seed=5, mode="stream")
    assert isinstance(stream, SyntheticStream)
    assert len(stream) == 240
    assert same_rows(mixed, stream, 60)
    assert same_rows([mixed[239]], [stream[-1]], 1)
    with pytest.raises(IndexError):
        stream[240]


def test_rows_do_not_depend_on_dataset_length():
    short = build_synthetic(num_samples=10, seed=1, mode="stream")
    long = build_synthetic(num_samples=1000, seed=1, mode="stream")
    assert same_rows(short, long, 10)


def test_meta_scene_round_trips_and_renders_the_row_image(mixed):
    for row in mixed.select(range(20)):
        graph = from_dict(json.loads(row["meta"])["scene"])
        assert render(graph).tobytes() == row["images"][0].tobytes()


def test_grounding_box_holds_the_object_pixels_tightly():
    ds = build_synthetic(tasks=["grounding"], formats=["open"], num_samples=30, seed=2, mode="stream")
    for row in ds:
        x1, y1, x2, y2 = json.loads(row["answer"])
        target = json.loads(row["meta"])["target"][0]
        img = np.asarray(row["images"][0])
        is_color = (img == np.array(PALETTE[target["color"]])).all(axis=-1)
        assert is_color[y1 : y2 + 1, x1 : x2 + 1].mean() > 0.3  # the object fills much of its box
        # Other objects keep > GAP px away, so a 2 px margin sees only this object's pixels.
        m = min(2, GAP - 1)
        window = np.zeros_like(is_color)
        window[max(0, y1 - m) : y2 + m + 1, max(0, x1 - m) : x2 + m + 1] = True
        ys, xs = np.nonzero(is_color & window)
        drawn = (xs.min(), ys.min(), xs.max(), ys.max())
        assert all(abs(int(d) - b) <= 1 for d, b in zip(drawn, (x1, y1, x2, y2))), (drawn, row["answer"])


def test_count_answers_match_the_scene_in_meta():
    ds = build_synthetic(tasks=["count"], formats=["open"], num_samples=40, seed=3, mode="stream")
    for row in ds:
        meta = json.loads(row["meta"])
        objects = meta["scene"]["objects"]
        m = re.search(r"How many (?:(\w+) objects|objects|(\w+)s) are there\?", row["prompt"])
        colour, shape = m.groups()
        expected = sum((colour in (None, o["color"])) and (shape in (None, o["shape"])) for o in objects)
        assert row["answer"] == str(expected)


def test_cache_is_reused_without_regenerating(tmp_path, monkeypatch):
    first = build_synthetic(num_samples=12, seed=4, cache_dir=str(tmp_path))
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1
    assert saved[0].name.startswith("synthetic-train-")

    def fail(self, index):
        raise AssertionError("row regenerated although a cached copy exists")

    monkeypatch.setattr(SyntheticSpec, "row", fail)
    second = build_synthetic(num_samples=12, seed=4, cache_dir=str(tmp_path))
    assert same_rows(first, second, 12)
    # Different arguments must not hit that cache: they regenerate, which the patch turns into an error.
    with pytest.raises(AssertionError, match="regenerated"):
        build_synthetic(num_samples=12, seed=5, cache_dir=str(tmp_path))


def test_vocabulary_covers_every_word_of_a_row_sample(mixed):
    vocab = set(vocabulary())
    seen = {w for row in mixed for w in words(row["prompt"]) + words(row["answer"])}
    assert seen - vocab == set()
    assert {"yes", "no", "A"} <= seen  # the sample really holds yes/no and letter answers


def test_single_color_dataset_answers_are_one_of_three():
    ds = build_synthetic(tasks=["single_color"], formats=["open"], num_samples=60, seed=0)
    assert set(ds["answer"]) == {"red", "green", "blue"}
    assert {len(json.loads(m)["scene"]["objects"]) for m in ds["meta"]} == {1}


def test_bad_arguments_fail_at_build_time():
    with pytest.raises(ValueError, match="mode"):
        build_synthetic(num_samples=2, mode="lazy")
    with pytest.raises(ValueError, match="difficulties"):
        build_synthetic(num_samples=2, difficulties=[4])
    with pytest.raises(ValueError, match="unknown task"):
        build_synthetic(num_samples=2, tasks=["colour"], mode="stream")


@pytest.mark.parametrize("name", ["synthetic", "synthetic_color"])
def test_data_configs_instantiate_with_distinct_train_and_val(name):
    cfg = OmegaConf.create({"seed": 11, "data": OmegaConf.load(CONF / f"{name}.yaml")})
    cfg.data.train.num_samples = 8
    cfg.data.val.num_samples = 8
    train, val = instantiate(cfg.data.train), instantiate(cfg.data.val)
    assert isinstance(train, datasets.Dataset)
    assert len(val) == 8
    assert json.loads(train[0]["meta"])["seed"] == 11
    assert not same_rows(train, val, 1)


def test_progress_bar_is_shown_for_large_builds(monkeypatch):
    calls = []
    monkeypatch.setattr(synthetic, "_materialize", lambda spec, n, progress: calls.append(progress))
    build_synthetic(num_samples=synthetic.PROGRESS_MIN_ROWS + 1)
    build_synthetic(num_samples=10)
    assert calls == [True, False]
