"""The zoom task: its detail's colour is unreadable in the overview the model sees and readable in a crop, and a
scripted policy (no learning) recovers every answer through the crop tool and none without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vrl.data.zoom import PALETTE, build_zoom, render
from vrl.models.pixels import unpatchify
from vrl.tools import Crop, ImageState


def _reader(pixels: np.ndarray) -> str | None:
    """A verifier's colour reading of an RGB region [h, w, 3]: the palette colour of the saturated pixels (a
    channel spread >= 64 levels), by majority; None when no pixel is saturated (the region reads as grey)."""
    px = pixels.reshape(-1, 3).astype(int)
    px = px[px.max(1) - px.min(1) >= 64]
    if not len(px):
        return None
    votes = {c: int((np.abs(px - np.array(v)).sum(1) < 96).sum()) for c, v in PALETTE.items()}
    return max(votes, key=votes.get)


@pytest.fixture(scope="module")
def vlm():
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    torch.manual_seed(0)
    return load_vlm("tiny:qwen2_5_vl", tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())


def _overview(vlm, image) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as the model sees it: the processor's patch rows back to [h', w', 3] pixels in 0..255."""
    ip = vlm.processor.image_processor
    enc = ip(images=[image], return_tensors="pt")
    img = unpatchify(enc["pixel_values"], enc["image_grid_thw"], 14, 2, 2)[0][:, 0]  # [3, h', w'], frame 0
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    px = ((img * std + mean) * 255).permute(1, 2, 0).numpy()
    return px, (px.shape[1], px.shape[0])


def test_rows_are_reproducible_and_checked():
    a, b = build_zoom(4, seed=3), build_zoom(4, seed=3)
    assert a[2]["meta"] == b[2]["meta"] and a[2]["answer"] == json.loads(a[2]["meta"])["colour"]
    assert build_zoom(4, seed=3, split="val")[0]["uid"] != a[0]["uid"]
    with pytest.raises(ValueError, match="patch even"):
        build_zoom(2, patch=11)
    ground = build_zoom(2, seed=3, task="ground")[0]  # the same draw, its box as the answer
    assert json.loads(ground["answer"]) == json.loads(a[0]["meta"])["detail_box"]
    assert ground["answer_type"] == "bbox"


def test_the_overview_hides_the_colour_and_a_crop_shows_it(vlm):
    crops = {}
    overviews = {}
    for colour in PALETTE:
        image = render(colour, 200, 120, canvas=448, patch=12)
        px, frame = _overview(vlm, image)
        # 448 x 448 > 50176 px: the processor shows 224 x 224, half the side (frame box = original box / 2)
        assert frame == (224, 224)
        overviews[colour] = px
        region = px[60 - 4 : 66 + 4, 100 - 4 : 106 + 4]
        assert _reader(region) is None  # grey: every pixel's channels within a few levels of each other
        assert (region.max(-1) - region.min(-1)).max() < 8
        out = Crop(zoom_pixels=50176)(ImageState([image], [frame]), {"bbox_2d": [96, 56, 110, 70]})
        crops[colour] = np.asarray(out.images[0])
        assert _reader(crops[colour]) == colour
    # across the three colours the whole overview differs by a few levels at most: no colour signal to learn
    for a, b in [("red", "green"), ("green", "blue"), ("red", "blue")]:
        assert np.abs(overviews[a] - overviews[b]).max() < 8
        assert np.abs(crops[a].astype(int) - crops[b].astype(int)).max() == 255


def test_a_scripted_policy_answers_only_through_the_tool(vlm):
    from vrl.rewards.accuracy import Accuracy
    from vrl.sampler.multi_turn import MultiTurnSampler
    from vrl.sampler.scripted import ScriptedTurns

    data = build_zoom(6, seed=1)
    rows = [data[i] for i in range(6)]
    tool = Crop(zoom_pixels=50176)
    with_tool, without = [], []
    for row in rows:
        x1, y1, x2, y2 = json.loads(row["meta"])["detail_box"]
        box = [x1 // 2 - 4, y1 // 2 - 4, x2 // 2 + 4, y2 // 2 + 4]  # frame box: original / 2, with a margin
        px, frame = _overview(vlm, row["images"][0])
        assert _reader(px[box[1] : box[3], box[0] : box[2]]) is None  # nothing to read without the tool
        crop = tool(ImageState([row["images"][0]], [frame]), {"bbox_2d": box}).images[0]
        call = json.dumps({"name": "crop", "arguments": {"bbox_2d": box}})
        with_tool.append([f"<tool_call>{call}</tool_call>", f"<answer>{_reader(np.asarray(crop))}</answer>"])
        without.append([f"<answer>{_reader(px[box[1] : box[3], box[0] : box[2]])}</answer>"])
    sampler = MultiTurnSampler(tools={"crop": tool}, group_size=2, max_new_tokens=96, max_total_tokens=400)
    sampler.logits_processor = ScriptedTurns(vlm.processor.tokenizer, with_tool)
    rollout = sampler.generate(vlm, rows, greedy=True)
    assert [s["tool_calls"] for s in rollout.samples] == [1] * 6
    assert Accuracy()(rollout.responses, rollout.samples) == [1.0] * 6
    sampler.logits_processor = ScriptedTurns(vlm.processor.tokenizer, without)
    rollout = sampler.generate(vlm, rows, greedy=True)
    assert Accuracy()(rollout.responses, rollout.samples) == [0.0] * 6  # "None": the reader had nothing to go on
