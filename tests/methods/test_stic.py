"""STIC's pair plans: which prompt and image make the rejected response, seeded per row; the corruptions."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from vrl.methods.stic import DETAILED, HALLUCINATION, NEUTRAL, STICPairs, corrupt

ROW = {"prompt": "<image>\nWhat colour?", "images": [Image.new("RGB", (56, 56), (200, 40, 40))], "answer": "red"}


def test_rejected_comes_from_a_hallucination_prompt_or_a_corrupted_image():
    chosen, rejected, meta = STICPairs(hallucination_prob=1.0).plan(ROW, 0)
    assert chosen["prompt"] == DETAILED and chosen["images"][0] is ROW["images"][0]
    assert rejected["prompt"] in HALLUCINATION and rejected["images"][0] is ROW["images"][0]
    assert meta["corruption"] is None and meta["neutral"] in NEUTRAL
    _, rejected, meta = STICPairs(hallucination_prob=0.0).plan(ROW, 0)
    assert rejected["prompt"] == meta["neutral"] and meta["corruption"] in ("resize", "jitter")
    assert rejected["images"][0].size == (56, 56)
    assert STICPairs(seed=3).plan(ROW, 5)[2] == STICPairs(seed=3).plan(ROW, 5)[2]  # seeded by (seed, row)
    kinds = {STICPairs(hallucination_prob=0.0).plan(ROW, i)[2]["corruption"] for i in range(20)}
    assert kinds == {"resize", "jitter"}


def test_corruptions_change_the_image_as_specified():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    small = corrupt(image, "resize", random.Random(0))
    assert small.size == image.size
    expected = image.resize((20, 20), Image.BILINEAR).resize((56, 56), Image.BILINEAR)  # 20 px and back
    assert np.array_equal(np.array(small), np.array(expected))
    flat = Image.new("RGB", (8, 8), (200, 40, 40))
    jittered = np.array(corrupt(flat, "jitter", random.Random(1)))
    assert not np.array_equal(jittered, np.array(flat)) and (jittered == jittered[0, 0]).all()  # one colour, shifted
