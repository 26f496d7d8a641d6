"""Group-relative advantage estimators: rewards of G samples per prompt -> one advantage per sequence.

Shapes: N = B*G sequences; ``group_ids`` [N] maps each sequence to its prompt. Groups need not be
contiguous or equal-sized (filters may drop sequences), so statistics are taken with scatter ops.

The formulas are pure functions; each config option (``conf/advantage/<option>.yaml``) targets one small
frozen dataclass that calls them (the ``Advantage`` protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch


def _group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sequence group size, group mean and unbiased group std, gathered back to [N]."""
    ids = torch.unique(group_ids, return_inverse=True)[1]
    num_groups = int(ids.max()) + 1 if ids.numel() else 0
    values = values.to(torch.float64)  # fp64 sums: a group of identical rewards gives exactly 0 advantage
    count = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, ids, torch.ones_like(values)
    )
    total = torch.zeros_like(count).index_add_(0, ids, values)
    mean = total / count
    sq = torch.zeros_like(count).index_add_(0, ids, (values - mean[ids]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return count[ids], mean[ids], std[ids]


def group_zscore(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_g r) / (std_g r + eps), std unbiased as in the DeepSeekMath code.

    Args:
        rewards: [N] scalar reward per sequence.
        group_ids: [N] prompt index of each sequence.
        eps: keeps groups with equal rewards finite (their advantage is 0).

    Returns:
        [N] advantages, float32.
    """
    _, mean, std = _group_stats(rewards, group_ids)
    return ((rewards.double() - mean) / (std + eps)).float()


def group_mean(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: A_i = r_i - mean_g r. Dropping the std removes the question-difficulty bias."""
    _, mean, _ = _group_stats(rewards, group_ids)
    return (rewards.double() - mean).float()


def rloo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = r_i - mean of the other G-1 rewards = G/(G-1) * (r_i - mean_g r).

    A group of one sample has no baseline and gets advantage 0.
    """
    count, mean, _ = _group_stats(rewards, group_ids)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return (scale * (rewards.double() - mean)).float()


def group_mean_batch_std(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group baseline, batch scale (TRL ``scale_rewards="batch"``, Lite PPO): A_i = (r_i - mean_g r) / (std r + eps),
    the std unbiased over all N rewards of the batch (not per group), so a group's spread is not blown up to 1.

    Returns [N] float32; zeros when N < 2 (no spread to measure).
    """
    _, mean, _ = _group_stats(rewards, group_ids)
    r = rewards.double()
    std = r.std() if r.numel() > 1 else torch.full((), float("inf"), dtype=r.dtype, device=r.device)
    return ((r - mean) / (std + eps)).float()


def token_whiten(values: torch.Tensor, response_mask: torch.Tensor | None) -> torch.Tensor:
    """verl's ``masked_whiten`` of per-sequence values broadcast over their tokens: mean and unbiased variance
    over every valid token of the batch (a sequence of L tokens counts L times), then (v - mean) / sqrt(var + 1e-8).

    Args:
        values: [N] one value per sequence.
        response_mask: [N, L] valid tokens, or None to weigh each sequence once.

    Returns:
        [N] float32; 0 for a sequence without tokens, and everywhere when the batch has fewer than 2 tokens
        (verl raises there: the unbiased variance is undefined).
    """
    v = values.double()
    w = torch.ones_like(v) if response_mask is None else response_mask.to(v.device, torch.float64).sum(-1)
    total = w.sum()
    if total < 2:
        return torch.zeros_like(v, dtype=torch.float32)
    mean = (w * v).sum() / (total + 1e-8)  # verl masked_mean: sum / (count + 1e-8)
    var = (w * (v - mean) ** 2).sum() / (total + 1e-8) * (total / (total - 1))
    return torch.where(w > 0, (v - mean) * torch.rsqrt(var + 1e-8), torch.zeros_like(v)).float()


def reinforce_pp_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, response_mask=None) -> torch.Tensor:
    """REINFORCE++-baseline: r_i - mean_g r (a group of one keeps r_i, as verl), then ``token_whiten``."""
    count, mean, _ = _group_stats(rewards, group_ids)
    centred = rewards.double() - torch.where(count > 1, mean, torch.zeros_like(mean))
    return token_whiten(centred, response_mask)


class Advantage(Protocol):
    """What the loop calls (``conf/advantage/<option>.yaml`` targets one of the classes below).

    ``normalises_scale`` says whether a per-group multiplicative reward weight cancels out (std normalisation);
    RewardMap's check reads it.
    """

    normalises_scale: bool

    def __call__(
        self, rewards: torch.Tensor, group_ids: torch.Tensor, response_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """rewards [N], group_ids [N], response_mask [N, L] (token-level estimators) -> advantages [N] float32."""
        ...


@dataclass(frozen=True)
class GroupZScore:
    """GRPO (DeepSeekMath, arXiv 2402.03300): (r - mean_g) / (std_g + eps).

    Args:
        eps: denominator guard; keeps a group of equal rewards finite (its advantage is 0).
    """

    eps: float = 1e-6
    normalises_scale: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"advantage.eps must be >= 0, got {self.eps}")

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return group_zscore(rewards, group_ids, self.eps)


@dataclass(frozen=True)
class GroupMean:
    """Dr. GRPO (arXiv 2503.20783): r - mean_g, no std."""

    normalises_scale: ClassVar[bool] = False

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return group_mean(rewards, group_ids)


@dataclass(frozen=True)
class RLOO:
    """RLOO (Ahmadian et al., arXiv 2402.14740): r - mean of the other G - 1 rewards."""

    normalises_scale: ClassVar[bool] = False

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return rloo(rewards, group_ids)


@dataclass(frozen=True)
class GroupMeanBatchStd:
    """Group mean baseline scaled by the batch's reward std: TRL ``scale_rewards="batch"`` (Lite PPO, arXiv 2508.08221).

    Args:
        eps: denominator guard (TRL's 1e-4).
    """

    eps: float = 1e-4
    normalises_scale: ClassVar[bool] = False  # a per-group weight W does not cancel (the std is the batch's)

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"advantage.eps must be >= 0, got {self.eps}")

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return group_mean_batch_std(rewards, group_ids, self.eps)


@dataclass(frozen=True)
class ReinforcePP:
    """REINFORCE++ (Hu et al., arXiv 2501.03262) with an outcome reward and gamma = 1: every token's return is the
    sequence's reward, whitened over the batch's tokens (``token_whiten``; verl
    ``compute_reinforce_plus_plus_outcome_advantage``). No group baseline."""

    normalises_scale: ClassVar[bool] = False

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return token_whiten(rewards, response_mask)


@dataclass(frozen=True)
class ReinforcePPBaseline:
    """REINFORCE++-baseline (arXiv 2501.03262): group-mean baseline, then batch token whitening
    (verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``)."""

    normalises_scale: ClassVar[bool] = False

    def __call__(self, rewards, group_ids, response_mask=None) -> torch.Tensor:
        return reinforce_pp_baseline(rewards, group_ids, response_mask)
