"""Scripted tool-use traces for the zoom task (``data=zoom``): the warm start that makes a tiny policy call the tool.

A tiny random policy never writes a valid crop call (~60 tokens of exact JSON for the tiny tokenizer; the issue-13
probe saw 0 calls in 64 trajectories), so RL with tools has nothing to reinforce. :class:`ZoomTraces` is an ``sft``
stage's set builder (``rejection:`` slot, :class:`vrl.lit.stages.Stage`) writing, per row, the trace a competent
tool user would write:

1. the crop call on the row's annotated detail (``meta.detail_box``, original pixels), in the preset's call format
   (``json``: ``<tool_call>{"name": "crop", "arguments": {"bbox_2d": [..]}}</tool_call>``, ``+method=zoom``;
   ``zoom``: ERGO's ``<zoom>[x1, y1, x2, y2]</zoom>``), with the box in the **frame the model sees**: the
   processor's smart-resized image (Qwen's ``smart_resize``), scaled from the original and grown by ``margin``
   frame pixels a side, as the crop tool expects (``vrl.tools.base.to_original`` maps it back);
2. after the crop's observation, ``<answer>{answer}</answer>`` (what the accuracy extractor and ``ToolFormat`` read).

``call: none`` writes the single-turn ``<answer>{answer}</answer>`` instead: the no-tool arm's warm start with the
same answers. The multi-turn items are replayed through the run's sampler (:mod:`vrl.lit.sft_turns`), so the
observation is the tool's real output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vrl.data.source import dataset_row

CALLS = ("json", "zoom", "none")


class ZoomTraces:
    """Per row: [crop call, answer] (or the answer alone for ``call: none``), from its ``meta.detail_box``.

    Args:
        call: ``json`` (``<tool_call>`` JSON, +method=zoom), ``zoom`` (ERGO's bare box) or ``none`` (no tool).
        tool: the tool name in a JSON call (the sampler's ``tools`` key).
        margin: frame pixels added on each side of the detail's box (the scripted policy of the zoom data tests
            uses 4); the box is clipped to the frame.
        min_pixels, max_pixels, factor: the processor's smart-resize bounds (``model.min_pixels``,
            ``model.max_pixels``) and side multiple (patch size x merge size: 28 for Qwen2-VL / 2.5-VL).
        window: null = the detail's own box (+ ``margin``); a side in frame px = the window of that side, on a grid of
            half-window strides, that holds the detail (+ ``margin``) nearest its centre: a few distinct boxes that a
            tiny model can learn to write (the checkerboard stays readable while the crop is not shrunk: with
            ``zoom_pixels`` = ``max_pixels`` a window of half the frame side is shown 1:1).
        answer: the answer turn's template (``{answer}``: the row's answer).
        batch_size: items per SFT step; None = the run's prompts per step.
        max_prompts: only the first N rows of the stage's data; None = all of them.
    """

    def __init__(
        self,
        call: str = "json",
        tool: str = "crop",
        margin: int = 4,
        min_pixels: int = 3136,
        max_pixels: int = 50176,
        factor: int = 28,
        window: int | None = None,
        answer: str = "<answer>{answer}</answer>",
        batch_size: int | None = None,
        max_prompts: int | None = None,
    ) -> None:
        if call not in CALLS:
            raise ValueError(f"rejection.call must be one of {CALLS}, got {call!r}")
        if margin < 0 or factor < 1 or not 0 < min_pixels <= max_pixels:
            raise ValueError(
                f"rejection: margin >= 0, factor >= 1 and 0 < min_pixels <= max_pixels needed, got {margin}, "
                f"{factor}, {min_pixels}, {max_pixels}"
            )
        for knob, value in (("batch_size", batch_size), ("max_prompts", max_prompts)):
            if value is not None and value < 1:
                raise ValueError(f"rejection.{knob} must be >= 1 or null, got {value}")
        if window is not None and window < 2:
            raise ValueError(f"rejection.window must be >= 2 frame px or null, got {window}")
        self.call, self.tool, self.margin, self.answer, self.window = call, tool, margin, answer, window
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor
        self.batch_size, self.max_prompts = batch_size, max_prompts

    def frame_box(self, row: Mapping[str, Any]) -> list[int]:
        """The detail's box in the model's frame: original box x (frame / original), floor/ceil, ``margin`` px
        a side, clipped to the frame. A row without ``meta.detail_box`` or an image is a ValueError naming it."""
        where = f"row uid={row.get('uid')!r}"
        meta = row.get("meta")
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
        images = row.get("images") or []
        if "detail_box" not in meta or not images:
            raise ValueError(f"rejection (ZoomTraces): {where} needs meta.detail_box and an image (data=zoom rows)")
        w, h = images[0].size
        fh, fw = smart_resize(h, w, self.factor, self.min_pixels, self.max_pixels)
        x1, y1, x2, y2 = meta["detail_box"]
        sx, sy, m = fw / w, fh / h, self.margin
        box = [
            max(0, math.floor(x1 * sx) - m),
            max(0, math.floor(y1 * sy) - m),
            min(fw, math.ceil(x2 * sx) + m),
            min(fh, math.ceil(y2 * sy) + m),
        ]
        if self.window is None:
            return box
        (ax, bx), (ay, by) = (_window(box[0], box[2], self.window, fw), _window(box[1], box[3], self.window, fh))
        return [ax, ay, bx, by]

    def trace(self, row: Mapping[str, Any]) -> str | list[str]:
        """The row's item: ``[call, answer]`` texts, or the answer text alone for ``call: none``."""
        answer = self.answer.format(answer=row["answer"])
        if self.call == "none":
            return answer
        box = self.frame_box(row)
        if self.call == "zoom":
            return [f"<zoom>{json.dumps(box)}</zoom>", answer]
        body = json.dumps({"name": self.tool, "arguments": {"bbox_2d": box}})
        return [f"<tool_call>{body}</tool_call>", answer]

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[tuple], dict[str, float]]:
        """``(index, trace)`` for each row of ``indices`` (the stage's shard, ``max_prompts`` applied)."""
        kept = [(int(i), self.trace(dataset_row(data, i))) for i in indices]
        return kept, {"sft/scripted_traces": float(len(kept))}


def _window(lo: int, hi: int, side: int, frame: int) -> tuple[int, int]:
    """[start, start + side] on the grid of ``side // 2`` strides (the last one flush with the frame's end) that holds
    [lo, hi], nearest its centre; the whole frame when ``side`` >= it; [lo, hi] grown to ``side`` if none holds it."""
    if side >= frame:
        return 0, frame
    starts = sorted({*range(0, frame - side + 1, max(1, side // 2)), frame - side})
    holding = [a for a in starts if a <= lo and hi <= a + side]
    if not holding:
        a = min(max(0, (lo + hi - side) // 2), frame - side)
        return a, a + side
    a = min(holding, key=lambda a: abs(2 * a + side - lo - hi))
    return a, a + side
