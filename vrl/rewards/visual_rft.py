"""Visual-RFT's rewards (Liu et al., arXiv 2503.01785): detection IoU + confidence, classification, grounding GIoU.

Worked out from the released code (github.com/Liuziyu77/Visual-RFT @9486633, ``src/virft/src/open_r1/grpo.py``,
``grpo_classification.py``, ``grpo_lisa.py``; spec: shared/methods/others.md §1). What each term computes, in the
order the released code does it:

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

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from .extract import parse_box
from .iou import FRAMES, box_giou, box_iou, to_pixel_box

PARTS = ("iou", "confidence")
MATCHINGS = ("greedy", "hungarian")
GROUNDING_PARSERS = ("lisa", "any")

_ANSWER = re.compile(r"<answer>(.*?)</answer>")
_ANSWER_DOTALL = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LISA_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_NO_OBJECTS = re.compile(r"^\s*(?:<answer>)?\s*no objects?\.?\s*(?:</answer>)?\s*$", re.IGNORECASE)

Prediction = tuple[list[float], float]  # (box [x1, y1, x2, y2], confidence)


def answer_span(text: str, multiline: bool = False) -> str:
    """The released extraction: the first ``<answer>...</answer>`` (one line unless ``multiline``), else the text."""
    match = (_ANSWER_DOTALL if multiline else _ANSWER).search(text)
    return match.group(1).strip() if match else text.strip()


def repaired_answer(response: str) -> str:
    """The detection answer text after the released repairs (steps 1-2 of the module docstring)."""
    text = f"<answer>{answer_span(response)}</answer>".replace("[[", "[").replace("]]", "]").replace("\n", "")
    end = text.find("</answer>")  # the wrapper's, or an earlier one left in a multi-line answer
    body = text[len("<answer>") : end]
    if not body.endswith("]"):  # truncated: keep the complete entries
        body = body.rsplit("},", 1)[0] + "}]"
    return body.replace("'", '"')


def parse_detections(response: str) -> list[Prediction] | None:
    """The predictions of a detection response, duplicates removed; None when it holds no valid list.

    Valid: after :func:`repaired_answer`, JSON for a non-empty list of objects, each with ``Position`` (four finite
    numbers) and a numeric ``Confidence``.
    """
    try:
        items = json.loads(repaired_answer(response))
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or not items:
        return None
    out: list[Prediction] = []
    seen: set[tuple[float, ...]] = set()
    for item in items:
        box = _box(item.get("Position")) if isinstance(item, dict) else None
        conf = item.get("Confidence") if isinstance(item, dict) else None
        if box is None or not _is_number(conf):
            return None
        if tuple(box) not in seen:  # exact duplicates: the first is kept
            seen.add(tuple(box))
            out.append((box, float(conf)))
    return out


def parse_gold_boxes(answer: Any) -> list[list[float]] | None:
    """Ground-truth boxes of a detection row; ``[]`` for ``No Objects``; None when the answer holds no box list.

    Accepts the Visual-RFT solution format (``<answer>[{'Position': [...], 'Confidence': 1}, ...]</answer>``, tags
    optional), a JSON list of ``[x1, y1, x2, y2]`` lists, or such a list itself.
    """
    if isinstance(answer, str):
        if _NO_OBJECTS.match(answer):
            return []
        try:
            answer = json.loads(answer_span(answer).replace("'", '"'))
        except json.JSONDecodeError:
            return None
    if not isinstance(answer, list | tuple):
        return None
    boxes = [_box(item.get("Position") if isinstance(item, dict) else item) for item in answer]
    return None if any(b is None for b in boxes) else boxes  # type: ignore[return-value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _box(value: Any) -> list[float] | None:
    if isinstance(value, list | tuple) and len(value) == 4 and all(_is_number(v) for v in value):
        return [float(v) for v in value]
    return None


def iou_matrix(pred_boxes: Sequence[Sequence[float]], gold_boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """[P, G] IoU in float64; a prediction with swapped corners (x1 > x2 or y1 > y2) overlaps nothing (released)."""
    if not pred_boxes or not gold_boxes:
        return torch.zeros(len(pred_boxes), len(gold_boxes), dtype=torch.float64)
    pred = torch.tensor(pred_boxes, dtype=torch.float64)
    gold = torch.tensor(gold_boxes, dtype=torch.float64)
    iou = box_iou(pred[:, None, :], gold[None, :, :])
    swapped = (pred[:, 2] < pred[:, 0]) | (pred[:, 3] < pred[:, 1])
    return torch.where(swapped[:, None], torch.zeros_like(iou), iou)


def match_greedy(iou: torch.Tensor, confidences: Sequence[float], threshold: float = 0.5) -> list[float]:
    """Released matching: per prediction, in descending confidence (stable), the best unmatched ground truth.

    Args:
        iou: [P, G] IoU of each prediction with each ground-truth box.
        confidences: [P] the predictions' confidences.
        threshold: a pair counts when its IoU is strictly above this.

    Returns:
        [P] the matched IoU of each prediction in its original order (0 when unmatched).
    """
    order = sorted(range(len(confidences)), key=lambda k: confidences[k], reverse=True)
    used: set[int] = set()
    out = [0.0] * len(confidences)
    for k in order:
        best, best_j = 0.0, -1
        for j in range(iou.shape[1]):
            if j not in used and float(iou[k, j]) > best:  # strict: the first of equal IoUs wins
                best, best_j = float(iou[k, j]), j
        if best > threshold:
            out[k] = best
            used.add(best_j)
    return out


def match_hungarian(iou: torch.Tensor, threshold: float = 0.5) -> list[float]:
    """Optimal one-to-one matching: the assignment of largest total IoU over pairs above ``threshold``.

    Pairs at or below the threshold are worth 0 to the solver and count as unmatched afterwards, so the result is
    the best set of valid pairs (``scipy.optimize.linear_sum_assignment`` on -IoU).

    Returns:
        [P] the matched IoU of each prediction (0 when unmatched).
    """
    from scipy.optimize import linear_sum_assignment

    out = [0.0] * iou.shape[0]
    if iou.numel() == 0:
        return out
    value = torch.where(iou > threshold, iou, torch.zeros_like(iou)).numpy()
    rows, cols = linear_sum_assignment(-value)
    for k, j in zip(rows.tolist(), cols.tolist()):
        if value[k, j] > 0:
            out[k] = float(value[k, j])
    return out


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
        if _NO_OBJECTS.match(answer_span(response)):
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
