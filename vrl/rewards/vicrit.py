"""ViCrit's rewards (Wang et al., arXiv 2506.10128; spec others.md §3): the exact-span training reward and the
bench's relaxed correctness.

**Answer extraction** (:func:`extract_answer`, the released ``score.py``, github.com/si0wang/ViCrit @727f1ee): the
content of the first ``\\boxed{...}`` (braces balanced) when the response holds ``boxed{``, else its last line.

**Training reward** (:class:`SpanMatch`): 1 when the extracted answer equals the row's answer (the corrupted span)
after :func:`normalise_span`, else 0. ViCrit's normalisation is not published ([NF]); vrl's ([ours], others.md §3):
lower case, every character that is not a letter, digit or space dropped (quotes and brackets of the list the
released prompt asks for, final dots), whitespace collapsed. Nothing else: ``small blue circle`` for the span
``blue`` is wrong, as naming more than the error is.

**Bench scoring** (:class:`RelaxedCorrectness`, :func:`relaxed_correctness`, as ``score.py``): the changed segment of
the row's noun phrases (:func:`vrl.data.vicrit.changed_segment` of the lower-cased original and changed phrase);
correct when its first word is a substring of the lower-cased prediction. Lenient by design (``red`` is found in
``shredded``, a prediction listing every colour passes); it is the released benchmark score, used here as a
validation metric (weight 0 in ``conf/reward/vicrit.yaml``). Differences from ``score.py``: a response with
``boxed{`` but no ``\\boxed{`` scores 0 (released: ``None.lower()`` raises), and noun phrases with no changed word
are a data error naming the row (released: an ``IndexError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from vrl.data.vicrit import changed_segment

_NOT_WORD = re.compile(r"[^0-9a-z\s]")


def extract_boxed(text: str) -> str | None:
    """The content of the first ``\\boxed{...}``, braces balanced; None without one.

    As ``score.py``'s ``extract_boxed_content``, an unclosed box yields its text up to the last character, which is
    dropped.
    """
    start = text.find("\\boxed{")
    if start == -1:
        return None
    depth = 1
    begin = i = start + len("\\boxed{")
    while i < len(text) and depth > 0:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1]


def extract_answer(text: str) -> str | None:
    """``score.py``'s extraction: the boxed content when ``boxed{`` occurs, else the last line."""
    if "boxed{" in text:
        return extract_boxed(text)
    return text.split("\n")[-1]


def normalise_span(text: str) -> str:
    """Lower case, only letters, digits and spaces kept, whitespace collapsed (module docstring)."""
    return " ".join(_NOT_WORD.sub(" ", text.lower()).split())


def relaxed_correctness(prediction: str, original: str, changed: str) -> bool:
    """``score.py``'s relaxed correctness: the first changed word of ``original`` -> ``changed`` in the prediction.

    Raises:
        ValueError: the phrases have no changed word.
    """
    segment = changed_segment(original.lower(), changed.lower())
    if not segment:
        raise ValueError(f"noun phrases {original!r} -> {changed!r} have no changed word")
    return segment[0] in prediction.lower()


class _RowTerm:
    """Shared call plumbing: one score per (response, row); rows of other tasks get 0."""

    def __init__(self, weight: float, tasks: Sequence[str] | None, name: str) -> None:
        self.weight, self.name = float(weight), name
        self.tasks = frozenset(tasks) if tasks is not None else None

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [
            self.score(r, s) if self.tasks is None or s.get("task") in self.tasks else 0.0
            for r, s in zip(responses, samples)
        ]

    def score(self, response: str, sample: dict) -> float:
        raise NotImplementedError


class SpanMatch(_RowTerm):
    """ViCrit's training reward: 1 when the extracted answer is the corrupted span (normalised), else 0.

    Args:
        weight: multiplier applied by the reward set.
        tasks: rows scored (others get 0); None scores every row.
        name: key under which the reward set logs this term (``accuracy``: ``rollout/accuracy`` reports it).
    """

    def __init__(self, weight: float = 1.0, tasks: Sequence[str] | None = ("vicrit",), name: str = "accuracy"):
        super().__init__(weight, tasks, name)

    def score(self, response: str, sample: dict) -> float:
        gold = normalise_span(str(sample["answer"]))
        if not gold:
            raise ValueError(f"ViCrit answer {sample['answer']!r} of sample uid={sample.get('uid')!r} is empty")
        answer = extract_answer(response)
        return float(answer is not None and normalise_span(answer) == gold)


class RelaxedCorrectness(_RowTerm):
    """ViCrit-Bench's score: the first changed word of the row's noun phrases appears in the extracted answer.

    The phrases are read from the row's ``meta`` (``original_noun_phrases``, ``changed_noun_phrases``), as
    :mod:`vrl.data.vicrit` writes them for synthetic and published rows.

    Args:
        weight: multiplier applied by the reward set (0: a metric only, as in ``conf/reward/vicrit.yaml``).
        tasks: rows scored (others get 0); None scores every row.
        name: key under which the reward set logs this term.
    """

    def __init__(self, weight: float = 0.0, tasks: Sequence[str] | None = ("vicrit",), name: str = "relaxed"):
        super().__init__(weight, tasks, name)

    def score(self, response: str, sample: dict) -> float:
        meta = json.loads(sample.get("meta") or "{}")
        original, changed = meta.get("original_noun_phrases"), meta.get("changed_noun_phrases")
        if not isinstance(original, str) or not isinstance(changed, str):
            raise ValueError(f"sample uid={sample.get('uid')!r}: meta lacks original_/changed_noun_phrases")
        answer = extract_answer(response)
        return float(answer is not None and relaxed_correctness(answer, original, changed))
