"""``+method=rollout_correction`` with the HF sampler's own log-probs (``sampler.logprobs=true``): the hook hands
them aside, the loop scores the learner's teacher-forced pass, and the truncated-IS weights come out ~1 in fp32."""

from __future__ import annotations

import lightning as L

from vrl.build import build_module, build_trainer

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


def test_hf_sampling_logprobs_feed_the_correction(compose, tiny_overrides, monkeypatch):
    import vrl.lit.rl_module as loop

    calls = []
    real = loop.score_logprobs
    monkeypatch.setattr(loop, "score_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    overrides = ["sampler.logprobs=true", "+method=rollout_correction", "trainer.max_steps=1", LENGTH_REWARD]
    cfg = compose(tiny_overrides + overrides + ["trainer.limit_val_batches=0"])
    L.seed_everything(cfg.seed, verbose=False)
    module, trainer = build_module(cfg), build_trainer(cfg)
    trainer.fit(module)
    assert calls == [1]  # without the hook, sampler.logprobs=true skips this pass (tests/sampler/test_hf.py)
    m = trainer.callback_metrics
    # generate's logits vs the teacher-forced pass of the same weights: fp32 numerics (LOG 2026-12-05: ~1e-6)
    assert float(m["rollout_correction/logp_diff_abs_max"]) < 1e-4
    assert abs(float(m["rollout_correction/ratio_mean"]) - 1) < 1e-4
    assert float(m["rollout_correction/clipped_frac"]) == 0
