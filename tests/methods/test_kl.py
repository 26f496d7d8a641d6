import pytest
import torch

from vrl.methods.kl import K1, K2, K3, Abs, k3


def test_estimators_hand_computed():
    # d = ref - logp = -1 - (-2) = 1: k1 = -1, k2 = 0.5, k3 = e - 1 - 1 = 0.718282
    lp, ref = torch.tensor([[-2.0]]), torch.tensor([[-1.0]])
    torch.testing.assert_close(K1()(lp, ref), torch.tensor([[-1.0]]))
    torch.testing.assert_close(K2()(lp, ref), torch.tensor([[0.5]]))
    torch.testing.assert_close(K3()(lp, ref), torch.tensor([[0.718282]]))


def test_k3_nonnegative_and_zero_at_equality():
    lp = torch.randn(4, 5)
    assert bool((k3(lp, torch.randn(4, 5)) >= 0).all())
    assert torch.count_nonzero(k3(lp, lp)) == 0


def test_k3_clamped_to_10_as_verl_low_var_kl_and_knob_turns_it_off():
    # verl kl_penalty_forward / EasyR1 compute_kl "low_var_kl": d = clamp(ref - logp, -20, 20), k3 clamped to [-10, 10].
    # d = 3: e^3 - 3 - 1 = 16.085537 -> 10 (gradient 0); d = 2: e^2 - 3 = 4.389056 (gradient -(e^2 - 1) = -6.389056);
    # d = -30: clamped to -20: e^-20 + 20 - 1 = 19.0 -> 10 (gradient 0).
    lp = torch.tensor([[-3.0, -2.0, 30.0]], requires_grad=True)
    ref = torch.zeros(1, 3)
    est = K3(coef=0.1)(lp, ref)
    est.sum().backward()
    torch.testing.assert_close(est, torch.tensor([[10.0, 4.389056, 10.0]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -6.389056, 0.0]]))
    # clamp=None (TRL): d = 3 -> 16.085537, d = -30 -> clamp(-20): 19.0 (the exp-overflow guard stays)
    raw = K3(coef=0.1, clamp=None)(lp.detach(), ref)
    torch.testing.assert_close(raw, torch.tensor([[16.085537, 4.389056, 19.0]]))


def test_negative_coef_rejected():
    for cls in (K1, K2, K3, Abs):
        with pytest.raises(ValueError, match="kl.coef"):
            cls(coef=-1.0)
    with pytest.raises(ValueError, match="kl.clamp"):
        K3(clamp=0.0)


def test_fused_says_what_the_kernel_computes():
    # the fused kernel computes k3 only, with the same clamp
    assert K3(clamp=None).fused == {"kl_clamp": None} and K3().fused == {"kl_clamp": 10.0}
    assert K1().fused is None and K2().fused is None and Abs().fused is None


def test_abs_estimator_as_verl():
    # verl kl_penalty_forward "abs": |logp - ref|. logp (-2, -1), ref (-1, -3): |-1| = 1, |2| = 2;
    # gradient in logp: sign(logp - ref) = (-1, +1), the same size for the small and the large gap (k2: -1, +2).
    lp = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    est = Abs(coef=0.1)(lp, torch.tensor([[-1.0, -3.0]]))
    est.sum().backward()
    torch.testing.assert_close(est, torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, 1.0]]))
