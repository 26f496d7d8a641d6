"""The RACRO preset trains end to end on the tiny offline VLM with the tiny offline reasoner (built from config,
registered with the module)."""

from __future__ import annotations

import math

import lightning as L
import torch

from vrl.build import build_module, build_trainer

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"  # a per-sample spread: a gradient


def test_racro_trains_two_steps(compose, tiny_overrides):
    cfg = compose([*tiny_overrides, "+method=racro", "reward.caption.reasoner.max_new_tokens=4", LENGTH_REWARD])
    assert cfg.sampler.group_size == 4 and cfg.kl.coef == 1.0e-3
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    assert trainer.global_step == 2
    reasoner = module.reward.terms["caption"].reasoner
    assert module.judges["reward__terms__caption__reasoner"] is reasoner.module()  # registered, frozen
    assert all(not p.requires_grad for p in reasoner.module().parameters())
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["reward/caption_mean"]))
    assert float(metrics["reward/caption/samples"]) == 8.0  # B * G captions at the last step
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters() if p.requires_grad)
