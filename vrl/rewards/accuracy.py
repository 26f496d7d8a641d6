"""``Accuracy``: the verifiable-answer reward, dispatched on each sample's ``answer_type``.

Every answer type in :data:`vrl.types.ANSWER_TYPES` has one checker. Each first cuts the answer span
out of the response (:class:`vrl.rewards.extract.AnswerExtractor`), then parses and compares it:

=========  ==========================================================================================
yesno      first word of the span is yes/no (true/false accepted) and equals the answer
choice     the *set* of option letters equals the answer's ("A,C" == "C, A"; "A" != "A,C")
number     last (or first) number in the span is within tolerance of the answer
text       normalised exact match (case, punctuation, articles, whitespace; optional synonyms)
bbox       IoU with the ground-truth box (original pixels) >= ``bbox_iou_threshold``
math       math-verify ``verify(parse(gold), parse(pred))``; numeric, then text, when parsing fails
=========  ==========================================================================================

Model output is only matched with regular expressions or parsed by math-verify (which builds sympy
objects from LaTeX and never evaluates Python); nothing is ``eval``'d.

math-verify 0.9 and threads: ``parse(..., parsing_timeout=)`` and ``verify(..., timeout_seconds=)`` time
out through ``signal.alarm``, and installing the SIGALRM handler raises ``ValueError`` outside the main
thread. ``Accuracy`` therefore passes ``math_timeout_s`` only when called on the main thread and
``None`` (no alarm) elsewhere, e.g. inside a reward thread pool or a dataloader thread. Off the main
thread a pathological expression can then run unbounded; math-verify logs a one-time warning saying so.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from vrl.types import ANSWER_TYPES

from .extract import (
    AnswerExtractor,
    normalize_text,
    parse_box,
    parse_choices,
    parse_number,
    parse_yesno,
)
from .iou import FRAMES, box_iou, ground_truth_box, to_pixel_box

# After latex commands are removed, a run of two letters means prose ("red", "the answer is"), which
# must not be wrapped in $...$: math-verify would read "red" as the product r*e*d.
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


class Accuracy:
    """1.0 when the response's answer matches the sample's ``answer``, else 0.0 (see the module table).

    Ground truths that cannot be parsed for their type (a "number" answer with no number, say) raise
    ``ValueError`` naming the sample uid: that is a data bug, not a wrong response.

    Args:
        weight: Multiplier applied by the reward set. 1.0: accuracy is the reward every recipe keeps.
        extract: How the answer span is found. ``None`` uses ``AnswerExtractor()``: last
            ``<answer>`` tag, else last ``\\boxed{}``, else the whole response. A mapping (e.g. a Hydra
            node without ``_target_``) is passed to ``AnswerExtractor`` as keyword arguments.
        numeric_rel_tol: Relative tolerance for "number" answers (and the numeric fallback of "math"),
            as in ``math.isclose``. 1e-6 absorbs float formatting ("3.0" vs "3") without letting a
            count of 10001 pass for 10000. Raise it for measured quantities.
        numeric_abs_tol: Absolute tolerance, needed near zero where a relative one vanishes. For answers
            rounded to k decimals use ``0.5 * 10**-k``.
        number_position: Which number of the span is the answer, ``"last"`` (default: worked answers
            end with the result) or ``"first"``.
        synonyms: Extra equivalences for "text" answers, word or whole-answer level, e.g.
            ``{"grey": "gray"}``; ``None`` for none. Applied to both sides after normalisation.
        choice_partial_credit: ``False`` (default): multi-select "choice" answers score 1 only for the
            exact letter set. ``True``: score the Jaccard overlap ``|P & G| / |P | G|``, which pays for
            partly right sets but penalises extra letters, so listing every option does not pay.
        bbox_iou_threshold: A "bbox" answer is correct when IoU with the ground truth is at least this.
            0.5 is the usual detection criterion (PASCAL VOC, RefCOCO accuracy@0.5).
        bbox_frame: Coordinate frame the model writes boxes in: ``"pixel"``, ``"model"`` or
            ``"norm1000"`` (see :func:`vrl.rewards.iou.to_pixel_box`). Keep it equal to any ``BoxIoU``
            term's ``frame``.
        math_timeout_s: Seconds math-verify may spend per parse and per comparison, on the main thread
            only (see the module docstring); ``None`` disables the alarm everywhere. 5 is math-verify's
            own default.
        name: Key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 1.0,
        extract: AnswerExtractor | Mapping[str, Any] | None = None,
        numeric_rel_tol: float = 1e-6,
        numeric_abs_tol: float = 1e-9,
        number_position: str = "last",
        synonyms: Mapping[str, str] | None = None,
        choice_partial_credit: bool = False,
        bbox_iou_threshold: float = 0.5,
        bbox_frame: str = "pixel",
        math_timeout_s: int | None = 5,
        name: str = "accuracy",
    ):
        if number_position not in ("first", "last"):
            raise ValueError(f"number_position must be 'first' or 'last', got {number_position!r}")
        if bbox_frame not in FRAMES:
            raise ValueError(f"bbox_frame must be one of {FRAMES}, got {bbox_frame!r}")
        if extract is None:
            extract = AnswerExtractor()
        elif isinstance(extract, Mapping):
            extract = AnswerExtractor(**extract)
        self.weight = float(weight)
        self.extract = extract
        self.numeric_rel_tol = numeric_rel_tol
        self.numeric_abs_tol = numeric_abs_tol
        self.number_position = number_position
        self.synonyms = dict(synonyms) if synonyms else None
        self.choice_partial_credit = choice_partial_credit
        self.bbox_iou_threshold = bbox_iou_threshold
        self.bbox_frame = bbox_frame
        self.math_timeout_s = math_timeout_s
        self.name = name
        self._checkers: dict[str, Callable[[str, dict], float]] = {
            "yesno": self._yesno,
            "choice": self._choice,
            "number": self._number,
            "text": self._text,
            "bbox": self._bbox,
            "math": self._math,
        }
        assert set(self._checkers) == set(ANSWER_TYPES), "every answer type needs a checker"

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One score in {0, 1} per response (in [0, 1] with ``choice_partial_credit``)."""
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        """The accuracy of one response against its sample."""
        answer_type = sample.get("answer_type")
        checker = self._checkers.get(answer_type)
        if checker is None:
            raise ValueError(
                f"Accuracy: unknown answer_type {answer_type!r} for sample uid={sample.get('uid')!r}; "
                f"expected one of {ANSWER_TYPES}"
            )
        span = self.extract(response)
        if span is None:
            return 0.0
        return checker(span, sample)

    def _gold(self, parsed: Any, sample: dict) -> Any:
        if parsed is None:
            raise ValueError(
                f"answer {sample['answer']!r} of sample uid={sample.get('uid')!r} does not parse "
                f"as answer_type {sample['answer_type']!r}"
            )
        return parsed

    def _yesno(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_yesno(str(sample["answer"])), sample)
        return float(parse_yesno(span) == gold)

    def _choice(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_choices(str(sample["answer"])), sample)
        pred = parse_choices(span)
        if not pred:
            return 0.0
        if self.choice_partial_credit:
            return len(pred & gold) / len(pred | gold)
        return float(pred == gold)

    def _number(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_number(str(sample["answer"]), "last"), sample)
        pred = parse_number(span, self.number_position)
        return float(pred is not None and self._close(pred, gold))

    def _close(self, pred: float, gold: float) -> bool:
        return math.isclose(pred, gold, rel_tol=self.numeric_rel_tol, abs_tol=self.numeric_abs_tol)

    def _text(self, span: str, sample: dict) -> float:
        gold = self._gold(normalize_text(str(sample["answer"]), self.synonyms) or None, sample)
        return float(normalize_text(span, self.synonyms) == gold)

    def _bbox(self, span: str, sample: dict) -> float:
        gold = ground_truth_box(sample)
        box = parse_box(span)
        if box is None:
            return 0.0
        return float(box_iou(to_pixel_box(box, sample, self.bbox_frame), gold) >= self.bbox_iou_threshold)

    def _math(self, span: str, sample: dict) -> float:
        from math_verify import parse, verify  # lazy: importing it pulls in sympy and antlr (~0.5 s)

        on_main = threading.current_thread() is threading.main_thread()
        timeout = self.math_timeout_s if on_main else None
        gold_text = str(sample["answer"])
        gold = _math_parse(parse, gold_text, timeout)
        pred = _math_parse(parse, span, timeout)
        if gold and pred:
            # Gold first: math-verify is asymmetric (it simplifies "x = 2" style assignments in the target).
            return float(verify(gold, pred, timeout_seconds=timeout))
        # math-verify could not read one side (prose, a word answer): compare as a number, else as text.
        gold_number, pred_number = parse_number(gold_text, "last"), parse_number(span, self.number_position)
        if gold_number is not None and pred_number is not None:
            return float(self._close(pred_number, gold_number))
        return self._text(span, sample)


def _math_parse(parse: Callable[..., list], text: str, timeout: int | None) -> list:
    """math-verify's parse of ``text`` as LaTeX, else as written; ``[]`` when neither yields sympy."""
    parsed = parse(_as_latex(text), fallback_mode="no_fallback", parsing_timeout=timeout)
    if not parsed and _as_latex(text) != text:
        parsed = parse(text, fallback_mode="no_fallback", parsing_timeout=timeout)
    return parsed


def _as_latex(text: str) -> str:
    """Wrap bare LaTeX in ``$...$`` so math-verify reads it as LaTeX.

    Without delimiters math-verify 0.9 falls back to plain-expression parsing and reads ``2\\pi`` as 2.
    Text that already has delimiters or a ``\\boxed{}``, or that contains words, is left as is:
    math-verify finds the math inside prose itself.
    """
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    if _WORD.search(_LATEX_COMMAND.sub(" ", text)):
        return text
    return f"${text}$"
