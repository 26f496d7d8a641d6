"""Checkpoints resume exactly: 2 steps == 1 step + resume + 1 step, bitwise on CPU."""

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


class Record(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, *args):
        m = trainer.callback_metrics
        self.steps.append((float(m["rollout/reward_mean"]), float(m["train/grad_norm"])))


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    rec = Record()
    trainer = build_trainer(cfg, callbacks=[rec])
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, rec.steps


@pytest.mark.slow
def test_two_steps_equal_one_step_resume_one_step(compose, tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += [
        LENGTH_REWARD,
        "ckpt_every=1",
        "trainer.limit_val_batches=0",
        "+method=dapo",
        "hooks.dynamic_sampling.keys=[reward]",
    ]
    straight, straight_steps = _train(compose, base + [f"output_dir={tmp_path}/a", "trainer.max_steps=2"])
    _, first = _train(compose, base + [f"output_dir={tmp_path}/b", "trainer.max_steps=1"])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=False)
    assert saved["vrl"]["prompts"]["rows_drawn"] >= 2  # the data position travels
    resumed, second = _train(compose, base + [f"output_dir={tmp_path}/b", "trainer.max_steps=2"], ckpt_path=ckpt)
    assert first + second == straight_steps  # same rewards and gradient norms, step by step
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    diff = [n for n in a if not torch.equal(a[n], b[n])]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    state = resumed.optimizers().optimizer.state_dict()["state"]
    assert state, "optimizer state was restored and used"
