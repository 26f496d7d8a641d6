"""GeoViS-style window search: the tree's windows, the best-first order (hand-traced) and the box mapped back."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vrl.methods.geovis import OracleCoverage, WindowIoU, best_first, children


def test_children_are_the_grown_grid():
    # 448 / 2 = 224-px cells grown by 0.25 * 224 = 56 px, clipped to the image
    assert children((0, 0, 448, 448), 2, 0.25, (448, 448)) == [
        (0, 0, 280, 280),
        (168, 0, 448, 280),
        (0, 168, 280, 448),
        (168, 168, 448, 448),
    ]


def test_best_first_finds_the_target_window():
    sample = {"meta": json.dumps({"detail_box": [72, 238, 84, 250]}), "uid": "r"}
    image = Image.new("RGB", (448, 448))
    window, nodes, depth = best_first((448, 448), lambda ws: OracleCoverage()(sample, image, ws), 2, 0.25, 3, 16)
    # root (score 1) -> its 4 children; (0, 0, 280, 280) and (0, 168, 280, 448) hold the target (score 1), the
    # earlier one pops first. Its 140-px cells grown by 35 px on every edge (clipped to the image, not the parent):
    # the third, (0, 105, 175, 315), holds the target at depth 2. Then (0, 168, 280, 448) (ties: the shallower node
    # first): 4 more nodes, (0, 133, 175, 343) holds it, but not deeper. Then (0, 105, 175, 315), with 16 - 13 = 3
    # nodes of budget left: cells x 0|87|175, y 105|210|315, grown by round(87 / 4) = 22 and round(105 / 4) = 26;
    # the third, (0, 210 - 26, 87 + 22, 315 + 26) = (0, 184, 109, 341), holds it at depth 3
    assert (window, nodes, depth) == ((0, 184, 109, 341), 16, 3)


def test_window_iou_maps_the_box_back():
    # the window (0, 170, 109, 302) shown at 218 x 264 (2x): [144, 136, 168, 160] / 2 + (0, 170) = [72, 238, 84, 250]
    row = {
        "answer": "[72, 238, 84, 250]",
        "search_window": [0, 170, 109, 302],
        "model_image_sizes": [[224, 224], [218, 264]],
    }
    rows = [row, row, row]
    responses = ["<answer>[144, 136, 168, 160]</answer>", "<answer>[0, 0, 24, 24]</answer>", "no box"]
    assert WindowIoU()(responses, rows) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not a box"):
        WindowIoU()(["[1, 2, 3, 4]"], [{**row, "answer": "red"}])
