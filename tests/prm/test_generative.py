"""GM-PRM [ours]: the review schema parsed, P("yes") at each verdict read off the PRM's own reply."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vrl.models.loading import load_vlm
from vrl.prm.generative import GenerativePRM, parse_review


def _reply(verdicts, first_error=None, correction="fixed step"):
    steps = [{"intent": "i", "visual_alignment": {"ok": v, "why": "w"}, "logic": {"ok": v, "why": "w"}, "verdict": v}
             for v in verdicts]  # fmt: skip
    return "Review: " + json.dumps({"steps": steps, "first_error": first_error, "correction": correction})


def test_parse_review_reads_verdicts_first_error_and_correction():
    r = parse_review(_reply(["yes", "no", "yes"], 2), 3)
    assert (r.verdicts, r.scores, r.first_error, r.correction, r.parsed) == (
        [True, False, True], [1.0, 0.0, 1.0], 2, "fixed step", True
    )  # fmt: skip
    assert len(r.offsets) == 3 and r.raw[r.offsets[1] : r.offsets[1] + 2] == "no"
    assert parse_review(_reply(["yes", "no"], None), 2).first_error == 2  # unnamed: the first "no"
    assert parse_review(_reply(["yes", "yes"], None, None), 2).first_error is None


@pytest.mark.parametrize(
    "text",
    ["no json here", _reply(["yes"], None), _reply(["yes", "no"], 5), '{"steps": [{"verdict": "yes"}, {}]}'],
    ids=["no-json", "too-few-verdicts", "error-out-of-range", "missing-verdict"],
)
def test_unparsable_reviews_score_the_fallback(text):
    r = parse_review(text, 2, unparsable_score=0.25)
    assert not r.parsed and r.scores == [0.25, 0.25] and r.first_error is None


class ScriptedWriter(GenerativePRM):
    """The review's text is scripted (generation is not under test); the readout runs on the real tiny model."""

    reply = _reply(["yes", "no"], 2)

    def write(self, prompt, images):
        return self.reply


def test_probability_scores_are_p_yes_at_each_verdict_of_the_reply():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=1)
    prm = ScriptedWriter(vlm, scores="probability")
    row = {"prompt": "<image>\nHow many?", "images": [Image.new("RGB", (56, 56), "white")]}
    review = prm.review(row, ["two circles", "so 3"])
    prompt = prm.render(prm.messages(row, ["two circles", "so 3"]))
    tok = vlm.processor.tokenizer
    yes, no = tok.encode("yes")[0], tok.encode("no")[0]
    for offset, score in zip(review.offsets, review.scores):  # the reply up to the verdict's value, by hand
        enc = vlm.processor(text=[prompt + review.raw[:offset]], images=row["images"], return_tensors="pt")
        with torch.no_grad():
            last = vlm.model(**enc).logits[0, -1]
        assert score == pytest.approx(float(torch.sigmoid(last[yes] - last[no])), rel=1e-5)
    assert review.first_error == 2 and prm.stats == {"prm/reviews": 1.0, "prm/unparsable": 0.0}
    hard = ScriptedWriter(vlm, scores="verdict").review(row, ["two circles", "so 3"])
    assert hard.scores == [1.0, 0.0]


def test_a_random_tiny_model_writes_unparsable_reviews_that_are_counted():
    prm = GenerativePRM("tiny:qwen2_5_vl", max_new_tokens=8, unparsable_score=0.0)
    review = prm.review({"prompt": "2+2?"}, ["4"])
    assert not review.parsed and review.scores == [0.0] and prm.stats["prm/unparsable"] == 1.0
