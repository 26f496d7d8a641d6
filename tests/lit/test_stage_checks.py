"""The start-time curriculum check (vrl/lit/stage_checks.py): a last stage paying every sample the same is flagged."""

from __future__ import annotations

import logging

import torch

from vrl.build import build_module, build_trainer
from vrl.lit.stage_checks import CurriculumCheck, groups_with_spread

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"  # varies per sample: a spread
BOXES = (
    "{_target_:vrl.data.synthetic.build_synthetic,tasks:[grounding],formats:[open],num_samples:8,seed:0,"
    "split:train,image_size:112}"
)


def test_groups_with_spread_by_hand():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 2.0])
    # group 0: (0, 0) flat; group 1: (1, 0) spread; group 2: (2, 2) flat
    assert groups_with_spread(rewards, torch.tensor([0, 0, 1, 1, 2, 2])) == 1


def test_a_last_stage_without_reward_signal_is_flagged_at_start(compose, tiny_overrides, caplog):
    # stage "boxes": box answers ([x1, y1, x2, y2]) in 1 token can never be right, and its reward drops the length
    # term, so every sample scores 0 -- the shape of the issue-6 RewardMap planning stage
    curriculum = (
        "+hooks.curriculum={_target_:vrl.lit.stages.StageScheduler,stages:{warm:{_target_:vrl.lit.stages.Stage,"
        f"after_steps:1}},boxes:{{_target_:vrl.lit.stages.Stage,data:{BOXES},max_new_tokens:1,"
        "reward:{length:null},after_steps:1}}}"
    )
    cfg = compose([*tiny_overrides, LENGTH_REWARD, curriculum, "trainer.max_steps=1", "trainer.limit_val_batches=0",
                   "callbacks.curriculum_check.stages=all"])  # fmt: skip
    module, trainer = build_module(cfg), build_trainer(cfg)
    (check,) = [c for c in trainer.callbacks if isinstance(c, CurriculumCheck)]
    with caplog.at_level(logging.WARNING, logger="vrl"):
        trainer.fit(module)
    assert check.results["boxes"]["spread"] == 0.0 and check.results["boxes"]["groups"] == 8.0
    assert check.results["boxes"]["reward_mean"] == 0.0
    assert check.results["warm"]["spread"] > 0  # the run's reward with the length term varies within groups
    flagged = [r.getMessage() for r in caplog.records if "curriculum: stage" in r.getMessage()]
    assert len(flagged) == 1 and "'boxes' (the last RL stage)" in flagged[0]


def test_a_cold_policy_is_noted_not_warned(compose, tiny_overrides, caplog):
    # both stages ask for boxes in 1 token without the length term: the first stage has no spread either
    stage = f"{{_target_:vrl.lit.stages.Stage,data:{BOXES},max_new_tokens:1,reward:{{length:null}},after_steps:1}}"
    curriculum = f"+hooks.curriculum={{_target_:vrl.lit.stages.StageScheduler,stages:{{a:{stage},b:{stage}}}}}"
    cfg = compose([*tiny_overrides, LENGTH_REWARD, curriculum, "trainer.max_steps=1", "trainer.limit_val_batches=0"])
    module, trainer = build_module(cfg), build_trainer(cfg)
    (check,) = [c for c in trainer.callbacks if isinstance(c, CurriculumCheck)]
    with caplog.at_level(logging.INFO, logger="vrl"):
        trainer.fit(module)
    assert check.results["a"]["spread"] == check.results["b"]["spread"] == 0.0  # stages=last still measured the first
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("curriculum:")]
    assert [lvl for lvl, _ in messages] == [logging.INFO] and "cold start" in messages[0][1]


def test_a_curriculum_that_starts_with_a_warm_start_is_not_checked(caplog):
    # RL meets the policy the SFT stage leaves, not the starting one: sampling the starting policy would say nothing
    # (module and trainer are None: a check that measured anything would fail on them)
    from vrl.lit.sft import TemplateTargets
    from vrl.lit.stages import Stage, StageScheduler

    warm = Stage(kind="sft", after_steps=2, rejection=TemplateTargets("{answer}"))
    sched = StageScheduler({"warm": warm, "rl": Stage()})
    check = CurriculumCheck(stages="all")
    with caplog.at_level(logging.INFO, logger="vrl"):
        check.check(None, None, sched)
    assert check.results == {}
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("curriculum:")]
    assert "no reward-signal check" in message and "'warm' (sft)" in message and "'rl'" in message
