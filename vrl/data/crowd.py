"""Crowded synthetic scenes for DIP-R1: many small shapes, find every one of a category, answer a list of boxes.

DIP-R1 (arXiv 2505.23179; spec others.md §12) trains fine-grained perception in crowded scenes (CrowdHuman,
CityPersons, UAVDT). The stand-in here: 8 to 14 small shapes (radius 5% of the canvas) packed on one image, a
category (a colour, a shape, or every object, as :mod:`vrl.data.detection`), and as the answer the tight pixel boxes
of its objects as a JSON list ``[[x1, y1, x2, y2], ...]`` (answer_type ``detection``, task ``crowd``). The prompt asks
for DIP-R1's three stages: think (scene understanding), look (the regions to inspect, as boxes), answer (boxes),
which :mod:`vrl.rewards.dip_r1` scores.

Determinism as :mod:`vrl.data.synthetic`: row ``i`` is a pure function of the arguments and ``i``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import datasets

from vrl.data.detection import CATEGORY_KINDS, pick_category
from vrl.data.scene import render, sample_scene
from vrl.data.synthetic import SyntheticStream, build_rows
from vrl.data.tasks import row_rng

GENERATOR_VERSION = 1
INSTRUCTION = (
    "Think in <think></think>, then give the regions to look at closely in <look>[[x1, y1, x2, y2], ...]</look>, "
    "then answer in <answer>[[x1, y1, x2, y2], ...]</answer>."
)


@dataclass(frozen=True)
class CrowdSpec:
    """Everything that determines the rows but their number; see :func:`build_crowd` for the fields."""

    seed: int
    split: str
    image_size: int
    min_objects: int
    max_objects: int
    radius_fraction: float
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 24:  # 6 colours x 4 shapes: unique names
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 24, got {self.min_objects}, {self.max_objects}")
        if not self.categories or any(c not in CATEGORY_KINDS for c in self.categories):
            raise ValueError(f"categories must be a non-empty subset of {CATEGORY_KINDS}; got {self.categories}")
        if not 0.02 <= self.radius_fraction <= 0.2:
            raise ValueError(f"radius_fraction must be in [0.02, 0.2], got {self.radius_fraction}")

    def digest(self, *extra: object) -> str:
        blob = json.dumps(["crowd", GENERATOR_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-crowd", self.seed, self.split, index)
        wanted = rng.randint(self.min_objects, self.max_objects)
        scene = sample_scene(rng, wanted, self.image_size, radius_fraction=self.radius_fraction)
        kind = rng.choice(self.categories)
        target, hits = pick_category(rng, scene, kind)
        meta = {
            "scene": scene.to_dict(),
            "task": "crowd",
            "category": kind,
            "target": target,
            "image_size": [scene.width, scene.height],
            "seed": self.seed,
            "split": self.split,
            "index": index,
        }
        return {
            "prompt": f"<image>\nFind every {target}. {INSTRUCTION}",
            "images": [render(scene)],
            "answer": json.dumps([list(o.bbox) for o in hits]),
            "answer_type": "detection",
            "task": "crowd",
            "format": "open",
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"crowd-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


def build_crowd(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 112,
    min_objects: int = 8,
    max_objects: int = 14,
    radius_fraction: float = 0.05,
    categories: tuple[str, ...] | list[str] = CATEGORY_KINDS,
    mode: str = "materialize",
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build the crowded-scene detection dataset (``data=crowd``).

    Args:
        num_samples: number of rows.
        seed: base seed; usually the run's ``${seed}``.
        split: mixed into every row's seed (``val`` rows are independent draws).
        image_size: square image side in pixels (boxes are in these pixels).
        min_objects: fewest shapes asked for per image.
        max_objects: most shapes asked for (placement may fit fewer; answers follow what was placed).
        radius_fraction: shape radius as a fraction of the image side (0.05: 6 px at 112 px).
        categories: ``color`` (``red object``), ``shape`` (``circle``), ``all`` (``object``: every shape).
        mode: ``materialize`` (a ``datasets.Dataset``) or ``stream`` (rows rendered on access; the same rows).
        cache_dir: with ``materialize``, save under this folder by argument hash and reload; None: memory only.
        progress: progress bar while materialising; None shows one above 300 rows.
    """
    spec = CrowdSpec(
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        min_objects=int(min_objects),
        max_objects=int(max_objects),
        radius_fraction=float(radius_fraction),
        categories=tuple(str(c) for c in categories),
    )
    return build_rows(spec, num_samples, mode, cache_dir, progress)  # type: ignore[arg-type]
