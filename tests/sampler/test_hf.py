"""HFSampler's optional sampling log-probs: equal to the teacher-forced pass, and the passes they save."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import torch

from vrl.build import build_module
from vrl.models.scoring import score_logprobs
from vrl.sampler.hf import suppressed_token_ids


def _module(compose, overrides):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    module.objective.suppress_ids = suppressed_token_ids(module.vlm.processor.tokenizer)  # setup() sets it in a run
    return module


def test_sampler_logprobs_equal_the_teacher_forced_pass(compose, tiny_overrides):
    module = _module(compose, tiny_overrides + ["sampler.logprobs=true", "sampler.temperature=0.7"])
    rows = [module.train_data[i] for i in range(2)]
    rollout = module.sampler.generate(module.vlm, rows)
    mask = rollout.response_mask
    assert rollout.old_logprobs is not None and rollout.old_logprobs.shape == mask.shape
    scored = score_logprobs(module.policy, rollout, 0.7, 8, suppress_ids=module.objective.suppress_ids)
    # the same distribution (logits / 0.7, vision tokens masked), computed by generate's forward with a KV cache
    # and by one teacher-forced forward: fp32 numerics only (LOG 2026-12-05: max |diff| ~1e-6 on this model)
    torch.testing.assert_close(rollout.old_logprobs[mask > 0], scored[mask > 0], rtol=0, atol=1e-4)
    assert bool((rollout.old_logprobs[mask == 0] == 0).all())
    assert (rollout.old_logprobs[mask > 0] < 0).all()  # log-probs of sampled tokens, not zeros
    assert module.sampler.generate(module.vlm, rows, greedy=True).old_logprobs is None  # validation: not needed


def test_the_loop_and_vppo_skip_the_passes_the_sampler_made(compose, tiny_overrides, monkeypatch):
    import vrl.lit.rl_module as loop

    module = _module(compose, tiny_overrides + ["+method=vppo", "sampler.logprobs=true", "update.ppo_epochs=2"])
    calls = []
    real = loop.score_logprobs
    monkeypatch.setattr(loop, "score_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    rollout = module.sampler.generate(module.vlm, [module.train_data[i] for i in range(2)])
    given = rollout.old_logprobs.clone()
    ctx = module.context()
    module.score_passes(rollout, ctx)
    assert calls == []  # two PPO epochs need old log-probs; the sampler's are used, no teacher-forced pass
    assert torch.equal(rollout.old_logprobs, given)
    # VPPO then scores the perturbed images only (one pass of N, not the paired pass of 2N)
    seen = []
    scorer_score = ctx.score
    one_pass = replace(ctx, score=lambda r, **k: seen.append(r.num_sequences) or scorer_score(r, **k))
    hook = next(h for h in module.hooks.hooks if type(h).__name__ == "VPPO")
    out = hook.extra_pass(rollout, one_pass)
    assert seen == [rollout.num_sequences] and out.old_logprobs is None
