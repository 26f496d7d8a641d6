"""ViCrit's caption-corruption task, synthetic: name the one wrong phrase in a paragraph describing the image.

ViCrit (Wang et al., arXiv 2506.10128; spec others.md §3) injects one subtle error into a paragraph-length caption
(an object, an attribute, a count or a spatial relation) and rewards the model for naming the corrupted span. Here
the caption is written from the scene graph (:mod:`vrl.data.scene`), so the error is known exactly and is
guaranteed false for the image:

- a count sentence: ``The image holds three shapes.`` (``count``: another number 1..7);
- one sentence per described object: ``A small red circle is at the top left.`` (``attribute``: the size flipped,
  or a colour no object of that shape has; ``object``: a shape no object of that colour has);
- up to two relations between objects whose boxes are disjoint along the axis: ``The red circle is left of the
  blue star.`` (``relation``: the opposite one).

One error kind is drawn uniformly among those the scene allows, then one span of it. Every row keeps ViCrit's
fields in ``meta``: ``original_caption``, ``changed_caption``, ``original_noun_phrases`` and
``changed_noun_phrases`` (the phrase around the error, e.g. ``small red circle`` -> ``small blue circle``), and
``error_type``. The answer is the changed segment of the phrase as the released ``score.py`` computes it (the
changed phrase's words after the common prefix and suffix are removed: ``blue``), so the exact-span reward and the
bench's relaxed correctness (:mod:`vrl.rewards.vicrit`) agree on what is right.

:func:`load_vicrit` maps the published rows (``zyang39/ViCrit-Train``, ``russwang/ViCrit-Bench``, as local files)
to the same row schema.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from vrl.data.scene import PALETTE, SHAPES, Scene, SceneObject, render, sample_scene
from vrl.data.synthetic import FEATURES, SyntheticStream, build_rows
from vrl.data.tasks import OBJECTS_BY_DIFFICULTY, row_rng

ERROR_TYPES = ("object", "attribute", "count", "relation")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
#: Bump when generation changes in a way that alters rows (part of the cache key).
GENERATOR_VERSION = 1
#: ViCrit's evaluation prompt (``model_vicrit_qwen.py``), shortened for tiny contexts, with the answer in \boxed{}.
PROMPT = (
    "<image>\nThis description of the image has exactly one error.\nDescription: {caption}\n"
    "Find the wrong phrase and put it in \\boxed{{}}."
)
#: The published row schemas :func:`load_vicrit` reads (others.md §3).
SCHEMAS = {
    "train": ("image_path", "problem", "original_caption", "changed_caption", "solution_original", "solution_target"),
    "bench": ("image", "changed_caption", "original_noun_phrases", "changed_noun_phrases"),
}


@dataclass
class Span:
    """One sentence of the caption, built around a phrase that may be corrupted.

    Attributes:
        before: the sentence text before the phrase.
        phrase: the phrase (ViCrit's noun phrase).
        after: the sentence text after it.
        wrong: error kind (:data:`ERROR_TYPES`) -> the false replacements of the phrase of that kind.
    """

    before: str
    phrase: str
    after: str
    wrong: dict[str, list[str]]

    def sentence(self, phrase: str | None = None) -> str:
        return f"{self.before}{self.phrase if phrase is None else phrase}{self.after}"


def region(obj: SceneObject, width: int, height: int) -> str:
    """Where an object sits on a 3 x 3 grid of the canvas: ``top left`` ... ``centre`` ... ``bottom right``."""
    col = ("left", "", "right")[min(2, 3 * obj.x // width)]
    row = ("top", "", "bottom")[min(2, 3 * obj.y // height)]
    return f"{row} {col}".strip() or "centre"


def count_phrase(n: int) -> str:
    return f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s")


def caption_spans(scene: Scene, rng: random.Random, max_relations: int = 2) -> list[Span]:
    """The caption of ``scene`` as sentences, each built around one corruptible phrase (module docstring).

    The text alone must not give the error away, so: a random subset of the objects is described (a count is not
    the number of object sentences), a wrong count is never below the number described, and an object named in a
    relation sentence only gets size errors (a colour or shape change would contradict that sentence's name) and
    no region (which could contradict the relation).
    """
    objects = list(scene.objects)
    rng.shuffle(objects)
    described = objects[: rng.randint(1, len(objects))]
    pairs = [(a, b) for i, a in enumerate(described) for b in described[i + 1 :]]
    rng.shuffle(pairs)
    relations = [(a, b, r) for a, b in pairs if (r := _relation(a, b)) is not None][:max_relations]
    related = {o for a, b, _ in relations for o in (a, b)}
    n, floor = len(objects), max(1, len(described))
    spans = [
        Span("The image holds ", count_phrase(n), ".", {"count": [count_phrase(k) for k in range(floor, 8) if k != n]})
    ]
    names = {(o.color, o.shape) for o in objects}
    for o in described:
        other_size = "large" if o.size == "small" else "small"
        wrong = {"attribute": [f"{other_size} {o.color} {o.shape}"], "object": []}
        if o not in related:
            wrong["attribute"] += [f"{o.size} {c} {o.shape}" for c in PALETTE if (c, o.shape) not in names]
            wrong["object"] = [f"{o.size} {o.color} {s}" for s in SHAPES if (o.color, s) not in names]
        if o in related:  # no region: it could contradict the relation in the text alone
            spans.append(Span("There is a ", f"{o.size} {o.color} {o.shape}", ".", wrong))
        else:
            spans.append(
                Span(
                    "A ", f"{o.size} {o.color} {o.shape}", f" is at the {region(o, scene.width, scene.height)}.", wrong
                )
            )
    for a, b, (right, wrong_relation) in relations:
        spans.append(
            Span(f"The {a.name} is ", f"{right} the {b.name}", ".", {"relation": [f"{wrong_relation} the {b.name}"]})
        )
    return spans


def _relation(a: SceneObject, b: SceneObject) -> tuple[str, str] | None:
    """(true, false) relation of ``a`` to ``b`` along an axis where their boxes are disjoint; None if none is."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.bbox, b.bbox
    if ax2 < bx1 or bx2 < ax1:
        return ("left of", "right of") if ax2 < bx1 else ("right of", "left of")
    if ay2 < by1 or by2 < ay1:
        return ("above", "below") if ay2 < by1 else ("below", "above")
    return None


def changed_segment(before: str, after: str) -> list[str]:
    """The words of ``after`` left when the longest common word prefix and suffix with ``before`` are removed.

    ViCrit's ``extract_changed_segment`` (github.com/si0wang/ViCrit @727f1ee ``score.py``): whitespace split, the
    suffix never overlapping the prefix.
    """
    b, a = before.split(), after.split()
    prefix = 0
    while prefix < len(b) and prefix < len(a) and b[prefix] == a[prefix]:
        prefix += 1
    suffix = 0
    while suffix < len(b) - prefix and suffix < len(a) - prefix and b[-(suffix + 1)] == a[-(suffix + 1)]:
        suffix += 1
    return a[prefix : len(a) - suffix]


def corrupt(spans: list[Span], rng: random.Random, kinds: tuple[str, ...] = ERROR_TYPES) -> dict[str, Any]:
    """Alter one phrase: a kind drawn uniformly among ``kinds`` the spans offer, then a span and a false phrase.

    Returns:
        ViCrit's fields: ``original_caption``, ``changed_caption``, ``original_noun_phrases``,
        ``changed_noun_phrases``, ``error_type`` and ``answer`` (the changed segment, space-joined).
    """
    offered = [k for k in kinds if any(s.wrong.get(k) for s in spans)]
    if not offered:
        raise ValueError(f"no corruptible phrase of kinds {kinds} in this caption")
    kind = rng.choice(offered)
    index = rng.choice([i for i, s in enumerate(spans) if s.wrong.get(kind)])
    wrong = rng.choice(spans[index].wrong[kind])
    original = " ".join(s.sentence() for s in spans)
    changed = " ".join(s.sentence(wrong if i == index else None) for i, s in enumerate(spans))
    return {
        "original_caption": original,
        "changed_caption": changed,
        "original_noun_phrases": spans[index].phrase,
        "changed_noun_phrases": wrong,
        "error_type": kind,
        "answer": " ".join(changed_segment(spans[index].phrase, wrong)),
    }


@dataclass(frozen=True)
class ViCritSpec:
    """Everything that determines the rows but their number; see :func:`build_vicrit` for the fields."""

    seed: int
    split: str
    image_size: int
    difficulties: tuple[int, ...]
    error_types: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [k for k in self.error_types if k not in ERROR_TYPES]
        if unknown or not self.error_types:
            raise ValueError(f"error_types must be a non-empty subset of {ERROR_TYPES}; got {self.error_types}")
        if not self.difficulties or any(d not in OBJECTS_BY_DIFFICULTY for d in self.difficulties):
            raise ValueError(f"difficulties must be a non-empty subset of 1, 2, 3; got {self.difficulties}")
        if self.image_size < 48:
            raise ValueError(f"image_size must be >= 48 px to fit shapes; got {self.image_size}")

    def digest(self, *extra: object) -> str:
        blob = json.dumps(["vicrit", GENERATOR_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-vicrit", self.seed, self.split, index)
        difficulty = rng.choice(self.difficulties)
        # relations need two objects; a count of 1..6 keeps every count word of the task in 1..7
        scene = sample_scene(rng, max(2, rng.randint(*OBJECTS_BY_DIFFICULTY[difficulty])), self.image_size)
        fields = corrupt(caption_spans(scene, rng), rng, self.error_types)
        meta = {**{k: v for k, v in fields.items() if k != "answer"}, "scene": scene.to_dict()}
        meta |= {"difficulty": difficulty, "seed": self.seed, "split": self.split, "index": index}
        return {
            "prompt": PROMPT.format(caption=fields["changed_caption"]),
            "images": [render(scene)],
            "answer": fields["answer"],
            "answer_type": "text",
            "task": "vicrit",
            "format": "open",
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"vicrit-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


def build_vicrit(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 112,
    difficulties: tuple[int, ...] | list[int] = (1, 2, 3),
    error_types: tuple[str, ...] | list[str] = ERROR_TYPES,
    mode: str = "materialize",
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build the synthetic ViCrit dataset (``data=vicrit``).

    Args:
        num_samples: number of rows.
        seed: base seed; usually the run's ``${seed}``.
        split: mixed into every row's seed (``val`` rows are independent draws).
        image_size: square image side in pixels.
        difficulties: object counts to draw from (1: two, 2: three or four, 3: five or six); more objects make a
            longer caption with more places for the error.
        error_types: which kinds of error to inject (``object``, ``attribute``, ``count``, ``relation``).
        mode: ``materialize`` (a ``datasets.Dataset``) or ``stream`` (rows rendered on access; the same rows).
        cache_dir: with ``materialize``, save under this folder by argument hash and reload; None: memory only.
        progress: progress bar while materialising; None shows one above 300 rows.
    """
    spec = ViCritSpec(
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        difficulties=tuple(int(d) for d in difficulties),
        error_types=tuple(str(k) for k in error_types),
    )
    return build_rows(spec, num_samples, mode, cache_dir, progress)  # type: ignore[arg-type]


def load_vicrit(
    path: str, schema: str = "bench", image_root: str | None = None, answer_field: str = "solution_target"
) -> datasets.Dataset:
    """Rows of a local copy of the published ViCrit data (JSON, JSON lines or Parquet) in vrl's row schema.

    ``bench`` rows (``russwang/ViCrit-Bench``: ``image``, ``changed_caption``, ``original_noun_phrases``,
    ``changed_noun_phrases``) get :data:`PROMPT` over the changed caption, and the changed segment of the noun
    phrases as the answer. ``train`` rows (``zyang39/ViCrit-Train``: ``image_path``, ``problem``,
    ``original_caption``, ``changed_caption``, ``solution_original``, ``solution_target``) keep their ``problem`` as
    the prompt (an ``<image>`` placeholder added in front when it has none) and ``answer_field`` as the answer:
    which solution field holds the corrupted span is not documented (others.md §3 lists the names only), so it is
    a knob. The published fields are kept in ``meta``.

    Args:
        path: the file.
        schema: ``bench`` or ``train``.
        image_root: folder the ``image_path`` / string ``image`` values are relative to (None: the file's folder).
        answer_field: ``train`` only: the field holding the span to name.

    Raises:
        ValueError: an unknown schema or suffix, or a row lacking a field (naming the file, row and field), or an
            image file that does not exist.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"load_vicrit: schema must be one of {sorted(SCHEMAS)}, got {schema!r}")
    file = Path(path).expanduser()
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(file.suffix)
    if builder is None:
        raise ValueError(f"load_vicrit: {file}: expected a .json, .jsonl or .parquet file")
    records = datasets.load_dataset(builder, data_files=str(file), split="train")
    root = Path(image_root).expanduser() if image_root else file.parent
    rows = [_published_row(dict(r), schema, i, file, root, answer_field) for i, r in enumerate(records)]
    return datasets.Dataset.from_list(rows, features=FEATURES)


def _published_row(record: dict, schema: str, index: int, file: Path, root: Path, answer_field: str) -> dict:
    needed = SCHEMAS[schema] + ((answer_field,) if schema == "train" else ())
    for name in needed:
        if record.get(name) is None:
            raise ValueError(f"load_vicrit: {file} row {index}: field {name!r} is missing or null")
    meta = {k: v for k, v in record.items() if k not in ("image", "image_path") and isinstance(v, str | int | float)}
    if schema == "bench":
        segment = changed_segment(record["original_noun_phrases"].lower(), record["changed_noun_phrases"].lower())
        if not segment:
            raise ValueError(f"load_vicrit: {file} row {index}: the noun phrases do not differ")
        prompt, answer, image = PROMPT.format(caption=record["changed_caption"]), " ".join(segment), record["image"]
    else:
        prompt = record["problem"] if "<image>" in record["problem"] else f"<image>\n{record['problem']}"
        answer, image = str(record[answer_field]), record["image_path"]
    return {
        "prompt": prompt,
        "images": [_image(image, root, file, index)],
        "answer": answer,
        "answer_type": "text",
        "task": "vicrit",
        "format": "open",
        "meta": json.dumps(meta, sort_keys=True),
        "uid": f"vicrit-{file.stem}-{index:06d}",
    }


def _image(value: Any, root: Path, file: Path, index: int) -> dict:
    """An image value for ``datasets.Image``: bytes as they are, a path resolved under ``root`` and checked."""
    if isinstance(value, dict) and value.get("bytes"):
        return {"bytes": value["bytes"], "path": None}
    if isinstance(value, bytes):
        return {"bytes": value, "path": None}
    name = value.get("path") if isinstance(value, dict) else value
    image = root / str(name)
    if not image.is_file():
        raise ValueError(f"load_vicrit: {file} row {index}: image {image} does not exist")
    return {"bytes": None, "path": str(image)}
