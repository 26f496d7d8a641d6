"""Per-token KL estimators between the policy and the frozen reference (Schulman, "Approximating KL").

With d = ref_logp - logp evaluated at tokens sampled from the policy:
k1 = -d (unbiased, high variance, can be negative), k2 = d^2 / 2, k3 = exp(d) - d - 1 (unbiased, >= 0);
``abs`` = |d| (verl's ``kl_penalty="abs"``: biased, >= 0, a constant-size gradient sign(-d) whatever |d|).

k3 is computed as verl / EasyR1 ``low_var_kl`` (and the RewardMap code) compute it: d clamped to [-20, 20]
(an exp overflow guard), and the estimate clamped to [-10, 10] (``clamp``; k3 >= 0, so in effect at most
10, reached near d = 2.6 or d = -11). ``vrl_kernels.masked_grpo_loss`` applies the same two clamps.

Each option (``conf/kl/<option>.yaml``) targets one small class (the ``KLPenalty`` protocol): ``coef`` (beta),
``__call__(logprobs, ref_logprobs) -> [n, L]`` and ``fused``, the fused kernel's KL arguments or None.
``conf/kl/none.yaml`` is empty: no KL term, no reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

#: |d| bound before exp in k3 (verl / EasyR1 ``low_var_kl``); beyond it the estimate is meaningless anyway.
K3_LOG_RATIO_CLAMP = 20.0


class KLPenalty(Protocol):
    """KL-to-reference term added to the per-token loss with weight ``coef``."""

    coef: float

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        """[n, L] per-token estimate of KL(pi || pi_ref); gradients flow through ``logprobs``."""
        ...

    @property
    def fused(self) -> dict[str, Any] | None:
        """Keyword arguments of ``vrl_kernels.masked_grpo_loss`` for this estimator (its k3 ``kl_clamp``), or
        None when the fused kernel cannot compute it."""
        ...


def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp."""
    return -(ref_logprobs - logprobs)


def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (ref_logp - logp)^2 / 2."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def abs_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """|logp - ref_logp| (verl's ``abs``)."""
    return (logprobs - ref_logprobs).abs()


def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d clamped to [-20, 20]; the estimate clamped to [-clamp, clamp] (zero gradient
    beyond), None = unclamped."""
    d = (ref_logprobs - logprobs).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    est = torch.exp(d) - d - 1.0
    return est if clamp is None else est.clamp(-clamp, clamp)


def _check_coef(coef: float) -> None:
    if coef < 0:
        raise ValueError(f"kl.coef must be >= 0, got {coef}")


@dataclass(frozen=True)
class K1:
    """k1 = logp - ref_logp (unbiased, high variance, can be negative).

    Args:
        coef: beta; GRPO used 0.04, most VLM recipes (DAPO, VPPO) switch the term off (``kl=none``).
    """

    coef: float = 0.04

    def __post_init__(self) -> None:
        _check_coef(self.coef)

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return k1(logprobs, ref_logprobs)


@dataclass(frozen=True)
class K2:
    """k2 = (ref_logp - logp)^2 / 2 (biased, low variance).

    Args:
        coef: beta.
    """

    coef: float = 0.04

    def __post_init__(self) -> None:
        _check_coef(self.coef)

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return k2(logprobs, ref_logprobs)


@dataclass(frozen=True)
class K3:
    """k3 = exp(d) - d - 1 (unbiased, >= 0): GRPO's choice, verl/EasyR1 ``low_var_kl``.

    Args:
        coef: beta; GRPO used 0.04.
        clamp: the estimate is clamped to [-clamp, clamp] with zero gradient beyond, as verl, EasyR1 and
            RewardMap clamp ``low_var_kl`` (10); null keeps the raw estimate (TRL's GRPO), whose gradient keeps
            pulling a token whose log-prob fell far below the reference's.
    """

    coef: float = 0.04
    clamp: float | None = 10.0

    def __post_init__(self) -> None:
        _check_coef(self.coef)
        if self.clamp is not None and self.clamp <= 0:
            raise ValueError(f"kl.clamp must be > 0 or null, got {self.clamp}")

    @property
    def fused(self) -> dict[str, Any]:
        return {"kl_clamp": self.clamp}

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return k3(logprobs, ref_logprobs, self.clamp)


@dataclass(frozen=True)
class Abs:
    """|logp - ref_logp| (verl ``kl_penalty="abs"``): >= 0 like k3, but its gradient has the same size, 1, for a
    small and a large gap.

    Args:
        coef: beta.
    """

    coef: float = 0.04

    def __post_init__(self) -> None:
        _check_coef(self.coef)

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        return abs_kl(logprobs, ref_logprobs)
