"""The Vision-SR1 preset trains end to end on the tiny offline VLM: v1 (summed reward) and v2 (decoupled span
advantages), with the policy itself as pass 2's judge (bound, not copied)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"  # a per-sample spread: a gradient


@pytest.mark.parametrize("advantage", ["group_zscore", "decoupled_spans"])
def test_vision_sr1_trains_two_steps(compose, tiny_overrides, advantage):
    cfg = compose(
        [*tiny_overrides, "+method=vision_sr1", f"advantage={advantage}", "sampler.max_new_tokens=6", LENGTH_REWARD]
        + ["reward.visual.judge.max_new_tokens=4", "kl.coef=0.01"]
    )
    assert cfg.reward.format.weight == 0.1 and cfg.reward.accuracy.weight == 0.9 and cfg.reward.visual.weight == 1.0
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    assert trainer.global_step == 2
    judge = module.reward.terms["visual"].judge
    assert judge.model is module.policy and len(module.judges) == 0  # the policy judges itself: no copy registered
    metrics = trainer.callback_metrics
    for name in ("visual", "format", "accuracy"):
        assert math.isfinite(float(metrics[f"reward/{name}_mean"]))
    assert float(metrics["reward/visual/samples"]) == 8.0  # B * G = 2 * 4 rollouts scored by pass 2 at the last step
    assert math.isfinite(float(metrics["train/grad_norm"]))
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters() if p.requires_grad)
