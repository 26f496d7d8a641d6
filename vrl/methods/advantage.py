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
