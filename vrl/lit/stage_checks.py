"""Start-time check of a curriculum: does its last RL stage give the starting policy any reward signal?

A curriculum whose last stage pays every sample the same (all zero: answers the policy cannot produce within the
stage's ``max_new_tokens``, a route format it never emits) ends the run on steps where every group advantage is 0
and only the KL or entropy terms move the policy; the issue-6 RewardMap runs lost in their last 32 steps what the
earlier stages had reached (experiments/LOG.md, 2026-11-25). Nothing in the config says so, so this callback
measures it once, before the first step: the initial policy samples G responses for the first ``prompts`` rows of
the stage's data, with the stage's sampling settings and reward, and when no group has two different rewards while
the first RL stage does have a spread, it warns (and tags the MLflow run ``curriculum/zero_signal_stage``). When the
first stage has none either (a cold policy: every stage scores 0 at the start) it only notes that at info level. It
is a warning, not an error: earlier stages may teach what the last one needs; the check says that they must. A
curriculum that starts with an SFT or DPO stage (a warm start) is not checked: RL meets the warmed policy, not this one.

Why a callback: it reads the curriculum hook and the module and writes only a log line and a tag; it draws its
samples under a forked RNG so the run's numbers do not depend on it. Rank 0, fresh runs only (a resumed run was
checked when it started).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from vrl.data.source import dataset_row
from vrl.lit.context import generate_with, tag_run
from vrl.lit.stages import Stage, StageScheduler
from vrl.rewards.context import RewardContext

log = logging.getLogger("vrl")


def groups_with_spread(rewards: torch.Tensor, group_ids: torch.Tensor) -> int:
    """How many groups hold two different rewards (a non-zero group-normalised advantage)."""
    return sum(int(rewards[group_ids == g].max() > rewards[group_ids == g].min()) for g in group_ids.unique().tolist())


def stage_signal(module: Any, scheduler: StageScheduler, index: int, prompts: int) -> dict[str, float]:
    """Sample stage ``index`` with the module's current policy: groups drawn, groups with a reward spread, mean
    reward. The stage's reward is the run's with the stage's terms merged over it, as the scheduler builds it."""
    stage: Stage = scheduler.stages[index]
    ctx = module.context()
    data = stage.data if stage.data is not None else ctx.train_data
    rows = [dataset_row(data, i) for i in range(min(prompts, len(data)))]
    reward = ctx.reward.with_terms({**ctx.reward.terms, **stage.reward}) if stage.reward else ctx.reward
    sampling = {k: v for k, v in stage.sampling.items() if k != "group_size" and v is not None}
    rollout = generate_with(module.sampler, module.vlm, rows, group_size=stage.sampling["group_size"], **sampling)
    streak = getattr(reward, "degenerate_streak", None)
    try:
        total, _ = reward(rollout.responses, rollout.samples, context=RewardContext(0, None, training=False))
    finally:
        if reward is not ctx.reward:
            reward.close()
        elif streak is not None:
            reward.degenerate_streak = streak
    groups = int(rollout.group_ids.unique().numel())
    spread = groups_with_spread(total, rollout.group_ids.cpu())
    return {"groups": float(groups), "spread": float(spread), "reward_mean": float(total.mean())}


class CurriculumCheck(Callback):
    """Warn at start when a curriculum's last RL stage gives the starting policy no reward spread (module doc).

    Args:
        prompts: rows of the stage's data sampled (G responses each, the stage's G).
        stages: ``last`` (the last RL stage) or ``all`` (every RL stage; a stage after the first is reached by a
            trained policy, so an early stage's zero is the one to read).
    """

    def __init__(self, prompts: int = 8, stages: str = "last") -> None:
        if prompts < 1 or stages not in ("last", "all"):
            raise ValueError("callbacks.curriculum_check: prompts must be >= 1 and stages 'last' or 'all'")
        self.prompts, self.stages = prompts, stages
        self.results: dict[str, dict[str, float]] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step != 0 or not trainer.is_global_zero:
            return
        for hook in getattr(pl_module.hooks, "hooks", []):
            if isinstance(hook, StageScheduler):
                self.check(trainer, pl_module, hook)

    def check(self, trainer: Any, module: Any, scheduler: StageScheduler) -> None:
        rl = [i for i, s in enumerate(scheduler.stages) if s.kind == "rl"]
        if rl and rl[0] > 0:  # a warm start (SFT/DPO) comes first: the starting policy is not the one RL meets
            log.info(
                "curriculum: no reward-signal check at start: stage %r (%s) trains the policy before the first RL "
                "stage %r; read that stage's reward spread in the run's metrics",
                scheduler.stages[0].name,
                scheduler.stages[0].kind,
                scheduler.stages[rl[0]].name,
            )
            return
        chosen = rl[-1:] if self.stages == "last" else rl
        for index in chosen:
            found = self._measure(module, scheduler, index)
            if found["spread"] > 0:
                continue
            stage = scheduler.stages[index]
            if index == rl[-1] and rl[0] != index and self._measure(module, scheduler, rl[0])["spread"] == 0:
                # a cold policy: the first stage has no signal either, so this says nothing about the last one
                log.info(
                    "curriculum: neither the first stage %r nor the last %r gives the starting policy a reward "
                    "spread (a cold start); the last stage's signal rests on what the earlier ones teach",
                    scheduler.stages[rl[0]].name,
                    stage.name,
                )
                continue
            last = " (the last RL stage)" if index == rl[-1] else ""
            log.warning(
                "curriculum: stage %r%s gives the starting policy no reward signal: in %d groups of its first rows "
                "every sample scored the same (mean reward %.3g), so its group advantages are 0. Unless the "
                "stages before it teach what it asks, the run ends on steps that learn nothing from the reward; "
                "check the stage's max_new_tokens, answer format and reward (experiments/LOG.md, RewardMap).",
                stage.name,
                last,
                int(found["groups"]),
                found["reward_mean"],
            )
            tag_run(trainer.logger, "curriculum/zero_signal_stage", stage.name)

    def _measure(self, module: Any, scheduler: StageScheduler, index: int) -> dict[str, float]:
        name = scheduler.stages[index].name
        if name not in self.results:
            cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=cuda):
                self.results[name] = stage_signal(module, scheduler, index, self.prompts)
        return self.results[name]
