"""DIP-R1's rewards (arXiv 2505.23179; spec others.md §12): weighted precision/recall detection and the "look" reward.

DIP-R1 answers in three stages, think (scene understanding), look (the ambiguous regions it observes) and answer
(the decision), and is trained with three rule rewards: the three-tag format (``conf/reward/dip_r1.yaml``, a
:class:`vrl.rewards.ThinkAnswerFormat` pattern), a weighted precision-recall accuracy and a variance-guided look
reward. Its code is unreleased and the formulas are [NF]; vrl's choices, each a knob ([ours], the spec's templates):

**Tags.** ``<think>``, ``<look>``, ``<answer>``; look and answer each hold a JSON list of ``[x1, y1, x2, y2]`` boxes
(``[{"Position": [...]}]`` entries are read too), in the image's pixels (``frame``: ``model`` / ``norm1000``).

**Accuracy** (:class:`PrecisionRecall`): one-to-one matching of largest total IoU among pairs with IoU above 0.5
(:func:`vrl.rewards.box_match.match_hungarian`); ``P = TP / N_pred``, ``R = TP / N_gt`` and
``r = w_p P + w_r R`` with ``w_p = 0.4``, ``w_r = 0.6`` (recall weighs more: in a crowd, missed objects are the
usual failure). An empty answer to an empty ground truth scores 1; an unreadable answer 0.

**Look** (:class:`LookReward`, group-aware): the rollouts of one prompt (rows sharing ``uid``; the reward set
passes the whole batch in one call, :mod:`vrl.rewards.context`) vote on every pixel: ``p(x)`` is the share of the
group's readable answers whose boxes cover ``x``, and ``v(x) = 4 p (1 - p)`` its disagreement (1 where the group is
split evenly, 0 where it agrees). A rollout's look region L (the union of its look boxes) is paid by how well it
covers the disagreement: precision ``sum_L v / |L|`` (it looks where the group disagrees), coverage
``sum_L v / sum v`` (it looks at all of it), and ``mode`` picks ``f1`` (default: their harmonic mean, so neither a
one-pixel look nor a whole-image look pays), ``precision`` or ``coverage``. Precision is at most the group's
largest disagreement (8/9 where two of three answers agree), so the reward also grows with how split the group is.
No disagreement in the group (fewer than ``min_group`` readable answers, or all agree), or no readable look: 0. A
per-sample retry of the reward set's containment sees groups of one, and so scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .box_match import iou_matrix, match_hungarian
from .box_parse import parse_gold_boxes
from .iou import FRAMES, to_pixel_box

LOOK_MODES = ("f1", "precision", "coverage")


def tag_content(response: str, tag: str) -> str | None:
    """The stripped content of the first ``<tag>...</tag>`` (across lines), or None."""
    match = re.search(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", response, re.DOTALL)
    return match.group(1).strip() if match else None


def response_boxes(response: str, tag: str, sample: dict, frame: str) -> list[list[float]] | None:
    """The boxes listed in ``<tag>`` of a response, in the image's pixels; None when the tag or list is unreadable."""
    text = tag_content(response, tag)
    boxes = parse_gold_boxes(text) if text is not None else None
    return None if boxes is None else [to_pixel_box(b, sample, frame) for b in boxes]


def precision_recall(pred: list[list[float]], gold: list[list[float]], threshold: float = 0.5) -> tuple[float, float]:
    """(precision, recall) of ``pred`` against ``gold`` under optimal one-to-one matching at IoU > ``threshold``."""
    if not pred or not gold:
        return (1.0, 1.0) if not pred and not gold else (0.0, 0.0)
    matched = match_hungarian(iou_matrix(pred, gold), threshold)
    tp = sum(1 for m in matched if m > 0)
    return tp / len(pred), tp / len(gold)


class PrecisionRecall:
    """``w_p * precision + w_r * recall`` of the answer boxes (module docstring).

    Args:
        w_precision: weight of precision (0.4, [ours]).
        w_recall: weight of recall (0.6, [ours]).
        iou_threshold: a pair matches when its IoU is strictly above this (0.5).
        answer_tag: the tag holding the answer's box list.
        frame: the frame the model writes boxes in (``pixel``, ``model``, ``norm1000``).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term (``accuracy``: ``rollout/accuracy`` reports it).
    """

    def __init__(
        self,
        w_precision: float = 0.4,
        w_recall: float = 0.6,
        iou_threshold: float = 0.5,
        answer_tag: str = "answer",
        frame: str = "pixel",
        weight: float = 1.0,
        name: str = "accuracy",
    ) -> None:
        if frame not in FRAMES:
            raise ValueError(f"PrecisionRecall: frame must be one of {FRAMES}, got {frame!r}")
        if not 0 <= iou_threshold < 1:
            raise ValueError(f"PrecisionRecall: iou_threshold must be in [0, 1), got {iou_threshold}")
        self.w_precision, self.w_recall, self.iou_threshold = float(w_precision), float(w_recall), iou_threshold
        self.answer_tag, self.frame, self.weight, self.name = answer_tag, frame, float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(r, s) for r, s in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        gold = parse_gold_boxes(sample["answer"])
        if gold is None:
            raise ValueError(
                f"detection answer {sample['answer']!r} of sample uid={sample.get('uid')!r} is no box list"
            )
        pred = response_boxes(response, self.answer_tag, sample, self.frame)
        if pred is None:
            return 0.0
        precision, recall = precision_recall(pred, gold, self.iou_threshold)
        return self.w_precision * precision + self.w_recall * recall


def coverage_map(boxes: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """[height, width] bool: the pixels inside any box (inclusive integer corners, clipped to the image)."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        xa, xb = sorted((int(round(x1)), int(round(x2))))
        ya, yb = sorted((int(round(y1)), int(round(y2))))
        mask[max(0, ya) : max(0, min(height, yb + 1)), max(0, xa) : max(0, min(width, xb + 1))] = True
    return mask


def disagreement(answers: Sequence[Sequence[Sequence[float]]], width: int, height: int) -> np.ndarray:
    """[height, width] ``4 p (1 - p)``, with ``p`` the share of ``answers`` (box lists) covering each pixel."""
    if not answers:
        return np.zeros((height, width))
    p = np.mean([coverage_map(boxes, width, height) for boxes in answers], axis=0)
    return 4.0 * p * (1.0 - p)


def look_score(look: np.ndarray, v: np.ndarray, mode: str = "f1") -> float:
    """How well the look mask covers the disagreement map ``v`` (module docstring)."""
    inside, area, total = float((v * look).sum()), float(look.sum()), float(v.sum())
    if area == 0 or total == 0:
        return 0.0
    precision, coverage = inside / area, inside / total
    if mode == "precision":
        return precision
    if mode == "coverage":
        return coverage
    return 2 * precision * coverage / (precision + coverage) if precision + coverage > 0 else 0.0


class LookReward:
    """DIP-R1's group-aware look reward: pay the look regions that cover where the group's answers disagree.

    Args:
        mode: ``f1`` (default), ``precision`` or ``coverage`` (module docstring).
        min_group: fewest readable answers in a group for a disagreement map (fewer: every member scores 0).
        look_tag: the tag holding the looked-at boxes.
        answer_tag: the tag holding the answer boxes.
        frame: the frame the model writes boxes in.
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        mode: str = "f1",
        min_group: int = 2,
        look_tag: str = "look",
        answer_tag: str = "answer",
        frame: str = "pixel",
        weight: float = 1.0,
        name: str = "look",
    ) -> None:
        if mode not in LOOK_MODES:
            raise ValueError(f"LookReward: mode must be one of {LOOK_MODES}, got {mode!r}")
        if frame not in FRAMES:
            raise ValueError(f"LookReward: frame must be one of {FRAMES}, got {frame!r}")
        self.mode, self.min_group, self.frame = mode, max(2, int(min_group)), frame
        self.look_tag, self.answer_tag, self.weight, self.name = look_tag, answer_tag, float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        groups: dict[object, list[int]] = {}
        for i, sample in enumerate(samples):
            groups.setdefault(sample.get("uid", ("row", i)), []).append(i)
        out = [0.0] * len(responses)
        for members in groups.values():
            sample = samples[members[0]]
            width, height = sample["images"][0].size
            answers = [response_boxes(responses[i], self.answer_tag, samples[i], self.frame) for i in members]
            readable = [a for a in answers if a is not None]
            if len(readable) < self.min_group:
                continue
            v = disagreement(readable, width, height)
            for i in members:
                look = response_boxes(responses[i], self.look_tag, samples[i], self.frame)
                if look:
                    out[i] = look_score(coverage_map(look, width, height), v, self.mode)
        return out
