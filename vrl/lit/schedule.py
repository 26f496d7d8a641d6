"""Learning-rate schedules as ``LambdaLR`` factories (``conf/scheduler``); stepped once per optimizer step."""

from __future__ import annotations

import math

import torch


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from lr/warmup_steps to lr over ``warmup_steps``, then constant."""
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0, total_steps: int = 1000, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay from lr to ``min_ratio * lr`` at ``total_steps``."""
    if total_steps <= warmup_steps:
        raise ValueError(f"scheduler.total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
