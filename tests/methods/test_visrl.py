"""VisRL's pair pipeline: square-padded IoU, the bad-box replacement, the published filter, and pairs built from
real multi-turn crop trajectories of the tiny model (scripted texts) and replayed for the DPO step."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from vrl.lit.preference import DPOLoss, pair_batch
from vrl.methods.visrl import BOX_INSTRUCTION, VisRLPairs, replace_bad_box, select_pair, square_box, target_region
from vrl.rewards.iou import box_iou


def test_square_box_by_hand():
    # a 200 x 100 image padded to 200 x 200: y shifts by 50 px; [0, 0, 0.5, 1] -> x 0..100 px, y 50..150 px
    assert square_box([0.0, 0.0, 0.5, 1.0], 200, 100) == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_bad_box_has_the_good_size_and_does_not_overlap():
    good = [0.1, 0.1, 0.4, 0.3]  # 0.3 x 0.2
    for seed in range(20):
        bad = replace_bad_box(good, random.Random(seed))
        assert box_iou(bad, good) == 0.0
        assert 0.7 * 0.3 <= bad[2] - bad[0] <= 1.3 * 0.3 and 0.7 * 0.2 <= bad[3] - bad[1] <= 1.3 * 0.2
        assert 0.0 <= bad[0] < bad[2] <= 1.0 and 0.0 <= bad[1] < bad[3] <= 1.0


def _t(s_ans, s_box, name):
    return {"s_ans": s_ans, "s_box": s_box, "box_text": name, "box": None, "answer": name}


def test_the_published_filter():
    trajs = [_t(0.5, 0.9, "a"), _t(1.0, 0.5, "b"), _t(1.0, 0.9, "c"), _t(0.0, 0.1, "d"), _t(0.0, 0.05, "e")]
    chosen, rejected = select_pair(trajs)
    assert (chosen["answer"], rejected["answer"]) == ("c", "d")  # the first max with s_box >= 0.8; the first min
    assert select_pair([_t(0.7, 0.9, "a"), _t(0.0, 0.1, "b")]) is None  # max s_ans < 0.8
    assert select_pair([_t(1.0, 0.9, "a"), _t(0.3, 0.1, "b")]) is None  # min s_ans > 0.2
    assert select_pair([_t(1.0, 0.9, "a"), _t(1.0, 0.9, "b")]) is None  # max == min
    assert select_pair([_t(1.0, 0.5, "a"), _t(0.0, 0.1, "b")]) is None  # no max with a good crop


def test_target_region_prefers_the_annotated_detail():
    shapes = {"meta": json.dumps({"target": [{"bbox": [10, 20, 30, 40]}], "image_size": [100, 200]})}
    assert target_region(shapes) == [10.0, 20.0, 30.0, 40.0]
    zoom = {"meta": {"detail_box": [1, 2, 3, 4], "target": [{"bbox": [10, 20, 30, 40]}]}}
    assert target_region(zoom) == [1.0, 2.0, 3.0, 4.0] and target_region({"meta": "{}"}) is None


def _image():
    image = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(image).rectangle([0, 0, 55, 55], fill="red")  # the target: the top-left quarter
    return image


META = json.dumps({"target": [{"bbox": [0, 0, 56, 56]}], "image_size": [112, 112]})
ROW = {"uid": "r0", "prompt": "<image>\nWhat colour is the square?", "images": [_image()], "answer": "red",
       "answer_type": "text", "meta": META}  # fmt: skip
GOOD, CLOSE = "<box>[0, 0, 0.5, 0.5]</box>", "<box>[0.1, 0.1, 0.5, 0.5]</box>"


@pytest.fixture(scope="module")
def policy():
    """The tiny model behind the visrl_crop rollout; a script writes the texts (the policy is not under test):
    the good trajectory boxes the red quarter and answers red, the second boxes nearly the same region (so VisRL
    replaces its box) and, re-rolled from the replacement, answers blue."""
    from vrl.data.tasks import corpus, single_token_words
    from vrl.lit.context import generate_with
    from vrl.models.loading import load_vlm
    from vrl.rewards import Accuracy
    from vrl.rewards.combine import RewardSet
    from vrl.sampler.multi_turn import MultiTurnSampler
    from vrl.sampler.scripted import ScriptedTurns
    from vrl.tools import Crop

    torch.manual_seed(0)
    vlm = load_vlm("tiny:qwen2_5_vl", tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())
    sampler = MultiTurnSampler(tools={"crop": Crop(normalized=1, zoom_pixels=12544)}, max_turns=1, group_size=2,
                               max_new_tokens=48, max_total_tokens=400, call_open="<box>", call_close="</box>",
                               bare_tool="crop")  # fmt: skip
    tok = vlm.processor.tokenizer

    def generate(rows, group_size=None, greedy=False, **sampling):
        if "forced_turns" in rows[0]:  # the re-roll from the replacement box: turn 0 is given
            scripts = [["", "<answer>blue</answer>"]] * len(rows)
        else:
            scripts = [[GOOD, "<answer>red</answer>"], [CLOSE, "<answer>red</answer>"]]
        sampler.logits_processor = ScriptedTurns(tok, scripts)
        return generate_with(sampler, vlm, rows, group_size, greedy, **sampling)

    return SimpleNamespace(generate=generate, reward=RewardSet({"accuracy": Accuracy()})), tok


def test_trajectories_replace_an_overlapping_bad_box_and_re_roll_from_it(policy):
    ctx, tok = policy
    good, bad = VisRLPairs(stage=2, attempts=1).trajectories(ctx, ROW, 0)
    # good: the crop [0, 0, 56, 56] px holds the whole target; the answer is right
    assert good["box"] == [0.0, 0.0, 0.5, 0.5] and good["s_ans"] == 1.0 and good["s_box"] == 1.0
    assert tok.decode(good["turns"][0]) == GOOD
    # the second box overlapped it (IoU 0.64 > 0.05): replaced by a disjoint box, given as turn 0 of a re-roll
    assert box_iou(bad["box"], good["box"]) == 0.0 and tok.decode(bad["turns"][0]) != CLOSE
    assert tok.decode(bad["turns"][0]).startswith("<box>[") and bad["s_box"] == 0.0 and bad["s_ans"] == 0.0
    assert "blue" in bad["response"]


def test_pairs_replay_both_trajectories_and_score_one_turn_per_segment(policy):
    ctx, tok = policy
    records, stats = VisRLPairs(stage=2, attempts=1).build(ctx, [ROW], [0])
    assert stats == {"dpo/pairs_built": 1.0, "dpo/questions": 1.0}
    (record,) = records
    assert [(s["turn"], s["weight"]) for s in record["segments"]] == [(0, 0.5), (1, 0.5)]
    assert record["segments"][0]["prompt"] == ROW["prompt"] + BOX_INSTRUCTION
    batch = pair_batch(ctx, [ROW], records, DPOLoss())
    chosen, rejected = batch.chosen, batch.rejected
    # per side 2 rows (box segment, answer segment) of the same replayed trajectory, each with its crop as image 2
    assert chosen.images_per_seq.tolist() == [2, 2] and rejected.images_per_seq.tolist() == [2, 2]
    assert torch.equal(chosen.input_ids[0], chosen.input_ids[1])
    good = record["segments"][0]["chosen_turns"]
    answer = tok("<answer>red</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert good[1] == answer
    # masks: the box turn's tokens, then the answer turn's (EOS included); never the observation between them
    assert chosen.response_mask[0].sum() == len(good[0]) and chosen.response_mask[1].sum() == len(answer)
    resp = chosen.input_ids[1, -chosen.response_mask.shape[1] :]
    assert resp[chosen.response_mask[1] > 0].tolist() == answer
    assert resp[chosen.response_mask[0] > 0].tolist() == good[0]
    assert rejected.response_mask[1].sum() == len(record["segments"][1]["rejected_turns"][1])
    assert batch.weights.tolist() == [0.5, 0.5]


def test_a_replay_with_other_budgets_is_refused(policy):
    ctx, tok = policy
    records, _ = VisRLPairs(stage=1, attempts=1).build(ctx, [ROW], [0])
    short = [{**records[0], "segments": [{**records[0]["segments"][0], "turn": 2}]}]  # no turn 2 exists
    with pytest.raises(ValueError, match="uid='r0' did not replay its 2 given turns"):
        pair_batch(ctx, [ROW], short, DPOLoss())
