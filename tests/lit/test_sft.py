"""Rejection-sampled SFT: which candidates are kept, the cross-entropy, and that it fits the tiny model."""

from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from vrl.data.synthetic import build_synthetic
from vrl.lit.sft import (
    TemplateTargets,
    build_sft_rollout,
    rejection_sample,
    response_nll,
    select_kept,
    sft_backward,
)
from vrl.rewards.combine import RewardSet
from vrl.types import Rollout


def test_select_kept_keeps_each_distinct_pair_at_or_above_the_threshold_once():
    indices = [0, 0, 0, 1, 1, 1, 2]
    responses = ["a", "a", "b", " ", "c", "a", "d"]
    scores = [1.0, 1.0, 0.5, 1.0, 0.9, 0.89, 2.0]
    # "a"@0 twice -> once; "b" below; " " is empty; "c" == threshold is kept; "a"@1 below; "d" above
    assert select_kept(indices, responses, scores, 0.9) == [(0, "a"), (1, "c"), (2, "d")]


class CannedEngine:
    """Returns fixed candidates per row uid, laid out like HFSampler (a row's G sequences adjacent)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.calls = answers, 0

    def generate(self, vlm, rows, group_size):
        self.calls += 1
        return SimpleNamespace(
            responses=[r for row in rows for r in self.answers[row["uid"]][:group_size]],
            samples=[row for row in rows for _ in range(group_size)],
            group_ids=torch.arange(len(rows)).repeat_interleave(group_size),
        )


class LengthTerm:
    weight = 1.0

    def __call__(self, responses, samples):
        return [len(r) / 10 for r in responses]


def test_rejection_sample_maps_candidates_back_to_their_prompts_and_keeps_those_above_threshold():
    data = [{"prompt": "p0"}, {"prompt": "p1"}, {"prompt": "p2"}]  # uids default to the row index
    engine = CannedEngine(
        {
            "0": ["abc", "a", "abc", "abcd"],  # scores 0.3 0.1 0.3 0.4 -> "abc" (once), "abcd"
            "1": ["", "xy", "   ", "wxyz"],  # "   " scores 0.3 but is blank -> "wxyz" only
            "2": ["ab", "cd", "ef", "gh"],  # all 0.2 -> none
        }
    )
    reward = RewardSet({"length": LengthTerm()})
    generate = functools.partial(engine.generate, None)  # what the loop hands over as ctx.generate
    kept, stats = rejection_sample(generate, data, [0, 1, 2], 4, reward, 0.25, prompts_per_call=2)
    assert kept == [(0, "abc"), (0, "abcd"), (1, "wxyz")]
    assert engine.calls == 2  # 3 prompts, 2 per call
    assert stats["sft/candidates"] == 12 and stats["sft/kept"] == 3


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits for row r are a trainable table; row r is named by its first input id."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask, logits_to_keep, use_cache):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]][:, -logits_to_keep:])


def _two_sequence_case():
    ln2, ln3 = math.log(2.0), math.log(3.0)
    table = torch.zeros(2, 3, 3)  # [n, L + 1, V]; position t predicts response token t
    table[0, 0] = torch.tensor([0.0, ln2, 0.0])  # p(1) = 2 / 4
    table[0, 1] = torch.tensor([ln3, 0.0, 0.0])  # p(2) = 1 / 5
    table[1, 1] = torch.tensor([5.0, -3.0, 7.0])  # after the response ends: must not count
    rollout = Rollout(
        input_ids=torch.tensor([[0, 1, 2], [1, 1, 0]]),  # [row id | response tokens]
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        pixel_values=None,
        image_grid_thw=None,
        images_per_seq=torch.zeros(2, dtype=torch.long),
        group_ids=torch.arange(2),
        samples=[{}, {}],
        responses=["", ""],
    )
    return FixedLogits(table), rollout


def test_sft_loss_is_the_token_mean_cross_entropy_of_the_response_tokens():
    model, rollout = _two_sequence_case()
    loss, tokens = sft_backward(model, rollout, micro_batch_size=2)
    # seq 0: -log(1/2) - log(1/5); seq 1: -log(1/3) for its one token (row 0 of the table is uniform)
    assert tokens == 3.0
    assert math.isclose(loss, (math.log(2) + math.log(5) + math.log(3)) / 3, rel_tol=1e-6)


def test_micro_batches_give_the_full_batch_gradient():
    grads = []
    for micro in (1, 2):
        model, rollout = _two_sequence_case()
        sft_backward(model, rollout, micro_batch_size=micro)
        grads.append(model.table.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][1, 1].abs().sum() == 0  # padding positions get no gradient


def test_sft_fits_kept_responses_on_the_tiny_model(compose):
    torch.manual_seed(0)
    vlm = instantiate(compose(["experiment=none"]).model)
    data = build_synthetic(tasks=["color"], formats=["open"], num_samples=2, image_size=56, mode="stream")
    rows = [dict(data[i]) for i in range(2)]
    responses = ["red", "blue green"]
    rollout = build_sft_rollout(vlm, rows, responses, prompt_suffix=" Be brief.")
    tok = vlm.processor.tokenizer
    for i, response in enumerate(responses):  # the response part is the text plus EOS, then padding
        ids = rollout.input_ids[i, rollout.prompt_width :][rollout.response_mask[i].bool()].tolist()
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == response
    assert "Be brief." in tok.decode(rollout.input_ids[0, : rollout.prompt_width])

    def nll() -> float:
        with torch.no_grad():
            return float(response_nll(vlm.model, rollout).sum() / rollout.response_mask.sum())

    before = nll()
    opt = torch.optim.Adam([p for p in vlm.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        sft_backward(vlm.model, rollout, micro_batch_size=1)
        opt.step()
    assert nll() < 0.5 * before


def test_template_targets_fill_the_template_from_each_rows_fields():
    meta = {"target": [{"color": "blue", "shape": "star"}], "scene": {"objects": []}}
    rows = [
        {"prompt": "What colour?", "answer": "blue", "meta": json.dumps(meta), "images": [object()], "uid": "r0"},
        {
            "prompt": "What colour?",
            "answer": "red",
            "meta": json.dumps({"target": [{"color": "red", "shape": "square"}]}),
        },
    ]
    vision_sr1 = (
        "<description>a {meta[target][0][color]} {meta[target][0][shape]}</description>"
        "<think>{answer}</think>\\boxed{{{answer}}}"
    )
    builder = TemplateTargets(template=vision_sr1, batch_size=4)
    kept, stats = builder.build(None, rows, [1, 0])
    # row 1 first (the indices' order); doubled braces are literal, the meta JSON is read through format's indexing
    assert kept == [
        (1, "<description>a red square</description><think>red</think>\\boxed{red}"),
        (0, "<description>a blue star</description><think>blue</think>\\boxed{blue}"),
    ]
    assert stats == {"sft/templated": 2.0} and builder.batch_size == 4
    plain = TemplateTargets(template="{prompt} -> {answer}", json_fields=())
    assert plain.target(rows[0]) == "What colour? -> blue"
    with pytest.raises(ValueError, match="row r0 has no 'missing'"):
        TemplateTargets(template="{missing}").target(rows[0])
    with pytest.raises(ValueError, match="rejection.template: row 1's 'meta' is not JSON"):
        TemplateTargets(template="{meta}").target({"meta": "{not json", "uid": "1"})
    with pytest.raises(ValueError, match="names no row field"):
        TemplateTargets(template="no fields")
    with pytest.raises(ValueError, match="not a format string"):
        TemplateTargets(template="{answer")
