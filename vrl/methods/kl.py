"""Per-token KL estimators between the policy and the frozen reference (Schulman, "Approximating KL").

With d = ref_logp - logp evaluated at tokens sampled from the policy:
k1 = -d (unbiased, high variance, can be negative), k2 = d^2 / 2, k3 = exp(d) - d - 1 (unbiased, >= 0).

k3 is computed as verl / EasyR1 ``low_var_kl`` (and the RewardMap code) compute it: d clamped to [-20, 20]
(an exp overflow guard), and the estimate clamped to [-10, 10] (``k3_clamp``; k3 >= 0, so in effect at most
10, reached near d = 2.6 or d = -11). ``vrl_kernels.masked_grpo_loss`` applies the same two clamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3", k3_clamp: float | None = 10.0
) -> torch.Tensor:
    """Per-token KL estimate [n, L] of KL(pi || pi_ref); gradients flow through ``logprobs``.

    ``k3_clamp`` bounds the k3 estimate to [-k3_clamp, k3_clamp] (zero gradient beyond); None = unclamped.
    """
    d = ref_logprobs - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        d = d.clamp(-20.0, 20.0)  # exp overflow guard; |d| > 20 means the estimate is meaningless anyway
        k3 = torch.exp(d) - d - 1.0
        return k3 if k3_clamp is None else k3.clamp(-k3_clamp, k3_clamp)
    raise ValueError(f"kl.estimator={estimator!r}; choose k1, k2 or k3")


@dataclass(frozen=True)
class KLPenalty:
    """KL-to-reference term added to the per-token loss (``conf/kl/``). ``kl: null`` loads no reference.

    Args:
        estimator: ``k1``, ``k2`` or ``k3`` (GRPO's choice).
        coef: beta; GRPO used 0.04, most VLM recipes (DAPO, VPPO) switch the term off.
        k3_clamp: the k3 estimate is clamped to [-k3_clamp, k3_clamp] with zero gradient beyond, as verl,
            EasyR1 and RewardMap clamp ``low_var_kl`` (10); null keeps the raw estimate (TRL's GRPO), whose
            gradient keeps pulling a token whose log-prob fell far below the reference's.
    """

    estimator: str = "k3"
    coef: float = 0.04
    k3_clamp: float | None = 10.0

    def __post_init__(self) -> None:
        if self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl.estimator={self.estimator!r}; choose k1, k2 or k3")
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")
        if self.k3_clamp is not None and self.k3_clamp <= 0:
            raise ValueError(f"kl.k3_clamp must be > 0 or null, got {self.k3_clamp}")

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return kl_estimate(logprobs, ref_logprobs, self.estimator, self.k3_clamp)
