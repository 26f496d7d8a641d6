"""K3 (masked_grpo_loss): forward + backward vs fp64 / bf16 references, masks, REINFORCE limit.

Tolerances (errors against the fp64 reference evaluated on the same quantised logits; gradient errors
are max |error| / max |grad_fp64|):

| input | quantity   | Triton tol | also required                          |
|-------|------------|------------|----------------------------------------|
| bf16  | loss       | 1e-5 rel   | <= 2x the bf16-reference's error       |
| bf16  | dlogits    | 4e-3       | <= 2x the bf16-reference's error; the  |
|       |            |            | bound is bf16 output rounding (2^-8)   |
| bf16  | stats      | 1e-5 abs   | clip fractions exactly equal           |
| fp32  | loss       | 1e-6 rel   |                                        |
| fp32  | dlogits    | 1e-6       |                                        |
"""

import math

import pytest
import torch

from vrl_kernels import (
    masked_grpo_loss,
    masked_grpo_loss_reference,
    masked_grpo_loss_triton,
    segmented_topk_mask_and_shape_reference,
    vocab_stats_reference,
)

B, L, V, BLOCK = 4, 6, 200, 64


def _batch(device, dtype=torch.bfloat16, ratio_noise=0.5):
    """A small batch with padding, a loss mask, and ratios spread across both clip boundaries."""
    logits = (torch.randn(B, L, V, device=device) * 2.0).to(dtype)
    ids = torch.randint(0, V, (B, L), device=device)
    resp = torch.ones(B, L, device=device, dtype=torch.bool)
    resp[0, 4:] = False
    resp[2, 1:] = False
    logp = vocab_stats_reference(logits.double(), ids, temperature=0.8).logprob.float()
    old = logp + ratio_noise * torch.randn(B, L, device=device)
    return {
        "logits": logits,
        "target_ids": ids,
        "old_logprobs": old,
        "advantages": torch.tensor([1.5, -2.0, 0.7, -0.4], device=device),
        "loss_mask": resp & (torch.rand(B, L, device=device) > 0.3),
        "token_weights": resp.float(),
        "normalizer": resp.sum().float(),
    }


FULL = dict(beta=0.05, entropy_coef=0.01, nll_coef=0.06, eps_low=0.2, eps_high=0.28, dual_clip=1.5, temperature=0.8)


def _run(fn, batch, dtype=None, **kw):
    logits = batch["logits"].detach().clone()
    if dtype is not None:
        logits = logits.to(dtype)
    logits.requires_grad_(True)
    loss, stats = fn(**{**batch, "logits": logits}, **kw)
    loss.backward()
    return loss.detach().double(), logits.grad.double(), stats


def _full_kwargs(batch, device):
    ref = batch["old_logprobs"] + 0.1 * torch.randn(B, L, device=device)
    return {**FULL, "ref_logprobs": ref, "advantage_scale": torch.tensor([1.1, 0.9, 1.0, 1.2], device=device)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_three_way_bf16(device):
    batch = _batch(device)
    kw = _full_kwargs(batch, device)
    loss64, grad64, st64 = _run(masked_grpo_loss_reference, batch, dtype=torch.float64, **kw)
    loss16, grad16, _ = _run(masked_grpo_loss_reference, batch, compute_dtype=torch.bfloat16, **kw)
    loss_t, grad_t, st_t = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, **kw)
    assert st64["clip_frac"] > 0 and st64["dual_clip_frac"] > 0  # every branch is exercised
    err_t, err16 = _rel(loss_t, loss64), _rel(loss16, loss64)
    assert err_t <= 1e-5 and err_t <= 2 * err16, (err_t, err16)
    gerr_t, gerr16 = _rel(grad_t, grad64), _rel(grad16, grad64)
    assert gerr_t <= 4e-3 and gerr_t <= 2 * gerr16, (gerr_t, gerr16)
    for name in ("clip_frac", "dual_clip_frac"):
        assert st_t[name].item() == st64[name].item(), name
    for name in ("kl", "entropy"):
        assert abs(st_t[name].item() - st64[name].item()) <= 1e-5, name


def test_fp32_tight(device):
    batch = _batch(device, dtype=torch.float32)
    kw = _full_kwargs(batch, device)
    loss64, grad64, _ = _run(masked_grpo_loss_reference, batch, dtype=torch.float64, **kw)
    loss_t, grad_t, _ = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, **kw)
    assert _rel(loss_t, loss64) <= 1e-6
    assert _rel(grad_t, grad64) <= 1e-6


def test_masked_tokens_get_zero_gradient(device):
    batch = _batch(device, dtype=torch.float32)
    _, grad, _ = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, **_full_kwargs(batch, device))
    pad = batch["token_weights"] == 0
    assert torch.all(grad[pad] == 0)
    assert torch.all(grad[~pad].abs().sum(-1) > 0)  # all-token terms reach every valid token
    # Without all-token terms, tokens outside the loss mask get exactly zero gradient too
    # (ratio 1 here, so no token inside the mask is clipped to zero gradient).
    batch = _batch(device, dtype=torch.float32, ratio_noise=0.0)
    _, grad, _ = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, dual_clip=3.0, temperature=0.8)
    off = batch["loss_mask"] == 0
    assert torch.all(grad[off] == 0)
    assert torch.all(grad[~off].abs().sum(-1) > 0)


def test_rho_one_equals_unmasked_loss(device):
    batch = _batch(device, dtype=torch.float32)
    resp = batch["token_weights"].bool()
    topk = segmented_topk_mask_and_shape_reference(torch.rand(B, L, device=device), resp, rho=1.0)
    kw = _full_kwargs(batch, device)
    for fn in (masked_grpo_loss_reference, masked_grpo_loss_triton):
        loss_a, grad_a, _ = _run(fn, {**batch, "loss_mask": topk.token_mask}, **kw)
        loss_b, grad_b, _ = _run(fn, {**batch, "loss_mask": resp}, **kw)
        assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


def test_ratio_one_is_reinforce(device):
    # old = current log-probs -> r = 1 inside the clip range, so d loss / d logits_tj =
    # -A_t m_t w_t / Z * (onehot_j - p_tj) / T.
    batch = _batch(device, dtype=torch.float32, ratio_noise=0.0)
    temperature = 0.8
    batch["old_logprobs"] = vocab_stats_reference(batch["logits"], batch["target_ids"], temperature=0.8).logprob
    _, grad, stats = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, temperature=temperature)
    p = torch.softmax(batch["logits"].double() / temperature, dim=-1)
    onehot = torch.nn.functional.one_hot(batch["target_ids"], V).double()
    coef = -batch["advantages"][:, None] * batch["loss_mask"] * batch["token_weights"] / batch["normalizer"]
    want = coef.double()[..., None] * (onehot - p) / temperature
    assert (grad - want).abs().max().item() <= 1e-6 * want.abs().max().item()
    assert stats["clip_frac"].item() == 0.0


def test_hand_computed(device):
    # Two-way vocabulary, uniform logits: p = (1/2, 1/2), log p(y) = -ln 2, H = ln 2, T = 1.
    # Token a: A = +1, r = 1.5 -> max(-1.5, -1.2) = -1.2 (PPO-clipped, zero grad)
    # Token b: A = -1, r = 1.5 -> max(1.5, 1.2) = 1.5 -> dual clip c = 1.4: min(1.5, 1.4) = 1.4 (zero grad)
    # Token c: A = -1, r = 0.5 -> max(0.5, 0.8) = 0.8 (PPO-clipped, zero grad)
    # Token d: A = +2, r = 1   -> -2, d/dlogp = -A r = -2; y = 1: onehot - p = (-1/2, 1/2)
    # Z = 4: loss = (-1.2 + 1.4 + 0.8 - 2) / 4 = -0.25; grad_d = -2 / 4 * (-1/2, 1/2) = (0.25, -0.25).
    # Entropy bonus 0.1 subtracts 0.1 * ln 2 * 4 / 4; its gradient is 0 at the uniform distribution.
    ln2 = math.log(2.0)
    logits = torch.zeros(4, 2, device=device)
    old = torch.tensor([-ln2 - math.log(1.5), -ln2 - math.log(1.5), -ln2 - math.log(0.5), -ln2], device=device)
    batch = {
        "logits": logits,
        "target_ids": torch.tensor([0, 0, 1, 1], device=device),
        "old_logprobs": old,
        "advantages": torch.tensor([1.0, -1.0, -1.0, 2.0], device=device),
        "loss_mask": torch.ones(4, device=device),
        "token_weights": torch.ones(4, device=device),
        "normalizer": 4.0,
    }
    kw = dict(eps_low=0.2, eps_high=0.2, dual_clip=1.4, entropy_coef=0.1)
    want_grad = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.25, -0.25]], dtype=torch.float64)
    for impl in ("torch", "triton"):
        loss, grad, stats = _run(masked_grpo_loss, batch, impl=impl, **kw)
        assert loss.item() == pytest.approx(-0.25 - 0.1 * ln2, abs=1e-6), impl
        torch.testing.assert_close(grad.cpu(), want_grad, atol=1e-6, rtol=0)
        assert stats["clip_frac"].item() == pytest.approx(0.5) and stats["dual_clip_frac"].item() == 0.25
        assert stats["entropy"].item() == pytest.approx(ln2, abs=1e-6)


def test_k3_kl_term_hand_value(device):
    # ref = log p + ln 2 -> delta = ln 2, kl = e^(ln 2) - ln 2 - 1 = 1 - ln 2 per token; A = 0.
    logits = torch.randn(3, 10, device=device)
    ids = torch.tensor([1, 4, 7], device=device)
    logp = vocab_stats_reference(logits, ids).logprob
    args = (logits, ids, logp, torch.zeros(3, device=device), torch.ones(3, device=device))
    for impl in ("torch", "triton"):
        loss, stats = masked_grpo_loss(*args, torch.ones(3, device=device), 3.0, ref_logprobs=logp + math.log(2.0),
                                       beta=0.5, impl=impl)  # fmt: skip
        assert loss.item() == pytest.approx(0.5 * (1 - math.log(2.0)), abs=1e-6), impl
        assert stats["kl"].item() == pytest.approx(1 - math.log(2.0), abs=1e-6), impl


@pytest.mark.parametrize("s", [30.0, 50.0])
def test_torch_objective_and_fused_agree_beyond_the_clamps(device, s):
    # Rows A = (1, -1, 0); token 0 has log r = s and ref = log p + s, token 1 log r = 0.1 and ref = log p.
    # token 0 (log r clamped to 20): A = 1 -> -1.28 (clip-higher); A = -1 -> e^20 = 485165195.4; A = 0 -> 0;
    #   k3: d = s clamped to 20, e^20 - 21 clamped to 10; every term there has zero gradient.
    # token 1: -A e^0.1 = -1.105171, 1.105171, 0; k3 = 0.
    # beta = 0.1, Z = 6: loss = (-1.28 + 485165195.4 + 0 + 0 + 3 * 0.1 * 10) / 6 = 80860866.0
    from vrl.methods.kl import k3
    from vrl.methods.policy_loss import ppo_clip

    logits = torch.randn(3, 2, 7, device=device)
    ids = torch.randint(0, 7, (3, 2), device=device)
    logp = vocab_stats_reference(logits, ids).logprob
    old = logp - torch.tensor([s, 0.1], device=device)
    ref = logp + torch.tensor([s, 0.0], device=device)
    adv, ones = torch.tensor([1.0, -1.0, 0.0], device=device), torch.ones(3, 2, device=device)

    x = logits.clone().requires_grad_(True)  # the torch path: vrl.methods' pure functions
    lp = torch.log_softmax(x, -1).gather(-1, ids[..., None]).squeeze(-1)
    pg, _ = ppo_clip(lp, old, adv, 0.2, 0.28)
    torch_loss = (pg + 0.1 * k3(lp, ref)).sum() / 6.0
    torch_loss.backward()
    torch.testing.assert_close(torch_loss.detach(), torch.tensor(80860866.0, device=device))
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for impl in ("torch", "triton"):
        loss, grad, _ = _run(masked_grpo_loss, {"logits": logits, "target_ids": ids, "old_logprobs": old,
                                               "advantages": adv, "loss_mask": ones, "token_weights": ones,
                                               "normalizer": 6.0}, ref_logprobs=ref, beta=0.1,
                             eps_low=0.2, eps_high=0.28, impl=impl)  # fmt: skip
        torch.testing.assert_close(loss.float(), torch_loss.detach(), msg=impl)
        torch.testing.assert_close(grad.float(), x.grad, msg=impl)


def test_seq_mean_token_mean_is_expressible(device):
    # w = response_mask / L_valid, Z = number of sequences -> mean_i (mean_t over valid tokens of loss_t).
    batch = _batch(device, dtype=torch.float32, ratio_noise=0.0)
    batch["old_logprobs"] = vocab_stats_reference(batch["logits"], batch["target_ids"], temperature=0.8).logprob
    resp = batch["token_weights"]
    weights = resp / resp.sum(-1, keepdim=True)
    per_token = -batch["advantages"][:, None] * batch["loss_mask"]  # pg at r = 1
    want = ((per_token * resp).sum(-1) / resp.sum(-1)).mean()
    for fn in (masked_grpo_loss_reference, masked_grpo_loss_triton):
        loss, _ = fn(**{**batch, "token_weights": weights, "normalizer": float(B)}, temperature=0.8)
        assert loss.item() == pytest.approx(want.item(), abs=1e-6)


def test_per_sequence_advantages_and_flat_tokens(device):
    batch = _batch(device, dtype=torch.float32)
    kw = _full_kwargs(batch, device)
    loss_seq, grad_seq, _ = _run(masked_grpo_loss_triton, batch, block_v=BLOCK, **kw)
    adv_tok = (batch["advantages"] * kw.pop("advantage_scale"))[:, None].expand(B, L)
    flat = {k: (v.reshape(B * L, *v.shape[2:]) if torch.is_tensor(v) and v.dim() >= 2 else v) for k, v in batch.items()}
    flat["advantages"] = adv_tok.reshape(-1)
    kw["ref_logprobs"] = kw["ref_logprobs"].reshape(-1)
    loss_flat, grad_flat, _ = _run(masked_grpo_loss_triton, flat, block_v=BLOCK, **kw)
    assert torch.allclose(loss_flat, loss_seq, rtol=1e-6, atol=0)
    assert torch.allclose(grad_flat.reshape(B, L, V), grad_seq, rtol=1e-6, atol=1e-9)


def test_entropy_coef_sign_is_a_bonus(device):
    batch = _batch(device, dtype=torch.float32)
    loss0, _ = masked_grpo_loss_triton(**batch, temperature=0.8)
    loss1, stats = masked_grpo_loss_triton(**batch, temperature=0.8, entropy_coef=0.5)
    # loss(c) - loss(0) = -c * sum_t w_t H_t / Z = -c * mean entropy (w = response mask, Z = token count)
    assert (loss1 - loss0).item() == pytest.approx(-0.5 * stats["entropy"].item(), rel=1e-5)


def test_argument_checks():
    x = torch.randn(2, 5)
    args = (
        x,
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2),
        torch.ones(2),
        torch.ones(2),
        torch.ones(2),
        2.0,
    )
    with pytest.raises(ValueError, match="ref_logprobs"):
        masked_grpo_loss(*args, beta=0.1)
    with pytest.raises(ValueError, match="dual_clip"):
        masked_grpo_loss(*args, dual_clip=0.5)
    with pytest.raises(ValueError, match="per sequence"):
        masked_grpo_loss(*args[:3], torch.ones(3), *args[4:])
