"""VGPO's gate: accept / resample / keep-the-best logic with a scripted scorer; the sampler gates real draws of the
tiny VLM and trains the perception or not."""

from __future__ import annotations

import pytest
import torch

from vrl.data.geometry import build_geometry
from vrl.methods.vgpo import PerceptionMask, VGPOSampler, cut_after, gate
from vrl.models.loading import load_vlm
from vrl.models.scoring import score_logprobs
from vrl.models.tiny import build_tiny_tokenizer
from vrl.sampler.hf import suppressed_token_ids


def test_gate_accepts_resamples_and_keeps_the_best():
    # item i's k-th draw is (i, k); the scripted scores per item over the draws:
    scripted = {0: [0.9], 1: [0.2, 0.8], 2: [0.5, 0.7, 0.6], 3: [0.1, 0.1, 0.1, 1.0]}
    calls = []

    def draw(todo):
        calls.append(list(todo))
        return [(i, sum(i in c for c in calls) - 1) for i in todo]

    result = gate(draw, lambda todo, cands: [scripted[i][k] for i, k in cands], n=4, max_tries=3, tau=0.75)
    # 0: accepted at once; 1: rejected (0.2), accepted (0.8); 2: three draws, none >= 0.75: the best, draw 1 (0.7);
    # 3: three rejections (0.1 each): the earliest of the equal best, draw 0; its 4th draw never happens (K = 3)
    assert result.kept == [(0, 0), (1, 1), (2, 1), (3, 0)]
    assert result.scores == [0.9, 0.8, 0.7, 0.1] and result.tries == [1, 2, 3, 3]
    assert calls == [[0, 1, 2, 3], [1, 2, 3], [2, 3]]
    with pytest.raises(ValueError):
        gate(draw, lambda t, c: [0.0] * len(t), n=1, max_tries=0)


def test_cut_after_the_closing_tag():
    tok = build_tiny_tokenizer()
    ids = tok.encode("<WATCHING>Line: (1, 2)</WATCHING> more text", add_special_tokens=False)
    cut = cut_after(tok, ids, "</WATCHING>")
    assert tok.decode(cut).endswith("</WATCHING>") and tok.decode(ids[len(cut) :]) == " more text"
    assert cut_after(tok, ids[:5], "</WATCHING>") == ids[:5]  # no tag: the whole draw


def test_sampler_gates_each_sequence_and_records_the_perception():
    vlm = load_vlm("tiny:qwen2_vl")
    rows = [dict(r) for r in build_geometry(num_samples=2, image_size=56)]
    seen = []

    def scorer(texts, samples):  # accepts a draw only on the second try for every sequence
        seen.append(len(texts))
        return [1.0 if len(seen) > 1 else 0.0] * len(texts)

    sampler = VGPOSampler(group_size=3, max_new_tokens=4, perception_tokens=3, max_tries=3, scorer=scorer)
    torch.manual_seed(0)
    rollout = sampler.generate(vlm, rows)
    assert seen == [6, 6] and rollout.extras["vgpo_tries"].tolist() == [2.0] * 6
    assert rollout.num_sequences == 6 and rollout.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    perception, valid = rollout.extras["vgpo_perception"], rollout.response_mask
    assert bool((perception <= valid).all()) and perception[:, 0].all()  # every response starts with its perception
    assert int(valid.sum(-1).max()) <= 3 + 4  # perception cap + continuation cap
    masked = PerceptionMask(train_perception=False).token_weights(rollout, None).loss
    assert torch.equal(masked, 1.0 - perception) and PerceptionMask().token_weights(rollout, None) is None
    greedy = sampler.generate(vlm, rows, greedy=True)  # validation: no gate
    assert "vgpo_tries" not in greedy.extras and len(seen) == 2


def _gated(vlm, rows, tag, group_size, scorer, seed=0):
    """(rollout, forward steps of the policy) of one seeded VGPO rollout with the sampler's log-probs."""
    sampler = VGPOSampler(
        max_new_tokens=3, perception_tokens=10, scorer=scorer, close_tag=tag, logprobs=True, group_size=2
    )
    steps = []
    handle = vlm.model.register_forward_hook(lambda *args: steps.append(1))
    torch.manual_seed(seed)
    try:
        rollout = sampler.generate(vlm, rows, group_size=group_size)
    finally:
        handle.remove()
    return rollout, len(steps)


def test_the_draw_stops_at_the_closing_tag_and_the_reasoning_continues_from_it():
    vlm = load_vlm("tiny:qwen2_vl")
    tok = vlm.processor.tokenizer
    rows = [dict(r) for r in build_geometry(num_samples=1, image_size=56)]
    accept = lambda texts, samples: [1.0] * len(texts)  # noqa: E731
    # the random policy never writes </WATCHING>: the draw runs to its 10-token cap, then 3 reasoning tokens
    free, free_steps = _gated(vlm, rows, "</WATCHING>", 1, accept)
    drawn = free.input_ids[0, free.prompt_width :].tolist()
    assert free.extras["vgpo_perception"].sum().item() == 10 and free_steps == 10 + 3
    # a tag this seed's draw writes at tokens 2..3: the same seed draws the same tokens up to it, then stops
    tag = tok.decode(drawn[2:4])
    stop = len(cut_after(tok, drawn[:10], tag))
    assert stop == 4  # the tag is not in the text before token 3
    gated, steps = _gated(vlm, rows, tag, 1, accept)
    response = gated.input_ids[0, gated.prompt_width :].tolist()
    n = int(gated.response_mask.sum())
    assert response[:stop] == drawn[:stop] and gated.extras["vgpo_perception"].sum().item() == stop
    assert tok.decode(response[:stop]).endswith(tag)
    # no forward step past the tag: 4 draw steps + one per continuation token (the old full draw took 10 + 3)
    assert n == stop + 3 and steps == stop + 3
    assert gated.responses[0] == tok.decode(response[:stop], skip_special_tokens=True) + tok.decode(
        response[stop:n], skip_special_tokens=True
    )


def test_sampler_logprobs_of_perception_and_reasoning_are_the_teacher_forced_ones():
    vlm = load_vlm("tiny:qwen2_vl")
    rows = [dict(r) for r in build_geometry(num_samples=2, image_size=56)]
    calls = []

    def reject_first(texts, samples):  # every sequence redraws once: the kept perception is a second draw
        calls.append(len(texts))
        return [0.0 if len(calls) == 1 else 1.0] * len(texts)

    rollout, _ = _gated(vlm, rows, "</WATCHING>", 3, reject_first)
    assert calls == [6, 6] and rollout.extras["vgpo_tries"].tolist() == [2.0] * 6
    suppress = suppressed_token_ids(vlm.processor.tokenizer)
    scored = score_logprobs(vlm.model, rollout, 1.0, 8, suppress_ids=suppress)
    # the draws sample at T 0.7 but their log-probs are the scorer's (T 1.0); fp32 generate vs teacher-forced
    # agree to ~1e-6 (experiments/LOG.md 2026-12-05: max |diff| 9.5e-7)
    assert torch.allclose(rollout.old_logprobs, scored, atol=1e-5)
    assert bool((rollout.old_logprobs[rollout.response_mask == 0] == 0).all())
    calls.clear()
    again, _ = _gated(vlm, rows, "</WATCHING>", 3, reject_first)  # same seed, same tokens and numbers
    assert torch.equal(again.input_ids, rollout.input_ids) and torch.equal(again.old_logprobs, rollout.old_logprobs)
