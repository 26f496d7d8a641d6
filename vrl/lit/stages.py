"""Stage scheduler (hooks H1 + H11): a run as a sequence of stages, each with its own data, reward and sampling.

A curriculum (Curr-ReFT's yes/no -> multiple choice -> open questions, RewardMap's easy -> hard question
types) changes *what* the loop trains on, not *how*: one :class:`StageScheduler` hook applies the current
:class:`Stage` to the module at the start of every step (its prompt stream, reward terms, G, sampling
temperature) and moves to the next stage when the stage's switch rule fires. A stage of kind ``sft`` runs
rejection-sampled supervised steps instead of RL steps (:mod:`vrl.lit.sft`, via ``replace_step``; items that are
traces of several turns, e.g. tool calls, are replayed by the run's multi-turn sampler: :mod:`vrl.lit.sft_turns`);
a stage of kind ``dpo`` runs preference steps on pairs read from its data or built by the policy at the stage's
start (:mod:`vrl.lit.preference`).

Switch rules, checked at the start of a step once the stage has run at least one step:

- ``after_steps: N``: after N steps in the stage (Curr-ReFT switches at fixed checkpoints, 600 and 500);
- ``exhausted: true`` (``epochs: n``): once the stage's prompt stream has handed out n passes over its data
  (RewardMap's ordered stages); with B prompts per step and D rows that is ceil(n * D / B) steps;
- ``metric: {name, threshold, mode}``: once the last logged value of ``name`` (``trainer.callback_metrics``)
  is above / below the threshold (strictly).

A stage without a rule lasts until the run ends; only the last stage may lack one. When the last stage's
rule fires the curriculum is over: that step runs nothing and the run stops. An SFT stage whose judge kept
nothing is skipped. Steps count ``training_step`` calls (a step whose groups were all filtered out still
counts). Everything that decides the future (stage index, steps in the stage, every stage's prompt-stream
position, the SFT kept set, the learning rate to restore, the switch metric's last value) is in
:meth:`StageScheduler.state_dict`, so a run resumed mid-curriculum continues exactly where it stopped.

With several data-parallel ranks each rank samples SFT candidates for its own shard of the prompts; every rank's
kept set and stream positions travel in the checkpoint (each rank restores its own), and a switch rule that fires
on any rank switches every rank at the same step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vrl.data.source import PromptSource, dataset_row
from vrl.hooks import Hook, StageSettings, StepContext
from vrl.lit.preference import PreferenceBatch, PreferenceSettings, pair_batch
from vrl.lit.sft import RejectionSampling, rejection_sample
from vrl.lit.sft_turns import is_multi_turn, plain_trace, replayed_sft
from vrl.types import Rollout

KINDS = ("rl", "sft", "dpo")
MODES = ("above", "below")


@dataclass(frozen=True)
class MetricRule:
    """Switch when the last logged ``name`` is strictly above / below ``threshold``."""

    name: str
    threshold: float
    mode: str = "above"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"metric rule: mode must be one of {MODES}, got {self.mode!r}")

    def fired(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value > self.threshold if self.mode == "above" else value < self.threshold


class Stage:
    """One stage of a curriculum (``conf/curriculum``).

    Args:
        name: shown in logs and MLflow; the key of the stage in a ``stages`` mapping fills it.
        kind: ``rl`` (a normal RL step), ``sft`` (rejection-sampled supervised steps, see ``rejection``) or
            ``dpo`` (preference steps, see ``preference``).
        data: map-style dataset of the stage's prompts (an SFT stage samples its candidates from it);
            None = the run's training data.
        reward: name -> reward term merged over the run's terms while in the stage: a term replaces the
            run's term of the same name, ``null`` removes one (run with the run's sandbox settings). None =
            the run's reward unchanged. An SFT stage's judge defaults to the result.
        group_size: G in the stage; None = the run's ``sampler.group_size``.
        temperature: sampling temperature (the loss scores at the same one); None = the run's.
        top_p: nucleus mass; None = the run's.
        max_new_tokens: response length cap; None = the run's.
        batch_size: prompts per step; None = the run's.
        lr: SFT/DPO only: the learning rate while in the stage (the run's is restored after it).
        lr_scale: SFT/DPO only: the learning rate as a multiple of the run's (Curr-ReFT: 2e-7 / 1e-6 = 0.2).
        shuffle: shuffle the stage's data each epoch (False: ordered, as in RewardMap).
        after_steps: switch rule: N steps in the stage.
        exhausted: switch rule: ``epochs`` passes over the stage's data (the kept set for SFT).
        epochs: passes for ``exhausted`` (setting it implies ``exhausted``).
        metric: switch rule: ``{name, threshold, mode: above|below}``.
        rejection: SFT only: how the kept set is built (:class:`vrl.lit.sft.RejectionSampling`, or any object
            with ``build(ctx, data, indices) -> ([(index, response[, prompt])], stats)``; a response may be a list
            of turns, texts or token ids: a multi-turn item, :mod:`vrl.lit.sft_turns`).
        preference: DPO only: the pairs and the loss (:class:`vrl.lit.preference.PreferenceSettings`).
        reset_reference: RL only: at the stage's first step the frozen KL reference takes the policy's weights, so
            RL after a warm start is anchored to the warmed policy, not the random or base one it started from
            (a KL term pulling back to the start would undo the warm start). Not with LoRA (the reference is the
            adapter-off base).
    """

    def __init__(
        self,
        name: str | None = None,
        kind: str = "rl",
        data: Any = None,
        reward: Mapping[str, Any] | None = None,
        group_size: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        lr_scale: float | None = None,
        shuffle: bool = True,
        after_steps: int | None = None,
        exhausted: bool = False,
        epochs: int | None = None,
        metric: MetricRule | Mapping[str, Any] | None = None,
        rejection: RejectionSampling | Mapping[str, Any] | None = None,
        preference: PreferenceSettings | Mapping[str, Any] | None = None,
        reset_reference: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"stage {name!r}: kind must be one of {KINDS}, got {kind!r}")
        self.name, self.kind, self.data = name, kind, data
        self.reward = dict(reward) if reward else None
        self.sampling = {"group_size": group_size, "temperature": temperature, "top_p": top_p}
        self.sampling["max_new_tokens"] = max_new_tokens
        self.batch_size, self.lr, self.lr_scale, self.shuffle = batch_size, lr, lr_scale, shuffle
        self.after_steps = after_steps
        self.epochs = epochs if epochs is not None else (1 if exhausted else None)
        self.metric = MetricRule(**metric) if isinstance(metric, Mapping) else metric
        if isinstance(rejection, Mapping):
            rejection = RejectionSampling(**rejection)
        self.rejection = rejection if rejection is not None or kind != "sft" else RejectionSampling()
        if isinstance(preference, Mapping):
            preference = PreferenceSettings(**preference)
        self.preference = preference if preference is not None or kind != "dpo" else PreferenceSettings()
        self.reset_reference = bool(reset_reference)
        self._validate()

    def _validate(self) -> None:
        where = f"stage {self.name!r}"
        rules = [r for r in (self.after_steps, self.epochs, self.metric) if r is not None]
        if len(rules) > 1:
            raise ValueError(f"{where}: set one switch rule (after_steps, exhausted/epochs or metric)")
        if (self.after_steps is not None and self.after_steps < 1) or (self.epochs is not None and self.epochs < 1):
            raise ValueError(f"{where}: after_steps and epochs must be >= 1")
        if self.kind == "rl" and (self.lr is not None or self.lr_scale is not None):
            raise ValueError(f"{where}: lr and lr_scale are for kind=sft/dpo (RL uses the run's optimizer)")
        if self.kind != "rl" and self.reset_reference:
            raise ValueError(f"{where}: reset_reference is for kind=rl (the reference anchors RL's KL term)")
        if (self.kind != "sft" and self.rejection is not None) or (self.kind != "dpo" and self.preference is not None):
            raise ValueError(f"{where}: rejection is for kind=sft, preference for kind=dpo")
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"{where}: set lr or lr_scale, not both")
        if self.sampling["group_size"] is not None and self.sampling["group_size"] < 2:
            raise ValueError(f"{where}: group_size must be >= 2 for a group baseline")

    @property
    def has_rule(self) -> bool:
        return self.after_steps is not None or self.epochs is not None or self.metric is not None


def _on_any_rank(ctx: StepContext, fired: bool) -> bool:
    """Whether a switch rule fired on any data-parallel rank: every rank then switches at the same step (an
    ``exhausted`` rule counts each rank's own draws, which refills make unequal)."""
    if ctx.gather is None:
        return fired
    return bool(ctx.gather(torch.tensor(float(fired), device=ctx.device)).amax() > 0)


class StageScheduler(Hook):
    """Hook that runs a curriculum of :class:`Stage` s (hooks H1 and H11; ``hooks.curriculum``).

    Args:
        stages: name -> stage (config order is stage order) or a list of stages.
        order: hook order; very low so that every other hook sees the stage's settings.
        stop_at_end: stop the run when the last stage's rule fires (False: keep training in it).
    """

    def __init__(
        self,
        stages: Mapping[str, Stage] | Sequence[Stage],
        order: int = -100,
        stop_at_end: bool = True,
    ) -> None:
        if isinstance(stages, Mapping):
            items = list(stages.items())
            for key, stage in items:
                if stage is not None:  # `stages.<name>=null` switches a stage off
                    stage.name = stage.name or str(key)
            stages = [stage for _, stage in items]
        self.stages: list[Stage] = [s for s in stages if s is not None]
        if not self.stages:
            raise ValueError("curriculum: no stages")
        for i, stage in enumerate(self.stages):
            stage.name = stage.name or f"stage{i}"
            if not stage.has_rule and i < len(self.stages) - 1:
                raise ValueError(f"curriculum: stage {stage.name!r} has no switch rule, so later stages never run")
        if len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError(f"curriculum: stage names must be unique, got {[s.name for s in self.stages]}")
        self.order, self.stop_at_end = order, stop_at_end
        self.needs_reference = any(s.kind == "dpo" for s in self.stages)  # the loop then builds the reference
        self.resets_reference = any(s.reset_reference for s in self.stages)
        self.index, self.steps_in_stage, self.done = 0, 0, False
        self.kept: dict[int, list] = {}  # sft: (index, response[, prompt]); dpo: pair records
        self._sources: dict[int, PromptSource] = {}
        self._pending_sources: dict[int, dict] = {}
        self._rewards: dict[int, Any] = {}

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    # ----------------------------------------------------------------- hook stages
    def on_step_start(self, ctx: StepContext) -> StageSettings:
        """Advance if the current stage's rule fired; the (new) stage's settings for this step."""
        if not self.done and self.steps_in_stage > 0 and _on_any_rank(ctx, self._rule_fired(ctx)):
            self._advance(ctx)
        while not self.done and self.steps_in_stage == 0 and not self._enter(ctx):
            # an SFT or DPO stage that kept no pairs has nothing to fit: skip it (or end, if it is the last)
            if self.index == len(self.stages) - 1:
                self._finish(ctx, "kept no pairs")
            else:
                self._advance(ctx)
        if self.done:
            return StageSettings(stop=True)  # also after a resume from a finished curriculum
        ctx.log({"curriculum/stage": float(self.index)})
        self.steps_in_stage += 1
        return self._settings(ctx)

    def replace_step(self, ctx: StepContext) -> Rollout | PreferenceBatch | None:
        """An SFT stage's teacher-forced pairs or a DPO stage's preference pairs (the loop fits them instead of
        an RL step); None in RL stages."""
        stage = self.stage
        if stage.kind == "rl":
            return None
        entries = [self.kept[self.index][p["entry"]] for p in self._stage_source(ctx).next_batch()]
        data = self._data(stage, ctx)
        ctx.log({f"{stage.kind}/kept": float(len(self.kept[self.index]))})
        if stage.kind == "dpo":
            return pair_batch(ctx, data, entries, stage.preference.loss)
        rows = [dataset_row(data, e[0]) | ({"prompt": e[2]} if len(e) > 2 else {}) for e in entries]
        if any(is_multi_turn(e[1]) for e in entries):  # traces of turns: replayed by the run's multi-turn sampler
            return replayed_sft(ctx, rows, [[e[1]] if isinstance(e[1], str) else e[1] for e in entries])
        return ctx.pairs(rows, [e[1] for e in entries])

    # ----------------------------------------------------------------- switching
    def _rule_fired(self, ctx: StepContext) -> bool:
        stage = self.stage
        if stage.after_steps is not None:
            return self.steps_in_stage >= stage.after_steps
        if stage.epochs is not None:
            source = self._stage_source(ctx)  # one pass = this rank's equal shard of the data
            return source.rows_drawn >= stage.epochs * (len(source.dataset) // source.world_size)
        if stage.metric is not None:  # the last logged value (a resumed run's loop restores it)
            return stage.metric.fired(ctx.metrics.get(stage.metric.name))
        return False

    def _advance(self, ctx: StepContext) -> None:
        if self.index == len(self.stages) - 1:
            if self.stop_at_end:
                self._finish(ctx, "finished")
            return
        old = self._rewards.pop(self.index, None)
        if old is not None:  # the stage's reward set is never used again: end its workers, if any
            old.close()
        self.index, self.steps_in_stage = self.index + 1, 0

    def _finish(self, ctx: StepContext, why: str) -> None:
        self.done = True
        ctx.print(f"[vrl] curriculum: last stage {self.stage.name!r} {why} at step {ctx.step}; stopping the run")

    def _enter(self, ctx: StepContext) -> bool:
        """First step of a stage: announce it, and for SFT build the kept set. False when SFT kept nothing."""
        stage = self.stage
        ctx.print(f"[vrl] curriculum: stage {self.index} {stage.name!r} ({stage.kind}) starts at step {ctx.step}")
        ctx.tag("curriculum/stage", stage.name)
        ctx.tag(f"curriculum/{self.index}_{stage.name}_start_step", ctx.step)
        if stage.kind == "rl" or self.index in self.kept:
            return True
        self._build_kept(ctx)
        return bool(self.kept[self.index])

    # ----------------------------------------------------------------- a stage's settings
    def _data(self, stage: Stage, ctx: StepContext) -> Any:
        return stage.data if stage.data is not None else ctx.train_data

    def _settings(self, ctx: StepContext) -> StageSettings:
        stage = self.stage
        return StageSettings(
            sampling=stage.sampling,
            batch_size=stage.batch_size,
            reward=self._reward(self.index, ctx),
            prompts=self._stage_source(ctx) if stage.kind == "rl" else None,
            lr=stage.lr,
            lr_scale=stage.lr_scale,
            reset_reference=stage.reset_reference and self.steps_in_stage == 1,
        )

    def _reward(self, index: int, ctx: StepContext) -> Any:
        terms = self.stages[index].reward
        if terms is None:
            return None  # the run's
        if index not in self._rewards:  # the run's terms with the stage's merged over them (None drops one)
            self._rewards[index] = ctx.reward.with_terms({**ctx.reward.terms, **terms})
        return self._rewards[index]

    def _stage_source(self, ctx: StepContext) -> PromptSource:
        """The current stage's own stream (of prompts; of kept pairs for SFT), built once and then resumable.

        Each stage is seeded apart (``seed + index``) so stages that share data see it in new orders. The
        run's batch size is ``ctx.batch_size`` here: stage settings apply only after this hook returns.
        """
        index, stage = self.index, self.stage
        if index not in self._sources:
            batch = stage.batch_size or ctx.batch_size
            dataset = self._data(stage, ctx)
            if stage.kind != "rl":  # a batch never holds a kept pair twice, even when few were kept
                dataset = [{"entry": j} for j in range(len(self.kept[index]))]
                settings = stage.rejection if stage.kind == "sft" else stage.preference
                batch = min(getattr(settings, "batch_size", None) or batch, len(dataset))
            source = PromptSource(
                dataset, batch, seed=ctx.seed + index, shuffle=stage.shuffle, rank=ctx.rank, world_size=ctx.world_size
            )
            if index in self._pending_sources:
                source.load_state_dict(self._pending_sources.pop(index))
            self._sources[index] = source
        return self._sources[index]

    def _build_kept(self, ctx: StepContext) -> None:
        """Sample (with the stage's settings), judge and keep the SFT stage's training pairs, or build the DPO
        stage's pair records, once per stage: they are checkpointed."""
        stage, rs = self.stage, (self.stage.rejection or self.stage.preference)
        data = self._data(stage, ctx)
        shard = list(range(len(data)))[: getattr(rs, "max_prompts", None)][ctx.rank :: ctx.world_size]
        builder = stage.preference.pairs if stage.kind == "dpo" else rs
        if callable(getattr(builder, "build", None)):  # pair records, or an SFT set built another way
            kept, stats = builder.build(ctx, data, shard)
            self.kept[self.index] = _of_all_ranks(ctx, kept)
            ctx.print(f"[vrl] curriculum: stage {stage.name!r} built {len(self.kept[self.index])} {stage.kind} pairs")
            ctx.log(stats)
            return
        run_reward = self._reward(self.index, ctx) or ctx.reward
        judge = ctx.reward.with_terms(rs.judge) if rs.judge else run_reward
        per_call = rs.prompts_per_call or ctx.batch_size
        generate = functools.partial(ctx.generate, **{k: v for k, v in stage.sampling.items() if k != "group_size"})
        kept, stats = rejection_sample(generate, data, shard, rs.candidates, judge, rs.threshold, per_call)
        if judge is not run_reward:
            judge.close()
        self.kept[self.index] = kept = _of_all_ranks(ctx, kept)
        ctx.print(
            f"[vrl] curriculum: stage {stage.name!r} kept {len(kept)} of {int(stats['sft/candidates'])} "
            f"candidates (judge reward >= {rs.threshold})"
        )
        ctx.log(stats)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        sources = dict(self._pending_sources) | {i: s.state_dict() for i, s in self._sources.items()}
        return {
            "index": self.index,
            "steps_in_stage": self.steps_in_stage,
            "done": self.done,
            "sources": sources,
            "kept": {i: [e if isinstance(e, dict) else list(e) for e in pairs] for i, pairs in self.kept.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.index, self.steps_in_stage = int(state["index"]), int(state["steps_in_stage"])
        self.done = bool(state.get("done", False))
        self.kept = {int(i): [_entry(e) for e in pairs] for i, pairs in state["kept"].items()}
        self._sources, self._pending_sources = {}, {int(i): dict(s) for i, s in state["sources"].items()}


def _of_all_ranks(ctx: StepContext, kept: list) -> list:
    """The kept entries of every rank, in data order. Each rank builds its shard's; the stage's stream then
    shards the whole set again, so every rank agrees on the stage's length (and on skipping an empty one) and a
    pair is trained once per epoch, as in one process (sorted by row index, stable: one process's order)."""
    if ctx.gather_objects is None:
        return kept
    merged = [e for part in ctx.gather_objects(kept) for e in part]
    return sorted(merged, key=lambda e: int(e["index"] if isinstance(e, Mapping) else e[0]))


def _entry(e: Any) -> Any:
    """A checkpointed kept entry: a DPO pair record as is, an SFT ``(index, response[, prompt])`` as a tuple (a
    multi-turn response: its list of turns, :mod:`vrl.lit.sft_turns`)."""
    if isinstance(e, Mapping):
        return dict(e)
    response = str(e[1]) if isinstance(e[1], str) else plain_trace(e[1])
    return (int(e[0]), response, *map(str, e[2:]))
