"""Visual-RFT's rewards (Liu et al., arXiv 2503.01785): detection IoU + confidence, classification, grounding GIoU.

Worked out from the released code (github.com/Liuziyu77/Visual-RFT @9486633, ``src/virft/src/open_r1/grpo.py``,
``grpo_classification.py``, ``grpo_lisa.py``; spec: shared/methods/others.md §1). What each term computes, in the
order the released code does it (steps 1-3 are parsed in :mod:`vrl.rewards.box_parse`, step 4 matched in
:mod:`vrl.rewards.box_match`, the rest scored here):

**Detection** (:class:`DetectionReward`, one instance per part: ``iou`` and ``confidence``)

1. The answer span: the first ``<answer>...</answer>`` on one line (no DOTALL), else the whole response.
2. Repairs: ``[[`` -> ``[``, ``]]`` -> ``]``, newlines dropped; a span that does not end with ``]`` (a truncated
   list) is cut after its last complete ``},`` entry and closed with ``}]``; single quotes become double quotes.
   The span of step 1 is wrapped in answer tags and cut at the first ``</answer>``, so a response whose answer tag
   spans lines, or that was cut before its ``</answer>``, keeps an ``<answer>`` in the span and scores 0.
3. ``json.loads``: a non-empty list of ``{"Position": [x1, y1, x2, y2], "Confidence": c}``, else the response
   scores 0 on both parts. Entries with the same ``Position`` are kept once (the first).
4. Matching (``matching="greedy"``, as released): predictions in descending confidence (stable); each takes the
   still-unmatched ground-truth box of highest IoU (the first on ties); above ``iou_threshold`` (> 0.5) the pair
   is recorded with that IoU and the box is used up, otherwise the prediction records IoU 0.
   ``matching="hungarian"`` instead picks the one-to-one assignment of largest total IoU among pairs above the
   threshold (``scipy.optimize.linear_sum_assignment``); it never scores lower than greedy and removes the
   dependence on the confidence order (so confidence only enters through its own part).
5. ``R_IoU = sum_k IoU_k / max(N_gt, N_pred)`` (the released "v2"; v1 divided by N_pred), at most 1.
   ``R_conf = mean_k (c_k if IoU_k > 0 else 1 - c_k)``, clipped to [0, 1]: confident hits and unconfident misses
   pay.

**Classification** (:class:`SubstringAccuracy`): the first one-line answer tag of response and ground truth (else
the whole text), spaces and underscores removed, lower case; 1 if either is a substring of the other.

**Grounding** (:class:`GroundingGIoU`, the LISA reasoning-grounding reward): ``GIoU(pred, gt) + 1`` in [0, 2] on
the first ``(x1,y1),(x2,y2)`` box of each side (integers, 0..1000; GIoU is scale-free, so the frame cancels when
both sides share it), and 2 when the answer text equals the ground truth's exactly.

Deliberate differences from the released code (each one only changes what a malformed or odd answer earns):

- The released terms first run math-verify on the *whole* response against the whole solution and give 1.0 when
  they agree. On a box list math-verify reads one number (measured, math-verify 0.9.0:
  ``[{'Position': [254, 303, 291, 365], 'Confidence': 0.9}]`` parses as ``303``), so a prediction that shares that
  one number with the ground truth scores 1.0 on both detection parts, and a LISA answer it can read scores 1.0
  instead of up to 2. The outcome depends on the unpinned math-verify version; vrl leaves that step out.
- Detection entries are checked up front: a response with an entry lacking ``Position`` (four finite numbers) or
  a numeric ``Confidence`` scores 0. The released code fails on such entries only when it happens to touch them
  (it scores some of them, e.g. string confidences in the IoU part).
- Detection IoU is :func:`vrl.rewards.iou.box_iou` (the released formula, float64) with one released rule kept: a
  predicted box whose corners are swapped (x1 > x2 or y1 > y2) overlaps nothing. GIoU is
  :func:`vrl.rewards.iou.box_giou`: zero-area boxes get -1 (released: IoU 0, hull term 0) and swapped corners are
  normalised (released: negative areas).
- Grounding reads the first box. With several boxes the released code pairs the first corners of the first two
  boxes (a list-building slip); a response with one box, as the prompt asks, is scored the same.
- Ground truths with no objects: the released code scores every response 0 there (its parser fails on
  ``No Objects``); ``no_objects_credit=true`` pays 1 for answering ``No Objects`` instead (others.md §1, [ours]).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .box_match import iou_matrix, match_greedy, match_hungarian
from .box_parse import NO_OBJECTS, Prediction, answer_span, parse_detections, parse_gold_boxes, repaired_answer
from .extract import parse_box
from .iou import FRAMES, box_giou, to_pixel_box

__all__ = [  # the parsing and matching helpers live in box_parse / box_match; re-exported for existing callers
    "DetectionReward",
    "GroundingGIoU",
    "SubstringAccuracy",
    "answer_span",
    "confidence_reward",
    "iou_matrix",
    "iou_reward",
    "match_greedy",
    "match_hungarian",
    "parse_detections",
    "parse_gold_boxes",
    "repaired_answer",
]

PARTS = ("iou", "confidence")
MATCHINGS = ("greedy", "hungarian")
GROUNDING_PARSERS = ("lisa", "any")

_LISA_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def iou_reward(matched: Sequence[float], num_gold: int) -> float:
    """``sum(matched IoU) / max(N_gt, N_pred)``, at most 1 (released v2)."""
    if not matched:
        return 0.0
    return min(1.0, sum(matched) / max(num_gold, len(matched)))


def confidence_reward(matched: Sequence[float], confidences: Sequence[float]) -> float:
    """``mean(c if matched else 1 - c)`` over the predictions, clipped to [0, 1]."""
    if not matched:
        return 0.0
    total = sum(c if m > 0 else 1.0 - c for m, c in zip(matched, confidences))
    return min(1.0, max(0.0, total / len(matched)))


class DetectionReward:
    """One part of Visual-RFT's detection reward: ``iou`` (R_IoU) or ``confidence`` (R_conf); module docstring.

    The released recipe sums three terms, each weight 1: ``part=iou``, ``part=confidence`` and the format
    (``conf/reward/visual_rft_detection.yaml``).

    Args:
        part: ``iou`` or ``confidence``.
        weight: multiplier applied by the reward set (1 as released).
        matching: ``greedy`` (released: confidence order) or ``hungarian`` (optimal total IoU; scipy).
        iou_threshold: a prediction matches when its IoU is strictly above this (0.5 as released).
        frame: the coordinate frame the model writes boxes in, converted to the ground truth's pixels:
            ``pixel`` (no change: ground truth and answers in the same frame, as the released data), ``model`` or
            ``norm1000`` (:func:`vrl.rewards.iou.to_pixel_box`).
        no_objects_credit: rows whose ground truth has no boxes: False (released) scores every response 0; True
            pays 1 for answering ``No Objects`` (and ``R_conf`` rewards low confidences on any boxes given).
        answer_types: rows scored (others get 0, so one reward set can serve mixed data); None scores every row.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        part: str = "iou",
        weight: float = 1.0,
        matching: str = "greedy",
        iou_threshold: float = 0.5,
        frame: str = "pixel",
        no_objects_credit: bool = False,
        answer_types: Sequence[str] | None = ("detection",),
        name: str | None = None,
    ) -> None:
        if part not in PARTS:
            raise ValueError(f"DetectionReward: part must be one of {PARTS}, got {part!r}")
        if matching not in MATCHINGS:
            raise ValueError(f"DetectionReward: matching must be one of {MATCHINGS}, got {matching!r}")
        if frame not in FRAMES:
            raise ValueError(f"DetectionReward: frame must be one of {FRAMES}, got {frame!r}")
        if not 0 <= iou_threshold < 1:
            raise ValueError(f"DetectionReward: iou_threshold must be in [0, 1), got {iou_threshold}")
        self.part, self.weight, self.matching = part, float(weight), matching
        self.iou_threshold, self.frame, self.no_objects_credit = iou_threshold, frame, no_objects_credit
        self.answer_types = frozenset(answer_types) if answer_types is not None else None
        self.name = name or part

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        """This part's reward for one response."""
        if self.answer_types is not None and sample.get("answer_type") not in self.answer_types:
            return 0.0
        gold = parse_gold_boxes(sample["answer"])
        if gold is None:
            uid = sample.get("uid")
            raise ValueError(f"detection answer {sample['answer']!r} of sample uid={uid!r} holds no box list")
        if not gold:
            return self._no_objects(response)
        preds = parse_detections(response)
        if preds is None:
            return 0.0
        matched, confidences = self.match(preds, gold, sample)
        return iou_reward(matched, len(gold)) if self.part == "iou" else confidence_reward(matched, confidences)

    def match(self, preds: list[Prediction], gold: list[list[float]], sample: dict) -> tuple[list[float], list[float]]:
        """([P] matched IoU, [P] confidence) of the predictions against the ground-truth boxes."""
        boxes = [to_pixel_box(box, sample, self.frame) for box, _ in preds]
        confidences = [conf for _, conf in preds]
        iou = iou_matrix(boxes, gold)
        if self.matching == "hungarian":
            return match_hungarian(iou, self.iou_threshold), confidences
        return match_greedy(iou, confidences, self.iou_threshold), confidences

    def _no_objects(self, response: str) -> float:
        if not self.no_objects_credit:
            return 0.0
        if NO_OBJECTS.match(answer_span(response)):
            return 1.0
        preds = parse_detections(response)
        if preds is None or self.part == "iou":
            return 0.0
        return confidence_reward([0.0] * len(preds), [conf for _, conf in preds])


class SubstringAccuracy:
    """Visual-RFT's classification accuracy: 1 when the answers contain one another after squashing.

    Both sides: the first one-line ``<answer>`` tag (else the whole text), stripped, spaces and underscores removed,
    lower case; 1.0 if either string is a substring of the other. Lenient by design (``"golden retriever"`` passes
    for ``"retriever"``), and so gameable: an empty answer is a substring of every label, and an answer that spans
    lines falls back to the whole response (a reasoning that names every class passes). ``allow_empty=false``
    closes the first hole.

    Args:
        weight: multiplier applied by the reward set (1 as released).
        allow_empty: whether an empty answer counts as a substring (True: released).
        answer_types: rows scored (others get 0); None (default, released) scores every row.
        name: key under which the reward set logs this term; ``accuracy`` so ``rollout/accuracy`` reports it.
    """

    def __init__(
        self,
        weight: float = 1.0,
        allow_empty: bool = True,
        answer_types: Sequence[str] | None = None,
        name: str = "accuracy",
    ) -> None:
        self.weight, self.allow_empty, self.name = float(weight), allow_empty, name
        self.answer_types = frozenset(answer_types) if answer_types is not None else None

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        if self.answer_types is not None and sample.get("answer_type") not in self.answer_types:
            return 0.0
        gold, pred = _squash(answer_span(str(sample["answer"]))), _squash(answer_span(response))
        if not pred and not self.allow_empty:
            return 0.0
        return float(gold in pred or pred in gold)


def _squash(text: str) -> str:
    return text.replace(" ", "").replace("_", "").lower()


class GroundingGIoU:
    """Visual-RFT's reasoning-grounding (LISA) reward: ``GIoU + 1`` in [0, 2], 2 for the exact answer text.

    Args:
        weight: multiplier applied by the reward set (1 as released).
        parse: how a box is read from each answer span: ``lisa`` (released: the first ``(x1,y1),(x2,y2)`` of
            integers) or ``any`` (:func:`vrl.rewards.extract.parse_box`: ``[x1, y1, x2, y2]``, pairs, decimals; for
            vrl's grounding rows, whose answers are lists).
        frame: the frame the model writes boxes in, converted to the ground truth's pixels (``pixel``: same frame).
        answer_types: rows scored (others get 0); None scores every row.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 1.0,
        parse: str = "lisa",
        frame: str = "pixel",
        answer_types: Sequence[str] | None = ("bbox",),
        name: str = "giou",
    ) -> None:
        if parse not in GROUNDING_PARSERS:
            raise ValueError(f"GroundingGIoU: parse must be one of {GROUNDING_PARSERS}, got {parse!r}")
        if frame not in FRAMES:
            raise ValueError(f"GroundingGIoU: frame must be one of {FRAMES}, got {frame!r}")
        self.weight, self.parse, self.frame, self.name = float(weight), parse, frame, name
        self.answer_types = frozenset(answer_types) if answer_types is not None else None

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        if self.answer_types is not None and sample.get("answer_type") not in self.answer_types:
            return 0.0
        gold_text, pred_text = answer_span(str(sample["answer"])), answer_span(response, multiline=True)
        if pred_text == gold_text:
            return 2.0
        gold = self._box(gold_text)
        if gold is None:
            raise ValueError(
                f"grounding answer {sample['answer']!r} of sample uid={sample.get('uid')!r} holds no "
                f"{'(x1,y1),(x2,y2) box' if self.parse == 'lisa' else 'box'}"
                + (" (parse=any reads [x1, y1, x2, y2])" if self.parse == "lisa" else "")
            )
        pred = self._box(pred_text)
        if pred is None:
            return 0.0
        return float(box_giou(to_pixel_box(pred, sample, self.frame), gold)) + 1.0

    def _box(self, text: str) -> list[float] | None:
        if self.parse == "any":
            return parse_box(text)
        match = _LISA_BOX.search(text)
        return [float(v) for v in match.groups()] if match else None
