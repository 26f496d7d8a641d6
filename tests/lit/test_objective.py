"""The micro-batch objective on the real tiny VLM: plain torch vs the fused vrl_kernels path (K3)."""

from __future__ import annotations

import pytest
import torch

from vrl.lit.loss import Objective
from vrl.methods.kl import K2, K3
from vrl.methods.loss_agg import SeqMeanTokenMean, TokenMean
from vrl.methods.policy_loss import GSPO, PPOClip
from vrl.models.scoring import response_logits, response_targets, token_stats
from vrl.sampler.hf import HFSampler, suppressed_token_ids


@pytest.fixture(scope="module")
def scored():
    from vrl.data.synthetic import build_synthetic
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    torch.manual_seed(0)
    vlm = load_vlm("tiny:qwen2_5_vl", tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())
    data = build_synthetic(tasks=["color", "count"], formats=["open"], num_samples=2, image_size=56, progress=False)
    rollout = HFSampler(group_size=2, max_new_tokens=3).generate(vlm, [data[0], data[1]])
    n, length = rollout.response_mask.shape
    suppress = suppressed_token_ids(vlm.processor.tokenizer)
    with torch.no_grad():
        logits = response_logits(vlm.model, rollout, 1.0, suppress)
        current = token_stats(logits, response_targets(rollout))[0]
    g = torch.Generator().manual_seed(1)
    rollout.advantages = torch.tensor([1.0, -0.5, 0.25, -2.0])
    # old and ref log-probs away from the current ones, so clipping, dual clip and KL all act
    rollout.old_logprobs = (current + 0.5 * torch.randn(n, length, generator=g)) * rollout.response_mask
    rollout.ref_logprobs = (current + 0.3 * torch.randn(n, length, generator=g)) * rollout.response_mask
    rollout.loss_mask = (torch.rand(n, length, generator=g) > 0.3).float() * rollout.response_mask
    return vlm, rollout, suppress


AGGS = {"token_mean": TokenMean(), "seq_mean_token_mean": SeqMeanTokenMean()}


def _loss_and_grads(vlm, rollout, suppress, impl, mode, dual_clip=3.0):
    objective = Objective(
        policy_loss=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=dual_clip),
        loss_agg=AGGS[mode],
        kl=K3(0.1),
        entropy_coef=0.01,
        nll_coef=0.05,
        kernel_impl=impl,
        suppress_ids=suppress,
    )
    vlm.model.zero_grad(set_to_none=True)
    normalizer = objective.loss_agg.normalizer(rollout.response_mask)
    loss, stats, _ = objective(vlm.model, rollout, normalizer)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}
    return loss.detach(), stats, grads


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("impl", ["auto", "triton"])
def test_fused_kernel_path_matches_plain_torch(scored, impl, mode):
    vlm, rollout, suppress = scored
    ref_loss, ref_stats, ref_grads = _loss_and_grads(vlm, rollout, suppress, "torch", mode)
    loss, stats, grads = _loss_and_grads(vlm, rollout, suppress, impl, mode)
    assert ref_loss.abs() > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)  # fp32 logits on both paths
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("clipped_sum", "kl_sum", "entropy_sum", "tokens"):
        torch.testing.assert_close(torch.as_tensor(stats[key]).float(), torch.as_tensor(ref_stats[key]).float())


@pytest.mark.parametrize("s", [30.0, 50.0])
def test_fused_and_torch_paths_agree_beyond_the_log_ratio_clamps(scored, s):
    # Every other token gets old = current - s and ref = current + s: log r = s and d = s, both past the +-20
    # clamp (k3 past its cap of 10), where every term is constant. No dual clip, so a token with A < 0 keeps
    # -A e^20 (unclamped: -A e^s). Both paths must give the same finite loss and gradient (before the fix the
    # fused path used exp(s) unclamped and the two disagreed).
    from dataclasses import replace

    vlm, rollout, suppress = scored
    far = torch.zeros_like(rollout.response_mask)
    far[:, ::2] = s
    far = far * rollout.response_mask
    shifted = replace(rollout, old_logprobs=rollout.old_logprobs - far, ref_logprobs=rollout.ref_logprobs + far)
    ref_loss, _, ref_grads = _loss_and_grads(vlm, shifted, suppress, "torch", "token_mean", dual_clip=None)
    loss, _, grads = _loss_and_grads(vlm, shifted, suppress, "triton", "token_mean", dual_clip=None)
    assert torch.isfinite(ref_loss) and all(torch.isfinite(g).all() for g in ref_grads.values())
    torch.testing.assert_close(loss, ref_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], msg=name)


def test_unfusable_choices_stop_at_construction():
    with pytest.raises(ValueError, match="kernels.impl=triton .*policy_loss is GSPO: use kernels=torch"):
        Objective(GSPO(eps_low=3e-4, eps_high=4e-4), TokenMean(), kernel_impl="triton")
    with pytest.raises(ValueError, match="kernels.impl=auto .*kl is K2: use kernels=torch"):
        Objective(PPOClip(), TokenMean(), kl=K2(0.1), kernel_impl="auto")
    Objective(PPOClip(), TokenMean(), kl=K2(0.0), kernel_impl="auto")  # a KL with coef 0 is never computed


def test_empty_kl_node_means_no_kl():
    # conf/kl/none.yaml composes to an empty node, which objective.kl=${kl} passes on
    assert Objective(PPOClip(), TokenMean(), kl={}).kl is None
    with pytest.raises(ValueError, match="objective.kl"):
        Objective(PPOClip(), TokenMean(), kl={"coef": 0.1})


def test_masked_tokens_get_zero_policy_gradient():
    # one sequence, three tokens, only the middle one carries the PG term; no KL/entropy/nll terms
    logits = torch.randn(1, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, 2, 3]])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    from vrl.methods.policy_loss import ppo_clip

    pg, _ = ppo_clip(logp, logp.detach() + 0.1, torch.tensor([1.5]), 0.2, 0.28)
    loss_mask = torch.tensor([[0.0, 1.0, 0.0]])
    agg = TokenMean()
    agg(pg * loss_mask, torch.ones(1, 3), agg.normalizer(torch.ones(1, 3))).backward()
    assert torch.count_nonzero(logits.grad[0, 0]) == 0
    assert torch.count_nonzero(logits.grad[0, 2]) == 0
    assert torch.count_nonzero(logits.grad[0, 1]) > 0
