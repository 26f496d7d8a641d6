"""Box overlap: pure IoU / GIoU functions, coordinate-frame conversion, and the ``BoxIoU`` reward.

Boxes are ``[x1, y1, x2, y2]`` (two opposite corners). GIoU follows Rezatofighi et al., "Generalized
Intersection over Union" (CVPR 2019, arXiv 1902.09630): ``GIoU = IoU - (|C| - |A u B|) / |C|`` with C the
smallest axis-aligned box enclosing both. Unlike IoU it keeps a gradient-like signal for disjoint boxes
(closer is better), which is why grounding recipes such as Visual-RFT reward it.

Degenerate boxes, decided once here for every caller:

- Corners are **normalised**, not rejected: ``[x2, y2, x1, y1]`` describes the same rectangle as
  ``[x1, y1, x2, y2]``, so it gets the same score. Rejecting would punish a notation slip, not a
  perception error.
- A zero-area box (a point or a line) covers nothing, so it gets each metric's minimum whatever the
  other box is, itself included: IoU 0 and GIoU -1. Plain GIoU would give a point inside the target
  0 (the hull is the target), the same as a real box touching it; a degenerate answer is a format slip
  and should not earn that partial credit.
- Non-finite coordinates propagate as NaN; the reward never passes them (the parser rejects them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .extract import AnswerExtractor, parse_box

#: Coordinate frames a predicted box can be written in (see :func:`to_pixel_box`).
FRAMES = ("pixel", "model", "norm1000")
KINDS = ("iou", "giou")

BoxLike = torch.Tensor | Sequence[float]


def box_iou(a: BoxLike, b: BoxLike) -> torch.Tensor | float:
    """Intersection over union of boxes ``a`` and ``b``.

    Args:
        a: ``[..., 4]`` corners ``x1, y1, x2, y2`` (tensor, or a list for one box).
        b: same, broadcastable against ``a``.

    Returns:
        ``[...]`` IoU in [0, 1] (0 when either box has zero area); a Python float when neither input is
        a tensor.
    """
    iou, _ = _overlap(a, b, giou=False)
    return iou


def box_giou(a: BoxLike, b: BoxLike) -> torch.Tensor | float:
    """Generalised IoU of boxes ``a`` and ``b``, in [-1, 1] (-1 when either box has zero area).

    Args:
        a: ``[..., 4]`` corners ``x1, y1, x2, y2`` (tensor, or a list for one box).
        b: same, broadcastable against ``a``.

    Returns:
        ``[...]`` GIoU; a Python float when neither input is a tensor.
    """
    _, giou = _overlap(a, b, giou=True)
    return giou


def _overlap(a: BoxLike, b: BoxLike, giou: bool) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    as_tensor = isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
    ta, tb = _as_box_tensor(a), _as_box_tensor(b)
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    ta, tb = _sorted_corners(ta.to(dtype)), _sorted_corners(tb.to(dtype))
    area_a = (ta[..., 2] - ta[..., 0]) * (ta[..., 3] - ta[..., 1])
    area_b = (tb[..., 2] - tb[..., 0]) * (tb[..., 3] - tb[..., 1])
    inter_w = (torch.minimum(ta[..., 2], tb[..., 2]) - torch.maximum(ta[..., 0], tb[..., 0])).clamp(min=0)
    inter_h = (torch.minimum(ta[..., 3], tb[..., 3]) - torch.maximum(ta[..., 1], tb[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    valid = (area_a > 0) & (area_b > 0)  # then union > 0 and hull >= union > 0
    # Divide by 1 where invalid so no 0/0 NaN appears even in the discarded branch.
    iou = torch.where(valid, inter / torch.where(valid, union, torch.ones_like(union)), 0.0)
    out_giou = iou
    if giou:
        hull_w = torch.maximum(ta[..., 2], tb[..., 2]) - torch.minimum(ta[..., 0], tb[..., 0])
        hull_h = torch.maximum(ta[..., 3], tb[..., 3]) - torch.minimum(ta[..., 1], tb[..., 1])
        hull = torch.where(valid, hull_w * hull_h, torch.ones_like(union))
        out_giou = torch.where(valid, iou - (hull - union) / hull, -1.0)
    if as_tensor:
        return iou, out_giou
    return float(iou), float(out_giou)


def _as_box_tensor(box: BoxLike) -> torch.Tensor:
    t = box if isinstance(box, torch.Tensor) else torch.as_tensor(box, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.shape[-1:] != (4,):
        raise ValueError(f"a box needs 4 coordinates [x1, y1, x2, y2] in its last dim, got shape {tuple(t.shape)}")
    return t


def _sorted_corners(t: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.minimum(t[..., 0], t[..., 2]), torch.maximum(t[..., 0], t[..., 2])
    y1, y2 = torch.minimum(t[..., 1], t[..., 3]), torch.maximum(t[..., 1], t[..., 3])
    return torch.stack([x1, y1, x2, y2], dim=-1)


def to_pixel_box(box: Sequence[float], sample: dict, frame: str) -> list[float]:
    """Convert a predicted ``box`` from ``frame`` to the original image's pixels.

    Args:
        box: ``[x1, y1, x2, y2]`` as the model wrote it.
        sample: the data row; its first image (``sample["images"][0]``, a PIL image whose ``.size`` is
            ``(w, h)``) is the one the box refers to.
        frame: ``"pixel"``: already original pixels (returned unchanged). ``"model"``: pixels of the
            frame the processor resized the image to, ``sample["model_image_sizes"][0] = [w, h]`` as
            attached by the rollout (Qwen2.5-VL writes absolute coordinates in this frame); scaled by
            original/model size per axis. ``"norm1000"``: each axis normalised to 0..1000 (Qwen2-VL
            style); scaled by original size / 1000.

    Raises:
        ValueError: unknown frame, or the sample lacks what the frame needs (a configuration error,
            not a model error, so it is not silently scored 0).
    """
    if frame == "pixel":
        return list(box)
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    uid = sample.get("uid")
    images = sample.get("images") or []
    if not images:
        raise ValueError(f"frame={frame!r} needs the original image size, but sample uid={uid!r} has no images")
    width, height = images[0].size
    if frame == "model":
        sizes = sample.get("model_image_sizes")
        if not sizes:
            raise ValueError(
                f"frame='model' needs sample['model_image_sizes'] (attached by the rollout); "
                f"missing for sample uid={uid!r}"
            )
        src_w, src_h = (float(v) for v in sizes[0])
    else:
        src_w = src_h = 1000.0
    sx, sy = width / src_w, height / src_h
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def ground_truth_box(sample: dict) -> list[float]:
    """The ground-truth box of a bbox-type sample (``answer`` is ``"[x1, y1, x2, y2]"`` in pixels).

    Raises:
        ValueError: the answer holds no box, naming the sample uid (a data bug should be loud).
    """
    box = parse_box(str(sample["answer"]))
    if box is None:
        raise ValueError(f"bbox answer {sample['answer']!r} of sample uid={sample.get('uid')!r} is not a box")
    return box


class BoxIoU:
    """Box-overlap reward for grounding: how well the predicted box covers the ground-truth box.

    The answer span (see ``extract``) is parsed with :func:`vrl.rewards.extract.parse_box`, converted
    from ``frame`` to original pixels and compared with the sample's ``answer``. An unparsable
    prediction scores 0.0.

    Samples whose ``answer_type`` is not ``"bbox"`` score 0.0 rather than raising, so one reward set can
    serve a mix of grounding and VQA rows. This is harmless under group-normalised advantages: every
    response to a non-bbox prompt gets the same 0, which cancels within its group. (A term that is 0 on
    every row shows up as such in the logged reward components.)

    Args:
        weight: Multiplier applied by the reward set. 1.0: on a par with accuracy.
        kind: ``"iou"`` or ``"giou"``. GIoU also ranks disjoint boxes by distance, a denser signal
            early in training.
        frame: Coordinate frame the model writes boxes in: ``"pixel"`` (original image pixels, the
            default because dataset answers and prompts use them), ``"model"`` (the processor's resized
            frame) or ``"norm1000"`` (0..1000 per axis). See :func:`to_pixel_box`.
        threshold: ``None`` (default) gives the continuous score: IoU in [0, 1], or GIoU mapped to
            [0, 1] as ``(giou + 1) / 2`` so both kinds share a range and 0 stays the worst score.
            A number gives a binary reward: 1.0 if the raw metric (IoU, or unmapped GIoU in [-1, 1])
            is ``>= threshold``, else 0.0.
        extract: How the answer span is found; ``None`` uses ``AnswerExtractor()`` defaults (answer
            tag, then ``\\boxed{}``, then the whole response).
        name: Key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 1.0,
        kind: str = "iou",
        frame: str = "pixel",
        threshold: float | None = None,
        extract: AnswerExtractor | None = None,
        name: str = "iou",
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        self.weight = float(weight)
        self.kind = kind
        self.frame = frame
        self.threshold = threshold
        self.extract = extract if extract is not None else AnswerExtractor()
        self.name = name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One score per response; see the class docstring."""
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response, sample) for response, sample in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        """The reward of one response."""
        if sample.get("answer_type") != "bbox":
            return 0.0
        gold = ground_truth_box(sample)
        span = self.extract(response)
        box = parse_box(span) if span is not None else None
        if box is None:
            return 0.0
        pred = to_pixel_box(box, sample, self.frame)
        value = box_iou(pred, gold) if self.kind == "iou" else box_giou(pred, gold)
        if self.threshold is not None:
            return 1.0 if value >= self.threshold else 0.0
        return value if self.kind == "iou" else (value + 1.0) / 2.0
