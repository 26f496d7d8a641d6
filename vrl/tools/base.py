"""Image tools for multi-turn rollouts: the call format, the image state a tool reads, and the result it returns.

A tool is one small class with ``__call__(state, args) -> ToolResult`` (``conf/tool/<name>.yaml`` builds it);
the multi-turn sampler (``vrl.sampler.multi_turn``) parses the policy's call, runs the tool and appends its
output as an observation turn. A tool signals a bad call by raising :class:`ToolError`: the sampler turns the
message into a short error observation and counts it, so model output can never crash a run.

The call format (Qwen2.5 function-call style, as verl's and DeepEyes' zoom tool)::

    <tool_call>{"name": "crop", "arguments": {"bbox_2d": [10, 20, 60, 80]}}</tool_call>

Coordinates in a call are in the frame the model *saw*: the processor's smart-resized image (Qwen2.5-VL's
absolute-pixel convention), never the original file's pixels; tools map them back (:func:`to_original`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class ToolError(ValueError):
    """A call the policy got wrong (unknown tool, bad arguments, box out of bounds); its message becomes the
    error observation, so keep it short and say what was wrong."""


@dataclass
class ImageState:
    """The images of one trajectory so far: the prompt's, then each tool's, in order.

    Attributes:
        images: the original images (full resolution, before the processor's resize).
        frames: [w, h] of each image as the model saw it (processor frame: grid cells x patch size).
    """

    images: list[Image.Image]
    frames: list[tuple[int, int]]

    def pick(self, args: dict[str, Any], default: int) -> int:
        """The index of the image a call names (``"image": k``, 0-based; negative counts from the end)."""
        k = args.get("image", default)
        if isinstance(k, bool) or not isinstance(k, int) or not -len(self.images) <= k < len(self.images):
            raise ToolError(f"image must be an index in [0, {len(self.images) - 1}], got {k!r}")
        return k % len(self.images)


@dataclass
class ToolResult:
    """What a tool returns: new images (appended to the state and shown to the model) and a text observation.

    ``box`` is the region used, in the source image's original pixels (for rewards and the rollout table).
    """

    images: list[Image.Image] = field(default_factory=list)
    text: str = ""
    box: list[float] | None = None
    source: int | None = None


class Tool:
    """Base class: a name the policy calls and a one-line description for the prompt."""

    description: str = ""

    def __call__(self, state: ImageState, args: dict[str, Any]) -> ToolResult:  # pragma: no cover - interface
        raise NotImplementedError


def parse_call(
    text: str, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>", bare: str | None = None
) -> tuple[str, dict]:
    """The (name, arguments) of the last complete call in ``text``.

    ``bare`` names the one tool of a bare-box format (ERGO's ``<zoom>[x1, y1, x2, y2]</zoom>``): the body is
    then a JSON list, the call ``(bare, {"bbox_2d": list})``.

    Raises:
        ToolError: no complete call, invalid JSON, or a call without a string ``name`` / dict ``arguments``.
    """
    end = text.rfind(close_tag)
    start = text.rfind(open_tag, 0, end if end >= 0 else None)
    if end < 0 or start < 0:
        raise ToolError(f"no complete {open_tag}...{close_tag} call")
    body = text[start + len(open_tag) : end].strip()
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        raise ToolError(f"call is not valid JSON ({e.msg})") from None
    if bare is not None:
        return bare, {"bbox_2d": call}
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolError('call must be a JSON object with a string "name"')
    args = call.get("arguments", {})
    if not isinstance(args, dict):
        raise ToolError('"arguments" must be a JSON object')
    return call["name"], args


def box_arg(args: dict[str, Any], key: str = "bbox_2d") -> list[float]:
    """Four finite numbers [x1, y1, x2, y2] with x1 < x2 and y1 < y2, or a ToolError."""
    box = args.get(key)
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise ToolError(f"{key} must be [x1, y1, x2, y2], got {box!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise ToolError(f"{key} must hold four finite numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x1 < x2 and y1 < y2):
        raise ToolError(f"{key} needs x1 < x2 and y1 < y2, got {box!r}")
    return [x1, y1, x2, y2]


def to_original(box: list[float], frame: tuple[int, int], size: tuple[int, int], normalized: float = 0) -> list[float]:
    """Map a box from the model's frame to the original image's pixels.

    Args:
        box: [x1, y1, x2, y2] in the processor frame (``frame`` = [w', h']), or on a 0..``normalized`` scale
            when ``normalized`` > 0 (Qwen2-VL's 0-1000 convention).
        frame: [w', h'] the model saw (smart-resized).
        size: [w, h] of the original image.

    Raises:
        ToolError: a coordinate outside the frame (the policy pointed off the image).
    """
    fw, fh = (normalized, normalized) if normalized else frame
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > fw or y2 > fh:
        raise ToolError(f"bbox_2d {[round(v, 1) for v in box]} is outside the {fw}x{fh} image")
    sx, sy = size[0] / fw, size[1] / fh
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def pixel_box(box: list[float], size: tuple[int, int], min_side: int) -> tuple[int, int, int, int]:
    """Integer crop box covering ``box`` (floor/ceil), grown about its centre to at least ``min_side`` px a side
    (the processor cannot encode a side under one merged patch) and shifted to stay inside the image."""
    w, h = size
    x1, y1, x2, y2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    x1, x2 = _grow(x1, x2, min(min_side, w), w)
    y1, y2 = _grow(y1, y2, min(min_side, h), h)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    if hi - lo >= side:
        return lo, hi
    extra = side - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    shift = max(0, -lo) - max(0, hi - limit)
    return lo + shift, hi + shift


def zoom_size(size: tuple[int, int], pixels: int | None, max_upscale: float) -> tuple[int, int]:
    """The size a crop is resized to before the processor sees it: scaled (aspect kept) so that its area is at
    most ``pixels``, never up by more than ``max_upscale`` and never down (the processor's own smart resize then
    rounds it to whole merged patches within its pixel budget). ``pixels=None`` leaves the crop as cut."""
    w, h = size
    if not pixels:
        return w, h
    scale = min(math.sqrt(pixels / (w * h)), max_upscale)
    if scale <= 1:
        return w, h
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
