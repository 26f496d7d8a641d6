import pytest
import torch

from vrl.methods.kl import KLPenalty, kl_estimate


def test_estimators_hand_computed():
    # d = ref - logp = -1 - (-2) = 1: k1 = -1, k2 = 0.5, k3 = e - 1 - 1 = 0.718282
    lp, ref = torch.tensor([[-2.0]]), torch.tensor([[-1.0]])
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), torch.tensor([[-1.0]]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), torch.tensor([[0.5]]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.tensor([[0.718282]]))


def test_k3_nonnegative_and_zero_at_equality():
    lp = torch.randn(4, 5)
    assert bool((kl_estimate(lp, torch.randn(4, 5), "k3") >= 0).all())
    assert torch.count_nonzero(kl_estimate(lp, lp, "k3")) == 0


def test_negative_coef_rejected():
    with pytest.raises(ValueError, match="kl.coef"):
        KLPenalty(coef=-1.0)
