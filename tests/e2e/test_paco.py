"""The PaCo preset trains end to end: accuracy + the tiny offline judge's pairwise consistency, log-tamed."""

from __future__ import annotations

import math

import lightning as L
import torch

from vrl.build import build_module, build_trainer
from vrl.methods.multi_reward import LogTame


def test_paco_trains_two_steps(compose, tiny_overrides):
    cfg = compose([*tiny_overrides, "+method=paco"])
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    assert isinstance(module.advantage, LogTame) and module.reward.terms["consistency"].weight == 0.2
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    value = float(metrics["reward/consistency_mean"])
    assert 0.0 < value < 1.0  # every response has 3 group mates: a real readout, never exactly 0 or 1
    assert float(metrics["reward/consistency/no_pairs"]) == 0.0 and math.isfinite(float(metrics["train/grad_norm"]))
    assert "reward__terms__consistency__judge" in module.judges
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters() if p.requires_grad)
