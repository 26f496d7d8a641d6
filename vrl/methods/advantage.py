"""Group-relative advantage estimators: rewards of G samples per prompt -> one advantage per sequence.

Shapes: N = B*G sequences; ``group_ids`` [N] maps each sequence to its prompt. Groups need not be
contiguous or equal-sized (filters may drop sequences), so statistics are taken with scatter ops.
"""

from __future__ import annotations

from dataclasses import dataclass

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


ESTIMATORS = {"group_zscore": group_zscore, "group_mean": group_mean, "rloo": rloo}


@dataclass(frozen=True)
class Advantage:
    """Config-facing advantage estimator (``conf/advantage/``).

    Args:
        estimator: ``group_zscore`` (GRPO, DeepSeekMath arXiv 2402.03300), ``group_mean``
            (Dr. GRPO, arXiv 2503.20783) or ``rloo`` (Ahmadian et al., arXiv 2402.14740).
        eps: denominator guard for ``group_zscore``.
    """

    estimator: str = "group_zscore"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"advantage.estimator={self.estimator!r}; choose one of {sorted(ESTIMATORS)}")
        if self.eps < 0:
            raise ValueError(f"advantage.eps must be >= 0, got {self.eps}")

    @property
    def normalises_scale(self) -> bool:
        """True when a per-group multiplicative reward weight cancels out (std normalisation)."""
        return self.estimator == "group_zscore"

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        if self.estimator == "group_zscore":
            return group_zscore(rewards, group_ids, self.eps)
        return ESTIMATORS[self.estimator](rewards, group_ids)
