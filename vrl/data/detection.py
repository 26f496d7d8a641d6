"""Synthetic multi-object detection: find every object of a category, answer a list of boxes with confidences.

The test bed of Visual-RFT's detection reward (``vrl.rewards.visual_rft``): a scene of flat shapes
(:mod:`vrl.data.scene`), a category (a colour, a shape, or every object) and, as the answer, the tight pixel boxes
of its objects in the Visual-RFT solution format::

    [{"Position": [x1, y1, x2, y2], "Confidence": 1}, ...]     (answer_type "detection"; "No Objects" when none)

or, with ``answer_format="v_triune"``, V-Triune's ``[{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}, ...]``
(each box labelled with its object's name; ``[]`` when none), which :mod:`vrl.rewards.v_triune` scores.

Rows follow the synthetic schema (:mod:`vrl.types`) and the same determinism as :mod:`vrl.data.synthetic` (row
``i`` is a pure function of the arguments and ``i``; materialised and streamed rows are equal; the disk cache is
keyed by a hash of the arguments). The task is kept out of :data:`vrl.data.tasks.TASKS` on purpose: that registry
also trains the tiny tokenizer (:func:`vrl.data.tasks.corpus`), which every other run shares.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

import datasets

from vrl.data.scene import PALETTE, SHAPES, Scene, render, sample_scene
from vrl.data.synthetic import SyntheticStream, build_rows
from vrl.data.tasks import OBJECTS_BY_DIFFICULTY, row_rng

#: What a question can ask for: every object of a colour, of a shape, or every object.
CATEGORY_KINDS = ("color", "shape", "all")
#: Bump when generation changes in a way that alters rows (part of the cache key).
GENERATOR_VERSION = 1
#: The answer instruction per answer format; boxes are in the image's own pixels, as in the grounding task.
INSTRUCTIONS = {
    "visual_rft": 'Answer as [{"Position": [x1, y1, x2, y2], "Confidence": c}, ...] or No Objects.',
    "v_triune": 'Answer as [{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}, ...].',
}


@dataclass(frozen=True)
class DetectionSpec:
    """Everything that determines the rows but their number; see :func:`build_detection` for the fields."""

    seed: int
    split: str
    image_size: int
    difficulties: tuple[int, ...]
    categories: tuple[str, ...]
    absent_fraction: float
    answer_format: str = "visual_rft"

    def __post_init__(self) -> None:
        if self.answer_format not in INSTRUCTIONS:
            raise ValueError(f"answer_format must be one of {sorted(INSTRUCTIONS)}, got {self.answer_format!r}")
        unknown = [c for c in self.categories if c not in CATEGORY_KINDS]
        if unknown or not self.categories:
            raise ValueError(f"categories must be a non-empty subset of {CATEGORY_KINDS}; got {self.categories}")
        if not self.difficulties or any(d not in OBJECTS_BY_DIFFICULTY for d in self.difficulties):
            raise ValueError(f"difficulties must be a non-empty subset of 1, 2, 3; got {self.difficulties}")
        if not 0 <= self.absent_fraction < 1:
            raise ValueError(f"absent_fraction must be in [0, 1), got {self.absent_fraction}")
        if self.image_size < 48:
            raise ValueError(f"image_size must be >= 48 px to fit shapes; got {self.image_size}")

    def digest(self, *extra: object) -> str:
        blob = json.dumps(["detection", GENERATOR_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-detection", self.seed, self.split, index)
        difficulty = rng.choice(self.difficulties)
        scene = sample_scene(rng, rng.randint(*OBJECTS_BY_DIFFICULTY[difficulty]), self.image_size)
        kind = rng.choice(self.categories)
        target, hits = pick_category(rng, scene, kind, absent=rng.random() < self.absent_fraction)
        if self.answer_format == "v_triune":
            answer = json.dumps([{"bbox_2d": list(o.bbox), "label": o.name} for o in hits])
        else:
            answer = detection_answer([o.bbox for o in hits])
        meta = {
            "scene": scene.to_dict(),
            "task": "detection",
            "category": kind,
            "target": target,
            "boxes": [list(o.bbox) for o in hits],
            "difficulty": difficulty,
            "image_size": [scene.width, scene.height],
            "seed": self.seed,
            "split": self.split,
            "index": index,
        }
        return {
            "prompt": f"<image>\nFind every {target}. {INSTRUCTIONS[self.answer_format]}",
            "images": [render(scene)],
            "answer": answer,
            "answer_type": "detection",
            "task": "detection",
            "format": "open",
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"det-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


def pick_category(rng: random.Random, scene: Scene, kind: str, absent: bool = False) -> tuple[str, list]:
    """The category phrase and the scene's objects in it.

    A present category is drawn from the objects in the scene (so it has at least one); ``absent`` draws one the
    scene lacks when there is such a value (``all`` always has objects), giving a ``No Objects`` row.
    """
    if kind == "all":
        return "object", list(scene.objects)
    values = tuple(PALETTE) if kind == "color" else SHAPES
    present = sorted({getattr(o, kind) for o in scene.objects})
    missing = [v for v in values if v not in present]
    value = rng.choice(missing) if absent and missing else rng.choice(present)
    phrase = f"{value} object" if kind == "color" else value
    return phrase, [o for o in scene.objects if getattr(o, kind) == value]


def detection_answer(boxes: list[tuple[int, int, int, int]]) -> str:
    """The ground truth in Visual-RFT's solution format (``No Objects`` for none)."""
    if not boxes:
        return "No Objects"
    return json.dumps([{"Position": list(box), "Confidence": 1} for box in boxes])


def build_detection(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 112,
    difficulties: tuple[int, ...] | list[int] = (1, 2, 3),
    categories: tuple[str, ...] | list[str] = CATEGORY_KINDS,
    absent_fraction: float = 0.0,
    answer_format: str = "visual_rft",
    mode: str = "materialize",
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build the synthetic detection dataset (``data=synthetic_detection``).

    Args:
        num_samples: number of rows.
        seed: base seed; usually the run's ``${seed}``.
        split: mixed into every row's seed (``val`` rows are independent draws).
        image_size: square image side in pixels (boxes are in these pixels).
        difficulties: object counts to draw from uniformly (1: one or two objects, 2: three or four, 3: five or
            six); more objects mean more boxes per answer when the category is ``object`` or a colour.
        categories: category kinds to draw from: ``color`` (``red object``: usually one or two boxes), ``shape``
            (``circle``) and ``all`` (``object``: every object).
        absent_fraction: share of rows asking for a colour or shape the scene lacks (answer ``No Objects``). 0 by
            default: the released reward scores such rows 0 for every response (``no_objects_credit``).
        answer_format: ``visual_rft`` (``Position`` + ``Confidence``) or ``v_triune`` (``bbox_2d`` + ``label``).
        mode: ``materialize`` (a ``datasets.Dataset``) or ``stream`` (rows rendered on access; the same rows).
        cache_dir: with ``materialize``, save under this folder by argument hash and reload; None: memory only.
        progress: progress bar while materialising; None shows one above 300 rows.
    """
    spec = DetectionSpec(
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        difficulties=tuple(int(d) for d in difficulties),
        categories=tuple(str(c) for c in categories),
        absent_fraction=float(absent_fraction),
        answer_format=str(answer_format),
    )
    return build_rows(spec, num_samples, mode, cache_dir, progress)  # type: ignore[arg-type]
