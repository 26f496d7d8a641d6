"""End to end on the tiny offline VLM: the real loop, real Lightning, real transformers model."""

from __future__ import annotations

import math

import torch

from vrl.build import build_module, build_trainer

# a random policy almost never answers correctly, so tests that need a gradient add a length term whose
# value varies per sample: non-zero advantages, hence a non-zero gradient, are then guaranteed
LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


def _fit(compose, overrides):
    import lightning as L

    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    return cfg, module, trainer


def test_two_steps_move_every_trainable_parameter(compose, tiny_overrides):
    cfg, module, trainer = _fit(compose, tiny_overrides + [LENGTH_REWARD])
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer.fit(module)
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/grad_norm"]))
    assert "val/reward" in metrics
    assert float(metrics["train/grad_norm"]) > 0
    unchanged = [n for n, p in module.policy.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters did not change: {unchanged[:5]}"


def test_kl_term_loads_a_frozen_reference_that_does_not_move(compose, tiny_overrides):
    cfg, module, trainer = _fit(compose, tiny_overrides + ["+method=grpo", "trainer.max_steps=1", LENGTH_REWARD])
    trainer.fit(module)
    ref = module.reference  # a registered submodule: Lightning placed it with the policy
    assert all(not p.requires_grad for p in ref.parameters())
    assert {p.device for p in ref.parameters()} == {module.device}
    policy_state = dict(module.policy.named_parameters())
    moved = [n for n, p in ref.named_parameters() if not torch.equal(p, policy_state[n])]
    assert moved, "the policy should have moved away from the reference"
    assert "policy/kl_ref" in trainer.callback_metrics
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # what a checkpoint holds: trainable weights only, no reference
    assert checkpoint["state_dict"] and not any(k.startswith("reference.") for k in checkpoint["state_dict"])


def test_same_seed_same_numbers(compose, tiny_overrides):
    runs = []
    for _ in range(2):
        _, module, trainer = _fit(compose, tiny_overrides + ["trainer.max_steps=1", "trainer.limit_val_batches=0"])
        trainer.fit(module)
        runs.append({n: p.detach().clone() for n, p in module.policy.named_parameters()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
