"""RewardMap (arXiv 2510.02240) as a method: its difficulty weight W applied to the advantages.

The reward terms (detail reward, route check, W itself) are reward work: :mod:`vrl.rewards.rewardmap`. This
hook is what ``+method=rewardmap`` adds to the loop: W after group normalisation, where a z-score cannot divide
it out again (the preset's deliberate difference from the paper, documented in conf/method/rewardmap.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vrl.hooks import Hook, StepContext
from vrl.rewards.rewardmap import DIFFICULTY_WEIGHTS, difficulty_weight
from vrl.types import Rollout


class DifficultyWeight(Hook):
    """Advantage hook (H8): A'_i = W(sample_i) * A_i, applying RewardMap's W after group normalisation.

    Use with ``RewardMap(weight_after_norm=True)``; the knobs must match the reward's (the method preset
    interpolates them). W > 0, so advantage signs are kept; it composes multiplicatively with other H8
    factors.

    Args:
        difficulty_weights: difficulty_city -> W; None for the published weights.
        transfer_bonus: added to W for planning questions that need a transfer.
        order: hook order; 40 runs after VPPO's factor (30), which does not matter for a product.
    """

    def __init__(
        self, difficulty_weights: Mapping[str, float] | None = None, transfer_bonus: float = 0.5, order: int = 40
    ) -> None:
        self.difficulty_weights = dict(difficulty_weights or DIFFICULTY_WEIGHTS)
        self.transfer_bonus, self.order = transfer_bonus, order

    def advantage_factor(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor:
        w = [difficulty_weight(s, self.difficulty_weights, self.transfer_bonus) for s in rollout.samples]
        return torch.tensor(w, dtype=torch.float32)
