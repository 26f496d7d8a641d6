"""PolicyJudge: the policy itself, text only; its pass changes neither the weights nor the main rollout's RNG."""

from __future__ import annotations

import pytest
import torch

from vrl.data.synthetic import build_synthetic
from vrl.judges import PolicyJudge
from vrl.models.loading import load_vlm
from vrl.sampler.hf import HFSampler

CHATS = [[{"role": "user", "content": f"Describe: a red circle. What colour is the circle? {k}"}] for k in range(3)]


@pytest.fixture(scope="module")
def vlm():
    return load_vlm("tiny:qwen2_vl")


def test_replies_are_the_policys_greedy_text_only_decoding(vlm):
    judge = PolicyJudge(max_new_tokens=4, batch_size=2)
    judge.bind_policy(vlm)
    replies = judge.complete(CHATS)
    tok = vlm.processor.tokenizer
    for chat, reply in zip(CHATS, replies):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = vlm.model.generate(**ids, do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id)
        assert reply.ok and reply.text == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert judge.stats.calls == 3 and len(judge.cache) == 0  # nothing kept: the weights change every step


def test_the_pass_changes_neither_weights_nor_the_main_rollouts_random_stream(vlm):
    rows = [dict(build_synthetic(tasks=["single_color"], num_samples=2, seed=0, image_size=56)[i]) for i in range(2)]
    sampler = HFSampler(group_size=3, max_new_tokens=5, temperature=1.0)
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    vlm.model.train()

    torch.manual_seed(7)
    plain = sampler.generate(vlm, rows)
    torch.manual_seed(7)
    judge = PolicyJudge(max_new_tokens=4)
    judge.bind_policy(vlm)
    state = torch.get_rng_state()
    judge.complete(CHATS)
    judge.probability(CHATS)
    assert torch.equal(torch.get_rng_state(), state)  # the random stream is where it was
    after_judge = sampler.generate(vlm, rows)
    assert torch.equal(plain.input_ids, after_judge.input_ids)  # the same sampled rollout, token for token
    assert vlm.model.training  # its train flag is restored
    assert all(torch.equal(p, before[n]) for n, p in vlm.model.named_parameters())
    assert all(p.grad is None for p in vlm.model.parameters())


def test_an_unbound_judge_fails_each_chat_clearly():
    judge = PolicyJudge()
    (reply,) = judge.complete(CHATS[:1])
    assert not reply.ok and "not bound" in reply.error and judge.stats.request_failures == 1


def test_annotation_verdicts_through_the_policy(vlm, prompt):
    from vrl.judges import JudgeItem, parse_verdict

    judge = PolicyJudge(max_new_tokens=4, prompt=prompt)
    judge.bind_policy(vlm)
    items = [JudgeItem(("the circle is red",), f"a red circle {k}") for k in range(2)]
    verdicts = judge.judge(items)
    replies = judge.complete([prompt.messages(i.annotations, i.response) for i in items])
    assert [v.raw for v in verdicts] == [r.text for r in replies]  # the policy's reply, parsed as a verdict
    assert all(v == parse_verdict(v.raw, 1) for v in verdicts)
    assert judge.stats.parse_failures == sum(not v.ok for v in verdicts)
    with pytest.raises(ValueError, match="prompt"):
        PolicyJudge().judge(items)
