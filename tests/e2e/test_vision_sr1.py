"""The Vision-SR1 preset trains end to end on the tiny offline VLM: v1 (summed reward) and v2 (decoupled span
advantages), with the policy itself as pass 2's judge (bound, not copied)."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.methods.vision_sr1 import SeeThinkFormat

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


def test_warm_start_fits_both_passes_then_rl_runs_pass_2(compose, tiny_overrides):
    cfg = compose(
        [*tiny_overrides, "experiment=vision_sr1_self_reward"]  # with method=vision_sr1 and the warm start
        + ["trainer.max_steps=3", "hooks.curriculum.stages.warm.after_steps=2", "sampler.max_new_tokens=4"]
        + ["reward.visual.judge.max_new_tokens=4", "callbacks.image_use=null", "callbacks.curriculum_check=null"]
        + ["trainer.val_check_interval=1000"]  # no validation (its greedy rows would go through pass 2 too)
    )
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module)
    assert trainer.global_step == 3  # 2 SFT steps, then 1 RL step
    curriculum = module.hooks.hooks[module.hooks.names.index("curriculum")]
    kept = curriculum.kept[0]
    n = len(curriculum.stages[0].data.sources[0])  # the mixture: the run's rows, then their pass-2 twins
    assert len(kept) == 2 * n and kept[0][0] == 0 and kept[n][0] == n
    target = kept[0][1]
    assert target == kept[n][1]  # pass 2's row of the same scene has the same target
    meta = json.loads(curriculum.stages[0].data[0]["meta"])["target"][0]
    answer = curriculum.stages[0].data[0]["answer"]
    expected = f"<description>a {meta['color']} {meta['shape']}</description><think>{answer}</think>\\boxed{{{answer}}}"
    assert target == expected and SeeThinkFormat()([target], [{}]) == [1.0]
    metrics = trainer.callback_metrics
    assert float(metrics["reward/visual/samples"]) == 8.0  # the RL step: B * G = 2 * 4 responses through pass 2
