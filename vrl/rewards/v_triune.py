"""V-Triune's verifiers (Ma et al., "One RL to See Them All", arXiv 2505.18129; others.md §13): the detection
verifier with its dynamic IoU threshold, and the math verifier's tag-count format.

Worked out from github.com/MiniMax-AI/One-RL-to-See-Them-All @39bcf0d (``reward_server/verify.py``,
``reward_server/utils/det_helper.py``, ``reward_server/reward_serving_fastapi.py``).

**Detection** (:class:`DetectionVerifier`): the answer is the first ``<answer>...</answer>`` (DOTALL; none: no
boxes), lower-cased, a JSON-ish list ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, ...]`` after the repairs
Visual-RFT also makes (``[[``/``]]``, a truncated tail cut after its last ``},``, quotes) and with backslashes
dropped; entries need four numbers with x1 <= x2, y1 <= y2 and a string label; exact duplicate boxes are kept
once. For a threshold t, boxes are matched greedily:

- ``max_iou_first``: repeatedly the (prediction, ground truth) pair of highest IoU among the unmatched, until it
  falls below t; a pair whose labels differ is matched with IoU 0.
- ``label_first``: per ground-truth box in order, the unmatched prediction with its label of highest IoU, kept
  when it reaches t.

Then ``mean_iou = sum IoU / N_gt``, ``completeness = 1 - (miss + false_alarm) / 2`` with ``miss = (N_gt - M) /
N_gt`` and ``false_alarm = (N_pred - M) / N_pred``, and ``score_t = (1 - w_c) mean_iou + w_c completeness``. The
threshold is fixed, ``average`` (the mean of score_t over t in 0.5, 0.55, ..., 0.95, 0.99) or ``dynamic``: 0.85
while step / total steps <= 0.1, 0.95 while <= 0.25, 0.99 after (:func:`dynamic_iou_threshold`; the step comes
from the reward context, :mod:`vrl.rewards.context`). The accuracy is ``size_penalty * sum_s r_s score_s / sum_s
r_s`` over the strategies s with their ratios r_s, ``size_penalty = 0.6 ** |N_pred - N_gt|``.

**Format**: :class:`TagCountFormat`, the math verifier's 0.25 per tag condition (``<think>\\n``, ``\\n</think>\\n``,
``\\n<answer>\\n``, ``\\n</answer>`` each present exactly once); :class:`DetectionFormat`, the detection verifier's
(one ``\\n<answer>\\n`` ... ``\\n</answer>`` block holding a box list).

Deliberate differences: ``max_iou_first`` pairs the prediction and ground-truth box that have the highest IoU. The
released loop records that IoU but pairs the *last* unmatched prediction with the *last* unmatched ground truth
(its loop variables are reused as the argmax), so, measured with the released function: a prediction identical to
a two-box ground truth listed in the other order scores one match of IoU 0 (label mismatch) instead of two of 1;
and one exact box plus one far box against two boxes scores two matches of IoU 1. The mAP parts of the released
score (pycocotools; ratios ``map``, ``map50``, ``map75``) are not offered; the ratios the paper's runs used were
not published (others.md §13, [NF]), so both IoU strategies default to 1 and ``completeness_weight`` to 0.5 [ours].
Boxes are compared in the ground truth's
frame after ``frame`` conversion (:func:`vrl.rewards.iou.to_pixel_box`) instead of the released rescaling of
predictions to 0..1000 by the image grid. Without a reward context (a loop that passes none), ``dynamic`` uses the
schedule's first threshold and warns once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .context import context_of
from .iou import FRAMES, box_iou, to_pixel_box

logger = logging.getLogger("vrl")

#: The thresholds V-Triune evaluates (``average`` is their mean score).
IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
#: The released dynamic schedule: (progress up to and including, threshold), then the last threshold.
DYNAMIC_SCHEDULE = ((0.10, 0.85), (0.25, 0.95))
DYNAMIC_FINAL = 0.99
STRATEGIES = ("max_iou_first", "label_first")

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

Box = dict[str, Any]  # {"bbox_2d": [x1, y1, x2, y2], "label": str}


def dynamic_iou_threshold(progress: float | None) -> float:
    """V-Triune's schedule: 0.85 while ``progress`` (step / total steps) <= 0.10, 0.95 while <= 0.25, then 0.99.
    ``None`` (no context) gives the first threshold."""
    if progress is None:
        return DYNAMIC_SCHEDULE[0][1]
    for upto, threshold in DYNAMIC_SCHEDULE:
        if progress <= upto:
            return threshold
    return DYNAMIC_FINAL


def answer_content(text: str) -> str:
    """The released extraction: the first answer tag's content (DOTALL), stripped; ``""`` without one."""
    match = _ANSWER.search(text)
    return match.group(1).strip() if match else ""


def parse_boxes(text: str) -> list[Box] | None:
    """The valid, de-duplicated boxes of an answer (module docstring), or None when there are none."""
    if not text or not text.strip():
        return None
    text = text.replace("[[", "[").replace("]]", "]")
    if not text.endswith("]"):
        text = text.rsplit("},", 1)[0] + "}]"
    try:
        items = json.loads(text.replace("'", '"').replace("\\", ""))
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    out, seen = [], set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            continue
        box = item.get("bbox_2d")
        if not isinstance(box, list) or len(box) != 4:
            continue
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            continue
        if box[0] > box[2] or box[1] > box[3] or tuple(box) in seen:
            continue
        seen.add(tuple(box))
        out.append({"bbox_2d": [float(v) for v in box], "label": item["label"]})
    return out or None


def _iou(preds: list[Box], gold: list[Box]) -> torch.Tensor:
    p = torch.tensor([b["bbox_2d"] for b in preds], dtype=torch.float64)
    g = torch.tensor([b["bbox_2d"] for b in gold], dtype=torch.float64)
    return box_iou(p[:, None, :], g[None, :, :])


def match_max_iou_first(iou: torch.Tensor, preds: list[Box], gold: list[Box], threshold: float) -> list[float]:
    """Global greedy matching by IoU (ties: the first pair in prediction-major order); a matched pair whose labels
    differ scores 0. Returns the matched pairs' scores."""
    free_p, free_g, out = list(range(len(preds))), list(range(len(gold))), []
    while free_p and free_g:
        best, bp, bg = -1.0, -1, -1
        for i in free_p:
            for j in free_g:
                if float(iou[i, j]) > best:
                    best, bp, bg = float(iou[i, j]), i, j
        if best < threshold:
            break
        same = preds[bp]["label"].lower() == gold[bg]["label"].lower()
        out.append(best if same else 0.0)
        free_p.remove(bp)
        free_g.remove(bg)
    return out


def match_label_first(iou: torch.Tensor, preds: list[Box], gold: list[Box], threshold: float) -> list[float]:
    """Per ground-truth box in order, the unmatched prediction with the same label of highest IoU (the first on
    ties), kept when its IoU reaches ``threshold``. Returns the matched pairs' IoUs."""
    used, out = set(), []
    for j, g in enumerate(gold):
        candidates = [i for i, p in enumerate(preds) if i not in used and p["label"].lower() == g["label"].lower()]
        if not candidates:
            continue
        best = max(candidates, key=lambda i: (float(iou[i, j]), -i))
        if float(iou[best, j]) >= threshold:
            out.append(float(iou[best, j]))
            used.add(best)
    return out


def iou_score(matched: Sequence[float], num_pred: int, num_gold: int, completeness_weight: float) -> float:
    """``(1 - w_c) * sum(IoU) / N_gt + w_c * (1 - (miss + false_alarm) / 2)``."""
    mean_iou = sum(matched) / num_gold if matched else 0.0
    miss = (num_gold - len(matched)) / num_gold
    false_alarm = 0.0 if num_pred == 0 else (num_pred - len(matched)) / num_pred
    return (1 - completeness_weight) * mean_iou + completeness_weight * (1 - (miss + false_alarm) / 2)


_MATCHERS = {"max_iou_first": match_max_iou_first, "label_first": match_label_first}


class DetectionVerifier:
    """V-Triune's detection accuracy (module docstring), step-aware through the reward context.

    Args:
        iou_threshold: a number (one of :data:`IOU_THRESHOLDS` in the released code; any in (0, 1] here),
            ``average`` (the released default) or ``dynamic`` (the paper's schedule).
        ratios: strategy -> ratio, over ``max_iou_first`` and ``label_first`` (released ``det_reward_ratio`` keys
            ``iou_max_iou_first`` / ``iou_max_label_first``); None: 1 each [ours, values unpublished].
        completeness_weight: w_c (released ``iou_completeness``); 0.5 [ours].
        size_penalty: base of the count penalty ``base ** |N_pred - N_gt|`` (0.6 as released).
        frame: the frame the model writes boxes in, converted to the ground truth's (``pixel``: the same).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        iou_threshold: float | str = "dynamic",
        ratios: Mapping[str, float] | None = None,
        completeness_weight: float = 0.5,
        size_penalty: float = 0.6,
        frame: str = "pixel",
        weight: float = 1.0,
        name: str = "accuracy",
    ) -> None:
        if isinstance(iou_threshold, str) and iou_threshold not in ("average", "dynamic"):
            raise ValueError(
                f"DetectionVerifier: iou_threshold must be a number, 'average' or 'dynamic', got {iou_threshold!r}"
            )
        if not isinstance(iou_threshold, str) and not 0 < float(iou_threshold) <= 1:
            raise ValueError(f"DetectionVerifier: iou_threshold must be in (0, 1], got {iou_threshold}")
        ratios = dict(ratios) if ratios is not None else dict.fromkeys(STRATEGIES, 1.0)
        unknown = sorted(set(ratios) - set(STRATEGIES))
        if unknown or not sum(ratios.values()) > 0 or any(r < 0 for r in ratios.values()):
            raise ValueError(f"DetectionVerifier: ratios need keys from {STRATEGIES}, >= 0, summing > 0; got {ratios}")
        if not 0 <= completeness_weight <= 1 or not 0 < size_penalty <= 1:
            raise ValueError("DetectionVerifier: completeness_weight must be in [0, 1] and size_penalty in (0, 1]")
        if frame not in FRAMES:
            raise ValueError(f"DetectionVerifier: frame must be one of {FRAMES}, got {frame!r}")
        self.iou_threshold, self.ratios = iou_threshold, ratios
        self.completeness_weight, self.size_penalty, self.frame = completeness_weight, size_penalty, frame
        self.weight, self.name = float(weight), name
        self._warned = False

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def thresholds(self, sample: dict) -> tuple[float, ...]:
        """The threshold(s) this row is scored at (several for ``average``, whose scores are averaged)."""
        if self.iou_threshold == "average":
            return IOU_THRESHOLDS
        if self.iou_threshold == "dynamic":
            context = context_of(sample)
            if context is None and not self._warned:
                self._warned = True
                logger.warning(
                    "DetectionVerifier: iou_threshold=dynamic but the rows carry no reward context (the loop must "
                    "pass reward(..., context=RewardContext(step, total_steps))); using %s",
                    dynamic_iou_threshold(None),
                )
            return (dynamic_iou_threshold(context.progress if context is not None else None),)
        return (float(self.iou_threshold),)

    def score(self, response: str, sample: dict) -> float:
        answer = str(sample["answer"])
        gold = parse_boxes(answer_content(answer).lower()) or parse_boxes(answer.lower())  # answer tags optional
        if gold is None:
            raise ValueError(
                f"detection answer {sample['answer']!r} of sample uid={sample.get('uid')!r} holds no boxes"
            )
        preds = parse_boxes(answer_content(response.strip()).lower())
        if preds is None:
            return 0.0
        for box in preds:
            box["bbox_2d"] = to_pixel_box(box["bbox_2d"], sample, self.frame)
        iou = _iou(preds, gold)
        total = 0.0
        for strategy, ratio in self.ratios.items():
            scores = [
                iou_score(_MATCHERS[strategy](iou, preds, gold, t), len(preds), len(gold), self.completeness_weight)
                for t in self.thresholds(sample)
            ]
            total += ratio * sum(scores) / len(scores)
        penalty = self.size_penalty ** abs(len(preds) - len(gold))
        return penalty * total / sum(self.ratios.values())


class TagCountFormat:
    """V-Triune's math format: 0.25 for each of ``<think>\\n``, ``\\n</think>\\n``, ``\\n<answer>\\n`` and
    ``\\n</answer>`` that appears exactly once (open-r1's ``count_tags``)."""

    TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")

    def __init__(self, weight: float = 1.0, name: str = "format") -> None:
        self.weight, self.name = float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [0.25 * sum(r.count(tag) == 1 for tag in self.TAGS) for r in responses]


class DetectionFormat:
    """V-Triune's detection format: 1 when ``\\n<answer>\\n`` appears and ``\\n</answer>`` exactly once and the
    answer holds a valid box list, else 0."""

    def __init__(self, weight: float = 1.0, name: str = "format") -> None:
        self.weight, self.name = float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [self.score(r) for r in responses]

    @staticmethod
    def score(response: str) -> float:
        if not (response.count("\n<answer>\n") and response.count("\n</answer>") == 1):
            return 0.0
        return float(parse_boxes(answer_content(response.strip()).lower()) is not None)
