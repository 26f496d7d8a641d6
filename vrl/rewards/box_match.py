"""Matching predicted boxes to ground-truth boxes: Visual-RFT's greedy confidence-order rule and optimal matching.

Split from the scoring (:mod:`vrl.rewards.visual_rft`) so other box rewards (DIP-R1's precision/recall) share it.
The greedy rule is the released Visual-RFT code's (github.com/Liuziyu77/Visual-RFT @9486633, ``grpo.py``); the
optimal one uses ``scipy.optimize.linear_sum_assignment`` (no hand-written solver).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .iou import box_iou


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
