import pytest
import torch

from vrl.methods.policy_loss import PolicyLoss, gspo, ppo_clip


def test_positive_advantage_ratio_clipped_at_one_plus_eps_high():
    # ratio = e^1 = 2.718 > 1 + 0.28; A = 1 -> loss = max(-2.718, -1.28) = -1.28, clipped
    loss, info = ppo_clip(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28]]))
    assert bool(info["clipped"].all())


def test_negative_advantage_small_ratio_clipped_at_one_minus_eps_low():
    # ratio = e^-1 = 0.3679 < 0.8; A = -1 -> loss = max(0.3679, 0.8) = 0.8
    loss, info = ppo_clip(torch.tensor([[-1.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0]), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.8]]))
    assert bool(info["clipped"].all())


def test_dual_clip_caps_negative_advantage_loss():
    # ratio = e^2 = 7.389; A = -1: PPO loss = max(7.389, 1.2) = 7.389; dual clip c = 3 caps it at 3
    lp, old, adv = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0])
    no_dual, _ = ppo_clip(lp, old, adv, 0.2, 0.2, None)
    dual, _ = ppo_clip(lp, old, adv, 0.2, 0.2, 3.0)
    torch.testing.assert_close(no_dual, torch.tensor([[7.389056]]))
    torch.testing.assert_close(dual, torch.tensor([[3.0]]))


def test_on_policy_gradient_is_reinforce():
    # ratio = 1 inside the clip range: d(-A r)/d logp = -A r = -A
    lp = torch.tensor([[0.3, -1.0], [0.1, 0.2]], requires_grad=True)
    adv = torch.tensor([2.0, -0.5])
    loss, _ = ppo_clip(lp, lp.detach(), adv)
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-2.0, -2.0], [0.5, 0.5]]))


def test_zero_advantage_gives_zero_gradient():
    lp = torch.randn(3, 4, requires_grad=True)
    loss, _ = ppo_clip(lp, lp.detach() + 0.1, torch.zeros(3), 0.2, 0.28, 3.0)
    loss.sum().backward()
    assert torch.count_nonzero(lp.grad) == 0


def test_gspo_uses_length_normalised_sequence_ratio():
    # tokens log-ratio [0.2, 0.0, (masked 5.0)] -> mean over 2 valid = 0.1 -> s = e^0.1 = 1.10517 (< 1+eps)
    lp = torch.tensor([[0.2, 0.0, 5.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = gspo(lp, old, torch.tensor([1.0]), mask, eps_low=0.5, eps_high=0.5)
    torch.testing.assert_close(loss[0, :2], torch.full((2,), -1.105171))
    (loss * mask).sum().backward()
    # d/d lp_t of -A * s * exp(lp_t - sg(lp_t)) = -A * s per valid token
    torch.testing.assert_close(lp.grad[0, :2], torch.full((2,), -1.105171))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"eps_low": -0.1}, "eps_low"), ({"dual_clip": 0.5}, "dual_clip"), ({"kind": "ppo2"}, "kind")],
)
def test_invalid_values_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"policy_loss.{key}"):
        PolicyLoss(**kwargs)
