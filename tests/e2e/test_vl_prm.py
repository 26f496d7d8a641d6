"""+method=vl_prm: a PRM scores every RL response as a reward term (the tiny VLM as PRM, offline)."""

from __future__ import annotations

import lightning as L

from vrl.build import build_module, build_trainer


def test_vl_prm_adds_the_prm_score_as_a_reward_term(compose, tiny_overrides):
    cfg = compose([*tiny_overrides, "+method=vl_prm", "trainer.max_steps=1", "trainer.limit_val_batches=0"])
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module)
    m = trainer.callback_metrics
    assert 0.0 < float(m["reward/prm_mean"]) < 1.0  # P(+) of each response as one step
    # reward = accuracy (0 for the random policy) + 0.5 * P(+)
    assert (
        abs(float(m["rollout/reward_mean"]) - (float(m["reward/accuracy_mean"]) + 0.5 * float(m["reward/prm_mean"])))
        < 1e-5
    )
