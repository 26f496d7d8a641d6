"""Image tools: box mapping from the model's frame to the original, zoom sizes, augmentations, windows, calls.

Expected values are worked out by hand in the comments (Qwen's smart resize: sides rounded to multiples of
factor = patch 14 x merge 2 = 28, area within [min_pixels, max_pixels]; the tiny model's are 3136 and 50176).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vrl.models.tiny import build_processor, build_tiny_tokenizer
from vrl.tools import Contrast, Crop, Denoise, Flip, ImageState, Rotate, Sharpen, SplitWindows, ToolError, parse_call


def _gradient(w: int, h: int) -> Image.Image:
    """Every pixel distinct enough to tell crops apart: R = x % 256, G = y % 256."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None, :] % 256
    a[..., 1] = np.arange(h)[:, None] % 256
    return Image.fromarray(a)


def _frame(processor, image: Image.Image) -> tuple[int, int]:
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return int(grid[2]) * 14, int(grid[1]) * 14


def test_crop_maps_the_box_back_and_the_zoom_is_re_resized_within_the_budget():
    processor = build_processor("qwen2_5_vl", build_tiny_tokenizer(), min_pixels=3136, max_pixels=50176)
    image = _gradient(448, 336)
    # smart_resize(h=336, w=448): 336 * 448 = 150528 > 50176, beta = sqrt(150528 / 50176) = sqrt(3);
    # h = floor(336 / 1.7321 / 28) * 28 = 6 * 28 = 168, w = floor(448 / 1.7321 / 28) * 28 = 9 * 28 = 252
    frame = _frame(processor, image)
    assert frame == (252, 168)
    state = ImageState([image], [frame])
    out = Crop(zoom_pixels=50176)(state, {"bbox_2d": [63, 42, 126, 84]})
    # x scale 448 / 252 = 16/9, y scale 336 / 168 = 2: [63*16/9, 42*2, 126*16/9, 84*2] = [112, 84, 224, 168]
    assert out.box == [112, 84, 224, 168]
    # 112 x 84 crop, enlarged by sqrt(50176 / 9408) = 2.3094 (< max_upscale 4): floor(258.65) x floor(193.99)
    assert out.images[0].size == (258, 193)
    # the processor then sees 193 x 258 (h x w): round(193/28) = 7 -> 196, round(258/28) = 9 -> 252, and
    # 196 * 252 = 49392 <= 50176, so it keeps 196 x 252: a 14 x 18 patch grid, 63 image tokens
    grid = processor.image_processor(images=out.images, return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 14, 18]]
    # the crop was cut from the original pixels: its top-left pixel is the original's (112, 84) before resizing
    plain = Crop(zoom_pixels=None)(state, {"bbox_2d": [63, 42, 126, 84]})
    assert plain.images[0].size == (112, 84)
    assert plain.images[0].getpixel((0, 0)) == (112, 84, 0)


def test_a_tiny_box_grows_to_one_merged_patch_and_the_upscale_is_capped():
    image = _gradient(448, 336)
    state = ImageState([image], [(252, 168)])
    out = Crop(zoom_pixels=50176, max_upscale=4)(state, {"bbox_2d": [0, 0, 7, 7]})
    # [0, 0, 7 * 16/9, 7 * 2] = [0, 0, 12.44, 14] -> integer box (0, 0, 13, 14); grown to 28 about the centre
    # (x: 15 more, -7 / +8 -> (-7, 21), shifted inside -> (0, 28); y: 14 more -> (-7, 21) -> (0, 28))
    assert out.box == [0, 0, 28, 28]
    # zoom factor sqrt(50176 / 784) = 8, capped at 4: 112 x 112
    assert out.images[0].size == (112, 112)
    normalized = Crop(zoom_pixels=None, normalized=1000)(state, {"bbox_2d": [250, 500, 500, 1000]})
    # 0-1000 scale: x * 448 / 1000, y * 336 / 1000 -> [112, 168, 224, 336]
    assert normalized.box == [112, 168, 224, 336]
    fractions = Crop(zoom_pixels=None, normalized=1)(state, {"bbox_2d": [0.25, 0.5, 0.5, 1.0]})
    assert fractions.box == [112, 168, 224, 336]  # VisRL's 0-1 boxes: the same region


@pytest.mark.parametrize(
    "args",
    [
        {"bbox_2d": [0, 0, 253, 10]},  # x2 past the 252-px frame
        {"bbox_2d": [-1, 0, 10, 10]},
        {"bbox_2d": [10, 10, 10, 20]},  # zero width
        {"bbox_2d": [1, 2, 3]},
        {"bbox_2d": ["a", 0, 1, 1]},
        {"bbox_2d": [0, 0, float("inf"), 1]},
        {},
        {"bbox_2d": [0, 0, 10, 10], "image": 1},  # only one image so far
    ],
)
def test_bad_crop_calls_raise_tool_errors(args):
    state = ImageState([_gradient(448, 336)], [(252, 168)])
    with pytest.raises(ToolError):
        Crop()(state, args)


def test_augmentations_work_on_the_latest_image_and_check_their_arguments():
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = (255, 0, 0)  # red top-left of a 3 x 2 image
    first, latest = Image.new("RGB", (5, 5)), Image.fromarray(a)
    state = ImageState([first, latest], [(28, 28), (28, 28)])
    # 90 degrees counter-clockwise: 3 x 2 becomes 2 x 3 and the top-left pixel moves to the bottom-left
    rotated = Rotate()(state, {"angle": 90}).images[0]
    assert rotated.size == (2, 3) and rotated.getpixel((0, 2)) == (255, 0, 0)
    flipped = Flip()(state, {"direction": "horizontal"}).images[0]
    assert flipped.getpixel((2, 0)) == (255, 0, 0)
    assert Flip()(state, {"direction": "vertical", "image": 0}).images[0].size == (5, 5)
    for tool, args in [(Rotate(), {"angle": 45}), (Flip(), {"direction": "up"}), (Contrast(), {"factor": 9})]:
        with pytest.raises(ToolError):
            tool(state, args)


def test_contrast_denoise_sharpen_values():
    grey = np.full((4, 4, 3), 100, np.uint8)
    grey[:, 2:] = 200  # half 100, half 200: mean grey level 150
    state = ImageState([Image.fromarray(grey)], [(28, 28)])
    # PIL contrast: 150 + 2 * (v - 150) -> 50 and 250
    out = np.asarray(Contrast()(state, {"factor": 2}).images[0])
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 3].tolist() == [250, 250, 250]
    speck = np.zeros((5, 5, 3), np.uint8)
    speck[2, 2] = 255  # one white pixel: the 3 x 3 median around it is 0
    state = ImageState([Image.fromarray(speck)], [(28, 28)])
    assert np.asarray(Denoise()(state, {}).images[0]).max() == 0
    peak = np.full((5, 5, 3), 50, np.uint8)
    peak[2, 2] = 100
    state = ImageState([Image.fromarray(peak)], [(28, 28)])
    assert np.array_equal(np.asarray(Sharpen(factor=1.0)(state, {}).images[0]), peak)  # 1 = unchanged
    sharp = np.asarray(Sharpen(factor=2.0)(state, {}).images[0])
    # PIL: 2 * v - smooth(v), smooth = 3 x 3 kernel [1 1 1; 1 5 1; 1 1 1] / 13:
    # centre (5 * 100 + 8 * 50) / 13 = 69.2 -> 69, 200 - 69 = 131; its neighbour (100 + 12 * 50) / 13 = 53.8 -> 54,
    # 100 - 54 = 46
    assert sharp[2, 2, 0] == 131 and sharp[1, 2, 0] == 46


def test_split_lists_each_window_in_the_model_frame_and_cuts_the_original():
    image = _gradient(100, 60)
    state = ImageState([image], [(56, 28)])
    out = SplitWindows(rows=2, cols=2)(state, {})
    # frame 56 x 28 in halves: x 0|28|56, y 0|14|28; original 100 x 60: x 0|50|100, y 0|30|60
    assert out.text.splitlines() == [
        "window 1: [0, 0, 28, 14]",
        "window 2: [28, 0, 56, 14]",
        "window 3: [0, 14, 28, 28]",
        "window 4: [28, 14, 56, 28]",
    ]
    assert [im.size for im in out.images] == [(50, 30)] * 4
    assert out.images[3].getpixel((0, 0)) == (50, 30, 0)


def test_parse_call():
    text = 'look <tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>'
    assert parse_call(text) == ("crop", {"bbox_2d": [1, 2, 3, 4]})
    for bad in ["<tool_call>{oops}</tool_call>", "<tool_call>[1]</tool_call>", "no call", "<tool_call>{}"]:
        with pytest.raises(ToolError):
            parse_call(bad)
    with pytest.raises(ToolError, match="arguments"):
        parse_call('<tool_call>{"name": "crop", "arguments": 3}</tool_call>')


def test_parse_a_bare_box_call():
    call = parse_call("<zoom>[1, 2, 3, 4]</zoom>", "<zoom>", "</zoom>", bare="crop")
    assert call == ("crop", {"bbox_2d": [1, 2, 3, 4]})
    with pytest.raises(ToolError):
        parse_call("<zoom>1, 2</zoom>", "<zoom>", "</zoom>", bare="crop")
