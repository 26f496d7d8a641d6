"""The Perception-R1 preset trains end to end on the tiny offline VLM (rule judge, synthetic rows)."""

from __future__ import annotations

import math

import torch

from vrl.build import build_module, build_trainer

# a random policy's rewards can tie within every group (zero advantages, no update); a length term whose value
# varies per sample guarantees a gradient, as in test_train.py
LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


def test_perception_r1_preset_trains_two_steps(compose, tiny_overrides):
    import lightning as L

    cfg = compose([*tiny_overrides, "+method=perception_r1", LENGTH_REWARD])
    assert cfg.policy_loss.eps_high == 0.3 and cfg.policy_loss.dual_clip == 3.0 and not cfg.kl
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    assert set(module.reward.terms) == {"accuracy", "format", "visual", "repetition", "length"}
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2
    for name in ("visual", "repetition", "format", "accuracy"):
        assert math.isfinite(float(metrics[f"reward/{name}_mean"]))
    assert 0.0 <= float(metrics["reward/visual_mean"]) < 1.0
    assert math.isfinite(float(metrics["train/grad_norm"]))
    # the synthetic rows carry scene graphs, so every sample was judged (none lacked annotations)
    stats = module.reward.terms["visual"].pop_stats()
    assert stats["reward/visual/samples"] > 0 and stats["reward/visual/no_annotations"] == 0
    unchanged = [n for n, p in module.policy.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters did not change: {unchanged[:5]}"
