"""RLModule: the one LightningModule. Wraps the policy, the frozen reference and the reward terms.

One ``training_step`` is one RL step:

    prompts -> [H1, H5/H6 hooks] -> G rollouts each -> rewards -> [H6 filters] -> old/ref log-probs
    -> [H7 extra passes] -> group advantages -> [H8 transforms] -> [H9 token masks]
    -> PPO epochs x mini-batches (each one optimizer step, accumulated over micro-batches) -> metrics

Method math lives in ``vrl.methods`` (pure functions) and in hooks; this file only orders the stages.
Manual optimisation: ``trainer.max_steps`` counts optimizer steps (= RL steps with the default single
mini-batch and PPO epoch).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import lightning as L
import numpy as np
import torch

from vrl.data.source import PromptSource, StepTicks
from vrl.hooks import HookSet
from vrl.lit.loss import Objective
from vrl.lit.metrics import rollout_metrics
from vrl.methods.advantage import Advantage
from vrl.models.scoring import score_logprobs
from vrl.rewards.combine import RewardSet
from vrl.rollout.hf import HFRollout, suppressed_token_ids
from vrl.types import Rollout, cat_rollouts


class RLModule(L.LightningModule):
    """GRPO-family trainer for a VLM policy.

    Args:
        model: the loaded policy bundle (``vrl.models.loading.VLM``; ``conf/model``).
        rollout: sampler of G responses per prompt (``conf/rollout``).
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
        rollout: HFRollout,
        reward: RewardSet,
        advantage: Advantage,
        objective: Objective,
        optimizer: Callable,
        train_data: Any,
        val_data: Any = None,
        batch_size: int = 4,
        hooks: Mapping[str, Any] | None = None,
        scheduler: Callable | None = None,
        ppo_epochs: int = 1,
        mini_batch_size: int | None = None,
        micro_batch_size: int = 16,
        max_grad_norm: float | None = 1.0,
        max_bad_steps: int = 3,
        max_empty_steps: int = 200,
        val_batch_size: int = 16,
        log_rollouts_every: int = 0,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        if ppo_epochs < 1 or micro_batch_size < 1 or (mini_batch_size is not None and mini_batch_size < 1):
            raise ValueError("update: ppo_epochs, mini_batch_size and micro_batch_size must be >= 1")
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold trainable weights only (frozen ones are rebuilt)
        self.vlm = model
        self.policy = model.model
        self.rollout_engine, self.reward, self.advantage, self.objective = (
            rollout,
            reward,
            advantage,
            objective,
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.train_data, self.val_data = train_data, val_data
        self.batch_size, self.val_batch_size, self.data_seed = batch_size, val_batch_size, data_seed
        self.hooks = hooks if isinstance(hooks, HookSet) else HookSet(hooks)
        self.ppo_epochs, self.mini_batch_size, self.micro_batch_size = (
            ppo_epochs,
            mini_batch_size,
            micro_batch_size,
        )
        self.max_grad_norm, self.max_bad_steps, self.max_empty_steps = max_grad_norm, max_bad_steps, max_empty_steps
        self.log_rollouts_every = log_rollouts_every
        self.bad_steps = 0
        self.empty_steps = 0
        self.prompts: PromptSource | None = None
        self._ref: list[torch.nn.Module] = []  # a list so Lightning neither saves nor moves it implicitly
        self.rollout_logger: Callable[[Rollout, int], None] | None = None

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.prompts is None:
            self.prompts = PromptSource(
                self.train_data,
                self.batch_size,
                seed=self.data_seed,
                rank=self.global_rank,
                world_size=max(1, self.trainer.world_size),
            )
        self.objective.suppress_ids = suppressed_token_ids(self.vlm.processor.tokenizer)
        needs_ref = self.objective.kl is not None and self.objective.kl.coef > 0
        if needs_ref and not self._ref and not getattr(self.vlm, "is_lora", False):
            ref = copy.deepcopy(self.policy).eval()
            ref.requires_grad_(False)
            self._ref.append(ref)

    def on_fit_start(self) -> None:
        self.policy.train()
        for ref in self._ref:
            ref.to(self.device)

    def train_dataloader(self):
        max_steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        return torch.utils.data.DataLoader(StepTicks(max_steps), batch_size=None)

    def val_dataloader(self):
        if self.val_data is None:
            return []
        rows = [dict(self.val_data[i]) for i in range(len(self.val_data))]
        return torch.utils.data.DataLoader(rows, batch_size=self.val_batch_size, collate_fn=list)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model: no trainable parameters (check freeze_vision / lora settings)")
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }

    # ----------------------------------------------------------------- the RL step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter()
        step = self.global_step  # optimizer steps before this RL step
        self.hooks.on_step_start(step, self)
        if (stats := self.hooks.replace_step(self)) is not None:  # H11: e.g. an SFT stage runs its own step
            self.log_dict(stats, on_step=True)
            return
        rollout = self.make_rollout()
        t_rollout = time.perf_counter() - t0
        if rollout is not None and rollout.num_sequences > 0:
            self.empty_steps = 0
        else:  # every prompt gated or every group filtered out, every try: nothing to learn from
            self.log_dict({**self._sampling_stats, "train/empty_steps": 1.0}, on_step=True)
            self.empty_steps += 1
            if self.empty_steps > self.max_empty_steps:
                raise RuntimeError(
                    f"group filters dropped every group for {self.empty_steps} RL steps in a row "
                    f"(update.max_empty_steps={self.max_empty_steps}): check the hooks' keys and bounds"
                )
            if self.empty_steps in (1, 10) or self.empty_steps % 100 == 0:
                tries = self._sampling_stats["rollout/generate_calls"]
                self.print(
                    f"[vrl] {self.empty_steps} RL step(s) so far had every group filtered out "
                    f"(last: {tries} generate calls); no update on those"
                )
            return
        self.score_passes(rollout)
        rollout.advantages = self.advantage(rollout.rewards, rollout.advantage_groups()).to(self.device)
        rollout.advantages = self.hooks.transform_advantages(rollout, self)
        rollout.loss_mask = self.hooks.token_mask(rollout, self)
        stats = self.update(rollout)
        elapsed = time.perf_counter() - t0
        metrics = rollout_metrics(rollout.main()) | stats | self._sampling_stats
        metrics |= {
            "perf/step_time_s": elapsed,
            "perf/rollout_time_s": t_rollout,
            "perf/tokens_per_s": float(rollout.attention_mask.sum()) / elapsed,
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        metrics |= self.reward.pop_stats()
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=rollout.num_sequences)
        self.log("reward", metrics["rollout/reward_mean"], prog_bar=True, logger=False)
        if "train/loss" in metrics:
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)
        if self.rollout_logger and self.log_rollouts_every and step % self.log_rollouts_every == 0:
            self.rollout_logger(rollout, step)

    def make_rollout(self) -> Rollout | None:
        """Prompts -> pre-rollout hooks -> G samples each -> rewards -> attached branches -> group filters,
        refilled up to the hooks' ``max_tries`` draws until B groups survive (dynamic sampling, a probe
        gate). None when every draw was gated out before generation."""
        budget = max([getattr(h, "max_tries", 1) for h in self.hooks.hooks] + [1])
        kept: list[Rollout] = []
        groups, tries, drawn = 0, 0, 0
        while groups < self.batch_size and tries < budget:
            batch = self.prompts.next_batch()
            drawn, tries = drawn + len(batch), tries + 1
            samples = self.hooks.on_prompts(batch, self)
            if not samples:  # a pre-rollout gate dropped every prompt of this draw
                continue
            rollout = self.rollout_engine.generate(self.vlm, samples)
            rollout.rewards, rollout.reward_components = self.reward(rollout.responses, rollout.samples)
            rollout.rewards = rollout.rewards.to(self.device)
            rollout = self.hooks.on_rollout(rollout, self)
            keep = self.hooks.filter_groups(rollout, self)
            if keep is not None:
                rollout = rollout.select(torch.nonzero(keep.cpu()).squeeze(-1))
            kept.append(rollout)
            groups += int(rollout.group_ids.unique().numel())
        self._sampling_stats = {"rollout/kept_group_frac": groups / max(drawn, 1), "rollout/generate_calls": tries}
        if not kept:
            return None
        rollout = cat_rollouts(kept, self.vlm.processor.tokenizer.pad_token_id)
        if groups > self.batch_size:  # a refill overshot: keep the first B groups
            first = rollout.group_ids.unique(sorted=False)[: self.batch_size]
            rollout = rollout.select(torch.nonzero(torch.isin(rollout.group_ids, first).cpu()).squeeze(-1))
        return rollout

    def score_passes(self, rollout: Rollout) -> None:
        """Old-policy and reference log-probs, then hooks' extra teacher-forced passes (H7)."""
        temp, mb, impl = self.objective.temperature, self.micro_batch_size, self.objective.kernel_impl
        sup = self.objective.suppress_ids
        steps_per_rollout = self.ppo_epochs * len(self._minibatches(rollout.num_sequences))
        if steps_per_rollout > 1 or any(getattr(h, "needs_old_logprobs", False) for h in self.hooks.hooks):
            rollout.old_logprobs = score_logprobs(self.policy, rollout, temp, mb, impl, sup)
        # else: strictly on-policy; the loss uses the current log-probs detached (ratio exactly 1).
        if self.objective.kl is not None and self.objective.kl.coef > 0:
            ref, ctx = (self._ref[0], nullcontext()) if self._ref else (self.policy, self.policy.disable_adapter())
            with ctx:
                rollout.ref_logprobs = score_logprobs(ref, rollout, temp, mb, impl, sup)
        self.hooks.extra_pass(rollout, self)

    def _minibatches(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return list(order.split(self.mini_batch_size or n))

    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over mini-batches; one optimizer step per mini-batch; returns averaged stats."""
        opt = self.optimizers()
        sched = self.lr_schedulers()
        totals: dict[str, float] = {}
        losses, grad_norms = [], []
        for epoch in range(self.ppo_epochs):
            shuffle = torch.Generator().manual_seed(self.data_seed * 1_000_003 + self.global_step + epoch)
            for mb_idx in self._minibatches(rollout.num_sequences, shuffle if self.ppo_epochs > 1 else None):
                mini = rollout.select(mb_idx)
                normalizer = self.objective.normalizer(mini, self.rollout_engine.max_new_tokens)
                if self.trainer.world_size > 1:  # DDP averages gradients: make the denominator global
                    normalizer = self.trainer.strategy.reduce(normalizer, reduce_op="mean")
                if mini.branch is not None:  # one denominator per branch -> one per sequence
                    normalizer = normalizer[mini.branch.to(normalizer.device)]
                loss_total = self._accumulate(mini, normalizer, totals)
                grad_norm = self._clip_and_check(loss_total)
                if grad_norm is None:
                    opt.zero_grad(set_to_none=True)
                    continue
                opt.step()
                opt.zero_grad(set_to_none=True)
                if sched is not None:
                    sched.step()
                losses.append(loss_total)
                grad_norms.append(grad_norm)
        return self._summarise(totals, losses, grad_norms)

    def _accumulate(self, mini: Rollout, normalizer: torch.Tensor, totals: dict[str, float]) -> float:
        loss_total = 0.0
        for idx in torch.arange(mini.num_sequences).split(self.micro_batch_size):
            micro = mini.select(idx)
            norm = normalizer[idx.to(normalizer.device)] if normalizer.dim() else normalizer
            loss, stats, out = self.objective(self.policy, micro, norm)
            extra, extra_stats = self.hooks.extra_loss(micro, out, norm, self)
            if extra is not None:
                loss = loss + extra
                stats |= extra_stats
            self.manual_backward(loss)
            loss_total += float(loss.detach())
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return loss_total

    def _clip_and_check(self, loss_total: float) -> float | None:
        """Clip gradients; None (skip the step) when the loss or the gradient norm is not finite."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        if np.isfinite(loss_total) and np.isfinite(norm):
            self.bad_steps = 0
            return norm
        self.bad_steps += 1
        self.log("train/skipped_steps", float(self.bad_steps), on_step=True)
        self.print(f"[vrl] step {self.global_step}: non-finite loss={loss_total} grad_norm={norm}; step skipped")
        if self.bad_steps > self.max_bad_steps:
            raise RuntimeError(
                f"{self.bad_steps} consecutive non-finite steps (update.max_bad_steps={self.max_bad_steps}); "
                "stopping. The last checkpoint was written before these steps and is intact."
            )
        return None

    @staticmethod
    def _summarise(totals: dict[str, float], losses: list[float], grad_norms: list[float]) -> dict[str, float]:
        tokens = max(totals.get("tokens", 0.0), 1.0)
        out = {"train/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan")}
        if losses:
            out["train/loss"] = float(np.mean(losses))
        out["policy/clipfrac"] = totals.get("clipped_sum", 0.0) / max(totals.get("kept_tokens", 0.0), 1.0)
        out["policy/kept_token_frac"] = totals.get("kept_tokens", 0.0) / tokens
        if "pg_sum" in totals:  # the fused kernel path does not split the loss into terms
            out["policy/pg_loss_token_mean"] = totals["pg_sum"] / tokens
        for key in ("kl", "entropy", "nll"):
            if f"{key}_sum" in totals:
                out[f"policy/{key}" if key != "kl" else "policy/kl_ref"] = totals[f"{key}_sum"] / tokens
        return out

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        rollout = self.rollout_engine.generate(self.vlm, batch, greedy=True)
        rewards, components = self.reward(rollout.responses, rollout.samples)
        n = len(batch)
        self.log("val/reward", rewards.mean(), on_epoch=True, batch_size=n)
        if "accuracy" in components:
            self.log("val/accuracy", components["accuracy"].mean(), on_epoch=True, prog_bar=True, batch_size=n)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["vrl"] = {
            "prompts": self.prompts.state_dict() if self.prompts else None,
            "hooks": self.hooks.state_dict(),
            "bad_steps": self.bad_steps,
            "empty_steps": self.empty_steps,
            "reward": self.reward.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": _numpy_rng_state(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("vrl", {})
        self._pending_state = state

    def on_train_start(self) -> None:
        # Restored here rather than in on_load_checkpoint: setup() (which builds PromptSource) runs after
        # the checkpoint is read, and nothing may draw random numbers between this and the first step.
        state = getattr(self, "_pending_state", None)
        if not state:
            return
        if state.get("prompts") and self.prompts is not None:
            self.prompts.load_state_dict(state["prompts"])
        self.hooks.load_state_dict(state.get("hooks", {}))
        self.bad_steps = state.get("bad_steps", 0)
        self.empty_steps = state.get("empty_steps", 0)
        self.reward.load_state_dict(state.get("reward", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        self._pending_state = None


def _numpy_rng_state() -> tuple:
    """NumPy's global RNG state with the key array as a tensor: checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)
