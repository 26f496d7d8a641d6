"""Post-rollout group filters (hook H6): decide which prompt groups carry learning signal.

DAPO's dynamic sampling drops groups whose G rewards are all equal (zero advantage under any group
baseline) and refills the batch by sampling more prompts, up to a bounded number of tries.
"""

from __future__ import annotations

import torch

from vrl.hooks import Hook, StepContext
from vrl.types import Rollout


def group_keep_mask(values: torch.Tensor, group_ids: torch.Tensor, criterion: str, lo: float, hi: float):
    """Per-sequence keep mask [N] from per-sequence values [N] and their groups.

    ``nonzero_std``: keep groups whose values are not all equal. ``mean_in_range``: keep groups whose mean
    lies strictly inside (lo, hi) (VPPO: accuracy in (0.01, 0.99)). NaN means "not measured on this
    sequence" (a reward term of another rollout branch, e.g. PEARL's probe accuracy on main sequences):
    only measured values count, and a group with none fails.
    """
    keep = torch.zeros_like(group_ids, dtype=torch.bool)
    for g in torch.unique(group_ids).tolist():
        members = group_ids == g
        v = values[members].float()
        v = v[~torch.isnan(v)]
        if v.numel() == 0:
            continue
        if criterion == "nonzero_std":
            ok = bool((v != v[0]).any())
        else:
            ok = lo < float(v.mean()) < hi
        keep[members] = ok
    return keep


class DynamicSampling(Hook):
    """DAPO dynamic sampling (Yu et al., arXiv 2503.14476): filter groups, refill the batch.

    Args:
        keys: per-sequence signals to test: reward term names (e.g. ``accuracy``) or ``reward`` (the total).
        criterion: ``nonzero_std`` (DAPO) or ``mean_in_range`` (VPPO's 0.01 < acc < 0.99).
        lo: lower bound of ``mean_in_range`` (exclusive).
        hi: upper bound of ``mean_in_range`` (exclusive).
        combine: with several keys, keep a group if ``any`` (PEARL's OR filter) or ``all`` keys pass.
        max_tries: generate calls per step, the first included; DAPO samples until the batch is full, here
            bounded so a run whose groups are all saturated still moves on (with a smaller batch).
        order: hook order.
    """

    def __init__(
        self,
        keys: list[str] | tuple[str, ...] = ("accuracy",),
        criterion: str = "nonzero_std",
        lo: float = 0.0,
        hi: float = 1.0,
        combine: str = "any",
        max_tries: int = 3,
        order: int = 10,
    ) -> None:
        if criterion not in ("nonzero_std", "mean_in_range"):
            raise ValueError(f"hooks.dynamic_sampling.criterion={criterion!r}; choose nonzero_std or mean_in_range")
        if combine not in ("any", "all"):
            raise ValueError(f"hooks.dynamic_sampling.combine={combine!r}; choose any or all")
        if max_tries < 1:
            raise ValueError(f"hooks.dynamic_sampling.max_tries must be >= 1, got {max_tries}")
        if not keys:
            raise ValueError("hooks.dynamic_sampling.keys must name at least one reward term or 'reward'")
        self.keys, self.criterion, self.lo, self.hi = list(keys), criterion, lo, hi
        self.combine, self.max_tries, self.order = combine, max_tries, order

    def filter_groups(self, rollout: Rollout, ctx: StepContext | None = None) -> torch.Tensor:
        masks = []
        for key in self.keys:
            if key == "reward":
                values = rollout.rewards
            elif key in rollout.reward_components:
                values = rollout.reward_components[key]
            else:
                raise KeyError(
                    f"hooks.dynamic_sampling.keys: {key!r} is not a reward term "
                    f"(have: reward, {', '.join(rollout.reward_components)})"
                )
            masks.append(group_keep_mask(values.cpu(), rollout.group_ids.cpu(), self.criterion, self.lo, self.hi))
        stacked = torch.stack(masks)
        return stacked.any(0) if self.combine == "any" else stacked.all(0)
