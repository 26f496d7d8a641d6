"""PaCo-RL's pairwise consistency reward: pairs within a group or within one response, averaged over pairs then
criteria, each pair's P("Yes") equal to a direct forward of the judge model."""

from __future__ import annotations

import pytest
import torch

from vrl.judges import LocalJudge
from vrl.judges.tiny import tiny_text_model
from vrl.methods.paco import PairwiseConsistency
from vrl.models.tiny import build_tiny_tokenizer

CRITERIA = ("Same? {a} | {b}", "Consistent? {a} / {b}")


@pytest.fixture(scope="module")
def judge_parts():
    return tiny_text_model(seed=1), build_tiny_tokenizer()


def _p_yes(model, tokenizer, text: str) -> float:
    """Direct readout of one user message: sigmoid(log p(Yes) - log p(No)) at the next position."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        lp = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
    yes, no = (tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    return float(torch.sigmoid(lp[yes] - lp[no]))


def test_group_pairs_average_over_pairs_then_criteria(judge_parts):
    model, tok = judge_parts
    term = PairwiseConsistency(LocalJudge(model, tokenizer=tok, batch_size=4), criteria=CRITERIA)
    responses = ["red", "blue", "red", "green"]
    samples = [{"uid": "a"}, {"uid": "a"}, {"uid": "a"}, {"uid": "b"}]  # a group of 3 and a group of 1
    values = term(responses, samples)

    def pair(i, j, c):  # asked with the earlier response first
        a, b = responses[min(i, j)], responses[max(i, j)]
        return _p_yes(model, tok, c.format(a=a, b=b))

    for i, others in ((0, (1, 2)), (1, (0, 2)), (2, (0, 1))):
        expected = sum(sum(pair(i, j, c) for j in others) / 2 for c in CRITERIA) / 2
        assert values[i] == pytest.approx(expected, abs=1e-6)
    assert values[3] == 0.0  # alone in its group: no pair
    # distinct asks: pairs (0,1), (0,2), (1,2) x 2 criteria = 6 ("red"/"red" of (0, 2) is one of them)
    stats = term.pop_stats()
    assert stats["judge/consistency/calls"] == 6 and stats["reward/consistency/no_pairs"] == 1


def test_segment_pairs_inside_one_response(judge_parts):
    model, tok = judge_parts
    term = PairwiseConsistency(LocalJudge(model, tokenizer=tok), mode="segments", criteria=CRITERIA[:1])
    values = term(["<answer>red</answer> then <answer> red circle </answer>", "<answer>red</answer>"], [{}, {}])
    assert values[0] == pytest.approx(_p_yes(model, tok, "Same? red | red circle"), abs=1e-6) and values[1] == 0.0


def test_bad_criteria_and_mode_are_refused():
    with pytest.raises(ValueError, match="criteria"):
        PairwiseConsistency(None, criteria=["no placeholders"])
    with pytest.raises(ValueError, match="mode"):
        PairwiseConsistency(None, mode="pairs")
