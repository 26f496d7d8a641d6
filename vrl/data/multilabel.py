"""Multi-label classification ("which colours are in the image?") for Curr-ReFT's curriculum.

Curr-ReFT (arXiv 2503.07065) asks its classification questions about *every* category in an image: a yes/no
statement in stage 1, a multi-select multiple-choice question in stage 2 ("pick all options that apply",
scored by the exact letter set) and an open list in stage 3 (scored by soft set-IoU,
:mod:`vrl.rewards.set_iou`). The synthetic suite's questions (:mod:`vrl.data.tasks`) each have one true
value, so its multiple-choice form always has exactly one correct letter. This module adds the multi-label
kind on the same scenes and rendering, posed as:

- ``yesno``: "Is there a {value} object in the image?" about a present or an absent value (1/2 each);
- ``mc``: four options from the value set, at least one of them present; the answer is every present
  option's letter in letter order (``"A,C"``);
- ``open``: the present values, sorted and comma-separated (``"blue, red"``).

:func:`build_with_classify` mixes this ``classify`` task into the synthetic tasks, so a stage's data is one
stream with one ``formats`` knob. Rows are rendered on access, like ``build_synthetic(mode="stream")``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from vrl.data.scene import PALETTE, SHAPES, render, sample_scene
from vrl.data.synthetic import SyntheticSpec, SyntheticStream, build_synthetic
from vrl.data.tasks import FORMATS, OBJECTS_BY_DIFFICULTY, OPTION_LETTERS, row_rng

#: The task name of multi-label rows (what a label-set reward selects on).
CLASSIFY = "classify"
#: Attribute -> its values (the option and label space).
ATTRIBUTES: dict[str, tuple[str, ...]] = {"color": tuple(PALETTE), "shape": SHAPES}
_NOUNS = {"color": "colours", "shape": "shapes"}


def pose_multilabel(
    rng: random.Random, attribute: str, present: Sequence[str], fmt: str
) -> tuple[str, str, str, list[str]]:
    """Prompt, answer, answer type and options of "which ``attribute`` values are present" in ``fmt``."""
    space, noun = ATTRIBUTES[attribute], _NOUNS[attribute]
    if fmt == "open":
        question = f"<image>\nWhich {noun} are in the image? List them, separated by commas."
        return question, ", ".join(sorted(present)), "text", []
    if fmt == "yesno":
        absent = [v for v in space if v not in present]
        truth = not absent or rng.random() < 0.5
        value = rng.choice(sorted(present) if truth else absent)
        thing = f"{value} object" if attribute == "color" else value
        return f"<image>\nIs there a {thing} in the image? Answer yes or no.", "yes" if truth else "no", "yesno", []
    first = rng.choice(sorted(present))
    options = [first, *rng.sample([v for v in space if v != first], len(OPTION_LETTERS) - 1)]
    rng.shuffle(options)
    listing = "\n".join(f"{OPTION_LETTERS[k]}. {o}" for k, o in enumerate(options))
    letters = [OPTION_LETTERS[k] for k, o in enumerate(options) if o in present]
    question = f"<image>\nWhich {noun} are in the image? Select all that apply.\n{listing}\nAnswer with the letters."
    return question, ",".join(letters), "choice", options


@dataclass(frozen=True)
class MixSpec:
    """Row ``i``: a ``classify`` question with probability 1 / (number of tasks), else ``synthetic.row(i)``."""

    synthetic: SyntheticSpec
    attributes: tuple[str, ...]
    share: float

    def row(self, index: int) -> dict:
        spec = self.synthetic
        rng = row_rng("vrl-multilabel", spec.seed, spec.split, index)
        if rng.random() >= self.share:
            return spec.row(index)
        attribute, fmt = rng.choice(self.attributes), rng.choice(spec.formats)
        difficulty = rng.choice(spec.difficulties)
        scene = sample_scene(rng, rng.randint(*OBJECTS_BY_DIFFICULTY[difficulty]), spec.image_size)
        present = sorted({getattr(o, attribute) for o in scene.objects})
        prompt, answer, answer_type, options = pose_multilabel(rng, attribute, present, fmt)
        meta = {
            "scene": scene.to_dict(),
            "task": CLASSIFY,
            "format": fmt,
            "difficulty": difficulty,
            "question": f"classify_{attribute}",
            "options": options,
            "value": present,
            "answer": answer,
            "image_size": [scene.width, scene.height],
            "seed": spec.seed,
            "split": spec.split,
            "index": index,
        }
        digest = spec.digest("multilabel", list(self.attributes), self.share)[:8]
        return {
            "prompt": prompt,
            "images": [render(scene)],
            "answer": answer,
            "answer_type": answer_type,
            "task": CLASSIFY,
            "format": fmt,
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"cls-{spec.split}-{digest}-{index:06d}",
        }


def build_with_classify(
    tasks: Sequence[str] = ("color", "shape", "count", "spatial", "chart", CLASSIFY),
    formats: Sequence[str] = FORMATS,
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 112,
    difficulties: Sequence[int] = (1, 2, 3),
    attributes: Sequence[str] = ("color", "shape"),
) -> SyntheticStream:
    """The synthetic tasks plus multi-label ``classify`` questions, as one stream (rendered on access).

    Args:
        tasks: task families as in :func:`vrl.data.synthetic.build_synthetic`, plus ``classify``; each is
            drawn with probability 1 / len(tasks) (the others through the synthetic suite's own draw).
        formats: ``yesno``, ``mc``, ``open`` (a Curr-ReFT stage picks one).
        num_samples: rows.
        seed: base seed (the run's ``${seed}``).
        split: mixed into every row's seed.
        image_size: square image side in pixels.
        difficulties: 1..3, the number of objects in a scene.
        attributes: what ``classify`` asks about: ``color`` (6 values) and/or ``shape`` (4 values).
    """
    others = [t for t in tasks if t != CLASSIFY]
    if CLASSIFY not in tasks or not others:
        raise ValueError(f"tasks must hold {CLASSIFY!r} and at least one synthetic task, got {list(tasks)}")
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown or not attributes:
        raise ValueError(f"attributes must be a non-empty subset of {list(ATTRIBUTES)}, got {list(attributes)}")
    common = {"seed": seed, "split": split, "image_size": image_size, "difficulties": difficulties}
    synthetic = build_synthetic(others, formats, num_samples, mode="stream", **common).spec
    return SyntheticStream(MixSpec(synthetic, tuple(attributes), 1 / len(tasks)), num_samples)
