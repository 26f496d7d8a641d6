"""The CogFlow preset trains end to end on the tiny offline VLM: geometry diagrams, averaged visual rewards, the
perception gate in every rollout; with the perception masked out of the gradient too."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.methods.vgpo import VGPOSampler

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"  # a per-sample spread: a gradient


@pytest.mark.parametrize("train_perception", [True, False])
def test_cogflow_trains_two_steps(compose, tiny_overrides, train_perception):
    cfg = compose(
        [*tiny_overrides, "+method=cogflow", "sampler.perception_tokens=3", "sampler.max_new_tokens=3"]
        + ["data.train.image_size=56", LENGTH_REWARD, f"hooks.perception_mask.train_perception={train_perception}"]
    )
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    assert isinstance(module.sampler, VGPOSampler) and module.sampler.tau == 0.75 and module.sampler.max_tries == 3
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    for name in ("vpr", "vsr", "format", "accuracy"):
        assert math.isfinite(float(metrics[f"reward/{name}_mean"]))
    tries, accepted = float(metrics["vgpo/tries_mean"]), float(metrics["vgpo/accepted_frac"])
    assert 1.0 <= tries <= 3.0 and 0.0 <= accepted <= 1.0  # the gate ran in the training rollouts
    assert accepted == 1.0 or tries > 1.0  # a sequence left below tau was drawn K = 3 times
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters() if p.requires_grad)
