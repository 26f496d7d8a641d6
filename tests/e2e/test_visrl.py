"""+method=visrl on the tiny model: both DPO stages build their pairs with the policy's box -> crop -> answer
rollouts; a random policy rarely writes a box, so this checks the pipeline runs, not that it finds pairs
(tests/methods/test_visrl.py checks the pairs on scripted trajectories)."""

from __future__ import annotations

import lightning as L

from vrl.build import build_module, build_trainer

S = "hooks.curriculum.stages."


def test_visrl_builds_pairs_in_both_stages_and_trains_on_any_it_keeps(compose, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=20"]
    overrides += ["+method=visrl", "trainer.limit_val_batches=0", "sampler.max_new_tokens=8"]
    overrides += [f"{S}{st}.preference.{k}" for st in ("box", "steps") for k in ("max_prompts=2", "pairs.attempts=1")]
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module)
    sched = module.hooks.hooks[0]
    assert module.reference is not None and sched.done
    assert set(sched.kept) == {0, 1}  # both stages built (or tried to build) their pairs
    assert all(len(r["segments"]) == 1 for r in sched.kept[0]) and all(len(r["segments"]) == 2 for r in sched.kept[1])
    assert trainer.global_step == sum(-(-len(p) // 24) for p in sched.kept.values())  # ceil(pairs / 24) a stage
