"""Synthetic geometry diagrams whose primitives are known: CogFlow's perception rewards can be computed exactly.

Each row draws 1-4 segments (some sharing a labelled endpoint), 0-2 circles and their labelled points on a white
canvas, black ink, and asks a question whose answer follows from a correct perception (how many segments or
circles the diagram holds). The row carries its primitives as JSON (``primitives``), in the image's pixel frame
(x right, y down), so a perception written in that frame can be scored against them (VPR) and re-rendered with the
same code (:func:`render_primitives`) for a render-and-compare score (VSR): a perfect perception re-renders the
diagram pixel for pixel.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import datasets
from PIL import Image, ImageDraw

FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "images": datasets.List(datasets.Image(mode="RGB")),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "task": datasets.Value("string"),
        "primitives": datasets.Value("string"),
        "uid": datasets.Value("string"),
    }
)
QUESTIONS = {
    "lines": "How many line segments are drawn in the diagram? Answer with a number.",
    "circles": "How many circles are drawn in the diagram? Answer with a number.",
}
LINE_WIDTH = 2


def render_primitives(primitives: Mapping[str, Any], size: int) -> Image.Image:
    """The diagram of ``primitives`` (``points`` {label: [x, y]}, ``lines`` [[[x, y], ...], ...] polylines,
    ``circles`` [[cx, cy, r], ...]) on a white ``size`` x ``size`` canvas, black ink, pixel frame."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for line in primitives.get("lines", []):
        draw.line([tuple(map(float, p)) for p in line], fill="black", width=LINE_WIDTH)
    for cx, cy, r in primitives.get("circles", []):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline="black", width=LINE_WIDTH)
    for x, y in primitives.get("points", {}).values():
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill="black")
    return image


def sample_primitives(rng: random.Random, size: int) -> dict[str, Any]:
    """1-4 segments (the later ones may start at an earlier labelled endpoint) and 0-2 circles, integer pixels."""
    margin = max(4, size // 10)

    def coord() -> int:
        return rng.randint(margin, size - margin)

    points: dict[str, list[int]] = {}
    lines = []
    for _ in range(rng.randint(1, 4)):
        start = rng.choice(list(points.values())) if points and rng.random() < 0.5 else [coord(), coord()]
        end = [coord(), coord()]
        while abs(end[0] - start[0]) + abs(end[1] - start[1]) < size // 4:  # long enough to see and to fit
            end = [coord(), coord()]
        for p in (start, end):
            if p not in points.values():
                points[chr(ord("A") + len(points))] = p
        lines.append([start, end])
    circles = []
    for _ in range(rng.randint(0, 2)):
        r = rng.randint(size // 10, size // 5)
        circles.append([rng.randint(r + 2, size - r - 2), rng.randint(r + 2, size - r - 2), r])
    return {"points": points, "lines": lines, "circles": circles}


def build_geometry(
    num_samples: int = 256, seed: int = 0, split: str = "train", image_size: int = 112, tasks=("lines", "circles")
) -> datasets.Dataset:
    """Rows of diagrams with known primitives (row ``i`` depends only on seed, split and i).

    Args:
        num_samples: rows.
        seed: base seed (the run's ``${seed}``).
        split: part of each row's seed, so train and val rows differ.
        image_size: square side in pixels (112: 16 vision tokens with patch 14, merge 2).
        tasks: question kinds to draw from: ``lines`` (count the segments), ``circles`` (count the circles).
    """
    unknown = sorted(set(tasks) - set(QUESTIONS))
    if unknown or not tasks:
        raise ValueError(f"data.tasks: unknown {unknown}; choose from {sorted(QUESTIONS)}")
    rows = []
    for i in range(num_samples):
        rng = random.Random(f"geometry-{seed}-{split}-{i}")
        prims = sample_primitives(rng, image_size)
        task = tasks[rng.randrange(len(tasks))]
        rows.append(
            {
                "prompt": "<image>" + QUESTIONS[task],
                "images": [render_primitives(prims, image_size)],
                "answer": str(len(prims[task])),
                "answer_type": "number",
                "task": f"geometry_{task}",
                "primitives": json.dumps(prims),
                "uid": f"geo-{split}-{seed}-{i:06d}",
            }
        )
    return datasets.Dataset.from_list(rows, features=FEATURES)
