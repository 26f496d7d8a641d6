"""Vision-SR1: the see-think format, the self-reward's pass 2 (against a stand-in chat server and the policy), the
description token span, and the v2 decoupled advantage split worked out by hand on two groups."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

from vrl.judges import HTTPJudge, PolicyJudge
from vrl.methods.vision_sr1 import (
    PASS2_TEMPLATE,
    DecoupledSpans,
    DescribedRows,
    SeeThinkFormat,
    VisualSelfReward,
    span_token_mask,
)
from vrl.models.tiny import build_tiny_tokenizer
from vrl.types import Rollout

FULL = "<description>a red circle</description> <think>ok</think> \\boxed{red}"  # 32 tiny tokens, span = first 19
TIGHT = "<description>red</description><think>ok</think>\\boxed{red}"  # 27 tokens, span = first 16
BARE = "\\boxed{red}"  # no description


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def chat_server():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parents[1] / "judges"))
        return importlib.import_module("_openai_server")


def test_see_think_format():
    fmt = SeeThinkFormat()
    responses = [
        FULL,
        "< description >a red circle</ description >\n<think>ok</think>\nThe answer is \\boxed{red}.",  # spaces at tags
        "<think>ok</think> \\boxed{red}",  # no description
        "<description>x</description> \\boxed{red}",  # no think
        "<description>x</description> <think>ok</think> red",  # no box
        "hello <description>x</description> <think>ok</think> \\boxed{red}",  # text before: not the whole output
    ]
    assert fmt(responses, [{}] * 6) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_self_reward_asks_with_the_description_and_question_only(chat_server):
    model, tok = chat_server.tiny_causal_lm(seed=0)
    samples = [{"prompt": "<image>What colour is the circle?", "answer": "red", "answer_type": "text"}] * 2
    samples += [{"prompt": "<image>What colour is the circle?", "answer": "blue", "answer_type": "text"}]
    responses = [FULL, BARE, TIGHT]
    with chat_server.ChatServer(model, tok, reply="<think>the description says red</think> \\boxed{red}") as server:
        term = VisualSelfReward(HTTPJudge(server.url, "m", {"system": "s"}, backoff_s=0.01))
        values = term(responses, samples)
    # row 0: described, pass 2 says red = answer -> 1; row 1: no description -> 0, not asked; row 2: red != blue -> 0
    assert values == [1.0, 0.0, 0.0] and server.requests == 2
    contents = sorted(b["messages"][0]["content"] for b in server.bodies)
    assert len(server.bodies[0]["messages"]) == 1 and contents[0].startswith("Text description of an image: a red")
    assert "Question: What colour is the circle?\n" in contents[0] and "<image>" not in contents[0]
    assert term.pop_stats() == {
        "reward/visual/samples": 3.0,
        "reward/visual/no_description": 1.0,
        "reward/visual/failed": 0.0,
        **{f"judge/visual/{k}": v for k, v in [("items", 2.0), ("cache_hits", 0.0), ("calls", 2.0)]},
        "judge/visual/retries": 0.0,
        "judge/visual/request_failures": 0.0,
        "judge/visual/parse_failures": 0.0,
    }


def test_self_reward_through_the_policy_asks_once_per_distinct_description():
    from vrl.models.loading import load_vlm

    judge = PolicyJudge(max_new_tokens=3)
    judge.bind_policy(load_vlm("tiny:qwen2_vl"))
    term = VisualSelfReward(judge)
    samples = [{"prompt": "What colour?", "answer": "red", "answer_type": "text"}] * 4
    values = term([FULL, FULL, TIGHT, BARE], samples)
    assert values == [0.0] * 4  # 3 random tokens hold no \boxed{}: nothing graded right
    assert judge.stats.items == 3 and judge.stats.calls == 2 and judge.stats.cache_hits == 1


def test_span_token_mask(tokenizer):
    for text, span in ((FULL, 19), (TIGHT, 16)):
        ids = tokenizer.encode(text, add_special_tokens=False)
        mask = span_token_mask(tokenizer, ids)
        assert mask.tolist() == [1.0] * span + [0.0] * (len(ids) - span)
        chosen = [i for i, m in zip(ids, mask.tolist()) if m]
        assert tokenizer.decode(chosen).endswith("</description>")
    straddle = tokenizer.encode("red <description>red</description>", add_special_tokens=False)  # ' <' is one token
    assert tokenizer.decode(straddle[1:2]) == " <"  # it holds the span's first character: it is in the span
    assert span_token_mask(tokenizer, straddle).tolist() == [0.0] + [1.0] * (len(straddle) - 1)
    assert span_token_mask(tokenizer, tokenizer.encode(BARE, add_special_tokens=False)).sum() == 0


def _rollout(tokenizer, responses):
    rows = [tokenizer.encode(r, add_special_tokens=False) for r in responses]
    width = max(map(len, rows))
    resp = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    valid = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows])
    prompt = torch.full((len(rows), 1), 5)
    return Rollout(
        input_ids=torch.cat([prompt, resp], 1),
        attention_mask=torch.cat([torch.ones_like(prompt), valid.long()], 1),
        response_mask=valid,
        pixel_values=None,
        image_grid_thw=None,
        images_per_seq=torch.zeros(len(rows), dtype=torch.long),
        group_ids=torch.tensor([0, 0, 1, 1]),
        samples=[{}] * len(rows),
        responses=list(responses),
    )


def test_v2_advantage_split_by_hand_on_two_groups(tokenizer):
    class Bound:
        class processor:  # noqa: N801 - the policy bundle's shape: vlm.processor.tokenizer
            pass

    Bound.processor.tokenizer = tokenizer
    rollout = _rollout(tokenizer, [FULL, BARE, TIGHT, FULL])
    components = {
        "visual": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "accuracy": torch.tensor([0.0, 1.0, 1.0, 0.0]),
        "format": torch.tensor([1.0, 0.0, 1.0, 1.0]),
    }
    weights = {"visual": 1.0, "accuracy": 0.9, "format": 0.1}  # r = 0.9 acc + 0.1 fmt + r_vis
    total = sum(weights[k] * v for k, v in components.items())

    def z(x, y):  # GRPO's z-score of x in the group {x, y}: (x - mean) / (unbiased std + 1e-6)
        return (x - (x + y) / 2) / (abs(x - y) / math.sqrt(2) + 1e-6)

    # group 0 (FULL, BARE): r_vis = (1, 0); r_ans = (0.9*0 + 0.1*1, 0.9*1 + 0.1*0) = (0.1, 0.9)
    # group 1 (TIGHT, FULL): r_vis = (1, 1) -> A_vis = 0; r_ans = (0.9 + 0.1, 0 + 0.1) = (1.0, 0.1)
    a_vis = [z(1, 0), z(0, 1), 0.0, 0.0]
    a_ans = [z(0.1, 0.9), z(0.9, 0.1), z(1.0, 0.1), z(0.1, 1.0)]
    spans = [19, 0, 16, 19]  # description tokens of each response (test_span_token_mask)
    expected = torch.tensor([a_ans[n] for n in range(4)])[:, None].repeat(1, rollout.response_mask.shape[1])
    for n, s in enumerate(spans):
        expected[n, :s] = a_vis[n]
    est = DecoupledSpans()
    est.bind_policy(Bound)
    got = est(total, rollout.group_ids, rollout.response_mask, components=components, weights=weights, rollout=rollout)
    assert got.shape == (4, 32) and torch.allclose(got, expected, atol=1e-6, rtol=0)
    summed = DecoupledSpans(combine="sum")(total, rollout.group_ids, components=components, weights=weights)
    assert torch.allclose(summed, torch.tensor(a_vis) + torch.tensor(a_ans), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="advantage.visual"):
        DecoupledSpans(visual=["vis"])(total, rollout.group_ids, components=components, weights=weights)


def test_described_rows_are_pass_2s_text_only_prompt_with_the_true_description():
    meta = '{"target": [{"color": "blue", "shape": "star"}]}'
    row = {
        "prompt": "<image>\nWhat colour is the shape?",
        "answer": "blue",
        "images": ["img"],
        "meta": meta,
        "uid": "r",
    }
    rows = DescribedRows([row], "a {meta[target][0][color]} {meta[target][0][shape]}")
    got = rows[0]
    # pass 2's message for the description "a blue star" and the question without its image placeholder
    assert got["prompt"] == (
        "Text description of an image: a blue star\nQuestion: What colour is the shape?\nYou cannot see the image; "
        "use only the description. Reason inside <think> </think>, then give the final answer in \\boxed{}."
    )
    assert got["images"] == [] and got["answer"] == "blue" and len(rows) == 1 and row["images"] == ["img"]
    # the same text VisualSelfReward asks pass 2 with, for that description
    assert VisualSelfReward(judge=None, template=PASS2_TEMPLATE).chat("a blue star", row)[0]["content"] == got["prompt"]
    with pytest.raises(ValueError, match="row r has no 'size'"):
        DescribedRows([row], "{meta[target][0][size]}")[0]
    with pytest.raises(ValueError, match="must contain"):
        DescribedRows([row], "{answer}", template="no slots")
