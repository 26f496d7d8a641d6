"""Q-Insight's synthetic quality rows: degradations at five severities, the derived score, per-row tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vrl.data.q_insight import SEVERITIES, build_q_insight, degrade, quality_score
from vrl.data.scene import render, sample_scene
from vrl.data.tasks import row_rng


def test_quality_score_is_five_minus_0_8_per_severity():
    assert [quality_score(s) for s in range(6)] == [5.0, 4.2, 3.4, 2.6, 1.8, 1.0]
    with pytest.raises(ValueError, match="severity"):
        quality_score(6)


def test_degradations_on_a_flat_grey_image():
    grey = Image.new("RGB", (16, 16), (100, 100, 100))
    # darken: PIL's Brightness blends with black, 100 * 0.55 = 55 at severity 2, 100 * 0.12 = 12 at severity 5
    assert degrade(grey, "darken", 2).getpixel((3, 3)) == (55, 55, 55)
    assert degrade(grey, "darken", 5).getpixel((3, 3)) == (12, 12, 12)
    assert degrade(grey, "blur", 5).getpixel((8, 8)) == (100, 100, 100)  # a flat image has nothing to blur
    assert degrade(grey, "noise", 0).tobytes() == grey.tobytes()  # severity 0: clean
    with pytest.raises(ValueError, match="distortion"):
        degrade(grey, "rain", 1)


def test_error_grows_with_severity_and_noise_follows_its_seed():
    clean = render(sample_scene(row_rng("t", 0), 4))
    ref = np.asarray(clean, dtype=np.float64)
    for kind in ("noise", "compression", "blur", "darken"):
        mse = [
            float(((np.asarray(degrade(clean, kind, s, seed=1), dtype=np.float64) - ref) ** 2).mean()) for s in (1, 5)
        ]
        assert 0 < mse[0] < mse[1], kind
    assert degrade(clean, "noise", 3, seed=7).tobytes() == degrade(clean, "noise", 3, seed=7).tobytes()
    assert degrade(clean, "noise", 3, seed=7).tobytes() != degrade(clean, "noise", 3, seed=8).tobytes()


def test_rows_answer_what_their_meta_says():
    rows = build_q_insight(num_samples=30, seed=0, tasks=["score", "dist", "comparison"], mode="stream")
    seen = set()
    for i in range(len(rows)):
        row, meta = rows[i], json.loads(rows[i]["meta"])
        seen.add(row["task"])
        assert len(row["images"]) == (2 if row["task"] == "comparison" else 1) == row["prompt"].count("<image>")
        assert meta["scores"] == [round(5 - 0.8 * s, 2) for s in meta["severities"]]
        if row["task"] == "score":
            assert (row["answer"], row["answer_type"]) == (f"{meta['scores'][0]:.2f}", "number")
        elif row["task"] == "dist":
            want = {"distortion_class": meta["distortions"][0], "severity": SEVERITIES[meta["severities"][0] - 1]}
            assert json.loads(row["answer"]) == want
        else:
            a, b = meta["scores"]
            assert row["answer"] == ("Similar" if a == b else "Image A" if a > b else "Image B")
    assert seen == {"score", "dist", "comparison"}


def test_clean_images_and_determinism():
    rows = build_q_insight(num_samples=40, seed=1, tasks=["dist"], clean_fraction=0.5, mode="stream")
    answers = [json.loads(rows[i]["answer"]) for i in range(40)]
    assert {"distortion_class": "null", "severity": "null"} in answers
    a, b = build_q_insight(num_samples=2, seed=1), build_q_insight(num_samples=2, seed=1, mode="stream")
    assert a[1]["images"][0].tobytes() == b[1]["images"][0].tobytes() and a[1]["uid"] == b[1]["uid"]
    with pytest.raises(ValueError, match="tasks"):
        build_q_insight(num_samples=1, tasks=["rank"])
