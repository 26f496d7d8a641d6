"""Verifiable question families over scene graphs, each posed as yes/no, multiple choice or open question.

A task samples a graph (:mod:`vrl.data.scene`) and reads one *fact* off it: a question, the true value
and the set of values the question could plausibly have. :func:`_pose` turns any fact into the three
formats Curr-ReFT's curriculum steps through (yes/no -> multiple choice -> open), so every task gets all
three by the same code path:

- ``open``: the question plus a one-line answer instruction; the answer is the value.
- ``mc``: up to four options drawn from the value set (the true value always among them, at a uniformly
  random letter); the answer is the letter.
- ``yesno``: a statement proposing the true value with probability 1/2, else a wrong value from the set.

Value sets never depend on the true value (counts are always 0..6, chart values 1..9), so the options of
a multiple-choice question carry no hint of the answer. Prompts stay short for tiny models' contexts.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vrl.data.scene import CATEGORIES, CHART_MAX, PALETTE, SHAPES, Chart, Scene, sample_chart, sample_scene

FORMATS = ("yesno", "mc", "open")
OPTION_LETTERS = "ABCD"
#: Largest object count a scene can hold; count questions offer 0..MAX_OBJECTS.
MAX_OBJECTS = 6
#: Objects per scene (or bars per chart) by difficulty level: more distractors is harder.
OBJECTS_BY_DIFFICULTY = {1: (1, 2), 2: (3, 4), 3: (5, MAX_OBJECTS)}
BARS_BY_DIFFICULTY = {1: 3, 2: 4, 3: 5}
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
DEFAULT_SINGLE_COLORS = ("red", "green", "blue")

#: Question kind -> (open question, yes/no statement). ``{v}`` is the value a yes/no question proposes.
TEMPLATES: dict[str, tuple[str, str]] = {
    "color": ("What colour is the {shape}?", "Is the {shape} {v}?"),
    "single_color": ("What colour is the shape?", "Is the shape {v}?"),
    "shape": ("What shape is the {color} object?", "Is the {color} object a {v}?"),
    "count_color": ("How many {color} objects are there?", "Are there {v} {color} objects?"),
    "count_shape": ("How many {plural} are there?", "Are there {v} {plural}?"),
    "count_all": ("How many objects are there?", "Are there {v} objects?"),
    "grounding": ("What is the bounding box of the {name}?", ""),
    "spatial_x": ("Is the {a} left or right of the {b}?", "Is the {a} {v} the {b}?"),
    "spatial_y": ("Is the {a} above or below the {b}?", "Is the {a} {v} the {b}?"),
    "chart_value": ("What is the value of the {category} bar?", "Is the value of the {category} bar {v}?"),
    "chart_argmax": ("Which bar is the tallest?", "Is the {v} bar the tallest?"),
}
ONE_WORD = "Answer with one word."
A_NUMBER = "Answer with a number."
A_BOX = "Answer as [x1, y1, x2, y2]."
A_LETTER = "Answer with the letter."
YES_NO = "Answer yes or no."


@dataclass(frozen=True)
class TaskOptions:
    """Task knobs that are not per row.

    Attributes:
        chart_value_labels: print values above bars (read a number) rather than only draw heights.
        single_color_palette: the colours of the ``single_color`` learning-test task.
        single_color_radius: radius of the ``single_color`` shape as a fraction of the canvas; None draws
            the usual small/large sizes. A large shape makes colour the dominant image signal, which a
            randomly initialised tiny vision tower can pick up in a few hundred RL steps.
    """

    chart_value_labels: bool = True
    single_color_palette: tuple[str, ...] = DEFAULT_SINGLE_COLORS
    single_color_radius: float | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.single_color_palette if c not in PALETTE]
        if unknown or len(set(self.single_color_palette)) < 2:
            raise ValueError(f"single_color_palette needs >= 2 distinct names from {list(PALETTE)}")


@dataclass(frozen=True)
class Fact:
    """One thing a question can ask about a graph, before it is given a format.

    Attributes:
        kind: template key in :data:`TEMPLATES`.
        fields: values of the template's slots.
        value: the true value.
        space: the values the question could have, independent of the true one (options and wrong
            yes/no proposals come from here).
        answer_type: the open form's answer type.
        instruction: the open form's answer instruction.
        target: scene-graph dicts of what the question is about.
        phrases: how a value reads inside the yes/no statement (``left`` -> ``left of``).
    """

    kind: str
    fields: dict[str, str]
    value: str
    space: tuple[str, ...]
    answer_type: str
    instruction: str
    target: list[dict]
    phrases: dict[str, str] = field(default_factory=dict)

    def question(self) -> str:
        return TEMPLATES[self.kind][0].format(**self.fields)

    def statement(self, v: str) -> str:
        return TEMPLATES[self.kind][1].format(**self.fields, v=self.phrases.get(v, v))


@dataclass
class Question:
    """A posed question: the row's text, its verifiable answer and what produced them.

    Attributes:
        graph: the scene or chart the question is about (not rendered yet).
        task: task family, a key of :data:`TASKS`.
        format: ``yesno``, ``mc`` or ``open``.
        difficulty: 1..3.
        kind: the template asked, a key of :data:`TEMPLATES` (e.g. ``count_shape``).
        prompt: ``<image>`` placeholder, question, options (mc) and the answer instruction.
        answer: ground truth in the form ``answer_type`` expects (letter for mc, yes/no for yesno).
        answer_type: ``text``, ``number``, ``bbox``, ``choice`` or ``yesno``.
        value: the true value in words whatever the format, so another format can be derived.
        target: scene-graph dicts of the objects or bars the question is about.
        subject: the template's slot values (e.g. ``{"color": "red"}``).
        options: the listed options, in letter order (mc only).
        asked: the value a yes/no statement proposes (yesno only).
    """

    graph: Scene | Chart
    task: str
    format: str
    difficulty: int
    kind: str
    prompt: str
    answer: str
    answer_type: str
    value: str
    target: list[dict]
    subject: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    asked: str | None = None

    def meta(self) -> dict:
        """The JSON-able record methods derive annotations from (scene graph included)."""
        return {
            "scene": self.graph.to_dict(),
            "task": self.task,
            "format": self.format,
            "difficulty": self.difficulty,
            "question": self.kind,
            "subject": self.subject,
            "target": self.target,
            "options": self.options,
            "value": self.value,
            "asked": self.asked,
            "answer": self.answer,
            "image_size": [self.graph.width, self.graph.height],
        }


def _num_objects(rng: random.Random, difficulty: int) -> int:
    return rng.randint(*OBJECTS_BY_DIFFICULTY[difficulty])


def _color(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    scene = sample_scene(rng, _num_objects(rng, difficulty), size, unique="shape")
    obj = rng.choice(scene.objects)
    fact = Fact("color", {"shape": obj.shape}, obj.color, tuple(PALETTE), "text", ONE_WORD, [obj.to_dict()])
    return scene, fact


def _single_color(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    # One object, colour uniform over the palette (sample_scene picks a uniform (colour, shape) pair), and a
    # prompt that never changes: an image-blind policy can do no better than 1 / len(palette).
    scene = sample_scene(rng, 1, size, colors=opts.single_color_palette, radius_fraction=opts.single_color_radius)
    obj = scene.objects[0]
    space = tuple(opts.single_color_palette)
    return scene, Fact("single_color", {}, obj.color, space, "text", ONE_WORD, [obj.to_dict()])


def _shape(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    scene = sample_scene(rng, _num_objects(rng, difficulty), size, unique="color")
    obj = rng.choice(scene.objects)
    fact = Fact("shape", {"color": obj.color}, obj.shape, SHAPES, "text", ONE_WORD, [obj.to_dict()])
    return scene, fact


def _count(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    scene = sample_scene(rng, _num_objects(rng, difficulty), size)
    kind = rng.choice(["count_color", "count_shape", "count_all"])
    present = rng.random() < 0.8  # else any attribute value, so that 0 is a possible answer
    if kind == "count_color":
        color = rng.choice(scene.objects).color if present else rng.choice(list(PALETTE))
        fields, hits = {"color": color}, [o for o in scene.objects if o.color == color]
    elif kind == "count_shape":
        shape = rng.choice(scene.objects).shape if present else rng.choice(SHAPES)
        fields, hits = {"plural": f"{shape}s"}, [o for o in scene.objects if o.shape == shape]
    else:
        fields, hits = {}, list(scene.objects)
    space = tuple(str(k) for k in range(MAX_OBJECTS + 1))
    target = [o.to_dict() for o in hits]
    return scene, Fact(kind, fields, str(len(hits)), space, "number", A_NUMBER, target)


def _grounding(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    scene = sample_scene(rng, _num_objects(rng, difficulty), size)
    obj = rng.choice(scene.objects)
    box = json.dumps(list(obj.bbox))  # "[x1, y1, x2, y2]": inclusive pixel corners
    return scene, Fact("grounding", {"name": obj.name}, box, (), "bbox", A_BOX, [obj.to_dict()])


def _spatial(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Scene, Fact]:
    scene = sample_scene(rng, max(2, _num_objects(rng, difficulty)), size)
    if len(scene.objects) < 2:
        raise ValueError(f"image_size={size} is too small to place two objects")
    a, b = rng.sample(scene.objects, 2)
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.bbox, b.bbox
    # Only ask along an axis where the two boxes are disjoint: there the relation is unambiguous, and the
    # opposite relation (the "no" case) is clearly false. Placement guarantees at least one such axis.
    axes = []
    if ax2 < bx1 or bx2 < ax1:
        axes.append(("spatial_x", "left" if ax2 < bx1 else "right", ("left", "right")))
    if ay2 < by1 or by2 < ay1:
        axes.append(("spatial_y", "above" if ay2 < by1 else "below", ("above", "below")))
    kind, value, space = rng.choice(axes)
    target = [a.to_dict(), b.to_dict()]
    fact = Fact(kind, {"a": a.name, "b": b.name}, value, space, "text", ONE_WORD, target, RELATIONS)
    return scene, fact


def _chart(rng: random.Random, difficulty: int, size: int, opts: TaskOptions) -> tuple[Chart, Fact]:
    chart = sample_chart(rng, BARS_BY_DIFFICULTY[difficulty], size, opts.chart_value_labels)
    bars = chart.bars()
    if rng.random() < 0.5:
        bar = rng.choice(bars)
        space = tuple(str(v) for v in range(1, CHART_MAX + 1))
        fields = {"category": bar["category"]}
        return chart, Fact("chart_value", fields, str(bar["value"]), space, "number", A_NUMBER, [bar])
    top = max(bars, key=lambda b: b["value"])
    return chart, Fact("chart_argmax", {}, top["category"], chart.categories, "text", ONE_WORD, [top])


@dataclass(frozen=True)
class TaskSpec:
    """A task family: how to sample a graph and a fact, and which formats make sense for it."""

    make: Callable[[random.Random, int, int, TaskOptions], tuple[Scene | Chart, Fact]]
    formats: tuple[str, ...] = FORMATS


TASKS: dict[str, TaskSpec] = {
    "color": TaskSpec(_color),
    "shape": TaskSpec(_shape),
    "count": TaskSpec(_count),
    "grounding": TaskSpec(_grounding, ("open",)),  # a box has no sensible yes/no or option form
    "spatial": TaskSpec(_spatial),
    "chart": TaskSpec(_chart),
    "single_color": TaskSpec(_single_color, ("open",)),  # the learning test: blind best rate 1/palette
}


def _pose(rng: random.Random, fact: Fact, fmt: str) -> tuple[str, str, str, list[str], str | None]:
    """Text, answer, answer type, options and proposed value of ``fact`` asked in format ``fmt``."""
    if fmt == "open":
        return f"<image>\n{fact.question()} {fact.instruction}", fact.value, fact.answer_type, [], None
    wrong = [v for v in fact.space if v != fact.value]
    if fmt == "yesno":
        truth = rng.random() < 0.5
        asked = fact.value if truth else rng.choice(wrong)
        return f"<image>\n{fact.statement(asked)} {YES_NO}", "yes" if truth else "no", "yesno", [], asked
    options = [fact.value, *rng.sample(wrong, min(len(OPTION_LETTERS) - 1, len(wrong)))]
    rng.shuffle(options)
    listing = "\n".join(f"{OPTION_LETTERS[k]}. {o}" for k, o in enumerate(options))
    letter = OPTION_LETTERS[options.index(fact.value)]
    return f"<image>\n{fact.question()}\n{listing}\n{A_LETTER}", letter, "choice", options, None


def valid_pairs(tasks: Sequence[str], formats: Sequence[str]) -> list[tuple[str, str]]:
    """The (task, format) combinations a mix can draw from, in a stable order."""
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    pairs = [(t, f) for t in tasks for f in formats if f in TASKS[t].formats]
    if not pairs:
        raise ValueError(f"no task in {list(tasks)} supports any format in {list(formats)}")
    return pairs


def generate(
    task: str,
    fmt: str,
    rng: random.Random,
    image_size: int = 112,
    difficulty: int = 1,
    options: TaskOptions | None = None,
) -> Question:
    """Sample a graph for ``task`` and pose one question about it in format ``fmt``.

    Args:
        task: a key of :data:`TASKS`.
        fmt: ``yesno``, ``mc`` or ``open``; must be in the task's formats.
        rng: the row's generator (the question depends on nothing else).
        image_size: square canvas side in pixels.
        difficulty: 1..3, the number of distractor objects or bars (``single_color`` ignores it).
        options: task knobs shared by all rows.

    Returns:
        The question; its graph is not rendered yet.
    """
    spec = TASKS[task]
    if fmt not in spec.formats:
        raise ValueError(f"task {task!r} has no {fmt!r} format (has {spec.formats})")
    if task == "single_color":
        difficulty = 1
    graph, fact = spec.make(rng, difficulty, image_size, options or TaskOptions())
    prompt, answer, answer_type, opts, asked = _pose(rng, fact, fmt)
    return Question(
        graph=graph,
        task=task,
        format=fmt,
        difficulty=difficulty,
        kind=fact.kind,
        prompt=prompt,
        answer=answer,
        answer_type=answer_type,
        value=fact.value,
        target=fact.target,
        subject=fact.fields,
        options=opts,
        asked=asked,
    )


def row_rng(*parts: object) -> random.Random:
    """A generator seeded by a stable hash of ``parts`` (Python's ``hash`` of str varies per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


_WORD = re.compile(r"[A-Za-z]+|\d")


def words(text: str) -> list[str]:
    """The units :func:`vocabulary` lists: letter runs and single digits (the ``<image>`` tag excluded)."""
    return _WORD.findall(text.replace("<image>", " "))


def vocabulary() -> list[str]:
    """Every word a prompt or answer can contain, case kept, sorted.

    Colour and shape names (and plurals), digits, yes/no, option letters, relation words, chart
    categories, plus the fixed words of the question templates and instructions. The tiny tokenizer is
    trained so that these are single tokens.
    """
    vocab = set(PALETTE) | set(SHAPES) | {f"{s}s" for s in SHAPES} | set(CATEGORIES)
    vocab |= {str(d) for d in range(10)} | {"yes", "no"} | set(OPTION_LETTERS)
    vocab |= set(" ".join(RELATIONS.values()).split())
    fixed = [t for pair in TEMPLATES.values() for t in pair] + [ONE_WORD, A_NUMBER, A_BOX, A_LETTER, YES_NO]
    for text in fixed:
        vocab |= set(words(re.sub(r"\{\w+\}", " ", text)))
    return sorted(vocab)


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Sample texts, ``prompt + "\\n" + answer``, cycling through every (task, format) pair and difficulty.

    Meant for training the tiny offline tokenizer so answer words become single tokens; prompts keep the
    ``<image>`` placeholder. No image is rendered, so this is fast.

    Args:
        n: number of texts.
        seed: changes the sampled scenes, not the coverage.

    Returns:
        ``n`` strings.
    """
    pairs = valid_pairs(list(TASKS), FORMATS)
    out = []
    for k in range(n):
        task, fmt = pairs[k % len(pairs)]
        difficulty = 1 + (k // len(pairs)) % 3
        q = generate(task, fmt, row_rng("corpus", seed, k), difficulty=difficulty)
        out.append(f"{q.prompt}\n{q.answer}")
    return out


def single_token_words() -> list[str]:
    """The alphabetic words of :func:`vocabulary`: the tiny tokenizer makes each one token (digits are
    always split one by one by the Qwen2 pre-tokenizer, so they cannot be)."""
    return [w for w in vocabulary() if w.isalpha()]
