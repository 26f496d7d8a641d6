"""PEARL perception checklists (arXiv 2511.18437): sub-questions about the visual evidence, and their scoring.

PEARL pairs each reasoning question with a *checklist* of short, verifiable questions about what the image
shows. The policy answers the checklist in separate "probe" rollouts, and the fraction it gets right is the
perceptual reward (also the fidelity gate and the advantage weight; those live elsewhere). This module holds
only pure functions:

- :func:`checklist_from_scene` derives a checklist from the synthetic scene graph in a row's ``meta``;
- :func:`checklist_from_columns` parses the published ``probe_problem`` / ``probe_answer`` columns;
- :func:`probe_prompt` writes the probe question, :func:`parse_probe_answers` reads a probe response back;
- :func:`score_probe` / :func:`score_probes` compute the perceptual reward.

Tags: questions are ``<q1>...</q1><q2>...</q2>``, answers ``<a1>...</a1><a2>...</a2>``, as in the published
columns. Answers are checked by :class:`vrl.rewards.accuracy.Accuracy`, so a probe answer is right exactly
when the same text would be right as a main answer of that ``answer_type``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from random import Random

from vrl.data.scene import PALETTE, SHAPES, Chart, Scene, SceneObject, from_dict
from vrl.data.tasks import TEMPLATES, row_rng, vocabulary, words
from vrl.rewards.extract import last_boxed, normalize_text, parse_choices, parse_number, parse_yesno

#: Answer types a probe item may have (boxes are left out: a probe asks what is seen, not where in pixels).
PROBE_ANSWER_TYPES = ("yesno", "number", "text", "choice", "math")
#: ``checklist``: divide by the checklist length. ``answered``: divide by the answers emitted (published).
DENOMINATORS = ("checklist", "answered")

# Question forms that tasks.py has no template for. Every word is in vocabulary() (so the tiny tokenizer
# keeps probe prompts short) except the article "an", which grammar wins for ("an orange circle").
_EXISTS = "Is there {article} {color} {shape}?"
_BAR_COLOR = "What colour is the {category} bar?"
_BAR_OF_COLOR = "Which bar is {color}?"
_INSTRUCTION = "Answer as {tags}."

_NUMBER_LIKE = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ProbeItem:
    """One checklist sub-question and its verifiable answer.

    Attributes:
        question: the sub-question text, without tags or ``<image>``.
        answer: the ground truth in vrl's convention for ``answer_type`` (``yes``/``no``, ``"3"``, one
            word, option letters).
        answer_type: one of :data:`PROBE_ANSWER_TYPES`; decides how a probe answer is checked.
    """

    question: str
    answer: str
    answer_type: str

    def __post_init__(self) -> None:
        # A ground truth that cannot be parsed for its type would make every probe answer "wrong"; fail at
        # construction so the row is quarantined instead of silently scoring 0.
        if self.answer_type not in PROBE_ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {PROBE_ANSWER_TYPES}, got {self.answer_type!r}")
        parsers = {"yesno": parse_yesno, "number": parse_number, "choice": parse_choices, "text": normalize_text}
        parsed = parsers[self.answer_type](self.answer) if self.answer_type in parsers else self.answer.strip()
        if not self.question.strip() or parsed is None or parsed == "":
            raise ValueError(f"unverifiable probe item {self!r}")


@dataclass(frozen=True)
class _Candidate:
    tier: int  # 0: about the main question's target, 1: other evidence
    kind: str
    item: ProbeItem


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    return frozenset(vocabulary())


def _in_vocabulary(text: str) -> bool:
    return all(w in _vocabulary() for w in words(text))


def checklist_from_scene(meta: dict | str, max_items: int = 4, rng: Random | None = None) -> list[ProbeItem]:
    """A perception checklist read off the scene graph of a synthetic row.

    Items come from the graph alone, so each answer is exact. An item is only asked when it has one
    answer: "the circle" needs a unique circle, "the red object" a unique red object, relations need
    boxes disjoint along the asked axis (as :mod:`vrl.data.tasks` does). Items about ``meta["target"]``
    (what the main question is about) come first, because PEARL's checklists cover the evidence the
    reasoning needs; other items fill the rest. Kinds are spread (no second item of a kind before every
    kind of the same tier had one) so a checklist is not four counts. The main question's own open form
    is never an item, though an item may still imply its answer (e.g. "Is there a red circle?" for "What
    colour is the circle?"): probes are separate rollouts, so nothing leaks into the reasoning prompt. Not
    asked: sizes (``small``/``large`` are not in the tiny vocabulary, and size is relative) and boxes.

    Args:
        meta: the row's ``meta`` (dict or its JSON) holding ``scene``; a bare scene dict is accepted too.
        max_items: at most this many items (fewer when the graph offers fewer unambiguous ones).
        rng: picks among candidates. ``None`` seeds one from the graph and main question, so a row always
            gets the same checklist without threading a generator through the data pipeline.

    Returns:
        Up to ``max_items`` items; every answer word is in :func:`vrl.data.tasks.vocabulary`.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    meta = json.loads(meta) if isinstance(meta, str) else meta
    graph_dict = meta.get("scene", meta)
    if "kind" not in graph_dict:
        raise ValueError("meta holds no scene graph (expected meta['scene'] with a 'kind')")
    graph = from_dict(graph_dict)
    main = _main_question(meta)
    if rng is None:
        rng = row_rng("checklist", json.dumps(graph_dict, sort_keys=True), main)
    targets = target_keys(meta.get("target") or [])
    if meta.get("question") == "chart_argmax" and isinstance(graph, Chart):
        targets = set(graph.categories)  # "tallest" rests on every bar's value, not just the winner's
    make = _chart_candidates if isinstance(graph, Chart) else _scene_candidates
    unique: dict[str, _Candidate] = {}
    for cand in make(graph, targets, rng):  # two red objects both yield "How many red objects...": keep one
        q = cand.item.question
        if q != main and _in_vocabulary(cand.item.answer) and (q not in unique or cand.tier < unique[q].tier):
            unique[q] = cand
    pool = list(unique.values())
    rng.shuffle(pool)
    seen: Counter[tuple[int, str]] = Counter()
    ranked = []
    for pos, cand in enumerate(pool):
        ranked.append(((cand.tier, seen[cand.tier, cand.kind], pos), cand.item))
        seen[cand.tier, cand.kind] += 1
    ranked.sort(key=lambda r: r[0])
    return [item for _, item in ranked[:max_items]]


def _main_question(meta: dict) -> str | None:
    """The open form of the row's own question, which a checklist must not repeat."""
    try:
        return TEMPLATES[meta["question"]][0].format(**(meta.get("subject") or {}))
    except (KeyError, IndexError, TypeError):
        return None


def target_keys(target: list[dict]) -> set[str]:
    """Names of target objects (``red circle``) or categories of target bars."""
    return {t["category"] if "category" in t else f"{t.get('color')} {t.get('shape')}" for t in target}


def _scene_candidates(scene: Scene, targets: set[str], rng: Random) -> list[_Candidate]:
    objs = scene.objects
    shapes, colors = Counter(o.shape for o in objs), Counter(o.color for o in objs)
    names = Counter(o.name for o in objs)
    out = [_Candidate(1, "count_all", ProbeItem(TEMPLATES["count_all"][0], str(len(objs)), "number"))]

    def add(about: list[SceneObject], kind: str, question: str, answer: str, answer_type: str) -> None:
        tier = 0 if any(o.name in targets for o in about) else 1
        out.append(_Candidate(tier, kind, ProbeItem(question, answer, answer_type)))

    for o in objs:
        if shapes[o.shape] == 1:
            add([o], "color", TEMPLATES["color"][0].format(shape=o.shape), o.color, "text")
        if colors[o.color] == 1:
            add([o], "shape", TEMPLATES["shape"][0].format(color=o.color), o.shape, "text")
        add([o], "count_color", TEMPLATES["count_color"][0].format(color=o.color), str(colors[o.color]), "number")
        plural = TEMPLATES["count_shape"][0].format(plural=f"{o.shape}s")
        add([o], "count_shape", plural, str(shapes[o.shape]), "number")
        add([o], "exists_yes", _exists(o.color, o.shape), "yes", "yesno")
        # The "no" variant differs from a real object in one attribute: a near miss tests perception, a
        # random absent pair mostly tests nothing.
        near = [(o.color, s) for s in SHAPES if s != o.shape] + [(c, o.shape) for c in PALETTE if c != o.color]
        absent = [(c, s) for c, s in near if f"{c} {s}" not in names]
        if absent:
            color, shape = rng.choice(absent)
            add([o], "exists_no", _exists(color, shape), "no", "yesno")
    if not objs:
        color, shape = rng.choice(list(PALETTE)), rng.choice(SHAPES)
        out.append(_Candidate(1, "exists_no", ProbeItem(_exists(color, shape), "no", "yesno")))
    for a, b in combinations(objs, 2):
        if names[a.name] > 1 or names[b.name] > 1:
            continue
        if rng.random() < 0.5:
            a, b = b, a
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.bbox, b.bbox
        axes = []  # only where the boxes are disjoint: there the relation has one answer
        if ax2 < bx1 or bx2 < ax1:
            axes.append(("spatial_x", "left" if ax2 < bx1 else "right"))
        if ay2 < by1 or by2 < ay1:
            axes.append(("spatial_y", "above" if ay2 < by1 else "below"))
        if axes:
            kind, value = rng.choice(axes)
            add([a, b], "spatial", TEMPLATES[kind][0].format(a=a.name, b=b.name), value, "text")
    return out


def _exists(color: str, shape: str) -> str:
    return _EXISTS.format(article="an" if color[0] in "aeiou" else "a", color=color, shape=shape)


def _chart_candidates(chart: Chart, targets: set[str], rng: Random) -> list[_Candidate]:
    bars = chart.bars()
    categories, colors = Counter(b["category"] for b in bars), Counter(b["color"] for b in bars)
    values = Counter(b["value"] for b in bars)
    out = []

    def add(bar: dict, kind: str, question: str, answer: str, answer_type: str) -> None:
        tier = 0 if bar["category"] in targets else 1
        out.append(_Candidate(tier, kind, ProbeItem(question, answer, answer_type)))

    if bars:
        top = max(bars, key=lambda b: b["value"])
        if values[top["value"]] == 1:
            add(top, "argmax", TEMPLATES["chart_argmax"][0], top["category"], "text")
    for bar in bars:
        cat, value = bar["category"], bar["value"]
        if categories[cat] > 1:
            continue
        add(bar, "value", TEMPLATES["chart_value"][0].format(category=cat), str(value), "number")
        wrong = rng.choice([v for v in range(1, 10) if v != value])
        add(bar, "value_no", TEMPLATES["chart_value"][1].format(category=cat, v=wrong), "no", "yesno")
        add(bar, "bar_color", _BAR_COLOR.format(category=cat), bar["color"], "text")
        if colors[bar["color"]] == 1:
            add(bar, "bar_of_color", _BAR_OF_COLOR.format(color=bar["color"]), cat, "text")
    return out


def infer_answer_type(answer: str) -> str:
    """``yesno`` for yes/no, ``number`` for a bare number (``3``, ``-1.5``, ``1,200``), else ``text``."""
    text = answer.strip()
    if normalize_text(text) in ("yes", "no"):
        return "yesno"
    if any(ch.isdigit() for ch in text) and _NUMBER_LIKE.fullmatch(text):
        return "number"
    return "text"


def _open_tag(letter: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*{letter}\s*(\d+)\s*>", re.IGNORECASE)


def tag_contents(text: str, letter: str) -> list[tuple[int, str]]:
    """``(K, content)`` of each ``<letterK>...</letterK>``, in order, whitespace collapsed.

    A tag's content ends at its closing tag, searched only up to the next opening tag of the same letter.
    An opening tag with no closing tag counts only when it is the *last* one: its content runs to the
    end of the text (a truncated generation, or a column whose final closing tag was dropped). An unclosed
    tag followed by another tag is garbage and skipped.
    """
    opens = list(_open_tag(letter).finditer(text))
    out = []
    for i, match in enumerate(opens):
        k, last = int(match.group(1)), i + 1 == len(opens)
        end = len(text) if last else opens[i + 1].start()
        close = re.compile(rf"<\s*/\s*{letter}\s*{k}\s*>", re.IGNORECASE).search(text, match.end(), end)
        if close is not None or last:
            content = text[match.end() : close.start() if close is not None else end]
            out.append((k, " ".join(content.split())))
    return out


def checklist_from_columns(
    probe_problem: str, probe_answer: str, answer_types: Sequence[str] | None = None
) -> list[ProbeItem]:
    """The checklist of a row that carries PEARL's published ``probe_problem`` / ``probe_answer`` columns.

    Tolerant of whitespace and newlines inside and around tags (``< q1 >``, case), of a missing closing tag
    on the last question or answer, and of text outside the tags (the ``<image>`` placeholder, any
    instruction). A problem and answer with no tags at all are a single-question probe (PEARL's ``\\boxed{}``
    fallback): the whole problem is the question, the answer's last ``\\boxed{}`` (else all of it) the answer.

    Args:
        probe_problem: ``<q1>...</q1><q2>...</q2>...``.
        probe_answer: ``<a1>...</a1><a2>...</a2>...``.
        answer_types: one type per item; ``None`` infers it (:func:`infer_answer_type`).

    Returns:
        Items in K order.

    Raises:
        ValueError: a ``<qK>`` or ``<aK>`` is missing for some K in 1..max K (the message names K), a K is
            repeated, a question or answer is empty, or ``answer_types`` has the wrong length. The caller
            quarantines the row: a wrong ground truth would teach the policy to misperceive.
    """
    questions, answers = tag_contents(probe_problem, "q"), tag_contents(probe_answer, "a")
    if not questions and not answers:
        boxed = last_boxed(probe_answer)
        questions = [(1, " ".join(probe_problem.replace("<image>", " ").split()))]
        answers = [(1, " ".join((boxed if boxed is not None else probe_answer).split()))]
    tagged = {"q": _by_k(questions, "q"), "a": _by_k(answers, "a")}
    n = max(max(d, default=0) for d in tagged.values())
    for k in range(1, n + 1):
        for letter, d in tagged.items():
            if not d.get(k, "").replace("<image>", "").strip():
                raise ValueError(f"probe checklist: <{letter}{k}> is missing or empty (K={k}); have K={sorted(d)}")
    if answer_types is not None and len(answer_types) != n:
        raise ValueError(f"{len(answer_types)} answer_types for {n} checklist items")
    items = []
    for k in range(1, n + 1):
        question = " ".join(tagged["q"][k].replace("<image>", " ").split())
        answer = tagged["a"][k]
        answer_type = answer_types[k - 1] if answer_types is not None else infer_answer_type(answer)
        items.append(ProbeItem(question, answer, answer_type))
    return items


def _by_k(pairs: list[tuple[int, str]], letter: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for k, content in pairs:
        if k in out:  # two ground truths for one K: which one is meant cannot be known
            raise ValueError(f"probe checklist: <{letter}{k}> appears more than once (K={k})")
        out[k] = content
    return out


def probe_prompt(items: list[ProbeItem], with_image_placeholder: bool = True) -> str:
    """The probe question: the sub-questions in ``<qK>`` tags and one line asking for ``<aK>`` tags.

    Kept short for tiny models' contexts: one line per question and an instruction that shows the tags
    rather than describing them (``Answer as <a1>...</a1><a2>...</a2>.``).

    Args:
        items: the checklist.
        with_image_placeholder: start with ``<image>\\n``, as every vrl prompt with one image does.

    """
    if not items:
        raise ValueError("a probe needs at least one checklist item")
    lines = [f"<q{k}>{item.question}</q{k}>" for k, item in enumerate(items, 1)]
    tags = "".join(f"<a{k}>...</a{k}>" for k in range(1, len(items) + 1))
    body = "\n".join([*lines, _INSTRUCTION.format(tags=tags)])
    return f"<image>\n{body}" if with_image_placeholder else body


def parse_probe_answers(response: str) -> dict[int, str]:
    """The ``<aK>`` answers of a probe response: K -> stripped content.

    The last occurrence of each K wins, since models revise. Text outside tags is ignored, and so is an
    unclosed tag followed by another tag. The final tag may be unclosed: its content runs to the end of
    the string, so a generation cut off by the length limit right after its last answer keeps it.
    """
    return dict(tag_contents(response, "a"))
