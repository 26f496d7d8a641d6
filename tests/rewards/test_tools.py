"""Reward terms for tool trajectories, on rows shaped as ``MultiTurnSampler`` records them (hand-computed)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vrl.rewards.tools import BoxSize, RegionSufficiency, ToolFormat, ToolNecessity, cover

IMG = Image.new("RGB", (400, 200))
CALL = {"text": "<tool_call>..</tool_call>", "tool": "crop", "args": {}, "box": [0, 0, 100, 100], "source": 0}
BAD = {"text": "<tool_call>{x}</tool_call>", "tool": None, "error": "call is not valid JSON"}
ANSWER = {"text": "<answer>red</answer>"}


def _row(turns, stop="answer", uid="u0", tokens=10, answer="red"):
    meta = json.dumps({"detail_box": [40, 40, 60, 60]})
    return {"turns": turns, "stop": stop, "uid": uid, "images": [IMG], "meta": meta, "answer": answer,
            "answer_type": "text", "response_tokens": tokens}  # fmt: skip


def _responses(rows):
    return ["\n".join(t["text"] for t in r["turns"]) for r in rows]


def test_tool_format():
    rows = [
        _row([CALL, ANSWER]),
        _row([BAD, ANSWER]),  # an invalid call
        _row([CALL, {"text": "red"}]),  # no answer tag
        _row([CALL, ANSWER], stop="length"),  # cut by the budget
        _row([ANSWER]),  # no call
    ]
    assert ToolFormat()(_responses(rows), rows) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert ToolFormat(min_calls=1, max_calls=1)(_responses(rows), rows) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_region_sufficiency_and_box_size():
    half = {**CALL, "box": [50, 40, 100, 100]}  # covers x 50..60 of the region's 40..60: half of it
    rows = [_row([CALL, ANSWER]), _row([half, ANSWER]), _row([CALL, half, ANSWER]), _row([ANSWER])]
    assert RegionSufficiency()(_responses(rows), rows) == [1.0, 0.0, 0.0, 0.0]
    assert RegionSufficiency(which="any")(_responses(rows), rows) == [1.0, 0.0, 1.0, 0.0]
    assert RegionSufficiency(min_cover=0.5)(_responses(rows), rows) == [1.0, 1.0, 1.0, 0.0]
    assert cover([40, 40, 60, 60], [50, 40, 100, 100]) == 0.5
    with pytest.raises(ValueError, match="uid='u0'"):
        RegionSufficiency(key="nope")(["x"], [_row([CALL])])
    # area ratios: 100 * 100 / (400 * 200) = 0.125 (free under a_max 0.25 -> 0); a 400 x 100 box: 0.5 -> -0.25
    big = {**CALL, "box": [0, 0, 400, 100]}
    rows = [_row([CALL, ANSWER]), _row([big, ANSWER]), _row([ANSWER])]
    assert BoxSize(a_max=0.25)(_responses(rows), rows) == [0.0, -0.25, 0.0]


def test_tool_necessity_pays_for_needed_tools_only():
    rows = [
        _row([CALL, ANSWER], uid="a"),  # right with a tool; a tool-free sibling was also right -> -penalty
        _row([ANSWER], uid="a"),
        _row([CALL, ANSWER], uid="b", tokens=300),  # right with a tool, no tool-free sibling right -> +bonus
        _row([{"text": "<answer>blue</answer>"}], uid="b"),  # wrong -> 0
    ]
    term = ToolNecessity(tool_bonus=0.5, tool_penalty=0.2, len_free=200, len_penalty=0.1)
    # row 2: 0.5 - 0.1 * (300 - 200) / 200 = 0.45
    assert term(_responses(rows), rows) == pytest.approx([-0.2, 0.0, 0.45, 0.0])
