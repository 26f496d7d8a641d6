"""Scripted zoom traces: the crop call on the annotated detail in the model's frame, then the answer."""

from __future__ import annotations

import json

import pytest

from vrl.data.zoom import build_zoom, render
from vrl.data.zoom_traces import ZoomTraces


def _row(box: list[int], canvas: tuple[int, int] = (448, 448), colour: str = "red") -> dict:
    image = render(colour, box[0], box[1], canvas=max(canvas), patch=box[2] - box[0]).crop((0, 0, *canvas))
    meta = {"detail_box": box, "canvas": max(canvas), "colour": colour}
    return {"prompt": "<image>\nq", "images": [image], "answer": colour, "meta": json.dumps(meta), "uid": "r0"}


def test_the_traces_of_each_call_format_are_exact():
    row = _row([200, 120, 212, 132])
    # 448 x 448 > 50176 px: the frame is 224 x 224, half the side; [100, 60, 106, 66] with 4 px a side
    call = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [96, 56, 110, 70]}}</tool_call>'
    assert ZoomTraces(call="json").trace(row) == [call, "<answer>red</answer>"]
    assert ZoomTraces(call="zoom").trace(row) == ["<zoom>[96, 56, 110, 70]</zoom>", "<answer>red</answer>"]
    assert ZoomTraces(call="none").trace(row) == "<answer>red</answer>"
    assert ZoomTraces(call="zoom", margin=0, answer="<think>x</think><answer>{answer}</answer>").trace(row) == [
        "<zoom>[100, 60, 106, 66]</zoom>",
        "<think>x</think><answer>red</answer>",
    ]


def test_the_box_follows_the_processors_smart_resize_and_stays_in_the_frame():
    # smart_resize(h=336, w=448) under 50176 px: 252 x 168 (tests/tools/test_image.py), x scale 252/448 = 9/16,
    # y scale 1/2: [100 * 9/16, 60/2, 112 * 9/16, 72/2] = [56.25, 30, 63, 36] -> floor/ceil [56, 30, 63, 36] +- 4
    assert ZoomTraces().frame_box(_row([100, 60, 112, 72], canvas=(448, 336))) == [52, 26, 67, 40]
    # a detail at the corner: [0, 0, 6, 6] in the frame, the margin clipped at 0
    assert ZoomTraces().frame_box(_row([0, 0, 12, 12])) == [0, 0, 10, 10]
    # a canvas under the budget is shown as is (rounded to 28 px): 224 x 224, scale 1
    assert ZoomTraces().frame_box(_row([100, 60, 112, 72], canvas=(224, 224))) == [96, 56, 116, 76]


def test_a_window_is_the_grid_window_holding_the_detail_nearest_its_centre():
    row = _row([200, 120, 212, 132])  # frame box [96, 56, 110, 70] (4 px margin), frame 224
    # window 112, strides 56: x starts 0 and 56 hold [96, 110], centres 56 and 112 vs the box's 103 -> 56;
    # y starts 0 and 56 hold [56, 70], centres 56 and 112 vs 63 -> 0
    assert ZoomTraces(window=112).frame_box(row) == [56, 0, 168, 112]
    # bottom-right corner [214, 214, 224, 224] (detail [436, 436, 448, 448] / 2, 4 px, clipped): start 112 = 224 - 112
    assert ZoomTraces(window=112).frame_box(_row([436, 436, 448, 448])) == [112, 112, 224, 224]
    # a window as large as the frame is the frame
    assert ZoomTraces(window=300).frame_box(row) == [0, 0, 224, 224]


def test_build_writes_one_item_per_row_and_bad_rows_are_named():
    data = build_zoom(3, seed=1)
    kept, stats = ZoomTraces().build(None, data, [0, 2])
    assert [k[0] for k in kept] == [0, 2] and stats == {"sft/scripted_traces": 2.0}
    box = json.loads(data[2]["meta"])["detail_box"]
    half = [box[0] // 2 - 4, box[1] // 2 - 4, box[2] // 2 + 4, box[3] // 2 + 4]  # 448 -> 224, even boxes
    assert json.loads(kept[1][1][0].removeprefix("<tool_call>").removesuffix("</tool_call>")) == {
        "name": "crop",
        "arguments": {"bbox_2d": half},
    }
    assert kept[1][1][1] == f"<answer>{data[2]['answer']}</answer>"
    with pytest.raises(ValueError, match="uid='r0' needs meta.detail_box"):
        ZoomTraces().trace({**_row([200, 120, 212, 132]), "meta": "{}"})
    with pytest.raises(ValueError, match="rejection.call"):
        ZoomTraces(call="xml")
