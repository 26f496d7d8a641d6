"""The multi-turn sampler on the real tiny Qwen2.5-VL: a scripted trajectory (crop, an unknown tool, an answer)
checked for image-token/feature agreement, M-RoPE positions, re-scoring, masks, budgets and replay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vrl.models.scoring import score_logprobs
from vrl.sampler.hf import suppressed_token_ids
from vrl.sampler.multi_turn import MultiTurnSampler
from vrl.sampler.scripted import ScriptedTurns
from vrl.tools import Crop

CROP = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 28, 28]}}</tool_call>'
UNKNOWN = 'x<tool_call>{"name": "nope"}</tool_call>'
SCRIPTS = [[CROP, UNKNOWN, "<answer>red</answer>"], [CROP, "<answer>blue</answer>"]]


def _sampler(**kw):
    # zoom_pixels 12544 = 112 x 112: a 28 x 28 crop of the 56 x 56 image is enlarged 4x to 112 x 112, which the
    # processor keeps (112 = 4 x 28): an 8 x 8 patch grid, 4 x 4 = 16 image tokens (the prompt image: 2 x 2 = 4)
    args = dict(group_size=2, max_new_tokens=96, max_total_tokens=400, max_turns=2, logprobs=True)
    return MultiTurnSampler(tools={"crop": Crop(zoom_pixels=12544)}, **(args | kw))


@pytest.fixture(scope="module")
def setup():
    from vrl.data.synthetic import build_synthetic
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    torch.manual_seed(0)
    vlm = load_vlm("tiny:qwen2_5_vl", tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())
    data = build_synthetic(tasks=["single_color"], formats=["open"], num_samples=2, image_size=56, progress=False)
    rows = [data[0], data[1]]
    sampler = _sampler()
    sampler.logits_processor = ScriptedTurns(vlm.processor.tokenizer, SCRIPTS)
    torch.manual_seed(1)
    rollout = sampler.generate(vlm, rows)
    return vlm, rows, sampler, rollout


def test_turns_tools_and_metrics(setup):
    vlm, rows, sampler, rollout = setup
    assert [s["stop"] for s in rollout.samples] == ["answer"] * 4
    first = rollout.samples[0]["turns"]
    assert [t.get("tool") for t in first] == ["crop", "nope", None]
    assert first[0]["box"] == [0, 0, 28, 28] and "error" not in first[0]
    # <|im_end|> \n <|im_start|> user \n <|vision_start|>, 16 x <|image_pad|>, <|vision_end|>, (no text),
    # <|im_end|> \n <|im_start|> assistant \n: 6 + 16 + 6 = 28 tokens
    assert first[0]["observation_tokens"] == 28
    assert first[1]["error"] == "unknown tool 'nope'; tools: crop"
    assert rollout.responses[2] == f"{CROP}\n<answer>blue</answer>"
    assert rollout.images_per_seq.tolist() == [2, 2, 2, 2]
    assert rollout.image_grid_thw.tolist() == [[1, 4, 4], [1, 8, 8]] * 4
    # per trajectory: rows 0-1 make 2 calls (1 invalid), rows 2-3 one valid call -> 6 calls, 2 invalid
    stats = sampler.pop_stats()
    assert stats["tools/calls_per_traj"] == 6 / 4 and stats["tools/invalid_rate"] == 2 / 6
    assert stats["tools/turns_mean"] == 10 / 4 and stats["tools/answered_frac"] == 1.0
    obs = [sum(t.get("observation_tokens", 0) for t in s["turns"]) for s in rollout.samples]
    assert stats["tools/observation_tokens_mean"] == sum(obs) / 4
    assert sampler.pop_stats() == {}


def test_observation_tokens_are_attended_but_carry_no_loss(setup):
    vlm, rows, sampler, rollout = setup
    p = rollout.prompt_width
    attended = rollout.attention_mask[:, p:].float()
    obs = attended - rollout.response_mask
    assert bool((obs >= 0).all())  # the policy's tokens are a subset of the attended ones
    counts = [sum(t.get("observation_tokens", 0) for t in s["turns"]) for s in rollout.samples]
    assert obs.sum(-1).tolist() == counts
    image_pad = vlm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    resp = rollout.input_ids[:, p:]
    assert bool((rollout.response_mask[resp == image_pad] == 0).all())  # image tokens are never the policy's
    assert bool((rollout.mm_token_type_ids[:, p:][resp == image_pad] == 1).all())


def test_image_tokens_match_the_features_block_by_block(setup):
    vlm, rows, sampler, rollout = setup
    image_pad = vlm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    feats = vlm.model.model.get_image_features(rollout.pixel_values, rollout.image_grid_thw).pooler_output
    k = 0
    for n in range(rollout.num_sequences):
        ids = rollout.input_ids[n][rollout.attention_mask[n].bool()]
        is_pad = (ids == image_pad).int()
        # runs of consecutive <|image_pad|> tokens, in order: one run per image
        edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int), is_pad, torch.zeros(1, dtype=torch.int)]))
        runs = (torch.nonzero(edges == -1).squeeze(-1) - torch.nonzero(edges == 1).squeeze(-1)).tolist()
        images = int(rollout.images_per_seq[n])
        assert runs == [f.shape[0] for f in feats[k : k + images]] == [4, 16]
        k += images
    assert k == len(feats)


def test_the_trajectory_is_what_the_processor_makes_of_its_text_and_images(setup):
    vlm, rows, sampler, rollout = setup
    n = 0
    ids = rollout.input_ids[n][rollout.attention_mask[n].bool()]
    # the decoded text with each expanded image back to one placeholder: a fresh prompt's form
    text = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", vlm.processor.tokenizer.decode(ids))
    images = [rows[0]["images"][0].convert("RGB"), *rollout.samples[n]["tool_images"]]
    fresh = vlm.processor(text=[text], images=images, return_tensors="pt")
    assert torch.equal(fresh["input_ids"][0], ids)
    assert torch.equal(fresh["image_grid_thw"], rollout.image_grid_thw[:2])
    assert torch.equal(fresh["pixel_values"], rollout.pixel_values[: int(fresh["pixel_values"].shape[0])])
    mm = rollout.mm_token_type_ids[n][rollout.attention_mask[n].bool()]
    assert torch.equal(fresh["mm_token_type_ids"][0], mm)


def test_mrope_positions_across_turns(setup):
    vlm, rows, sampler, rollout = setup
    model = vlm.model.model
    one = rollout.select(torch.tensor([0]))
    pos, _ = model.get_rope_index(
        one.input_ids, one.mm_token_type_ids, one.image_grid_thw, attention_mask=one.attention_mask
    )
    keep = one.attention_mask[0].bool()
    ids, pos = one.input_ids[0][keep], pos[:, 0, keep]
    image_pad = vlm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    starts = [i for i in range(len(ids)) if ids[i] == image_pad and (i == 0 or ids[i - 1] != image_pad)]
    for start, (side, count) in zip(starts, [(2, 4), (4, 16)]):
        s = int(pos[0, start])
        block = pos[:, start : start + count]
        # an image block of side x side merged tokens sits at (t, h, w) = (s, s + row, s + col) in raster order
        rows_, cols_ = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
        assert torch.equal(block, torch.stack([torch.full((count,), s), s + rows_, s + cols_]))
        # the text after it resumes at s + side (max(h, w) / merge), on all three axes
        assert pos[:, start + count].tolist() == [s + side] * 3
    # text between the blocks advances by one per token: the tool image starts where the text run puts it
    first_end = starts[0] + 4
    assert int(pos[0, starts[1]]) == int(pos[0, first_end]) + (starts[1] - first_end)
    # left padding in the packed batch does not move a sequence's positions
    pos_b, _ = model.get_rope_index(
        rollout.input_ids, rollout.mm_token_type_ids, rollout.image_grid_thw, attention_mask=rollout.attention_mask
    )
    assert torch.equal(pos_b[:, 0, keep], pos)


def test_teacher_forced_rescoring_equals_the_sampler_logprobs(setup):
    vlm, rows, sampler, rollout = setup
    suppress = suppressed_token_ids(vlm.processor.tokenizer)
    scored = score_logprobs(vlm.model, rollout, 1.0, 8, suppress_ids=suppress)
    mask = rollout.response_mask > 0
    # per-turn generate (KV cache, left padded to the active rows) vs one packed teacher-forced pass, fp32
    torch.testing.assert_close(scored[mask], rollout.old_logprobs[mask], rtol=0, atol=1e-5)
    assert bool((rollout.old_logprobs[~mask] == 0).all())


def test_a_trajectory_replays_exactly(setup):
    vlm, rows, sampler, rollout = setup
    again = _sampler()
    again.logits_processor = ScriptedTurns(vlm.processor.tokenizer, SCRIPTS)
    torch.manual_seed(1)
    replay = again.generate(vlm, rows)
    assert torch.equal(replay.input_ids, rollout.input_ids) and torch.equal(replay.pixel_values, rollout.pixel_values)
    free = []
    for _ in range(2):  # sampled (not scripted) trajectories: the same seed, the same tokens
        torch.manual_seed(5)
        free.append(_sampler(max_new_tokens=8, logprobs=False).generate(vlm, rows).input_ids)
    assert torch.equal(free[0], free[1])


def test_given_turns_replay_a_trajectory_without_a_model_call(setup):
    vlm, rows, sampler, rollout = setup
    # trajectory 0 of each row (rows are G = 2 adjacent): its recorded turns, as token ids
    given = [{**rows[b], "forced_turns": [t["ids"] for t in rollout.samples[2 * b]["turns"]]} for b in range(2)]
    calls = []
    hook = vlm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    state = torch.random.get_rng_state()
    try:
        replay = _sampler().generate(vlm, given, group_size=1, greedy=True)
    finally:
        hook.remove()
    assert calls == [] and torch.equal(torch.random.get_rng_state(), state)  # no forward, no random draw
    for b in range(2):
        width = int(rollout.attention_mask[2 * b].sum())
        assert torch.equal(replay.input_ids[b][replay.attention_mask[b].bool()],
                           rollout.input_ids[2 * b][rollout.attention_mask[2 * b].bool()])  # fmt: skip
        assert int(replay.attention_mask[b].sum()) == width
        assert replay.samples[b]["stop"] == "answer"
    # per trajectory 16 + 64 pixel rows (grids 1x4x4 and 1x8x8): trajectories 0 and 2 of the sampled rollout
    assert replay.image_grid_thw.tolist() == [[1, 4, 4], [1, 8, 8]] * 2
    assert torch.equal(replay.pixel_values, torch.cat([rollout.pixel_values[0:80], rollout.pixel_values[160:240]]))
    # spans: the policy tokens of each turn, in order, cover the response mask exactly
    spans = [t["span"] for t in replay.samples[0]["turns"]]
    mask = torch.zeros(replay.response_mask.shape[1])
    for start, end in spans:
        mask[start:end] = 1
    assert torch.equal(mask, replay.response_mask[0])


def test_a_given_first_turn_is_continued_by_the_model(setup):
    vlm, rows, sampler, rollout = setup
    tok = vlm.processor.tokenizer
    other = CROP.replace("[0, 0, 28, 28]", "[28, 28, 56, 56]")
    given = [{**rows[1], "forced_turns": [tok(other, add_special_tokens=False)["input_ids"]]}]
    s = _sampler()
    s.logits_processor = ScriptedTurns(tok, [SCRIPTS[1]])  # turn 1 of row 1's script: the answer
    out = s.generate(vlm, given, group_size=1)
    turns = out.samples[0]["turns"]
    assert turns[0]["text"] == other and turns[0]["box"] == [28, 28, 56, 56]
    assert turns[1]["text"] == "<answer>blue</answer>" and out.samples[0]["stop"] == "answer"
    # the given turn was not sampled: zero log-probs there, the model's own on the continued answer
    start, end = turns[0]["span"]
    assert bool((out.old_logprobs[0, start:end] == 0).all())
    a, b = turns[1]["span"]
    assert bool((out.old_logprobs[0, a:b] < 0).all())


def test_invalid_calls_and_budgets_never_crash(setup):
    vlm, rows, sampler, rollout = setup
    bad = [
        '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 57, 10]}}</tool_call>',  # past the 56-px frame
        "<tool_call>{crop}</tool_call>",
    ]
    s = _sampler(max_turns=2)
    s.logits_processor = ScriptedTurns(vlm.processor.tokenizer, [[*bad, "<answer>red</answer>"], [*bad, "no"]])
    out = s.generate(vlm, rows)
    errors = [t.get("error") for t in out.samples[0]["turns"]]
    assert errors == ["bbox_2d [0.0, 0.0, 57.0, 10.0] is outside the 56x56 image", errors[1], None]
    assert errors[1].startswith("call is not valid JSON")
    assert s.pop_stats()["tools/invalid_rate"] == 1.0
    assert out.images_per_seq.tolist() == [1, 1, 1, 1]  # no image added by a failed call
    # one call allowed: the second call ends the trajectory without an observation
    s = _sampler(max_turns=1)
    s.logits_processor = ScriptedTurns(vlm.processor.tokenizer, SCRIPTS)
    out = s.generate(vlm, rows)
    assert out.samples[0]["stop"] == "max_turns" and len(out.samples[0]["turns"]) == 2
    assert out.samples[2]["stop"] == "answer"
    # a total budget the crop's observation does not fit in: stop=budget, nothing appended after the call
    n_call = len(vlm.processor.tokenizer(CROP, add_special_tokens=False)["input_ids"])
    s = _sampler(max_new_tokens=n_call, max_total_tokens=n_call + 27)  # the observation needs 28 (see above)
    s.logits_processor = ScriptedTurns(vlm.processor.tokenizer, SCRIPTS)
    out = s.generate(vlm, rows)
    assert [x["stop"] for x in out.samples] == ["budget"] * 4
    assert int(out.attention_mask[0, out.prompt_width :].sum()) == int(out.response_mask[0].sum())


def test_describe_tools_lists_them_after_the_system_prompt():
    s = MultiTurnSampler(tools={"crop": Crop()}, system_prompt="Be brief.", describe_tools=True)
    assert s.system_prompt.splitlines()[0] == "Be brief."
    assert s.system_prompt.splitlines()[-1] == f"- crop: {Crop.description}"
    with pytest.raises(ValueError, match="max_total_tokens"):
        MultiTurnSampler(max_new_tokens=64, max_total_tokens=32)


def test_the_rollout_table_shows_boxes_tool_outputs_and_turns(setup, tmp_path):
    import json
    from dataclasses import replace

    from vrl.tools.view import boxed_image
    from vrl.tracking import RolloutTableLogger, build_mlflow_logger

    vlm, rows, sampler, rollout = setup
    boxed = boxed_image(rollout.samples[0])
    # the crop's box [0, 0, 28, 28] (original px) is drawn 1 px wide (56 / 200 rounds to 0 -> 1) in #ff2d2d
    assert boxed.getpixel((0, 10)) == boxed.getpixel((27, 20)) == (255, 45, 45)
    assert boxed.getpixel((14, 14)) == rows[0]["images"][0].convert("RGB").getpixel((14, 14))
    logger = build_mlflow_logger(f"sqlite:///{tmp_path}/m.db", "t", artifact_location=str(tmp_path / "artifacts"))
    n = rollout.num_sequences
    scored = replace(rollout, rewards=torch.zeros(n), reward_components={"accuracy": torch.zeros(n)})
    RolloutTableLogger(logger, max_rows=2)(scored, 3)
    path = logger.experiment.download_artifacts(logger.run_id, "rollouts/step_000003.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    cols = table["columns"]
    turns = table["data"][0][cols.index("turns")]
    assert turns.splitlines()[1] == "  -> crop: 1 image(s), box [0, 0, 28, 28]"
    assert "  -> error: unknown tool 'nope'; tools: crop" in turns.splitlines()
    assert table["data"][0][cols.index("tool_image")] is not None


def test_an_observation_that_fills_the_budget_exactly_ends_the_trajectory(setup):
    vlm, rows, sampler, rollout = setup
    n_call = len(vlm.processor.tokenizer(CROP, add_special_tokens=False)["input_ids"])
    s = _sampler(max_new_tokens=n_call, max_total_tokens=n_call + 28)  # the call, then its 28-token observation
    s.logits_processor = ScriptedTurns(vlm.processor.tokenizer, SCRIPTS)
    out = s.generate(vlm, rows)
    assert [x["stop"] for x in out.samples] == ["budget"] * 4
    assert out.samples[0]["turns"][0]["observation_tokens"] == 28
    assert out.attention_mask[:, out.prompt_width :].sum(-1).tolist() == [n_call + 28] * 4
