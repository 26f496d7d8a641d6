"""Multi-turn SFT items on the real tiny Qwen2.5-VL: a scripted zoom trace is replayed through the multi-turn
sampler (the crop tool runs, no model call) and its NLL mask covers exactly the two policy turns."""

from __future__ import annotations

import functools
import io
import json

import pytest
import torch

from vrl.data.source import dataset_row
from vrl.data.zoom import build_zoom
from vrl.data.zoom_traces import ZoomTraces
from vrl.hooks import StepContext
from vrl.lit.context import generate_with
from vrl.lit.sft import build_sft_rollout, response_nll
from vrl.lit.sft_turns import replayed_sft
from vrl.lit.stages import Stage, StageScheduler
from vrl.sampler.hf import HFSampler
from vrl.sampler.multi_turn import MultiTurnSampler
from vrl.tools import Crop

#: <|im_end|> \n <|im_start|> user \n <|vision_start|>, 16 x <|image_pad|>, <|vision_end|>, <|im_end|> \n
#: <|im_start|> assistant \n: the 28 x 28 px crop enlarged 4x (max_upscale) to 112 x 112 = 8 x 8 patches, 16 tokens
OBSERVATION_TOKENS = 6 + 16 + 6


@pytest.fixture(scope="module")
def setup():
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    torch.manual_seed(0)
    vlm = load_vlm("tiny:qwen2_5_vl", tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())
    data = build_zoom(2, seed=1)
    return vlm, [dataset_row(data, i) for i in range(2)]


def _ctx(vlm, sampler, logged: dict) -> StepContext:
    pairs = functools.partial(
        build_sft_rollout, vlm, system_prompt=sampler.system_prompt, prompt_suffix=sampler.prompt_suffix
    )
    return StepContext(generate=functools.partial(generate_with, sampler, vlm), pairs=pairs, log=logged.update)


def _multi_turn() -> MultiTurnSampler:
    return MultiTurnSampler(tools={"crop": Crop(zoom_pixels=50176)}, max_new_tokens=96, max_total_tokens=400)


def test_a_replayed_trace_is_fitted_on_its_two_policy_turns_only(setup):
    vlm, rows = setup
    tok = vlm.processor.tokenizer
    traces = [ZoomTraces().trace(row) for row in rows]
    logged: dict = {}
    calls = []
    hook = vlm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out = replayed_sft(_ctx(vlm, _multi_turn(), logged), rows, traces)
    finally:
        hook.remove()
    assert calls == []  # the crop ran, the model did not
    assert logged == {"sft/tool_calls_per_trace": 1.0, "sft/invalid_calls_per_trace": 0.0}
    for i, (call, answer) in enumerate(traces):
        c = tok(call, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # EOS on the last turn only
        mask = [1] * len(c) + [0] * OBSERVATION_TOKENS + [1] * len(a)
        width = out.response_mask.shape[1]
        assert out.response_mask[i].tolist() == mask + [0] * (width - len(mask))
        resp = out.input_ids[i, out.prompt_width :].tolist()
        assert resp[: len(c)] == c and resp[len(c) + OBSERVATION_TOKENS : len(mask)] == a
        # the call's frame box [x0/2 - 4, .., (x0 + 12)/2 + 4] maps back to [x0 - 8, .., x0 + 20]: 28 px a side
        x0, y0, _, _ = json.loads(rows[i]["meta"])["detail_box"]
        sample = out.samples[i]
        assert sample["turns"][0]["box"] == [x0 - 8, y0 - 8, x0 + 20, y0 + 20] and sample["stop"] == "answer"
    assert out.old_logprobs is None
    nll = response_nll(vlm.model, out).detach()
    assert bool((nll[out.response_mask == 0] == 0).all()) and bool((nll[out.response_mask == 1] > 0).all())


def test_turns_given_as_ids_replay_the_same_tokens_and_one_text_is_a_one_turn_trace(setup):
    vlm, rows = setup
    tok = vlm.processor.tokenizer
    call, answer = ZoomTraces().trace(rows[0])
    ids = [tok(call, add_special_tokens=False)["input_ids"], tok(answer)["input_ids"] + [tok.eos_token_id]]
    ctx = _ctx(vlm, _multi_turn(), {})
    from_text, from_ids = replayed_sft(ctx, rows[:1], [[call, answer]]), replayed_sft(ctx, rows[:1], [ids])
    assert torch.equal(from_text.input_ids, from_ids.input_ids)
    assert torch.equal(from_text.response_mask, from_ids.response_mask)
    one = replayed_sft(ctx, rows[:1], [[answer]])  # no call: the answer and EOS are the whole response
    assert one.response_mask[0].tolist() == [1.0] * len(ids[1]) and one.samples[0]["tool_calls"] == 0


def test_a_single_turn_sampler_or_an_unfinished_trace_is_refused(setup):
    vlm, rows = setup
    traces = [ZoomTraces().trace(rows[0])]
    with pytest.raises(ValueError, match=r"uid='zoom-train-1-0' is a multi-turn item .* sampler is single-turn"):
        replayed_sft(_ctx(vlm, HFSampler(group_size=2, max_new_tokens=8), {}), rows[:1], traces)
    with pytest.raises(ValueError, match="did not replay its 1 given turns"):  # a call, then nothing: not an end
        replayed_sft(_ctx(vlm, _multi_turn(), {}), rows[:1], [traces[0][:1]])


def test_multi_turn_kept_items_round_trip_through_a_checkpoint_as_plain_data():
    sched = StageScheduler([Stage(kind="sft", after_steps=1, rejection=ZoomTraces()), Stage()])
    sched.kept = {0: [(0, ["<zoom>[1, 2, 3, 4]</zoom>", [5, 6, 2]]), (1, "<answer>red</answer>", "a prompt")]}
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    again = StageScheduler([Stage(kind="sft", after_steps=1, rejection=ZoomTraces()), Stage()])
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.kept == sched.kept
