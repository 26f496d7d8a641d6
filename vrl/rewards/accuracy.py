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
detection  a box list (or ``No Objects``) matching the ground truth's one-to-one, each pair at IoU >= the
           ``bbox_iou_threshold`` (optimal matching), no box left over on either side
=========  ==========================================================================================

Model output is only matched with regular expressions or parsed by math-verify (which builds sympy
objects from LaTeX and never evaluates Python); nothing is ``eval``'d.

The math time limit holds on every thread, so in every reward-sandbox mode. An answer like
``\\boxed{9^{9^{9^{9}}}}`` makes sympy compute 9**387420489 (minutes). math-verify 0.9's own timeouts
(``signal.alarm``) work only on the main thread (elsewhere they raise), and when they fire they read as
"unparsable", not as a timeout. So ``Accuracy`` switches them off and bounds the whole math check of one
response (both parses and the comparison) itself: on the main thread (``isolate=none``, and inside the
``isolate=process`` workers) with a SIGALRM deadline (:func:`vrl.rewards.sandbox.alarm_deadline`; CPython's
integer power checks for signals, so it stops too), on any other thread (``isolate=thread``, a dataloader
thread) in a worker process of its own that is killed at the deadline (:class:`vrl.rewards.sandbox.WorkerPool`,
started on first use). Past ``math_timeout_s`` the check raises :class:`MathTimeout`, a ``TimeoutError``, which
the reward sandbox counts under ``reward/timeouts/<term>``; the response scores ``default``.

The preflight (:mod:`vrl.data.preflight`) checks every ground truth with :func:`gold_problem`, i.e. with the
same parsers this reward uses, so a row whose answer cannot be scored is reported instead of trained on.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from vrl.types import ANSWER_TYPES

from .box_match import iou_matrix, match_hungarian
from .box_parse import parse_gold_boxes
from .extract import (
    AnswerExtractor,
    normalize_text,
    parse_box,
    parse_choices,
    parse_number,
    parse_yesno,
)
from .iou import FRAMES, box_iou, ground_truth_box, to_pixel_box
from .sandbox import WorkerPool, alarm_deadline

logger = logging.getLogger("vrl")

# After latex commands are removed, a run of two letters means prose ("red", "the answer is"), which
# must not be wrapped in $...$: math-verify would read "red" as the product r*e*d.
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")

#: What a ground truth of each type must be for :class:`Accuracy` to read it (the parser returns None otherwise).
_EXPECTED = {
    "yesno": "yes/no (or true/false) as its first word",
    "choice": "option letters such as 'B' or 'A, C'",
    "number": "a number",
    "text": "a letter or digit",
    "bbox": "four numbers [x1, y1, x2, y2]",
    "detection": "a JSON list of [x1, y1, x2, y2] boxes (or Visual-RFT Position entries), or No Objects",
}


class MathTimeout(TimeoutError):
    """The math check of one response ran past ``math_timeout_s``."""


def parse_gold(answer: str, answer_type: str, synonyms: Mapping[str, str] | None = None) -> Any:
    """A ground truth as :class:`Accuracy` reads it for ``answer_type`` (not "math"), or None when it cannot."""
    if answer_type == "yesno":
        return parse_yesno(answer)
    if answer_type == "choice":
        return parse_choices(answer)
    if answer_type == "number":
        return parse_number(answer, "last")
    if answer_type == "text":
        return normalize_text(answer, synonyms) or None
    if answer_type == "bbox":
        return parse_box(answer)
    if answer_type == "detection":
        return parse_gold_boxes(answer)  # [] for No Objects: not None, so a readable ground truth
    raise ValueError(f"parse_gold: no plain parser for answer_type {answer_type!r}")


def gold_problem(answer: str, answer_type: str) -> str | None:
    """Why ``answer`` cannot be the ground truth of an ``answer_type`` row for :class:`Accuracy`; None if it can.

    A "math" answer is readable when math-verify parses it or, failing that, when it holds a number or a word
    (the reward's fallbacks); the others must parse with the type's parser (:func:`parse_gold`).
    """
    if answer_type not in ANSWER_TYPES:
        return f"answer_type {answer_type!r} is not one of {ANSWER_TYPES}"
    if answer_type == "math":
        # A word or a number is read by the fallbacks; what has neither holds no number to blow up: no limit.
        if normalize_text(answer) or parse_number(answer) is not None or _math_parse_gold(answer):
            return None
        return f"{answer!r} is neither LaTeX that math-verify reads nor a number or word"
    if parse_gold(answer, answer_type) is None:
        return f"{answer!r} is not a {answer_type} answer: expected {_EXPECTED[answer_type]}"
    return None


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
            0.5 is the usual detection criterion (PASCAL VOC, RefCOCO accuracy@0.5). A "detection" answer needs
            every box paired at least this well.
        bbox_frame: Coordinate frame the model writes boxes in: ``"pixel"``, ``"model"`` or
            ``"norm1000"`` (see :func:`vrl.rewards.iou.to_pixel_box`). Keep it equal to any ``BoxIoU``
            term's ``frame``.
        math_timeout_s: Seconds the math check of one response (parsing both sides and comparing them) may
            take, on any thread (see the module docstring); past it the response's score is a counted timeout.
            ``None`` disables the limit. 5 is math-verify's own default per step.
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
        math_timeout_s: float | None = 5,
        name: str = "accuracy",
    ):
        if number_position not in ("first", "last"):
            raise ValueError(f"number_position must be 'first' or 'last', got {number_position!r}")
        if bbox_frame not in FRAMES:
            raise ValueError(f"bbox_frame must be one of {FRAMES}, got {bbox_frame!r}")
        if math_timeout_s is not None and math_timeout_s <= 0:
            raise ValueError(f"math_timeout_s must be > 0 or None, got {math_timeout_s}")
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
            "detection": self._detection,
        }
        assert set(self._checkers) == set(ANSWER_TYPES), "every answer type needs a checker"
        self._pool: WorkerPool | None = None  # math checks from threads other than the main one
        self._pool_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # A copy (a reward worker process, deepcopy) starts its own math worker when it needs one.
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_pool_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool, self._pool_lock = None, threading.Lock()

    def close(self) -> None:
        """Stop the math worker process, if one was started (a later call starts a new one)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

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
        gold = self._gold(parse_gold(str(sample["answer"]), "yesno"), sample)
        return float(parse_yesno(span) == gold)

    def _choice(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_gold(str(sample["answer"]), "choice"), sample)
        pred = parse_choices(span)
        if not pred:
            return 0.0
        if self.choice_partial_credit:
            return len(pred & gold) / len(pred | gold)
        return float(pred == gold)

    def _number(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_gold(str(sample["answer"]), "number"), sample)
        pred = parse_number(span, self.number_position)
        return float(pred is not None and self._close(pred, gold))

    def _close(self, pred: float, gold: float) -> bool:
        return math.isclose(pred, gold, rel_tol=self.numeric_rel_tol, abs_tol=self.numeric_abs_tol)

    def _text(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_gold(str(sample["answer"]), "text", self.synonyms), sample)
        return float(normalize_text(span, self.synonyms) == gold)

    def _bbox(self, span: str, sample: dict) -> float:
        gold = ground_truth_box(sample)
        box = parse_box(span)
        if box is None:
            return 0.0
        return float(box_iou(to_pixel_box(box, sample, self.bbox_frame), gold) >= self.bbox_iou_threshold)

    def _detection(self, span: str, sample: dict) -> float:
        gold = self._gold(parse_gold(str(sample["answer"]), "detection"), sample)
        pred = parse_gold_boxes(span)
        if pred is None or len(pred) != len(gold):
            return 0.0
        pixels = [to_pixel_box(box, sample, self.bbox_frame) for box in pred]
        # IoU > the float just below the threshold is IoU >= the threshold, as the bbox checker
        matched = match_hungarian(iou_matrix(pixels, gold), math.nextafter(self.bbox_iou_threshold, -math.inf))
        return float(sum(1 for m in matched if m > 0) == len(gold))

    def _math(self, span: str, sample: dict) -> float:
        gold_text = str(sample["answer"])
        verdict = self._math_verdict(gold_text, span)
        if verdict is not None:
            return verdict
        # math-verify could not read one side (prose, a word answer): compare as a number, else as text.
        gold_number, pred_number = parse_number(gold_text, "last"), parse_number(span, self.number_position)
        if gold_number is not None and pred_number is not None:
            return float(self._close(pred_number, gold_number))
        return self._text(span, sample)

    def _math_verdict(self, gold_text: str, span: str) -> float | None:
        """:func:`math_verdict` within ``math_timeout_s``, whichever thread this is (module docstring)."""
        limit = self.math_timeout_s
        if limit is None:
            return math_verdict(gold_text, span)
        if threading.current_thread() is threading.main_thread():
            with alarm_deadline(limit, f"the math check of {span[:60]!r}", MathTimeout):
                return math_verdict(gold_text, span)
        if multiprocessing.current_process().daemon:  # may not start processes: no way to stop a runaway check
            _warn_once("Accuracy: math_timeout_s cannot be enforced off the main thread of a daemonic process")
            return math_verdict(gold_text, span)
        with self._pool_lock:  # one check at a time (isolate=thread may call from several threads)
            if self._pool is None:
                self._pool = WorkerPool({"math": MathVerdict()})
            [outcome] = self._pool.run([("math", [span], [{"answer": gold_text}])], limit)
        if outcome.kind == "timeout":
            raise MathTimeout(f"the math check of {span[:60]!r} took longer than {limit} s (worker killed)")
        if outcome.kind != "ok":
            raise RuntimeError(f"math-verify worker process: {outcome.error}")
        value = outcome.values[0]
        return None if math.isnan(value) else value


class MathVerdict:
    """:func:`math_verdict` as a reward-term-shaped callable, for a worker process: NaN means "unreadable"."""

    weight = 1.0

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        verdicts = [math_verdict(str(s["answer"]), span) for span, s in zip(responses, samples)]
        return [math.nan if v is None else v for v in verdicts]


def math_verdict(gold_text: str, span: str) -> float | None:
    """math-verify's verdict on ``span`` against ``gold_text`` (1.0 or 0.0), or None when it cannot read a side.

    No time limit of its own: :meth:`Accuracy._math_verdict` bounds it.
    """
    parse, verify = _math_verify()
    gold = _math_parse(parse, gold_text)
    pred = _math_parse(parse, span) if gold else []
    if gold and pred:
        # Gold first: math-verify is asymmetric (it simplifies "x = 2" style assignments in the target).
        return float(verify(gold, pred, timeout_seconds=None))
    return None


@functools.cache
def _math_verify() -> tuple[Callable[..., list], Callable[..., bool]]:
    """math-verify's ``parse`` and ``verify``, imported lazily (sympy and antlr take ~0.5 s)."""
    from math_verify import parse, verify

    # With its own timeouts off, math-verify warns once that the caller must bound it: vrl does.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())
    return parse, verify


def _math_parse(parse: Callable[..., list], text: str) -> list:
    """math-verify's parse of ``text`` as LaTeX, else as written; ``[]`` when neither yields sympy."""
    parsed = parse(_as_latex(text), fallback_mode="no_fallback", parsing_timeout=None)
    if not parsed and _as_latex(text) != text:
        parsed = parse(text, fallback_mode="no_fallback", parsing_timeout=None)
    return parsed


def _math_parse_gold(text: str) -> bool:
    return bool(_math_parse(_math_verify()[0], text))


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


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
