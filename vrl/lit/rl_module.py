"""RLModule: the one LightningModule. Wraps the policy, the frozen reference and the reward terms.

One ``training_step`` is one RL step:

    [H1 stage settings] -> prompts -> [H5/H6 gates] -> G samples each -> rewards -> [H5 branches]
    -> [H6 filters] -> old/ref log-probs -> [H7 extra passes] -> group advantages x [H8 factors]
    -> [H9 token weights] -> PPO epochs x mini-batches (each one optimizer step, accumulated over
    micro-batches, + H10 losses) -> metrics

Method math lives in ``vrl.methods`` (pure functions) and in hooks, which read a ``vrl.hooks.StepContext``
and return values; this file orders the stages and is the only writer of the rollout and its own state.
Manual optimisation: ``trainer.max_steps`` counts optimizer steps (= RL steps with the default single
mini-batch and PPO epoch).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch

from vrl.data.source import PromptSource, StepTicks
from vrl.hooks import HookSet, StepContext
from vrl.lit.attach import attach_models
from vrl.lit.checkpoint import loop_state, restore_loop_state
from vrl.lit.context import RunSettings, step_context
from vrl.lit.dist import agreed_count, any_rank, gather_objects, lockstep, reduce_value, world_size
from vrl.lit.fsdp import shard_modules
from vrl.lit.guard import StepGuard
from vrl.lit.loss import Objective
from vrl.lit.metrics import global_metrics, log_step, perf_metrics, rollout_columns, update_metrics
from vrl.lit.optimize import minibatches, ppo_update, replaced_update
from vrl.methods.advantage import Advantage
from vrl.methods.multi_reward import advantage_inputs
from vrl.models.scoring import score_logprobs
from vrl.rewards.combine import RewardSet
from vrl.rewards.context import RewardContext
from vrl.rewards.routing import source_means
from vrl.sampler.hf import HFSampler, suppressed_token_ids
from vrl.types import Rollout, cat_rollouts


class RLModule(L.LightningModule):
    """GRPO-family trainer for a VLM policy.

    Args:
        model: the loaded policy bundle (``vrl.models.loading.VLM``; ``conf/model``).
        sampler: draws G responses per prompt, returning a ``Rollout`` (``conf/sampler``).
        reward: the weighted reward terms (``conf/reward``).
        advantage: group advantage estimator (``conf/advantage``).
        objective: policy loss + aggregation + KL + entropy (``conf/policy_loss``, ``loss_agg``, ``kl``).
        optimizer: partial optimizer taking the trainable parameters (``conf/optimizer``).
        train_data: map-style dataset of rows (``conf/data``).
        val_data: dataset for greedy validation, or None.
        batch_size: B, prompts per step and rank.
        hooks: name -> hook object, filled by method presets (``hooks:``).
        scheduler: partial LR scheduler taking the optimizer, or None.
        ppo_epochs: passes over each rollout batch.
        mini_batch_size: sequences per optimizer step; None = all N sequences (one step per rollout).
        micro_batch_size: sequences per forward/backward (gradient accumulation inside a mini-batch).
        max_grad_norm: gradient clipping norm; None disables clipping (the norm is still logged).
        max_bad_steps: consecutive non-finite losses/gradients tolerated (skipped) before the run stops.
        max_empty_steps: consecutive RL steps whose groups were all filtered out before the run stops
            (a filter that can never pass would otherwise stall the run without an optimizer step).
        val_batch_size: prompts per validation batch.
        log_rollouts_every: log a table of sample rollouts every N steps (0 = never).
        data_seed: seed of the prompt order.
    """

    def __init__(
        self,
        model: Any,
        sampler: HFSampler,
        reward: RewardSet,
        advantage: Advantage,
        objective: Objective,
        optimizer: Callable,
        train_data: Any,
        val_data: Any = None,
        batch_size: int = 8,
        hooks: Mapping[str, Any] | None = None,
        scheduler: Callable | None = None,
        ppo_epochs: int = 1,
        mini_batch_size: int | None = None,
        micro_batch_size: int = 32,
        max_grad_norm: float | None = 1.0,
        max_bad_steps: int = 3,
        max_empty_steps: int = 200,
        val_batch_size: int = 32,
        log_rollouts_every: int = 20,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        if ppo_epochs < 1 or micro_batch_size < 1 or (mini_batch_size is not None and mini_batch_size < 1):
            raise ValueError("update: ppo_epochs, mini_batch_size and micro_batch_size must be >= 1")
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable weights only (frozen ones are rebuilt)
        self.vlm = model
        self.policy = model.model
        self.sampler, self.reward, self.advantage, self.objective = sampler, reward, advantage, objective
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.train_data, self.val_data = train_data, val_data
        self.batch_size, self.val_batch_size, self.data_seed = batch_size, val_batch_size, data_seed
        self.hooks = hooks if isinstance(hooks, HookSet) else HookSet(hooks)
        self.ppo_epochs, self.mini_batch_size, self.micro_batch_size = ppo_epochs, mini_batch_size, micro_batch_size
        self.guard = StepGuard(max_grad_norm, max_bad_steps, max_empty_steps)
        self.log_rollouts_every = log_rollouts_every
        self.prompts: PromptSource | None = None  # the stream drawn from this step (a stage may swap it)
        self.settings: RunSettings | None = None  # the run's own settings, which stages override per step
        self._restored_metrics: dict[str, float] = {}
        self._step_metrics: dict[str, float] = {}
        # the frozen KL reference (built in setup): a registered submodule, so Lightning puts it on the device and
        # DDP/FSDP see it like the policy; checkpoints leave it out (on_save_checkpoint keeps trainable weights)
        self.reference: torch.nn.Module | None = None
        self.reference_was_reset = False  # a stage reset it to the policy: checkpoints then carry it
        self.judges: torch.nn.ModuleDict | None = None  # judges' own models, registered like the reference (attach)
        self.rollout_logger: Callable[[Rollout, int], None] | None = None

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.settings is None:
            self.prompts = PromptSource(
                self.train_data,
                self.batch_size,
                seed=self.data_seed,
                rank=self.global_rank,
                world_size=max(1, self.trainer.world_size),
            )
            self.settings = RunSettings(self.sampler, self.batch_size, self.reward, self.prompts)
        self.objective.suppress_ids = suppressed_token_ids(self.vlm.processor.tokenizer)
        needs_ref = (self.objective.kl is not None and self.objective.kl.coef > 0) or self.hooks.needs_reference
        if getattr(self.vlm, "is_lora", False) and self.hooks.resets_reference:
            raise ValueError(
                "curriculum: a stage sets reset_reference, but under LoRA the KL reference is the adapter-off base "
                "(it cannot take the policy's weights); drop reset_reference or train without LoRA (model.lora.r=0)"
            )
        if needs_ref and self.reference is None and not getattr(self.vlm, "is_lora", False):
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)  # LoRA: the adapter-off policy
        if self.judges is None:  # judges' models (in rewards, hooks, advantage) join the module; policy judges bind
            roots = {"reward": self.reward, "hooks": self.hooks, "advantage": self.advantage}
            self.judges = attach_models(roots, self.vlm)

    def configure_model(self) -> None:
        shard_modules(self)  # trainer=fsdp: FSDP2 units of the policy and the reference (vrl/lit/fsdp.py)

    def on_fit_start(self) -> None:
        self.policy.train()
        if self.reference is not None:
            self.reference.eval()

    def train_dataloader(self):
        max_steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        return torch.utils.data.DataLoader(StepTicks(max_steps), batch_size=None)

    def val_dataloader(self):
        if self.val_data is None:
            return []
        rows = [dict(self.val_data[i]) for i in range(len(self.val_data))]
        return torch.utils.data.DataLoader(rows, batch_size=self.val_batch_size, collate_fn=list)

    def configure_callbacks(self):
        """Callbacks the sampler brings: a rollout server's weight push and prefetch pacing
        (``vrl.sampler.weight_sync.ServerSync``); none for the HF sampler."""
        return list(getattr(self.sampler, "callbacks", list)())

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model: no trainable parameters (check freeze_vision / lora settings)")
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    # ----------------------------------------------------------------- the RL step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter()
        self._step_metrics: dict[str, float] = {}
        self.settings.apply([], self)  # the run's own settings, which stage hooks see and override
        if self.settings.apply(self.hooks.on_step_start(self.context()), self):  # H1: a stage ended the run
            self.trainer.should_stop = True
            log_step(self, self._step_metrics | {"curriculum/done": 1.0})
            return
        ctx = self.context()  # with this step's stage settings
        if (pairs := self.hooks.replace_step(ctx)) is not None:  # H11: e.g. an SFT or a DPO stage's step
            log_step(self, global_metrics(self, self._step_metrics | replaced_update(self, pairs)))
            return
        rollout = self.make_rollout(ctx)
        t_rollout = time.perf_counter() - t0
        # every prompt gated or every group filtered out (under DDP: on any rank, so that all ranks skip together)
        if reduce_value(self, 0 if rollout is None else rollout.num_sequences, "min") == 0:
            empty = global_metrics(self, {**self._sampling_stats, **self._step_metrics})
            log_step(self, empty | {"train/empty_steps": 1.0})
            self.guard.empty(self, self._sampling_stats["rollout/generate_calls"])
            return
        self.guard.empty_steps = 0
        self.score_passes(rollout, ctx)
        groups, mask = rollout.advantage_groups(), rollout.response_mask
        extra = advantage_inputs(self.advantage, rollout, self.reward)  # reward components, for multi-reward options
        if getattr(self.advantage, "uses_rollout", False):  # token-level estimators reading spans (Vision-SR1 v2)
            extra["rollout"] = rollout
        rollout.advantages = self.advantage(rollout.rewards, groups, mask, **extra).to(self.device)
        if (factor := self.hooks.advantage_factor(rollout, ctx)) is not None:  # H8
            factor = factor.to(rollout.advantages)
            rollout.advantages = rollout.advantages * (factor[:, None] if rollout.advantages.dim() == 2 else factor)
        rollout.loss_mask, rollout.norm_mask = self.hooks.token_weights(rollout, ctx)  # H9
        totals, losses, grad_norms = ppo_update(self, rollout, ctx)
        scalars = {**self._sampling_stats, **self._step_metrics, **self.reward.pop_stats()}
        scalars |= getattr(self.sampler, "pop_stats", dict)()  # a sampler's own metrics (multi-turn: tools/*)
        scalars |= perf_metrics(rollout, time.perf_counter() - t0, t_rollout)
        metrics = global_metrics(self, scalars, rollout_columns(rollout.main(), self.sampler.max_new_tokens), totals)
        metrics |= update_metrics(metrics.pop("_totals"), losses, grad_norms)
        metrics["train/lr"] = self.optimizers().param_groups[0]["lr"]
        shown = {"reward": metrics["rollout/reward_mean"], "loss": metrics.get("train/loss")}
        log_step(self, metrics, prog_bar={k: v for k, v in shown.items() if v is not None})
        logs_table = self.log_rollouts_every and ctx.step % self.log_rollouts_every == 0
        if self.rollout_logger and logs_table and self.global_rank == 0:
            self.rollout_logger(rollout, ctx.step)

    def context(self) -> StepContext:
        """What hooks may read this step (``vrl.hooks.StepContext``)."""
        return step_context(self)

    def make_rollout(self, ctx: StepContext) -> Rollout | None:
        """Prompts -> pre-rollout hooks -> G samples each -> rewards -> attached branches -> group filters,
        refilled up to the hooks' ``max_tries`` draws until B groups survive (dynamic sampling, a probe
        gate). None when every draw was gated out before generation."""
        kept: list[Rollout] = []
        groups, tries, drawn = 0, 0, 0
        context = RewardContext(ctx.step, self._trainer.max_steps if self._trainer is not None else None)
        # sharded policy: every rank draws while any rank needs groups (each draw's forwards are collectives)
        while any_rank(self, groups < self.batch_size) and tries < self.hooks.max_tries:
            batch = self.prompts.next_batch()
            drawn, tries = drawn + len(batch), tries + 1
            samples = self.hooks.on_prompts(batch, ctx)  # H5/H6
            if not samples:  # a pre-rollout gate dropped every prompt of this draw
                if lockstep(self):  # the generate other ranks run (its collectives); the output is dropped
                    self.sampler.generate(self.vlm, batch[:1], greedy=True)
                continue
            rollout = self.sampler.generate(self.vlm, samples)
            scored = self.reward(rollout.responses, rollout.samples, context=context)
            rollout.rewards, rollout.reward_components = scored
            rollout.rewards = rollout.rewards.to(self.device)
            rollout = self.hooks.on_rollout(rollout, ctx)  # H5
            if (keep := self.hooks.filter_groups(rollout, ctx)) is not None:  # H6
                rollout = rollout.select(torch.nonzero(keep.cpu()).squeeze(-1))
            kept.append(rollout)
            groups += int(rollout.group_ids.unique().numel())
        self._sampling_stats = {"rollout/kept_group_frac": groups / max(drawn, 1), "rollout/generate_calls": tries}
        if not kept:
            return None
        rollout = cat_rollouts(kept, ctx.pad_token_id)
        if groups > self.batch_size:  # a refill overshot: keep the first B groups
            first = rollout.group_ids.unique(sorted=False)[: self.batch_size]
            rollout = rollout.select(torch.nonzero(torch.isin(rollout.group_ids, first).cpu()).squeeze(-1))
        return rollout

    def score_passes(self, rollout: Rollout, ctx: StepContext) -> None:
        """Old-policy and reference log-probs, then the hooks' extra teacher-forced passes (H7)."""
        temp, mb, impl = self.objective.temperature, self.micro_batch_size, self.objective.kernel_impl
        sup, forwards = self.objective.suppress_ids, agreed_count(self, math.ceil(rollout.num_sequences / mb))
        passes = self.ppo_epochs * len(minibatches(rollout.num_sequences, self.mini_batch_size))
        # sharded: a rank with one mini-batch scores too when another has two (its forwards are collectives)
        needed = any_rank(self, passes > 1) or self.hooks.needs_old_logprobs
        if needed and rollout.old_logprobs is None:  # (a sampler with ``logprobs`` returned them already)
            rollout.old_logprobs = score_logprobs(self.policy, rollout, temp, mb, impl, sup, forwards)
        # else: strictly on-policy; the loss uses the current log-probs detached (ratio exactly 1), unless a
        # hook's pass below scored the clean rollout anyway and hands them over.
        if self.objective.kl is not None and self.objective.kl.coef > 0:
            ref, ctx_mgr = (
                (self.reference.eval(), nullcontext())
                if self.reference is not None
                else (self.policy, self.policy.disable_adapter())
            )
            with ctx_mgr:
                rollout.ref_logprobs = score_logprobs(ref, rollout, temp, mb, impl, sup, forwards)
        for result in self.hooks.extra_pass(rollout, ctx):
            rollout.extras.update(result.extras)
            if result.old_logprobs is not None and rollout.old_logprobs is None:
                rollout.old_logprobs = result.old_logprobs

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        rollout = self.sampler.generate(self.vlm, batch, greedy=True)
        context = RewardContext(self.global_step, self.trainer.max_steps, training=False)
        rewards, components = self.reward(rollout.responses, rollout.samples, context=context)
        n = len(batch)  # under DDP each rank validates its shard; sync_dist averages them (no-op on one process)
        self.log("val/reward", rewards.mean(), on_epoch=True, batch_size=n, sync_dist=True)
        if "accuracy" in components:
            acc = components["accuracy"].mean()
            self.log("val/accuracy", acc, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        keys = getattr(self.reward, "source_keys", ())
        for name, (mean, count) in source_means(rollout.samples, rewards, components, keys).items():
            self.log(name, mean, on_epoch=True, batch_size=count)  # no sync_dist: ranks may see different sources

    @torch.no_grad()
    def reset_reference(self) -> None:
        """The frozen KL reference takes the policy's current weights (a stage's ``reset_reference``); no-op without
        a reference (no KL term). From then on checkpoints carry the reference, which can no longer be rebuilt."""
        if self.reference is None:
            return
        for ref, param in zip(self.reference.parameters(), self.policy.parameters(), strict=True):
            ref.copy_(param)  # same module tree (a deep copy), same sharding under FSDP2
        self.reference_was_reset = True

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}  # frozen weights are rebuilt
        if self.reference_was_reset:  # ... except a reference reset to the policy mid-run
            trainable |= {n for n, _ in self.named_parameters() if n.startswith("reference.")}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Lightning calls this on every rank and rank 0 writes: under DDP every rank's loop state (its prompt
        # position, hook state, RNG) travels, each rank restoring its own (vrl.lit.checkpoint.restore_loop_state)
        states = gather_objects(self, loop_state(self))
        checkpoint["vrl"] = {**states[0], "ranks": states} if len(states) > 1 else states[0]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_state = checkpoint.get("vrl", {})
        self.reference_was_reset = any(k.startswith("reference.") for k in checkpoint.get("state_dict", {}))

    def on_train_start(self) -> None:
        # Restored here rather than in on_load_checkpoint: setup() (which builds the prompt stream) runs after
        # the checkpoint is read, and nothing may draw random numbers between this and the first step.
        if state := getattr(self, "_pending_state", None):
            restore_loop_state(self, state, self.global_rank, world_size(self))
        self._pending_state = None
