"""A testbed calibrated to the tiny model: coarse visual questions its random vision tower can learn on a CPU.

The general synthetic suite (:mod:`vrl.data.tasks`) asks about small shapes among distractors; measured on the
default tiny model, shape, spatial-relation and yes/no questions stay at chance for tens of CPU-minutes, so an
ablation on them compares two methods that both learn nothing. Here every question is about something that
covers a large part of a small image (56 px = 4 merged vision tokens: one per quadrant), and the answer is one
or two tokens of the tiny tokenizer:

=============  ==========================================================  ====================================
task           question (open form)                                         difficulty 1 / 2 / 3
=============  ==========================================================  ====================================
``big_color``  What colour is the shape? (one large shape)                  2 / 3 / 6 colours; radius .35/.30/.20
``half``       Is the shape left or right?                                  radius .20 / .14 / .09 of the side
``quadrant``   Is the shape upper left, upper right, lower left or ...?     radius .20 / .14 / .09 (2-word answer)
``big_count``  How many shapes are there? (one per quadrant)                1-2 / 1-3 / 1-4 objects
=============  ==========================================================  ====================================

Shape and colour vary as nuisances wherever they are not asked. Every prompt of a task is the same text, so an
image-blind policy can do no better than the most frequent answer: :func:`blind_baseline` measures it on rows,
:func:`chance` states it (1/2 ... 1/6), and README "Calibrated testbed" lists both. Keep the general suite
(shape, spatial, charts, counting among distractors, yes/no and multiple choice) for larger models.

Rows follow :mod:`vrl.types` like the synthetic suite's, with ``meta`` holding the scene graph (Perception-R1
annotations, PEARL checklists read it); row ``i`` is a pure function of the spec and ``i``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from vrl.data.scene import PALETTE, SHAPES, Scene, SceneObject, render
from vrl.data.tasks import row_rng

#: Bump when generation changes rows (part of the cache fingerprint).
TESTBED_VERSION = 1
COLOURS_BY_DIFFICULTY = {1: ("red", "blue"), 2: ("red", "green", "blue"), 3: tuple(PALETTE)}
COLOR_RADIUS = {1: 0.35, 2: 0.30, 3: 0.20}
PLACE_RADIUS = {1: 0.20, 2: 0.14, 3: 0.09}
MAX_COUNT = {1: 2, 2: 3, 3: 4}
COUNT_RADIUS = 0.16
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
ONE_WORD, A_NUMBER = "Answer with one word.", "Answer with a number."


@dataclass(frozen=True)
class Posed:
    """A testbed question before rendering: its scene, text, answer and what it asks about."""

    scene: Scene
    question: str
    answer: str
    answer_type: str
    space: tuple[str, ...]
    target: list[dict]


def _obj(rng: random.Random, x: int, y: int, radius: int, colors: Sequence[str] = tuple(PALETTE)) -> SceneObject:
    return SceneObject(rng.choice(SHAPES), rng.choice(list(colors)), "large", x, y, radius)


def _in_box(rng: random.Random, x0: int, y0: int, x1: int, y1: int, r: int) -> tuple[int, int]:
    """A centre whose radius-``r`` square lies inside pixels [x0, x1) x [y0, y1), one pixel from each edge."""
    return rng.randint(x0 + r + 1, x1 - r - 2), rng.randint(y0 + r + 1, y1 - r - 2)


def _big_color(rng: random.Random, difficulty: int, size: int) -> Posed:
    colors = COLOURS_BY_DIFFICULTY[difficulty]
    r = round(COLOR_RADIUS[difficulty] * size)
    obj = _obj(rng, *_in_box(rng, 0, 0, size, size, r), r, colors)
    scene = Scene(size, size, (obj,))
    return Posed(scene, f"What colour is the shape? {ONE_WORD}", obj.color, "text", colors, [obj.to_dict()])


def _cell(rng: random.Random, cell: int, size: int, r: int) -> tuple[int, int]:
    half = size // 2
    x0, y0 = (cell % 2) * half, (cell // 2) * half
    return _in_box(rng, x0, y0, x0 + half, y0 + half, r)


def _half(rng: random.Random, difficulty: int, size: int) -> Posed:
    r = round(PLACE_RADIUS[difficulty] * size)
    side = rng.randrange(2)
    x, y = _in_box(rng, side * (size // 2), 0, side * (size // 2) + size // 2, size, r)
    obj = _obj(rng, x, y, r)
    answer = ("left", "right")[side]
    question = f"Is the shape left or right? {ONE_WORD}"
    return Posed(Scene(size, size, (obj,)), question, answer, "text", ("left", "right"), [obj.to_dict()])


def _quadrant(rng: random.Random, difficulty: int, size: int) -> Posed:
    r = round(PLACE_RADIUS[difficulty] * size)
    cell = rng.randrange(4)
    obj = _obj(rng, *_cell(rng, cell, size, r), r)
    question = "Is the shape upper left, upper right, lower left or lower right?"
    return Posed(Scene(size, size, (obj,)), question, QUADRANTS[cell], "text", QUADRANTS, [obj.to_dict()])


def _big_count(rng: random.Random, difficulty: int, size: int) -> Posed:
    n = rng.randint(1, MAX_COUNT[difficulty])
    r = round(COUNT_RADIUS * size)
    objs = tuple(_obj(rng, *_cell(rng, cell, size, r), r) for cell in sorted(rng.sample(range(4), n)))
    space = tuple(str(k) for k in range(1, MAX_COUNT[difficulty] + 1))
    question = f"How many shapes are there? {A_NUMBER}"
    return Posed(Scene(size, size, objs), question, str(n), "number", space, [o.to_dict() for o in objs])


#: Task name -> generator ``(rng, difficulty, image_size) -> Posed``.
TESTBED: dict[str, Callable[[random.Random, int, int], Posed]] = {
    "big_color": _big_color,
    "half": _half,
    "quadrant": _quadrant,
    "big_count": _big_count,
}


def chance(task: str, difficulty: int = 1) -> float:
    """The image-blind ceiling of ``task``: answers are uniform over its value set, and the prompt is constant."""
    if task not in TESTBED:
        raise ValueError(f"unknown testbed task {task!r}; known: {sorted(TESTBED)}")
    k = {"big_color": len(COLOURS_BY_DIFFICULTY[difficulty]), "half": 2, "quadrant": 4}.get(task)
    return 1.0 / (k or MAX_COUNT[difficulty])


def blind_baseline(rows: Sequence[dict]) -> float:
    """The best accuracy a policy that sees only the prompt can reach on ``rows``, measured on them.

    For each distinct prompt, the best blind answer is that prompt's most frequent answer; the baseline is the
    fraction of rows it gets right, ``sum over prompts of max answer count / rows``.
    """
    if not rows:
        raise ValueError("blind_baseline: no rows")
    by_prompt: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_prompt[row["prompt"]][row["answer"]] += 1
    return sum(max(c.values()) for c in by_prompt.values()) / len(rows)


@dataclass(frozen=True)
class TestbedSpec:
    """What determines the rows: tasks (drawn uniformly per row), seed, split, image size and difficulty."""

    __test__ = False  # not a pytest class, whatever its name

    tasks: tuple[str, ...]
    seed: int
    split: str
    image_size: int = 56
    difficulty: int | tuple[int, ...] = 1

    @property
    def difficulties(self) -> tuple[int, ...]:
        return (self.difficulty,) if isinstance(self.difficulty, int) else tuple(self.difficulty)

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TESTBED]
        if not self.tasks or unknown:
            raise ValueError(f"testbed tasks must be a non-empty subset of {sorted(TESTBED)}; got {list(self.tasks)}")
        if not self.difficulties or any(d not in (1, 2, 3) for d in self.difficulties):
            raise ValueError(f"testbed difficulty must be 1, 2 or 3 (or a list of them); got {self.difficulty}")
        if self.image_size < 48:
            raise ValueError(f"testbed image_size must be >= 48 px; got {self.image_size}")

    def digest(self, *extra: object) -> str:
        blob = json.dumps(["testbed", TESTBED_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def row(self, index: int) -> dict:
        """Row ``index`` (schema of :mod:`vrl.types`), a pure function of the spec and the index."""
        rng = row_rng("vrl-testbed", self.seed, self.split, index)
        task, difficulty = _draw(rng, self)
        q = TESTBED[task](rng, difficulty, self.image_size)
        meta = {
            "scene": q.scene.to_dict(),
            "task": task,
            "format": "open",
            "difficulty": difficulty,
            "question": task,
            "target": q.target,
            "value": q.answer,
            "answer": q.answer,
            "space": list(q.space),
            "image_size": [self.image_size, self.image_size],
            "seed": self.seed,
            "split": self.split,
            "index": index,
        }
        return {
            "prompt": f"<image>\n{q.question}",
            "images": [render(q.scene)],
            "answer": q.answer,
            "answer_type": q.answer_type,
            "task": task,
            "format": "open",
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"tb-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


def build_testbed(
    tasks: Sequence[str] = ("big_color",),
    num_samples: int = 2000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 56,
    difficulty: int | Sequence[int] = 1,
    mode: str = "materialize",
    cache_dir: str | None = None,
    progress: bool | None = None,
):
    """The calibrated testbed as a dataset (``conf/data/testbed_*.yaml``); storage as :func:`build_synthetic`.

    Args:
        tasks: names from :data:`TESTBED`, drawn uniformly per row.
        num_samples: rows.
        seed: base seed (the run's ``${seed}``).
        split: mixed into every row's seed (``val`` rows are other draws).
        image_size: square side in pixels; 56 gives 4 merged vision tokens (one per quadrant).
        difficulty: 1..3 (module docstring's table), or a list of levels drawn uniformly per row (what a
            shuffled arm of a difficulty curriculum trains on).
        mode: ``materialize`` (a ``datasets.Dataset``, cached under ``cache_dir`` by argument hash) or ``stream``.
        cache_dir: where to save / reload a materialised copy; None keeps it in memory.
        progress: a progress bar while materialising (None: above 300 rows).
    """

    from vrl.data.synthetic import build_rows

    level = int(difficulty) if isinstance(difficulty, int) else tuple(int(d) for d in difficulty)
    spec = TestbedSpec(tuple(str(t) for t in tasks), int(seed), str(split), int(image_size), level)
    return build_rows(spec, num_samples, mode, cache_dir, progress)  # type: ignore[arg-type]


def baseline_table(num_samples: int = 2000, seed: int = 0) -> str:
    """README's table: every task x difficulty, its chance level and the blind baseline measured on rows."""
    lines = ["| task | difficulty | chance (1/k) | blind baseline, measured |", "|---|---:|---:|---:|"]
    for task in TESTBED:
        for d in (1, 2, 3):
            spec = TestbedSpec((task,), seed, "train", 56, d)
            rows = [_text_row(spec, i) for i in range(num_samples)]
            lines.append(f"| {task} | {d} | {chance(task, d):.3f} | {blind_baseline(rows):.3f} |")
    return "\n".join(lines)


def _draw(rng: random.Random, spec: TestbedSpec) -> tuple[str, int]:
    """A row's task, then its difficulty (drawn only when there are several: one-level rows stay as they were)."""
    task = rng.choice(spec.tasks)
    levels = spec.difficulties
    return task, levels[0] if len(levels) == 1 else rng.choice(levels)


def _text_row(spec: TestbedSpec, index: int) -> dict:
    """A row's prompt and answer without rendering its image (what :func:`blind_baseline` reads)."""
    rng = row_rng("vrl-testbed", spec.seed, spec.split, index)
    task, difficulty = _draw(rng, spec)
    q = TESTBED[task](rng, difficulty, spec.image_size)
    return {"prompt": f"<image>\n{q.question}", "answer": q.answer}


if __name__ == "__main__":  # python -m vrl.data.testbed: print README's baseline table
    print(baseline_table())
