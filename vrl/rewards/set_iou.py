"""``LabelSetAccuracy``: accuracy with partial credit for label answers (Curr-ReFT's open-ended stage).

Curr-ReFT (arXiv 2503.07065; ``Stage3_open_math_resize.py`` in github.com/ding523/Curr_REFT) scores an open
classification answer by the soft set-IoU ``|P & G| / |P | G|`` of the predicted and true category names
(split on commas or whitespace), so naming one of two objects earns 1/2 and listing every category does
not pay. Boxes and math keep their binary checks (IoU > 0.5, math-verify), which the wrapped
:class:`~vrl.rewards.accuracy.Accuracy` already does; this term only changes how label rows are scored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .accuracy import Accuracy
from .extract import normalize_text

#: Separators between labels: commas, slashes, semicolons, whitespace and the word "and".
_LABEL_SEPARATOR = re.compile(r"\s*(?:[,;/]|\band\b|\s)\s*")


def label_set(text: str, synonyms: Mapping[str, str] | None = None) -> frozenset[str]:
    """The set of normalised labels in ``text`` (``"Red, blue and red"`` -> ``{"red", "blue"}``)."""
    labels = [normalize_text(part, synonyms) for part in _LABEL_SEPARATOR.split(text)]
    return frozenset(label for label in labels if label)


def set_iou(pred: frozenset[str], gold: frozenset[str]) -> float:
    """|pred & gold| / |pred | gold|; 0 when either set is empty."""
    if not pred or not gold:
        return 0.0
    return len(pred & gold) / len(pred | gold)


class LabelSetAccuracy:
    """Soft set-IoU for label answers; every other row is scored by ``accuracy``.

    Args:
        accuracy: the checker for rows that are not label rows (and the answer extraction and synonyms
            used for label rows). A mapping is passed to ``Accuracy`` as keyword arguments; None uses
            ``Accuracy()``.
        tasks: the sample ``task`` values whose answers are label sets (Curr-ReFT: classification); None
            treats every row whose ``answer_type`` is in ``answer_types`` as a label row.
        answer_types: answer types a label row can have; "text" by default (numbers, boxes and option
            letters keep their exact checks).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term; "accuracy" so it replaces the plain term.
    """

    def __init__(
        self,
        accuracy: Accuracy | Mapping[str, Any] | None = None,
        tasks: Sequence[str] | None = None,
        answer_types: Sequence[str] = ("text",),
        weight: float = 1.0,
        name: str = "accuracy",
    ) -> None:
        if accuracy is None:
            accuracy = Accuracy()
        elif isinstance(accuracy, Mapping):
            accuracy = Accuracy(**{k: v for k, v in accuracy.items() if not str(k).startswith("_")})
        if isinstance(accuracy, LabelSetAccuracy):  # a run whose accuracy is already label-aware: wrap once
            accuracy = accuracy.accuracy
        self.accuracy = accuracy
        self.tasks = frozenset(tasks) if tasks is not None else None
        self.answer_types = frozenset(answer_types)
        self.weight = float(weight)
        self.name = name

    def is_label_row(self, sample: dict) -> bool:
        if sample.get("answer_type") not in self.answer_types:
            return False
        return self.tasks is None or sample.get("task") in self.tasks

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One score per response: set-IoU in [0, 1] on label rows, ``accuracy``'s score elsewhere."""
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        if not self.is_label_row(sample):
            return self.accuracy.score(response, sample)
        span = self.accuracy.extract(response)
        if span is None:
            return 0.0
        synonyms = self.accuracy.synonyms
        return set_iou(label_set(span, synonyms), label_set(str(sample["answer"]), synonyms))
