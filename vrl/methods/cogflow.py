"""CogFlow's visual rewards (arXiv 2601.01874; github.com/JacobYuan7/cogflow_code ``reward/vgpo_reward.py``).

The response is ``<WATCHING>`` (structured perception) ``<THINKING>`` ``<ANSWER>``. The perception block lists

    Point: A: (x, y) B: (x, y) ...
    Line: (x, y) -- (x, y) [-- (x, y) ...]        (one polyline per ``Line:`` line)
    Circle: (cx, cy, r) ...

in the diagram's pixel frame (x right, y down; ``vrl.data.geometry``). Rewards:

- :class:`CogFlowFormat`: all three blocks, in order, nothing else.
- :class:`VPRReward` (parametric perception reward, lines only): each polyline fitted by least squares to a
  normalised line (A, B, C) with A >= 0 (B > 0 when A = 0; vertical polylines as a special case), endpoints kept;
  pair cost gated (angle difference <= 6 deg and the 1-D IoU of the two segments along the ground truth's direction
  >= 0.2, else 1e6); cost = dtheta + |C_p - C_g| + 2 (1 - IoU) + Hausdorff(seg_p, seg_g); optimal assignment
  (``scipy.optimize.linear_sum_assignment``); pairs under 1e5 are true positives; VPR = F1 (1 when both sets are
  empty, 0 when one is). Coordinates are divided by the image side first (our choice: the released code's frame is
  [NF]; this keeps |dC| and the Hausdorff term on the angle's scale), dtheta is in radians.
- :class:`VSRReward` (render and compare): the perception re-rendered with the data's own renderer
  (``vrl.data.geometry.render_primitives``) and compared with the diagram. The paper embeds both with FG-CLIP and
  maps the cosine to (cos + 1) / 2 (:class:`ClipSimilarity`, ``reward.vsr.similarity``); vrl's CPU default (no
  weights offline) embeds each as its blurred ink map (1 - grey level, Gaussian blur ``blur`` px) and uses the
  cosine, already in [0, 1]: a perfect perception scores 1, an unrelated one near 0.

Both visual terms are 0 when the format fails (as published). The total ``sum_k w_k x_k / sum_k w_k`` over
{VSR, VPR, accuracy, format} is the reward set with weights 0.25 each (``conf/reward/cogflow.yaml``); the learned
internalisation reward (IntlzR) is left out (its model is not released).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vrl.data.geometry import render_primitives
from vrl.rewards.extract import last_tag_content

FORMAT_PATTERN = r"\s*<WATCHING>.*?</WATCHING>\s*<THINKING>.*?</THINKING>\s*<ANSWER>.*?</ANSWER>\s*"
MAX_ANGLE_DEG = 6.0
MIN_OVERLAP = 0.2
GATED = 1e6
TP_BELOW = 1e5
_NUM = r"[-+]?\d+(?:\.\d+)?"
_PAIR = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_TRIPLE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_LABELLED = re.compile(rf"([A-Za-z]\w*)\s*:\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def parse_watching(text: str) -> dict[str, Any]:
    """Points, polylines and circles of a ``<WATCHING>`` block's content (unreadable lines are skipped)."""
    out: dict[str, Any] = {"points": {}, "lines": [], "circles": []}
    for raw in text.splitlines():
        line = raw.strip()
        head, _, body = line.partition(":")
        kind = head.strip().lower()
        if kind == "point":
            out["points"] |= {m[0]: [float(m[1]), float(m[2])] for m in _LABELLED.findall(body)}
        elif kind == "line":
            pts = [[float(x), float(y)] for x, y in _PAIR.findall(body)]
            if len(pts) >= 2:
                out["lines"].append(pts)
        elif kind == "circle":
            out["circles"] += [[float(a), float(b), float(c)] for a, b, c in _TRIPLE.findall(body)]
    return out


def fit_line(points: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """((A, B, C) with A^2 + B^2 = 1, A >= 0 (B > 0 when A = 0), [2, 2] endpoints) of a polyline, least squares
    ``y = m x + b`` (``x = c`` when every x is equal)."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    if np.ptp(x) < 1e-12:
        abc = np.array([1.0, 0.0, -x.mean()])
    else:
        m, b = np.polyfit(x, y, 1)
        abc = np.array([m, -1.0, b]) / math.hypot(m, 1.0)
    if abc[0] < 0 or (abc[0] == 0 and abc[1] < 0):
        abc = -abc
    return abc, p[[0, -1]]


def _angle(abc: np.ndarray) -> float:
    return math.atan2(-abc[0], abc[1]) % math.pi  # direction (B, -A), modulo pi


def _point_segment(p: np.ndarray, seg: np.ndarray) -> float:
    a, b = seg
    d = b - a
    t = 0.0 if not d.any() else float(np.clip(np.dot(p - a, d) / np.dot(d, d), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * d)))


def hausdorff(s: np.ndarray, t: np.ndarray) -> float:
    """Hausdorff distance of two segments (the farthest endpoint from the other segment: distance to a segment is
    convex along a segment, so endpoints are where it peaks)."""
    return max(max(_point_segment(p, t) for p in s), max(_point_segment(p, s) for p in t))


def overlap_iou(pred: np.ndarray, gt: np.ndarray, gt_angle: float) -> float:
    """1-D IoU of the two segments projected on the ground truth's direction."""
    u = np.array([math.cos(gt_angle), math.sin(gt_angle)])
    p, g = sorted(pred @ u), sorted(gt @ u)
    union = max(p[1], g[1]) - min(p[0], g[0])
    return max(0.0, min(p[1], g[1]) - max(p[0], g[0])) / union if union > 0 else 0.0


def pair_cost(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]]) -> float:
    """The gated cost of matching a predicted polyline to a ground-truth one (same frame)."""
    (ap, sp), (ag, sg) = fit_line(pred), fit_line(gt)
    dtheta = abs(_angle(ap) - _angle(ag))
    dtheta = min(dtheta, math.pi - dtheta)
    iou = overlap_iou(sp, sg, _angle(ag))
    if dtheta > math.radians(MAX_ANGLE_DEG) or iou < MIN_OVERLAP:
        return GATED
    return dtheta + abs(ap[2] - ag[2]) + 2.0 * (1.0 - iou) + hausdorff(sp, sg)


def vpr(pred_lines: Sequence, gt_lines: Sequence, scale: float = 1.0) -> float:
    """F1 of the optimal assignment of predicted to ground-truth polylines (coordinates divided by ``scale``)."""
    from scipy.optimize import linear_sum_assignment

    if not pred_lines and not gt_lines:
        return 1.0
    if not pred_lines or not gt_lines:
        return 0.0
    pred = [np.asarray(p, dtype=np.float64) / scale for p in pred_lines]
    gt = [np.asarray(g, dtype=np.float64) / scale for g in gt_lines]
    cost = np.array([[pair_cost(p, g) for g in gt] for p in pred])
    rows, cols = linear_sum_assignment(cost)
    tp = int((cost[rows, cols] < TP_BELOW).sum())
    if tp == 0:
        return 0.0
    precision, recall = tp / len(pred), tp / len(gt)
    return 2 * precision * recall / (precision + recall)


def ink_similarity(a: Any, b: Any, blur: float = 2.0) -> float:
    """Cosine of the blurred ink maps (1 - grey / 255) of two same-size images, in [0, 1]; 0 when one is blank."""
    from PIL import ImageFilter

    def ink(img: Any) -> np.ndarray:
        grey = img.convert("L").filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else img.convert("L")
        return 1.0 - np.asarray(grey, dtype=np.float64).ravel() / 255.0

    x, y = ink(a), ink(b.resize(a.size))
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.dot(x, y) / norm) if norm > 0 else 0.0


class ClipSimilarity:
    """The paper's VSR similarity: ``(cos + 1) / 2`` of two images' CLIP image embeddings (FG-CLIP in the paper;
    ``infer.py`` falls back to ``openai/clip-vit-base-patch32``). Its model is frozen and registered with the
    training module (``module()``), like a local judge's.

    Args:
        model: a path or hub id (``CLIPModel``; loaded on first use) or a built model.
        processor: a ``CLIPImageProcessor`` (or a path); None loads it from ``model``.
    """

    def __init__(self, model: Any, processor: Any = None) -> None:
        self._model, self._processor = model, processor if processor is not None else model

    def module(self) -> Any:
        from transformers import CLIPImageProcessor, CLIPModel

        if isinstance(self._model, str):
            self._model = CLIPModel.from_pretrained(self._model)
        if isinstance(self._processor, str):
            self._processor = CLIPImageProcessor.from_pretrained(self._processor)
        return self._model.eval().requires_grad_(False)

    def __call__(self, a: Any, b: Any) -> float:
        import torch

        model = self.module()
        pixels = self._processor(images=[a.convert("RGB"), b.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = model.get_image_features(pixel_values=pixels.to(model.device))
        emb = getattr(out, "pooler_output", out)  # a tensor, or an output object in newer transformers
        cos = torch.nn.functional.cosine_similarity(emb[0:1].float(), emb[1:2].float()).item()
        return (cos + 1.0) / 2.0


class CogFlowFormat:
    """1.0 when the response is ``<WATCHING>..</WATCHING> <THINKING>..</THINKING> <ANSWER>..</ANSWER>``."""

    def __init__(self, weight: float = 0.25, pattern: str = FORMAT_PATTERN, name: str = "format") -> None:
        self.weight, self.name, self.pattern = float(weight), name, re.compile(pattern, re.DOTALL)

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [1.0 if self.pattern.fullmatch(r) else 0.0 for r in responses]


class _Perception:
    """Shared by VPR and VSR: the perception block of a response, 0 when the format fails (``require_format``)."""

    def __init__(self, weight: float, require_format: bool, name: str) -> None:
        self.weight, self.require_format, self.name = float(weight), require_format, name
        self._format = CogFlowFormat()

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        ok = self._format(responses, samples) if self.require_format else [1.0] * len(responses)
        out = []
        for response, sample, fmt in zip(responses, samples, ok):
            block = last_tag_content(response, "WATCHING")
            if block is None and not self.require_format:  # a bare perception (the VGPO gate scores these)
                block = response.split("</WATCHING>")[0].split("<WATCHING>")[-1]
            out.append(self.score(parse_watching(block), sample) if fmt and block is not None else 0.0)
        return out

    def score(self, perception: Mapping[str, Any], sample: Mapping[str, Any]) -> float:
        raise NotImplementedError


def _primitives(sample: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(sample["primitives"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"row uid={sample.get('uid')!r}: field 'primitives' must hold the diagram's JSON") from exc


class VPRReward(_Perception):
    """VPR: F1 of the perceived lines against the diagram's (``primitives`` row field), coordinates / image side.

    Args:
        weight: the reward set's weight; require_format: 0 unless the whole format holds (published);
        name: key under which the reward set logs this term.
    """

    def __init__(self, weight: float = 0.25, require_format: bool = True, name: str = "vpr") -> None:
        super().__init__(weight, require_format, name)

    def score(self, perception: Mapping[str, Any], sample: Mapping[str, Any]) -> float:
        side = float(sample["images"][0].size[0]) if sample.get("images") else 1.0
        return vpr(perception["lines"], _primitives(sample)["lines"], scale=side)


class VSRReward(_Perception):
    """VSR: the perception re-rendered and compared with the row's diagram (:func:`ink_similarity`).

    Args:
        weight: the reward set's weight; require_format: 0 unless the whole format holds (published);
        blur: Gaussian blur radius in pixels of the ink maps (tolerance to a few pixels' offset);
        similarity: None (ink maps, the CPU default) or a callable ``(image, image) -> [0, 1]`` such as
            :class:`ClipSimilarity` (the paper's);
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 0.25,
        require_format: bool = True,
        blur: float = 2.0,
        similarity: Any = None,
        name: str = "vsr",
    ) -> None:
        super().__init__(weight, require_format, name)
        self.blur, self.similarity = blur, similarity

    def score(self, perception: Mapping[str, Any], sample: Mapping[str, Any]) -> float:
        image = sample["images"][0]
        if not (perception["lines"] or perception["circles"] or perception["points"]):
            return 0.0
        rendered = render_primitives(perception, image.size[0])
        if self.similarity is not None:
            return float(self.similarity(image, rendered))
        return ink_similarity(image, rendered, self.blur)
