"""VL-PRM's "+"/"-" readout on the tiny VLM: the chat it renders, the two-way softmax, padding-independent batches."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vrl.models.loading import load_vlm
from vrl.prm.readout import PlusMinusPRM, token_id


@pytest.fixture(scope="module")
def prm():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=3)
    return PlusMinusPRM(vlm, batch_size=4)


ROW = {"prompt": "<image>\nWhat colour is the circle?", "images": [Image.new("RGB", (56, 56), (200, 20, 20))]}


def test_step_score_is_the_plus_minus_softmax_at_the_reply_position(prm):
    got = prm.step_scores(ROW, ["a red circle", "so red"])
    # step 2's chat written out (Qwen's template): turn 1 = question + step 1, reply "+", turn 2 = step 2
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What colour is the circle?\na red circle<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n<|im_start|>user\nso red<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = prm.vlm.processor(text=[text], images=ROW["images"], return_tensors="pt")
    with torch.no_grad():
        last = prm.vlm.model(**enc).logits[0, -1]
    tok = prm.vlm.processor.tokenizer
    plus, minus = last[tok.encode("+")[0]], last[tok.encode("-")[0]]
    assert got[1] == pytest.approx(float(torch.sigmoid(plus - minus)), rel=1e-5)  # softmax over two = sigmoid
    assert len(got) == 2 and 0.0 < got[0] < 1.0


def test_prefixes_of_different_lengths_score_the_same_batched_or_alone(prm):
    steps = ["a red circle", "it is near the top left corner of the image", "so red"]
    batched = prm.step_scores(ROW, steps)  # one batch of three padded prompts
    alone = [prm.score_prefixes([ROW], [steps[: t + 1]])[0].p for t in range(3)]
    assert batched == pytest.approx(alone, rel=1e-4)
    assert prm.outcome_score(ROW, "a red circle\nso red") == pytest.approx(
        prm.score_prefixes([ROW], [["a red circle\nso red"]])[0].p
    )


def test_a_reply_token_the_tokenizer_splits_is_refused(prm):
    with pytest.raises(ValueError, match="readouts need one token"):
        token_id(prm.vlm.processor.tokenizer, "+-+ definitely several tokens")
