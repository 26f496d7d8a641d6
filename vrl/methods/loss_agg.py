"""Loss aggregation: per-token losses [n, L] of a micro-batch -> one scalar.

The denominator is computed once per optimizer step over the whole mini-batch (``normalizer``) and passed
to every micro-batch, so gradient accumulation over micro-batches equals one pass over the mini-batch for
every mode (the classic bug is normalising per micro-batch).

Under DDP the caller averages each rank's ``normalizer`` over ranks (gradients are averaged too), so the
token count must stay unclamped until then: a rank with zero tokens contributes 0, not 1, and the one guard
against an all-empty step (``positive``) is applied to the reduced value, at division. A per-rank
``clamp(min=1)`` made a rank without tokens count as one token and shrank every other rank's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def positive(normalizer: torch.Tensor) -> torch.Tensor:
    """The denominator as divided: a global count of 0 becomes 1 (no valid token anywhere, so every
    numerator is 0 and the loss is 0, not NaN). Scalar or [n]."""
    return torch.where(normalizer > 0, normalizer, torch.ones_like(normalizer))


@dataclass(frozen=True)
class LossAgg:
    """How per-token losses are averaged (``conf/loss_agg/``).

    Args:
        mode: ``token_mean`` (DAPO: every token of the mini-batch weighs the same),
            ``seq_mean_token_mean`` (original GRPO: mean per sequence, then over sequences),
            ``seq_mean_token_sum`` (sum per sequence, mean over sequences),
            ``seq_mean_token_sum_norm`` (Dr. GRPO: sum per sequence / a constant length, mean over sequences).
        max_len: the constant of ``seq_mean_token_sum_norm``; null = the rollout's max_new_tokens.
    """

    mode: str = "token_mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"loss_agg.mode={self.mode!r}; choose one of {list(MODES)}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"loss_agg.max_len must be >= 1, got {self.max_len}")

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """The mini-batch denominator on this rank: valid tokens (token_mean, unclamped: 0 on a rank without
        tokens, see the module docstring) or sequences (the seq_* modes)."""
        if self.mode == "token_mean":
            return response_mask.sum().to(torch.float32)
        n = torch.tensor(float(response_mask.shape[0]), device=response_mask.device)
        if self.mode == "seq_mean_token_sum_norm":
            length = self.max_len or max_len or response_mask.shape[1]
            return n * float(length)
        return n

    def __call__(self, per_token: torch.Tensor, response_mask: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
        """Sum of this micro-batch's share; summing over micro-batches gives the mini-batch loss."""
        mask = response_mask.to(per_token.dtype)
        normalizer = positive(normalizer)
        if normalizer.dim():  # [n]: each sequence's own denominator (rollout branches averaged separately)
            per_seq = (per_token * mask).sum(-1)
            if self.mode == "seq_mean_token_mean":
                per_seq = per_seq / mask.sum(-1).clamp(min=1)
            return (per_seq / normalizer).sum()
        if self.mode == "seq_mean_token_mean":
            per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            return per_seq.sum() / normalizer
        return (per_token * mask).sum() / normalizer
