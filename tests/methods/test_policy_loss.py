import pytest
import torch

from vrl.methods.policy_loss import CISPO, GMPO, GSPO, SAPO, PPOClip, gspo, ppo_clip


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


def test_log_ratio_clamped_at_20_as_verl_and_easyr1():
    # verl compute_policy_loss / EasyR1 compute_policy_loss: r = exp(clamp(log r, -20, 20)).
    # log r = 100, A = 0 (all-equal group): unclamped -0 * exp(100) = -0 * inf = NaN; clamped -0 * e^20 = 0.
    # log r = 30, A = -1: loss = max(e^20, 0.8) = e^20 = 485165195.4 (not e^30), gradient 0 (clamp active).
    # log r = -30, A = 1: r = e^-20 = 2.06e-9 < 0.8 -> loss = max(-2.06e-9, -0.8) = -2.06e-9, gradient 0.
    lp = torch.tensor([[100.0, 30.0, -30.0]], requires_grad=True)
    adv = torch.tensor([[0.0, -1.0, 1.0]])
    loss, _ = ppo_clip(lp, torch.zeros(1, 3), adv, 0.2, 0.28)
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([[0.0, 485165195.4, -2.0611536e-9]]))
    torch.testing.assert_close(lp.grad, torch.zeros(1, 3))
    # inside the bound nothing changes: log r = 19.5, A = -1 -> loss = e^19.5 = 294267566.0, gradient e^19.5
    lp = torch.tensor([[19.5]], requires_grad=True)
    loss, _ = ppo_clip(lp, torch.zeros(1, 1), torch.tensor([-1.0]))
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([[294267566.0]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[294267566.0]]))


def test_gspo_sequence_log_ratio_capped_at_10_as_verl():
    # verl compute_policy_loss_gspo: log s = min(sg[mean log r] + lp - sg[lp], 10).
    # tokens log-ratio [12, 12] -> mean 12 > 10 -> s = e^10 = 22026.466 (not e^12 = 162754.79);
    # A = -1: loss = max(s, 1.0004) = 22026.466 per token, gradient 0 (cap active).
    lp = torch.tensor([[12.0, 12.0]], requires_grad=True)
    loss, _ = gspo(lp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2))
    (loss.sum()).backward()
    torch.testing.assert_close(loss, torch.full((1, 2), 22026.466))
    torch.testing.assert_close(lp.grad, torch.zeros(1, 2))


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
    ("cls", "kwargs", "key"),
    [
        (PPOClip, {"eps_low": -0.1}, "eps_low"),
        (PPOClip, {"dual_clip": 0.5}, "dual_clip"),
        (GSPO, {"eps_low": 1.0}, "eps_low"),
    ],
)
def test_invalid_values_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=f"policy_loss.{key}"):
        cls(**kwargs)


def test_classes_call_the_functions_and_say_what_the_kernel_fuses():
    lp, old, adv, mask = torch.tensor([[0.3, -0.2]]), torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2)
    torch.testing.assert_close(
        PPOClip(0.2, 0.28, 3.0)(lp, old, adv, mask)[0], ppo_clip(lp, old, adv, 0.2, 0.28, 3.0)[0]
    )
    torch.testing.assert_close(GSPO()(lp, old, adv, mask)[0], gspo(lp, old, adv, mask, 3e-4, 4e-4)[0])
    assert PPOClip(0.2, 0.28, 3.0).fused == {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0}
    assert GSPO().fused is None  # the kernel computes token ratios only


def test_cispo_weighs_the_reinforce_gradient_by_the_clipped_ratio():
    # verl compute_policy_loss_cispo: loss = -sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * log p.
    # token 0: log p = -1, old -1.5: r = e^0.5 = 1.648721 -> capped at 1.2 (clipped); A = 1: loss = -1.2 * -1 = 1.2,
    #   gradient -1.2 (PPO's clip would give 0 here: CISPO keeps every token in the gradient).
    # token 1: log p = -2, old -1: r = e^-1 = 0.367879; no floor (eps_low None): loss = -0.367879 * -2 = 0.735759,
    #   gradient -0.367879.
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, info = CISPO(eps_high=0.2)(lp, torch.tensor([[-1.5, -1.0]]), torch.tensor([1.0]), torch.ones(1, 2))
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([[1.2, 0.735759]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.2, -0.367879]]))
    assert info["clipped"].tolist() == [[True, False]]
    # with a floor (eps_low 0.2) token 1's weight is 0.8: gradient -0.8
    lp.grad = None
    CISPO(eps_low=0.2)(lp, torch.tensor([[-1.5, -1.0]]), torch.tensor([1.0]), None)[0].sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.2, -0.8]]))


def test_sapo_soft_gate_hand_computed():
    # verl compute_policy_loss_sapo: loss = -A * sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos (A > 0) else tau_neg;
    # gradient in log p: -A * 4 sigma (1 - sigma) r.
    # A = 1, r = e^0.5 = 1.648721, tau 1: sigma(0.648721) = 0.656722 -> loss -2.626889, gradient
    #   -4 * 0.656722 * 0.343278 * 1.648721 = -1.486739; at r = 1: loss -2, gradient -1 (= PPO on-policy).
    lp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, info = SAPO()(lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([[-2.626889, -2.0]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.486739, -1.0]]))
    assert not info["clipped"].any()
    # A = -1 at r = 1 uses tau_neg = 1.05: loss = 0.5 * 4 / 1.05 = 1.904762, gradient +1
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = SAPO()(lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([[1.904762]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[1.0]]))


def test_gmpo_geometric_mean_with_sign_aware_log_clip():
    # verl compute_policy_loss_geo_mean, clip (-0.4, 0.4) in log space:
    # A = 1, log r = (0.6, -0.2): min(x, clip(x)) = (0.4, -0.2) -> s = e^((0.4 - 0.2) / 2) = e^0.1 = 1.105171,
    #   loss -1.105171; gradient of the mean over 2 sequences: token 0 clipped -> 0, token 1 -1.105171 / 2 tokens / 2
    #   sequences = -0.276293.
    # A = -1, log r = (0.6, -0.6): max(x, clip(x)) = (0.6, -0.4) -> s = e^0.1, loss +1.105171; token 0 +0.276293,
    #   token 1 clipped -> 0. Masked tokens are left out of the mean.
    from vrl.methods.loss_agg import SeqMeanTokenMean

    lp = torch.tensor([[0.6, -0.2, 9.0], [0.6, -0.6, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss, info = GMPO()(lp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask)
    agg = SeqMeanTokenMean()
    total = agg(loss, mask, agg.normalizer(mask))  # GMPO's mean over sequences: (-1.105171 + 1.105171) / 2
    total.backward()
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.105171, 1.105171]))
    torch.testing.assert_close(total, torch.tensor(0.0))
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.276293, 0.0], [0.276293, 0.0, 0.0]]))
    assert (info["clipped"] * mask).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
