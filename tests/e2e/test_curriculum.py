"""Curr-ReFT on the tiny model: every stage runs in order with its own settings, and resume is exact across
stage switches and inside the SFT stage (whose kept set travels in the checkpoint)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.lit.stages import StageScheduler
from vrl.rewards.set_iou import LabelSetAccuracy

S = "hooks.curriculum.stages."
# A random policy earns no accuracy or format reward; a length term varies per response, so RL steps have a
# gradient. Stages are shortened to 1 step each; the SFT stage samples 4 prompts x 4 candidates and keeps
# every non-empty distinct one (the length term is negative: threshold -1000), 16 pairs per step.
SHORT = [
    "+method=curr_reft",
    "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}",
    "trainer.limit_val_batches=0",
    S + "judge.after_steps=1",
    S + "choice.after_steps=1",
    S + "open.after_steps=1",
    S + "sft.data.num_samples=4",
    S + "sft.rejection.threshold=-1000",
    S + "sft.rejection.batch_size=16",
]


class Record(L.Callback):
    """Per step: the stage, what it set on the module, and the step's own numbers."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.params: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        sched = module.hooks.hooks[0]
        if sched.done:  # the tick on which the last stage's rule fired: no step was run
            return
        stage = sched.stage
        m = trainer.callback_metrics
        row = {"stage": sched.index, "grad_norm": float(m["train/grad_norm"]), "lr": float(m["train/lr"])}
        if stage.kind == "sft":
            row["sft_loss"] = float(m["sft/loss"])
        else:
            row |= {
                "reward": float(m["rollout/reward_mean"]),
                "G": module.sampler.group_size,
                "formats": module.prompts.dataset.spec.synthetic.formats,
                "terms": tuple(module.reward.terms),
                "label_set": isinstance(module.reward.terms["accuracy"], LabelSetAccuracy),
            }
        self.steps.append(row)
        self.params.append(torch.cat([p.detach().flatten() for p in module.policy.parameters()]))


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    rec = Record()
    trainer = build_trainer(cfg, callbacks=[rec])
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, trainer, rec


def test_curr_reft_runs_every_stage_in_order_and_stops_after_sft(compose, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")]
    module, trainer, rec = _train(compose, overrides + SHORT + ["trainer.max_steps=50", "sampler.group_size=3"])
    sched = module.hooks.hooks[0]
    assert isinstance(sched, StageScheduler)
    kept = len(sched.kept[3])
    assert 0 < kept <= 16
    sft_steps = math.ceil(3 * kept / 16)  # the preset's 3 passes over the kept set, 16 pairs per step
    assert [s["stage"] for s in rec.steps] == [0, 1, 2] + [3] * sft_steps
    assert trainer.global_step == 3 + sft_steps < 50  # the curriculum ended the run
    rl = rec.steps[:3]
    assert [s["G"] for s in rl] == [4, 2, 4]  # each stage's G, not the run's 3
    assert [s["formats"] for s in rl] == [("yesno",), ("mc",), ("open",)]
    assert all(set(s["terms"]) == {"accuracy", "format", "length"} for s in rl)  # open: merged over the run's
    assert [s["label_set"] for s in rl] == [False, False, True]
    run_lr = rl[0]["lr"]
    assert all(math.isclose(s["lr"], 0.2 * run_lr, rel_tol=1e-6) for s in rec.steps[3:])  # lr_scale 0.2
    assert all(math.isfinite(s["sft_loss"]) and s["sft_loss"] > 0 for s in rec.steps[3:])
    moved = [not torch.equal(a, b) for a, b in zip(rec.params[2:], rec.params[3:])]
    assert all(moved), "every SFT step updates the policy"


@pytest.mark.slow
def test_resume_is_exact_across_a_stage_switch_and_inside_the_sft_stage(compose, tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += SHORT + ["ckpt_every=1"]
    straight, _, full = _train(compose, base + [f"output_dir={tmp_path}/a", "trainer.max_steps=5"])
    assert [s["stage"] for s in full.steps] == [0, 1, 2, 3, 3]
    out, ckpt = f"output_dir={tmp_path}/b", tmp_path / "b" / "checkpoints" / "last.ckpt"
    _, _, first = _train(compose, base + [out, "trainer.max_steps=3"])  # ends inside stage 2 (open)
    state = torch.load(ckpt, weights_only=True)["vrl"]["hooks"]["curriculum"]
    assert (state["index"], state["steps_in_stage"], state["kept"]) == (2, 1, {})
    _, _, second = _train(compose, base + [out, "trainer.max_steps=4"], ckpt_path=ckpt)  # switches to SFT
    state = torch.load(ckpt, weights_only=True)["vrl"]["hooks"]["curriculum"]
    assert state["index"] == 3 and len(state["kept"][3]) > 0
    resumed, _, third = _train(compose, base + [out, "trainer.max_steps=5"], ckpt_path=ckpt)  # SFT from the kept set
    assert first.steps + second.steps + third.steps == full.steps
    assert resumed.hooks.hooks[0].kept == straight.hooks.hooks[0].kept
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    diff = [n for n in a if not torch.equal(a[n], b[n])]
    assert not diff, f"weights differ after resume: {diff[:5]}"
