"""A synthetic task that needs zooming (``data=zoom``): the answer-bearing detail is unreadable in the overview.

A grey canvas (``canvas`` px, larger than the model's pixel budget, so the processor shows a downsampled
overview) holds a small black frame; inside it, a ``patch`` x ``patch`` px checkerboard of 1-px cells in one
palette colour and its complement (red/cyan, green/magenta, blue/yellow). The frame is visible in the overview,
so the policy can find where to look; the colour is not: each colour and its complement average to the grey of
the canvas, so an area-weighted downsample maps the checkerboard to grey (the filter's weights on neighbouring
cells cancel), whatever the colour. A crop of the original around the frame, enlarged, shows the cells.
``tests/data/test_zoom.py`` measures both on the processor's actual overview.

Row schema as ``vrl.data.synthetic`` (``answer_type`` text); ``meta`` holds ``detail_box`` (the checkerboard
in original pixels, for region rewards and scripted policies) and ``canvas``.
"""

from __future__ import annotations

import io
import json
import random

import datasets
import numpy as np
from PIL import Image

from vrl.data.synthetic import FEATURES

#: Answer colours and the complement each is checkered with (their mean is the canvas grey, 127.5).
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
GREY = 128

QUESTION = "<image>\nWhat colour is the small checkered patch inside the black frame?"

#: How the prompt asks for the tool: ``json`` (``<tool_call>`` JSON, sampler.call_* defaults), ``zoom`` (ERGO's
#: bare ``<zoom>[x1,y1,x2,y2]</zoom>``), ``box01`` (VisRL's 0-1 box in ``<box>`` tags), ``none`` (the question
#: alone: a no-tool baseline).
INSTRUCTIONS = {
    "json": " It is too small to see here: zoom in with "
    '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>, '
    "then answer with one word in <answer></answer>.",
    "zoom": " It is too small to see here: output <zoom>[x1, y1, x2, y2]</zoom> to see the region enlarged, "
    "then answer with one word in <answer></answer>.",
    "box01": " It is too small to see here: first give the region as <box>[x1, y1, x2, y2]</box> with "
    "coordinates from 0 to 1, then answer from the enlarged region with one word in <answer></answer>.",
    "none": " Answer with one word.",
}


def render(colour: str, x0: int, y0: int, canvas: int, patch: int, ring: int = 2, gap: int = 2) -> Image.Image:
    """The canvas with the checkerboard's top-left at (x0, y0) and a black ``ring`` px frame ``gap`` px around it."""
    a = np.full((canvas, canvas, 3), GREY, np.uint8)
    lo, hi = ring + gap, ring + gap + patch
    a[y0 - lo : y0 - lo + hi + lo, x0 - lo : x0 - lo + hi + lo] = 0
    a[y0 - gap : y0 + patch + gap, x0 - gap : x0 + patch + gap] = GREY
    col = np.array(PALETTE[colour], np.uint8)
    yy, xx = np.mgrid[0:patch, 0:patch]
    cells = np.where(((xx + yy) % 2 == 0)[..., None], col, 255 - col)
    a[y0 : y0 + patch, x0 : x0 + patch] = cells
    return Image.fromarray(a)


GROUND = (
    "<image>\nWhere is the small checkered patch inside the black frame? Answer its box [x1, y1, x2, y2] in the "
    "pixels of the enlarged region, in <answer></answer>."
)


def zoom_row(
    i: int,
    seed: int,
    split: str,
    canvas: int,
    patch: int,
    colours: list[str],
    instruction: str = "json",
    task: str = "colour",
) -> dict:
    """Row ``i``: colour and position drawn from (seed, split, i) alone, so rows are reproducible one by one."""
    rng = random.Random(f"zoom-{seed}-{split}-{i}")
    colour = rng.choice(colours)
    margin = patch + 8
    x0 = 2 * rng.randrange(margin // 2, (canvas - 2 * margin) // 2)  # even: cells align with a 2x downsample
    y0 = 2 * rng.randrange(margin // 2, (canvas - 2 * margin) // 2)
    meta = {"detail_box": [x0, y0, x0 + patch, y0 + patch], "canvas": canvas, "colour": colour}
    ground = task == "ground"  # GeoViS-style grounding: the answer is the checkerboard's box, original pixels
    return {
        "prompt": GROUND if ground else QUESTION + INSTRUCTIONS[instruction],
        "images": [render(colour, x0, y0, canvas, patch)],
        "answer": json.dumps(meta["detail_box"]) if ground else colour,
        "answer_type": "bbox" if ground else "text",
        "task": "zoom_ground" if ground else "zoom",
        "format": "open",
        "meta": json.dumps(meta),
        "uid": f"zoom-{split}-{seed}-{i}",
    }


def build_zoom(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    canvas: int = 448,
    patch: int = 12,
    colours: list[str] | tuple[str, ...] = ("red", "green", "blue"),
    instruction: str = "json",
    task: str = "colour",
) -> datasets.Dataset:
    """The zoom task as a ``datasets.Dataset`` (rendered in memory: ~1 ms a row).

    Args:
        num_samples: rows.
        seed: base seed (the run's ``${seed}``); ``split`` is mixed in, so ``val`` rows are independent draws.
        canvas: square canvas side in px; keep it at >= 2x the side the model's ``max_pixels`` allows (448 for the
            tiny model's 224 x 224), or the overview is not downsampled and the colour is visible without a tool.
        patch: checkerboard side in px (even).
        colours: answer colours, a subset of ``PALETTE``.
        instruction: how the prompt asks for the tool (``INSTRUCTIONS``: json | zoom | box01 | none).
        task: ``colour`` (name the checkerboard's colour) or ``ground`` (its box in original pixels; GeoViS).
    """
    unknown = [c for c in colours if c not in PALETTE]
    if task not in ("colour", "ground"):
        raise ValueError(f"data zoom: task must be 'colour' or 'ground', got {task!r}")
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"data zoom: instruction must be one of {sorted(INSTRUCTIONS)}, got {instruction!r}")
    if unknown or patch % 2 or patch < 2 or canvas < 4 * patch + 32:
        raise ValueError(
            f"data zoom: colours must be in {sorted(PALETTE)} (got {unknown}), patch even >= 2 (got {patch}), "
            f"canvas >= 4 * patch + 32 (got {canvas})"
        )
    rows = []
    for i in range(num_samples):
        row = zoom_row(i, int(seed), str(split), int(canvas), int(patch), list(colours), instruction, task)
        buf = io.BytesIO()
        row["images"][0].save(buf, format="PNG")
        row["images"] = [{"bytes": buf.getvalue(), "path": None}]
        rows.append(row)
    return datasets.Dataset.from_list(rows, features=FEATURES)
