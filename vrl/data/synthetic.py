"""Datasets of synthetic verifiable visual questions: the embedded default data and every method's test bed.

Row ``i`` is a pure function of the builder's arguments and ``i``: it is drawn from a generator seeded by
a hash of (seed, split, i), which picks the (task, format) pair, the difficulty, the scene and the
question. So a materialised ``datasets.Dataset`` and the on-the-fly ``stream`` dataset hold the same
rows, a cached copy can be trusted by its fingerprint, and changing ``split`` gives disjoint draws
(validation data that is not the training data). Rows follow the schema in :mod:`vrl.types`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image

from vrl.data.scene import render
from vrl.data.tasks import FORMATS, TaskOptions, generate, row_rng, valid_pairs

#: Bump when generation changes in a way that alters rows: it is part of the cache fingerprint.
GENERATOR_VERSION = 1
#: Materialising more rows than this shows a progress bar (when ``progress`` is left at None).
PROGRESS_MIN_ROWS = 300

FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "images": datasets.List(datasets.Image(mode="RGB")),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "task": datasets.Value("string"),
        "format": datasets.Value("string"),
        "meta": datasets.Value("string"),
        "uid": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the rows (but not how many): see :func:`build_synthetic` for the fields."""

    tasks: tuple[str, ...]
    formats: tuple[str, ...]
    seed: int
    split: str
    image_size: int
    difficulties: tuple[int, ...]
    chart_value_labels: bool
    single_color_palette: tuple[str, ...]
    single_color_radius: float | None = None

    def __post_init__(self) -> None:
        # Validate at config-instantiation time rather than at the first row.
        valid_pairs(self.tasks, self.formats)
        TaskOptions(self.chart_value_labels, self.single_color_palette, self.single_color_radius)
        if not self.difficulties or any(d not in (1, 2, 3) for d in self.difficulties):
            raise ValueError(f"difficulties must be a non-empty subset of 1, 2, 3; got {self.difficulties}")
        if self.image_size < 48:
            raise ValueError(f"image_size must be >= 48 px to fit shapes and labels; got {self.image_size}")

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return valid_pairs(self.tasks, self.formats)

    @property
    def options(self) -> TaskOptions:
        return TaskOptions(self.chart_value_labels, self.single_color_palette, self.single_color_radius)

    def digest(self, *extra: object) -> str:
        """Hex hash of the spec (and ``extra``), stable across processes and Python versions."""
        blob = json.dumps([GENERATOR_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-synthetic", self.seed, self.split, index)
        task, fmt = rng.choice(self.pairs)
        difficulty = rng.choice(self.difficulties)
        q = generate(task, fmt, rng, self.image_size, difficulty, self.options)
        meta = {**q.meta(), "seed": self.seed, "split": self.split, "index": index}
        return {
            "prompt": q.prompt,
            "images": [render(q.graph)],
            "answer": q.answer,
            "answer_type": q.answer_type,
            "task": task,
            "format": fmt,
            "meta": json.dumps(meta, sort_keys=True),
            # The uid ignores num_samples so a row keeps its id whatever the dataset length.
            "uid": f"syn-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


class SyntheticStream(torch.utils.data.Dataset):
    """Map-style dataset that renders row ``i`` when asked: no memory or disk, same rows as materialised.

    Args:
        spec: what the rows are.
        num_samples: the length.
    """

    def __init__(self, spec: SyntheticSpec, num_samples: int) -> None:
        self.spec = spec
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} rows")
        return self.spec.row(index)


def _png(image: Image.Image) -> dict:
    # Encoding here keeps only compressed bytes in memory while rows accumulate (flat shapes: ~1 KB each).
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _materialize(spec: SyntheticSpec, num_samples: int, progress: bool) -> datasets.Dataset:
    from rich.progress import track

    rows = []
    steps = track(range(num_samples), description=f"synthetic {spec.split}", disable=not progress)
    for i in steps:
        row = spec.row(i)
        row["images"] = [_png(im) for im in row["images"]]
        rows.append(row)
    return datasets.Dataset.from_list(rows, features=FEATURES)


def _load_or_build(spec: SyntheticSpec, num_samples: int, cache_dir: str, progress: bool) -> datasets.Dataset:
    path = Path(cache_dir).expanduser() / f"synthetic-{spec.split}-{spec.digest(num_samples)}"
    if not (path / "dataset_info.json").exists():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        rows = _materialize(spec, num_samples, progress)
        was_off = datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()  # our own bar already showed the build; no second "Saving" bar
        try:
            rows.save_to_disk(str(tmp))
        finally:
            if not was_off:
                datasets.utils.enable_progress_bars()
        try:
            os.replace(tmp, path)  # atomic: a concurrent process never loads a half-written copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process saved the same rows first
    return datasets.load_from_disk(str(path))


def build_synthetic(
    tasks: Sequence[str] = ("color", "shape", "count", "grounding", "spatial", "chart"),
    formats: Sequence[str] = FORMATS,
    num_samples: int = 1000,
    seed: int = 0,
    image_size: int = 112,
    mode: str = "materialize",
    cache_dir: str | None = None,
    split: str = "train",
    difficulties: Sequence[int] = (1, 2, 3),
    chart_value_labels: bool = True,
    single_color_palette: Sequence[str] = ("red", "green", "blue"),
    single_color_radius: float | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build a dataset of synthetic verifiable visual questions (row schema: :mod:`vrl.types`).

    Args:
        tasks: task families to mix, from :data:`vrl.data.tasks.TASKS`: ``color``, ``shape``, ``count``,
            ``grounding`` (box answer, open form only), ``spatial``, ``chart`` (bar value or tallest bar),
            and ``single_color`` (the learning test: one shape, colour uniform over
            ``single_color_palette``, one fixed open question, so image-blind accuracy is at most 1/3).
        formats: question formats to mix: ``yesno``, ``mc``, ``open``. Row ``i`` draws uniformly among the
            (task, format) pairs the task supports, so restricting this is how a Curr-ReFT stage picks
            its format.
        num_samples: number of rows (an epoch's length).
        seed: base seed; usually the run's ``${seed}``.
        image_size: square image side in pixels; 112 gives 16 vision tokens with patch 14 and merge 2.
        mode: ``materialize`` builds a ``datasets.Dataset`` (images stored as PNG, decoded back to PIL on
            access); ``stream`` returns a ``torch.utils.data.Dataset`` that renders row ``i`` on access
            (no build time or memory, the same rows).
        cache_dir: with ``materialize``, save the dataset under this folder (named by a hash of every
            argument above) and reload it on the next call with the same arguments instead of
            regenerating (the shipped configs use ``$VRL_CACHE_DIR`` or ``~/.cache/vrl``, /synthetic: the
            default run's 2000 rows take ~2.5 s to render and ~0.01 s to reload). ``None`` keeps it in
            memory only.
        split: mixed into every row's seed, so ``val`` rows are independent draws from ``train`` rows
            with the same seed.
        difficulties: levels to draw from uniformly (1: one or two objects / three bars, 2: three or four /
            four, 3: five or six / five); a curriculum restricts this.
        chart_value_labels: print each bar's value above it, making chart values read rather than
            estimated from heights (harder, and closer to ChartQA, with False).
        single_color_palette: colours of the ``single_color`` task (at least two palette names).
        single_color_radius: ``single_color`` shape radius as a fraction of the image side (None: the
            usual sizes). The learning test uses 0.35 so the colour dominates the image.
        progress: show a progress bar while materialising; ``None`` shows one above
            :data:`PROGRESS_MIN_ROWS` rows.

    Returns:
        A ``datasets.Dataset`` (``materialize``) or a :class:`SyntheticStream` (``stream``).
    """
    spec = SyntheticSpec(
        tasks=tuple(str(t) for t in tasks),
        formats=tuple(str(f) for f in formats),
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        difficulties=tuple(int(d) for d in difficulties),
        chart_value_labels=bool(chart_value_labels),
        single_color_palette=tuple(str(c) for c in single_color_palette),
        single_color_radius=single_color_radius,
    )
    return build_rows(spec, num_samples, mode, cache_dir, progress)


def build_rows(
    spec: Any, num_samples: int, mode: str = "materialize", cache_dir: str | None = None, progress: bool | None = None
) -> datasets.Dataset | SyntheticStream:
    """The rows of any synthetic spec (a frozen dataclass with ``row(index)`` and ``digest()``), as every builder
    in ``vrl.data`` hands them out: ``stream`` renders rows on access; ``materialize`` builds a ``datasets.Dataset``
    (with a progress bar above ``PROGRESS_MIN_ROWS`` rows unless ``progress`` says otherwise), saved under
    ``cache_dir`` by the spec's hash and reloaded when given. The same rows either way."""
    if mode == "stream":
        return SyntheticStream(spec, num_samples)
    if mode != "materialize":
        raise ValueError(f"mode must be 'materialize' or 'stream', got {mode!r}")
    show = num_samples > PROGRESS_MIN_ROWS if progress is None else progress
    if cache_dir is None:
        return _materialize(spec, num_samples, show)
    return _load_or_build(spec, num_samples, cache_dir, show)
