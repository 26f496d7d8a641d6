"""Tool presets train on the tiny VLM: `zoom`, `ergo`, `vacot`, `visrl_online` on the zoom task, sampled and
scripted (real tool calls through the whole loop), and the VPPO stack."""

from __future__ import annotations

import math

import lightning as L
import pytest

from vrl.build import build_module, build_trainer
from vrl.sampler.scripted import ScriptedTurns

SMALL = ["data=zoom", "data.train.num_samples=8", "sampler.max_new_tokens=8", "sampler.max_total_tokens=64"]
CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 56, 56]}}</tool_call>'


class Capture(L.Callback):
    def __init__(self):
        self.metrics = []

    def on_train_batch_end(self, trainer, *args):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(compose, overrides, script=None):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    if script is not None:  # the same scripted turns for every prompt (training and validation batches)
        module.sampler.logits_processor = ScriptedTurns(module.vlm.processor.tokenizer, [script] * 64)
    cap = Capture()
    build_trainer(cfg, callbacks=[cap]).fit(module)
    return cap.metrics


@pytest.mark.parametrize("preset", ["zoom", "ergo", "vacot", "visrl_online"])
def test_tool_presets_train_a_few_steps(compose, tiny_overrides, preset):
    extra = {"ergo": ["data.train.instruction=zoom"], "visrl_online": ["data.train.instruction=box01"]}.get(preset, [])
    metrics = _fit(compose, tiny_overrides + SMALL + extra + [f"+method={preset}", "trainer.limit_val_batches=0"])
    last = metrics[-1]
    assert len(metrics) == 2 and math.isfinite(last["train/loss"])
    for key in ["tools/calls_per_traj", "tools/invalid_rate", "tools/turns_mean", "tools/observation_tokens_mean"]:
        assert key in last
    assert last["tools/turns_mean"] >= 1.0


def test_scripted_tool_calls_flow_through_the_loop(compose, tiny_overrides):
    # a scripted policy always zooms into the top-left 56 x 56 of the 224 x 224 overview, then answers red: every
    # trajectory has one valid call, an observation (16 image tokens, masked) and an answer
    over = tiny_overrides + SMALL + ["+method=zoom", "sampler.max_new_tokens=64", "sampler.max_total_tokens=256"]
    metrics = _fit(compose, over + ["trainer.limit_val_batches=0"], script=[CALL, "<answer>red</answer>"])
    last = metrics[-1]
    assert last["tools/calls_per_traj"] == 1.0 and last["tools/invalid_rate"] == 0.0
    assert last["tools/turns_mean"] == 2.0 and last["tools/answered_frac"] == 1.0
    # 224 / 4 = 56 px of the 448 canvas -> a 112 x 112 crop, enlarged 2x to 224 x 224 (50176 px): 8 x 8 = 64
    # image tokens + 12 template tokens around them = 76 observation tokens per trajectory
    assert last["tools/observation_tokens_mean"] == 76.0
    assert last["reward/tool_format_mean"] == 1.0 and math.isfinite(last["train/loss"])


def test_zoom_stacks_with_vppo(compose, tiny_overrides):
    over = tiny_overrides + SMALL + ["+method=[zoom,vppo]", "sampler.max_new_tokens=64", "sampler.max_total_tokens=256"]
    # scripted trajectories are identical within a group, which VPPO's accuracy filter would drop: no filter here
    over += ["~hooks.dynamic_sampling", "update.max_empty_steps=1", "trainer.limit_val_batches=0"]
    metrics = _fit(compose, over, script=[CALL, "<answer>red</answer>"])
    # blackening patches of the prompt image and of the crop changes the answer turn's log-probs
    assert metrics[-1]["vppo/dependency_mean"] > 0 and metrics[-1]["tools/calls_per_traj"] == 1.0


@pytest.mark.slow
def test_a_multi_turn_run_resumes_exactly(compose, tiny_overrides, tmp_path):
    import torch

    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += SMALL + ["+method=zoom", "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"]
    base += ["ckpt_every=1", "trainer.limit_val_batches=0"]
    keys = ["rollout/reward_mean", "train/grad_norm", "tools/turns_mean", "tools/observation_tokens_mean"]

    def run(out, steps, ckpt=None):
        cfg = compose(
            base + [f"output_dir={out}", f"trainer.max_steps={steps}"] + ([f"ckpt_path={ckpt}"] if ckpt else [])
        )
        L.seed_everything(cfg.seed, verbose=False)
        module, cap = build_module(cfg), Capture()
        build_trainer(cfg, callbacks=[cap]).fit(module, ckpt_path=cfg.ckpt_path)
        return module, [[m[k] for k in keys] for m in cap.metrics]

    straight, steps = run(tmp_path / "a", 2)
    _, first = run(tmp_path / "b", 1)
    resumed, second = run(tmp_path / "b", 2, tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert first + second == steps  # the sampled trajectories (and their tool turns) repeat after the resume
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_geovis_searches_then_trains(compose, tiny_overrides):
    over = tiny_overrides + ["data=zoom", "data.train.num_samples=8", "data.train.task=ground", "+method=geovis"]
    metrics = _fit(compose, over + ["sampler.max_new_tokens=8", "trainer.limit_val_batches=0"])
    last = metrics[-1]
    # every search spends its 16-node budget; where ties send it through both covering children first, the budget
    # runs out at depth 2 (as for some rows here), else it reaches depth 3
    assert last["search/nodes_mean"] == 16.0 and 2.0 <= last["search/depth_mean"] <= 3.0
    assert math.isfinite(last["train/loss"]) and "reward/accuracy_mean" in last
