"""Loss aggregation: per-token losses [n, L] of a micro-batch -> one scalar.

The denominator is computed once per optimizer step over the whole mini-batch (``normalizer``) and passed
to every micro-batch, so gradient accumulation over micro-batches equals one pass over the mini-batch for
every aggregation (the classic bug is normalising per micro-batch).

Under DDP the caller averages each rank's ``normalizer`` over ranks (gradients are averaged too), so the
token count must stay unclamped until then: a rank with zero tokens contributes 0, not 1, and the one guard
against an all-empty step (``positive``) is applied to the reduced value, at division. A per-rank
``clamp(min=1)`` made a rank without tokens count as one token and shrank every other rank's gradient.

Each option (``conf/loss_agg/<option>.yaml``) targets one small class with three methods (the ``LossAgg``
protocol), and they agree: ``agg(per_token, mask, Z) == sum(per_token * agg.token_weights(mask)) / positive(Z)``
(per sequence when Z is [n]); the fused kernel path uses ``token_weights`` and ``normalizer`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LossAgg(Protocol):
    """How per-token losses are averaged (``conf/loss_agg``)."""

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """The mini-batch denominator on this rank (scalar; unclamped, see the module docstring)."""
        ...

    def token_weights(self, response_mask: torch.Tensor) -> torch.Tensor:
        """[n, L] weight of each token's loss in the numerator (0 on padding)."""
        ...

    def __call__(self, per_token: torch.Tensor, response_mask: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share; summing over micro-batches gives the mini-batch loss."""
        ...


def positive(normalizer: torch.Tensor) -> torch.Tensor:
    """The denominator as divided: a global count of 0 becomes 1 (no valid token anywhere, so every
    numerator is 0 and the loss is 0, not NaN). Scalar or [n]."""
    return torch.where(normalizer > 0, normalizer, torch.ones_like(normalizer))


def token_count(response_mask: torch.Tensor) -> torch.Tensor:
    """Valid tokens on this rank, unclamped (0 on a rank without tokens)."""
    return response_mask.sum().to(torch.float32)


def sequence_count(response_mask: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(response_mask.shape[0]), device=response_mask.device)


def reduce_tokens(
    per_token: torch.Tensor, response_mask: torch.Tensor, normalizer: torch.Tensor, mean_per_sequence: bool = False
) -> torch.Tensor:
    """sum(per_token * mask) / Z, or with ``mean_per_sequence`` each sequence's sum divided by its own length
    first; a [n] normalizer divides each sequence by its own denominator (rollout branches averaged
    separately)."""
    mask = response_mask.to(per_token.dtype)
    normalizer = positive(normalizer)
    if normalizer.dim() or mean_per_sequence:
        per_seq = (per_token * mask).sum(-1)
        if mean_per_sequence:
            per_seq = per_seq / mask.sum(-1).clamp(min=1)
        return (per_seq / normalizer).sum() if normalizer.dim() else per_seq.sum() / normalizer
    return (per_token * mask).sum() / normalizer


@dataclass(frozen=True)
class TokenMean:
    """DAPO (arXiv 2503.14476): every token of the mini-batch weighs the same; Z = valid tokens."""

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        return token_count(response_mask)

    def token_weights(self, response_mask: torch.Tensor) -> torch.Tensor:
        return response_mask

    def __call__(self, per_token, response_mask, normalizer) -> torch.Tensor:
        return reduce_tokens(per_token, response_mask, normalizer)


@dataclass(frozen=True)
class SeqMeanTokenMean:
    """Original GRPO: mean over each sequence's tokens, then over the mini-batch's sequences; Z = sequences."""

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        return sequence_count(response_mask)

    def token_weights(self, response_mask: torch.Tensor) -> torch.Tensor:
        return response_mask / response_mask.sum(-1, keepdim=True).clamp(min=1)  # 1 / L_i per token

    def __call__(self, per_token, response_mask, normalizer) -> torch.Tensor:
        return reduce_tokens(per_token, response_mask, normalizer, mean_per_sequence=True)


@dataclass(frozen=True)
class SeqMeanTokenSum:
    """Sum over each sequence's tokens, mean over the mini-batch's sequences; Z = sequences."""

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        return sequence_count(response_mask)

    def token_weights(self, response_mask: torch.Tensor) -> torch.Tensor:
        return response_mask

    def __call__(self, per_token, response_mask, normalizer) -> torch.Tensor:
        return reduce_tokens(per_token, response_mask, normalizer)


@dataclass(frozen=True)
class SeqMeanTokenSumNorm:
    """Dr. GRPO (arXiv 2503.20783): sum per sequence divided by a constant length, mean over sequences;
    Z = sequences x length.

    Args:
        max_len: the constant length; null = the rollout's ``max_new_tokens`` (passed to ``normalizer``).
    """

    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"loss_agg.max_len must be >= 1, got {self.max_len}")

    def normalizer(self, response_mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        length = self.max_len or max_len or response_mask.shape[1]
        return sequence_count(response_mask) * float(length)

    def token_weights(self, response_mask: torch.Tensor) -> torch.Tensor:
        return response_mask

    def __call__(self, per_token, response_mask, normalizer) -> torch.Tensor:
        return reduce_tokens(per_token, response_mask, normalizer)
