"""VGPO's gate: accept / resample / keep-the-best logic with a scripted scorer; the sampler gates real draws of the
tiny VLM and trains the perception or not."""

from __future__ import annotations

import pytest
import torch

from vrl.data.geometry import build_geometry
from vrl.methods.vgpo import PerceptionMask, VGPOSampler, cut_after, gate
from vrl.models.loading import load_vlm
from vrl.models.tiny import build_tiny_tokenizer


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
