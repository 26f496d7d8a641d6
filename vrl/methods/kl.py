"""Per-token KL estimators between the policy and the frozen reference (Schulman, "Approximating KL").

With d = ref_logp - logp evaluated at tokens sampled from the policy:
k1 = -d (unbiased, high variance, can be negative), k2 = d^2 / 2, k3 = exp(d) - d - 1 (unbiased, >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate [n, L] of KL(pi || pi_ref); gradients flow through ``logprobs``."""
    d = ref_logprobs - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        d = d.clamp(-20.0, 20.0)  # exp overflow guard; |d| > 20 means the estimate is meaningless anyway
        return torch.exp(d) - d - 1.0
    raise ValueError(f"kl.estimator={estimator!r}; choose k1, k2 or k3")


@dataclass(frozen=True)
class KLPenalty:
    """KL-to-reference term added to the per-token loss (``conf/kl/``). ``kl: null`` loads no reference.

    Args:
        estimator: ``k1``, ``k2`` or ``k3`` (GRPO's choice).
        coef: beta; GRPO used 0.04, most VLM recipes (DAPO, VPPO) switch the term off.
    """

    estimator: str = "k3"
    coef: float = 0.04

    def __post_init__(self) -> None:
        if self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl.estimator={self.estimator!r}; choose k1, k2 or k3")
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return kl_estimate(logprobs, ref_logprobs, self.estimator)
