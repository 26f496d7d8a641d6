"""How a scored rollout becomes optimizer steps: PPO epochs x mini-batches x micro-batches, and SFT steps.

The loop (``vrl.lit.rl_module``) calls :func:`ppo_update` once per RL step and :func:`replaced_update` for a
stage's supervised (:func:`sft_update`) or preference (:func:`vrl.lit.preference.preference_update`) step.
Each mini-batch is one optimizer step, its gradient accumulated over micro-batches against one denominator for
the whole mini-batch (so micro-batching never changes the update) and, under DDP, against the global one. Every
rank runs the same number of backward passes (a rank short of data runs zero-gradient ones), since DDP's
gradient all-reduce is collective.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vrl.hooks import StepContext
from vrl.lit.dist import gather_objects, lockstep, reduce_value, world_size, zero_loss
from vrl.lit.loss import MAX_BRANCHES
from vrl.lit.preference import PreferenceBatch, preference_update
from vrl.lit.sft import sft_backward
from vrl.types import Rollout


def minibatches(n: int, size: int | None, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Indices of the mini-batches of ``n`` sequences (``size`` each; None = one mini-batch), shuffled when a
    generator is given (PPO epochs after the first)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(size or n))


def ppo_update(module: Any, rollout: Rollout, ctx: StepContext) -> tuple[dict[str, float], list[float], list[float]]:
    """PPO epochs over mini-batches; one optimizer step per mini-batch. Returns this rank's token sums (the
    ``Objective`` stats) and the global loss and gradient norm of each optimizer step taken.

    Under DDP every rank runs as many mini-batches, micro-batches and backward passes as the rank with the
    most (:func:`_plan`); a rank short of data runs zero-gradient backwards for the rest."""
    totals: dict[str, float] = {}
    losses, grad_norms = [], []
    plan = _plan(module, rollout.num_sequences)
    for epoch in range(module.ppo_epochs):
        shuffle = torch.Generator().manual_seed(module.data_seed * 1_000_003 + module.global_step + epoch)
        minis = minibatches(rollout.num_sequences, module.mini_batch_size, shuffle if module.ppo_epochs > 1 else None)
        for i, micro_batches in enumerate(plan):
            mini = rollout.select(minis[i] if i < len(minis) else torch.zeros(0, dtype=torch.long))
            normalizer = _normalizer(module, rollout, mini)
            loss_total = _accumulate(module, rollout, mini, normalizer, totals, ctx, micro_batches)
            loss_total = reduce_value(module, loss_total, "mean")  # the global loss; NaN on a rank: on all
            if (grad_norm := module.guard.step(module, loss_total)) is not None:
                losses.append(loss_total)
                grad_norms.append(grad_norm)
    return totals, losses, grad_norms


def _plan(module: Any, n: int) -> list[int]:
    """Micro-batches of each mini-batch, the same on every rank: the most any rank has (one process: its own)."""
    local = [math.ceil(len(idx) / module.micro_batch_size) for idx in minibatches(n, module.mini_batch_size)]
    if world_size(module) == 1:
        return local
    ranks = gather_objects(module, local)
    return [max(r[i] if i < len(r) else 0 for r in ranks) for i in range(max(map(len, ranks)))]


def _normalizer(module: Any, rollout: Rollout, mini: Rollout) -> torch.Tensor:
    """The mini-batch's loss denominator, global under DDP (gradients are averaged over ranks, so the
    per-rank denominators are averaged too); per sequence when branches are attached."""
    if mini.num_sequences:
        normalizer = module.objective.normalizer(mini, module.sampler.max_new_tokens)
    else:  # a mini-batch only other ranks have: it adds nothing, in the shape theirs has
        normalizer = torch.zeros(MAX_BRANCHES if rollout.branch is not None else (), device=module.device)
    if world_size(module) > 1:
        normalizer = module.trainer.strategy.reduce(normalizer, reduce_op="mean")
    if mini.branch is not None:  # one denominator per branch -> one per sequence
        normalizer = normalizer[mini.branch.to(normalizer.device)]
    return normalizer


def _accumulate(
    module: Any, rollout: Rollout, mini: Rollout, normalizer: torch.Tensor, totals: dict[str, float], ctx, micro: int
) -> float:
    loss_total = 0.0
    chunks = torch.arange(mini.num_sequences).split(module.micro_batch_size) if mini.num_sequences else ()
    for _ in range(micro - len(chunks)):  # micro-batches only other ranks have (DDP, FSDP)
        module.manual_backward(_idle_loss(module, rollout, ctx))
    for idx in chunks:
        micro = mini.select(idx)
        norm = normalizer[idx.to(normalizer.device)] if normalizer.dim() else normalizer
        loss, stats, out = module.objective(module.policy, micro, norm)
        extra, extra_stats = module.hooks.extra_loss(micro, out, norm, ctx)  # H10
        if extra is not None:
            loss = loss + extra
            stats |= extra_stats
        module.manual_backward(loss)
        loss_total += float(loss.detach())
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return loss_total


def _idle_loss(module: Any, rollout: Rollout, ctx: StepContext) -> torch.Tensor:
    """A loss with zero gradient for a micro-batch only other ranks have. Under DDP: 0 x the parameters (only
    backward is collective). With a sharded policy the forward is collective too (and only a forward through the
    sharded modules joins their gradient reduce-scatter): this rank's first sequence through the same objective
    and extra losses as a real micro-batch, times 0."""
    if not lockstep(module):
        return zero_loss(module.policy)
    micro = rollout.select(torch.arange(1))
    norm = torch.ones((1,) if micro.branch is not None else (), device=module.device)
    loss, _, out = module.objective(module.policy, micro, norm)
    extra, _ = module.hooks.extra_loss(micro, out, norm, ctx)
    return (loss if extra is None else loss + extra) * 0.0


def sft_update(module: Any, pairs: Rollout) -> dict[str, float]:
    """One supervised optimizer step on teacher-forced ``pairs`` (a stage's H11 step), token-mean NLL."""
    lr = module.optimizers().param_groups[0]["lr"]  # the stage's, before the LR schedule steps
    # under DDP: the token count averaged over ranks (as the RL normaliser) and as many backwards on each rank
    tokens = reduce_value(module, float(pairs.response_mask.sum()), "mean")
    local = math.ceil(pairs.num_sequences / module.micro_batch_size)
    for _ in range(int(reduce_value(module, local, "max")) - local):
        module.manual_backward(zero_loss(module.policy))
    loss, _ = sft_backward(
        module.policy, pairs, module.micro_batch_size, module.objective.suppress_ids, module.manual_backward, tokens
    )
    loss = reduce_value(module, loss, "mean")
    grad_norm = module.guard.step(module, loss)
    norm = math.nan if grad_norm is None else grad_norm
    return {"sft/loss": loss, "sft/tokens": tokens * world_size(module), "train/grad_norm": norm, "train/lr": lr}


def replaced_update(module: Any, batch: Rollout | PreferenceBatch) -> dict[str, float]:
    """The optimizer step of a step a hook replaced (H11): DPO for a preference batch, SFT for teacher-forced pairs."""
    if lockstep(module):  # their padding backwards are DDP's (0 x parameters), which a sharded policy cannot use
        raise NotImplementedError(
            "an SFT or DPO stage with trainer=fsdp on more than one device: its steps do not run sharded forwards "
            "in lock-step yet; use trainer=ddp (with lora) or one device for such a curriculum"
        )
    return preference_update(module, batch) if isinstance(batch, PreferenceBatch) else sft_update(module, batch)
