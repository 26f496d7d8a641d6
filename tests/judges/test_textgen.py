"""Free chats and probability readouts of the in-process backends (LocalJudge; PolicyJudge shares the code)."""

from __future__ import annotations

import torch

from vrl.judges import LocalJudge

CHATS = [
    [{"role": "system", "content": "Answer Yes or No."}, {"role": "user", "content": "Is the circle red?" + " x" * k}]
    for k in range(3)
]  # three lengths: a batch of two is left-padded


def _direct_readout(model, tokenizer, chat) -> float:
    """One unpadded forward of the rendered chat: sigmoid(log p(Yes) - log p(No)) at the last position."""
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        lp = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
    yes, no = tokenizer.encode("Yes", add_special_tokens=False)[0], tokenizer.encode("No", add_special_tokens=False)[0]
    return float(torch.sigmoid(lp[yes] - lp[no]))


def test_local_probability_equals_a_direct_forward(tiny_lm, prompt):
    model, tokenizer = tiny_lm
    judge = LocalJudge(model, prompt, tokenizer=tokenizer, batch_size=2)
    replies = judge.probability(CHATS)
    expected = [_direct_readout(model, tokenizer, c) for c in CHATS]
    assert [r.ok for r in replies] == [True] * 3 and all(r.text is None for r in replies)
    # left padding changes nothing but float summation order: agree to float32 rounding
    assert all(abs(r.prob - e) < 1e-6 for r, e in zip(replies, expected)), (replies, expected)
    assert min(expected) > 0 and max(expected) < 1 and len(set(expected)) == 3  # three real, distinct readouts
    assert judge.stats.calls == 3 and judge.probability(CHATS[1:2]) == replies[1:2] and judge.stats.cache_hits == 1


def test_local_complete_equals_greedy_decoding(tiny_lm, prompt, server_module):
    model, tokenizer = tiny_lm
    judge = LocalJudge(model, prompt, tokenizer=tokenizer, max_new_tokens=5, batch_size=1)
    replies = judge.complete(CHATS[:2])
    assert [r.text for r in replies] == [server_module.greedy_chat(model, tokenizer, c, 5) for c in CHATS[:2]]
    assert judge.stats.calls == 2


def test_a_failing_forward_fails_its_readouts(tiny_lm, prompt):
    class Broken(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, **kwargs):
            raise RuntimeError("out of memory (simulated)")

    judge = LocalJudge(Broken(), prompt, tokenizer=tiny_lm[1], batch_size=2)
    replies = judge.probability(CHATS)
    assert [(r.ok, r.prob, r.transient) for r in replies] == [(False, 0.0, True)] * 3 and len(judge.cache) == 0
    assert judge.stats.request_failures == 3 and "out of memory" in replies[0].error
