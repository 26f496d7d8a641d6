"""A warm start, then RL anchored to the warmed policy (curriculum=transit_warm, stage ``reset_reference``): the
KL reference takes the policy's weights at the RL stage's first step, and a resume after it restores that
reference from the checkpoint (it can no longer be rebuilt from the seed)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

S = "hooks.curriculum.stages."
# Two SFT steps on gold transit answers (4 rows, batch 2), then RL with a k3 KL term, every step checkpointed.
WARM = [
    "data=transit_tiny",
    "data.train.num_samples=8",
    "data.val.num_samples=4",
    "+curriculum=transit_warm",
    S + "warm.data.num_samples=4",
    S + "warm.after_steps=2",
    S + "warm.lr=1e-2",
    "kl=k3",
    "kl.coef=0.05",
    "ckpt_every=1",
    "trainer.limit_val_batches=0",
]


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


class Snapshots(L.Callback):
    """Policy and reference weights at each step's start (before the stage's settings apply)."""

    def __init__(self) -> None:
        self.policy: list[torch.Tensor] = []
        self.reference: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.policy.append(flat(module.policy))
        self.reference.append(flat(module.reference))


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module, snaps = build_module(cfg), Snapshots()
    trainer = build_trainer(cfg, callbacks=[snaps])
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, snaps


def test_the_rl_stage_anchors_kl_to_the_warmed_policy_and_a_resume_keeps_that_anchor(compose, tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))] + WARM
    straight, snaps = _train(compose, base + [f"output_dir={tmp_path}/a", "trainer.max_steps=4"])
    assert straight.reference_was_reset
    initial, warmed = snaps.reference[0], snaps.policy[2]  # step 2 is RL's first: the policy after 2 SFT steps
    assert torch.equal(snaps.reference[1], initial) and torch.equal(snaps.reference[2], initial)  # not during SFT
    assert not torch.equal(warmed, snaps.policy[0])  # the warm start moved the policy ...
    assert torch.equal(snaps.reference[3], warmed)  # ... and the reference took exactly those weights at step 2
    assert torch.equal(flat(straight.reference), warmed)  # and kept them (frozen) while RL moved the policy
    assert not torch.equal(flat(straight.policy), warmed)

    out, ckpt = f"output_dir={tmp_path}/b", tmp_path / "b" / "checkpoints" / "last.ckpt"
    _train(compose, base + [out, "trainer.max_steps=3"])  # stops after RL's first step
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(k.startswith("reference.") for k in saved)  # the reset reference travels in the checkpoint
    resumed, _ = _train(compose, base + [out, "trainer.max_steps=4"], ckpt_path=ckpt)
    assert torch.equal(flat(resumed.reference), warmed)  # restored, not rebuilt from the seed
    assert torch.equal(flat(resumed.policy), flat(straight.policy))  # and the resumed step is the straight one


def test_reset_reference_is_refused_under_lora(compose, tiny_overrides):
    cfg = compose(tiny_overrides + WARM + ["model.lora.r=4"])
    module, trainer = build_module(cfg), build_trainer(cfg)
    with pytest.raises(ValueError, match="reset_reference.*LoRA"):
        trainer.fit(module)  # at setup, before any step
