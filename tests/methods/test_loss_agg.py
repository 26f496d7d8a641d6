import pytest
import torch

from vrl.methods.loss_agg import (
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    SeqMeanTokenSumNorm,
    TokenMean,
    positive,
)
from vrl.methods.policy_loss import ppo_clip


def test_modes_hand_computed():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token_mean: (1+2+3+4)/4 = 2.5; seq_mean_token_mean: (6/3 + 4/1)/2 = 3
    # seq_mean_token_sum: (6 + 4)/2 = 5; seq_mean_token_sum_norm (max_len 4): 10 / (2*4) = 1.25
    expected = [
        (TokenMean(), 2.5),
        (SeqMeanTokenMean(), 3.0),
        (SeqMeanTokenSum(), 5.0),
        (SeqMeanTokenSumNorm(max_len=4), 1.25),
    ]
    for agg, value in expected:
        torch.testing.assert_close(agg(per_token, mask, agg.normalizer(mask)), torch.tensor(value))
        # the fused path's form: sum(per_token * token_weights) / normalizer gives the same value
        weighted = (per_token * agg.token_weights(mask)).sum() / agg.normalizer(mask)
        torch.testing.assert_close(weighted, torch.tensor(value))


def test_masked_tokens_change_nothing():
    agg = TokenMean()
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a = torch.tensor([[1.0, 2.0, 100.0]])
    b = torch.tensor([[1.0, 2.0, -7.0]])
    assert agg(a, mask, agg.normalizer(mask)) == agg(b, mask, agg.normalizer(mask))


AGGS = [TokenMean(), SeqMeanTokenMean(), SeqMeanTokenSum(), SeqMeanTokenSumNorm(max_len=8)]


@pytest.mark.parametrize("agg", AGGS, ids=lambda a: type(a).__name__)
def test_micro_batches_give_the_same_gradient_as_one_batch(agg):
    torch.manual_seed(0)
    n, length = 6, 5
    logits = torch.randn(n, length)
    old = logits + 0.1 * torch.randn(n, length)
    adv = torch.randn(n)
    mask = (torch.rand(n, length) > 0.3).float()
    mask[:, 0] = 1.0

    def grad_of(chunks):
        lp = logits.clone().requires_grad_(True)
        norm = agg.normalizer(mask)
        for idx in chunks:
            per_token, _ = ppo_clip(lp[idx], old[idx], adv[idx], 0.2, 0.28)
            agg(per_token, mask[idx], norm).backward()
        return lp.grad

    whole = grad_of([torch.arange(n)])
    micro = grad_of(list(torch.arange(n).split(2)))
    uneven = grad_of([torch.tensor([0]), torch.tensor([1, 2, 3, 4]), torch.tensor([5])])
    torch.testing.assert_close(micro, whole)
    torch.testing.assert_close(uneven, whole)
    assert whole.abs().sum() > 0


def test_token_mean_under_ddp_counts_a_rank_without_tokens_as_zero():
    # Two ranks; rank 0 has tokens with losses 1, 2, 3, rank 1 has none (all masked). The loop averages each
    # rank's normaliser over ranks and DDP averages gradients, so the step loss is mean_r(S_r / mean_r(N_r)).
    # Right: N = (3, 0) -> mean 1.5 -> (6 / 1.5 + 0 / 1.5) / 2 = 2.0 = 6 / 3, the global token mean.
    # Per-rank clamp(min=1) (before): N = (3, 1) -> mean 2 -> (6 / 2 + 0) / 2 = 1.5.
    agg = TokenMean()
    per_token = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[5.0, 5.0, 5.0]])]
    masks = [torch.ones(1, 3), torch.zeros(1, 3)]
    local = [agg.normalizer(m) for m in masks]
    torch.testing.assert_close(torch.stack(local), torch.tensor([3.0, 0.0]))
    world = torch.stack(local).mean()  # what strategy.reduce(normalizer, "mean") returns on every rank
    step = sum(agg(p, m, world) for p, m in zip(per_token, masks, strict=True)) / 2
    torch.testing.assert_close(step, torch.tensor(2.0))


def test_no_token_on_any_rank_gives_zero_loss_not_nan():
    # global count 0 -> positive() divides by 1; the numerator is 0 (every token masked) -> loss 0
    agg = TokenMean()
    mask = torch.zeros(2, 3)
    norm = agg.normalizer(mask)
    assert norm == 0
    torch.testing.assert_close(agg(torch.full((2, 3), 7.0), mask, norm), torch.tensor(0.0))
    torch.testing.assert_close(positive(torch.tensor([0.0, 4.0])), torch.tensor([1.0, 4.0]))


def test_invalid_max_len_names_the_key():
    with pytest.raises(ValueError, match="loss_agg.max_len"):
        SeqMeanTokenSumNorm(max_len=0)


def test_per_sequence_normalizer_matches_token_weights():
    # [n] denominators (rollout branches): each sequence divided by its own; seq_mean_token_mean first
    # divides by its length: seq 0 sum 6 / 3 tokens = 2 -> / 2 = 1; seq 1: 4 / 1 = 4 -> / 4 = 1
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    norm = torch.tensor([2.0, 4.0])
    agg = SeqMeanTokenMean()
    torch.testing.assert_close(agg(per_token, mask, norm), torch.tensor(2.0))
    torch.testing.assert_close(((per_token * agg.token_weights(mask)).sum(-1) / norm).sum(), torch.tensor(2.0))
