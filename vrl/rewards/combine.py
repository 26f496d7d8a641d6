"""RewardSet: call every configured reward term, weight and sum them, keep the components for logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class RewardSet:
    """The weighted sum of named reward terms (``conf/reward/``).

    Args:
        terms: name -> reward object with ``weight`` and ``__call__(responses, samples) -> list[float]``.
            ``null`` entries are dropped, so a term can be switched off with ``reward.format=null``.
    """

    def __init__(self, terms: Mapping[str, Any]) -> None:
        self.terms = {name: t for name, t in terms.items() if t is not None}
        if not self.terms:
            raise ValueError("reward: no reward terms configured (every entry is null)")

    def __call__(self, responses: list[str], samples: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score N responses.

        Returns:
            total [N] (sum of weight * term) and name -> [N] unweighted component values.

        Raises:
            ValueError: a term returned a number of values other than N (a bug in the term, not in one
                sample, so it stops the run at once, naming the term).
        """
        n = len(responses)
        total = torch.zeros(n, dtype=torch.float32)
        components = {}
        for name, term in self.terms.items():
            values = term(responses, samples)
            if len(values) != n:
                raise ValueError(f"reward term {name!r} returned {len(values)} values for {n} responses")
            values = torch.tensor([float(v) for v in values], dtype=torch.float32)
            components[name] = values
            total += float(getattr(term, "weight", 1.0)) * values
        return total, components
