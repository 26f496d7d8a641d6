import pytest
import torch

from vrl.methods.loss_agg import MODES, LossAgg
from vrl.methods.policy_loss import ppo_clip


def test_modes_hand_computed():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token_mean: (1+2+3+4)/4 = 2.5; seq_mean_token_mean: (6/3 + 4/1)/2 = 3
    # seq_mean_token_sum: (6 + 4)/2 = 5; seq_mean_token_sum_norm (max_len 4): 10 / (2*4) = 1.25
    expected = {
        "token_mean": 2.5,
        "seq_mean_token_mean": 3.0,
        "seq_mean_token_sum": 5.0,
        "seq_mean_token_sum_norm": 1.25,
    }
    for mode, value in expected.items():
        agg = LossAgg(mode=mode, max_len=4)
        torch.testing.assert_close(agg(per_token, mask, agg.normalizer(mask)), torch.tensor(value))


def test_masked_tokens_change_nothing():
    agg = LossAgg("token_mean")
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a = torch.tensor([[1.0, 2.0, 100.0]])
    b = torch.tensor([[1.0, 2.0, -7.0]])
    assert agg(a, mask, agg.normalizer(mask)) == agg(b, mask, agg.normalizer(mask))


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_give_the_same_gradient_as_one_batch(mode):
    torch.manual_seed(0)
    n, length = 6, 5
    logits = torch.randn(n, length)
    old = logits + 0.1 * torch.randn(n, length)
    adv = torch.randn(n)
    mask = (torch.rand(n, length) > 0.3).float()
    mask[:, 0] = 1.0
    agg = LossAgg(mode=mode, max_len=8)

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


def test_unknown_mode_names_the_key():
    with pytest.raises(ValueError, match="loss_agg.mode"):
        LossAgg(mode="sum")
