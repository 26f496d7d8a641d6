"""Per-token policy-gradient objectives (to be minimised). Shapes: n sequences, L response tokens.

Every function returns the per-token loss [n, L] (un-aggregated; ``loss_agg`` reduces it) and detached
per-token indicators for statistics. Advantages come as [n] and are broadcast over tokens.

Every objective clamps the log-ratio before ``exp``, as verl (``verl/trainer/ppo/core_algos.py``) and EasyR1
(``verl/trainer/core_algos.py``) do: the token log-ratio to [-20, 20] (``LOG_RATIO_CLAMP``), GSPO's sequence
log-ratio to at most 10 (``GSPO_LOG_RATIO_MAX``, verl's ``compute_policy_loss_gspo``). Inside those bounds
nothing changes; beyond them the ratio is constant (zero gradient) instead of growing to inf, where
-A * inf with A = 0 (an all-equal group) made the loss NaN. ``vrl_kernels.masked_grpo_loss`` applies the same
clamp. (verl clamps CISPO's and SAPO's log-ratio too; its GMPO leaves the clamp commented out.)

Each option (``conf/policy_loss/<option>.yaml``) targets one small class that calls these functions (the
``PolicyLoss`` protocol); its ``fused`` property says whether the fused kernel can compute it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

#: |log r| bound of the token ratio (verl / EasyR1 ``compute_policy_loss``; e^20 = 4.85e8).
LOG_RATIO_CLAMP = 20.0
#: upper bound of GSPO's sequence log-ratio (verl ``compute_policy_loss_gspo``; e^10 = 22026).
GSPO_LOG_RATIO_MAX = 10.0


def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with asymmetric clip (DAPO's clip-higher) and optional dual clip.

    loss_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)); with ``dual_clip`` = c and A < 0 the
    loss is further capped at -c A (Ye et al., arXiv 1912.09729), so a huge ratio on a bad token cannot
    dominate the batch. r_t = exp(clamp(logp - old_logp, -20, 20)) (module docstring).

    Args:
        logprobs: [n, L] current policy log-probs (carries the gradient).
        old_logprobs: [n, L] sampling-policy log-probs (detached).
        advantages: [n] or [n, L].
        eps_low: lower clip range, ratio >= 1 - eps_low.
        eps_high: upper clip range, ratio <= 1 + eps_high.
        dual_clip: c > 1, or None to disable.

    Returns:
        per-token loss [n, L] and ``{"clipped": [n, L] bool}`` (the clipped branch was active).
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip is not None:
        capped = torch.minimum(loss, -adv * dual_clip)
        loss = torch.where(adv < 0, capped, loss)
        is_clipped = is_clipped | ((adv < 0) & (loss < torch.maximum(unclipped, clipped)))
    return loss, {"clipped": is_clipped.detach()}


def gspo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al., arXiv 2507.18071): one length-normalised sequence ratio per response.

    s_i = exp(mean_t (logp - old_logp)), computed token-wise as exp(min(sg[log s_i] + logp_t - sg[logp_t],
    10)) so the value is the sequence ratio (capped at e^10, as verl) while the gradient is spread evenly over
    the sequence's tokens.
    """
    adv = advantages if advantages.dim() == 1 else advantages[:, 0]
    mask = response_mask.to(logprobs.dtype)
    log_ratio = ((logprobs - old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    log_seq = (log_ratio.detach()[:, None] + logprobs - logprobs.detach()).clamp(max=GSPO_LOG_RATIO_MAX)
    seq_ratio = torch.exp(log_seq)
    unclipped = -adv[:, None] * seq_ratio
    clipped = -adv[:, None] * torch.clamp(seq_ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    return loss, {"clipped": (clipped > unclipped).detach()}


def cispo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float | None = None,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): loss_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * log p_t.

    The ratio only weighs the REINFORCE gradient -A * grad log p; no token is dropped from the gradient, as PPO's
    clip does. ``eps_low=None`` leaves the ratio without a floor (the paper tunes only eps_high). The loss value
    is not a surrogate of the return (it contains log p), only its gradient is meaningful.
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    weight = ratio.clamp(min=None if eps_low is None else 1.0 - eps_low, max=1.0 + eps_high)
    return -weight * adv * logprobs, {"clipped": weight != ratio}


def sapo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (arXiv 2511.20347): a smooth gate instead of the hard clip, loss_t = -A * f(r_t),
    f(r) = sigmoid(tau (r - 1)) * 4 / tau with tau = tau_pos where A > 0, else tau_neg.

    d loss / d log p = -A * 4 sigma (1 - sigma) r: -A at r = 1 (on-policy, as PPO), fading smoothly off-policy.
    Nothing is clipped (``clipped`` is all False).
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    loss = -adv * torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return loss, {"clipped": torch.zeros_like(loss, dtype=torch.bool)}


def gmpo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    eps_low: float = 0.4,
    eps_high: float = 0.4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO (Zhao et al., arXiv 2507.20673): the geometric mean of the token ratios instead of their arithmetic mean.

    Token log-ratios are clipped in log space, on the side the advantage's sign makes pessimistic
    (A > 0: min(x, clip(x, -eps_low, eps_high)); A < 0: the max), and s_i = exp(mean_t x_t) over the valid tokens;
    the sequence loss -A_i s_i is written on each of its tokens, so ``loss_agg=seq_mean_token_mean`` gives GMPO's
    mean over sequences (verl ``compute_policy_loss_geo_mean``).
    """
    adv = advantages if advantages.dim() == 1 else advantages[:, 0]
    mask = response_mask.to(logprobs.dtype)
    x = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    sign = torch.sign(adv)[:, None]
    kept = sign * torch.minimum(sign * x, sign * x.clamp(-eps_low, eps_high))
    seq_ratio = torch.exp((kept * mask).sum(-1) / mask.sum(-1).clamp(min=1))
    loss = (-adv * seq_ratio)[:, None].expand_as(logprobs)
    return loss, {"clipped": ((kept != x) & (sign != 0)).detach()}


class PolicyLoss(Protocol):
    """What the objective calls (``conf/policy_loss/<option>.yaml`` targets one of the classes below)."""

    def __call__(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[n, L], [n, L], [n], [n, L] -> per-token loss [n, L] and ``{"clipped": bool [n, L]}``."""
        ...

    @property
    def fused(self) -> dict[str, Any] | None:
        """Keyword arguments of ``vrl_kernels.masked_grpo_loss`` (eps_low, eps_high, dual_clip) when the fused
        kernel computes this loss, else None (``kernels=torch`` only)."""
        ...


def _check_clip(eps_low: float, eps_high: float) -> None:
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"policy_loss.eps_low/eps_high must be >= 0, got {eps_low}/{eps_high}")
    if eps_low >= 1:
        raise ValueError(f"policy_loss.eps_low must be < 1 (ratio floor 1-eps_low > 0), got {eps_low}")


@dataclass(frozen=True)
class PPOClip:
    """PPO clipped surrogate (arXiv 1707.06347), clip-higher from DAPO (arXiv 2503.14476), optional dual clip.

    Args:
        eps_low: lower clip range, ratio >= 1 - eps_low (PPO 0.2).
        eps_high: upper clip range, ratio <= 1 + eps_high (DAPO clip-higher 0.28).
        dual_clip: dual-clip constant c > 1 for negative advantages (Ye et al., arXiv 1912.09729), or null.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        _check_clip(self.eps_low, self.eps_high)
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"policy_loss.dual_clip must be > 1 or null, got {self.dual_clip}")

    @property
    def fused(self) -> dict[str, Any]:
        return {"eps_low": self.eps_low, "eps_high": self.eps_high, "dual_clip": self.dual_clip}

    def __call__(self, logprobs, old_logprobs, advantages, mask):
        return ppo_clip(logprobs, old_logprobs, advantages, self.eps_low, self.eps_high, self.dual_clip)


@dataclass(frozen=True)
class GSPO:
    """GSPO (Zheng et al., arXiv 2507.18071): one length-normalised sequence ratio per response.

    Args:
        eps_low: lower clip range of the sequence ratio (paper 3e-4).
        eps_high: upper clip range (paper 4e-4).
    """

    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def __post_init__(self) -> None:
        _check_clip(self.eps_low, self.eps_high)

    @property
    def fused(self) -> None:
        return None  # the kernel computes token ratios only

    def __call__(self, logprobs, old_logprobs, advantages, mask):
        return gspo(logprobs, old_logprobs, advantages, mask, self.eps_low, self.eps_high)


@dataclass(frozen=True)
class CISPO:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clipped, stop-gradient importance weight on the REINFORCE gradient.

    Args:
        eps_low: floor 1 - eps_low of the weight, or null for none (the paper: only the upper bound is tuned).
        eps_high: cap 1 + eps_high of the weight.
    """

    eps_low: float | None = None
    eps_high: float = 0.2

    def __post_init__(self) -> None:
        _check_clip(0.0 if self.eps_low is None else self.eps_low, self.eps_high)

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs, old_logprobs, advantages, mask):
        return cispo(logprobs, old_logprobs, advantages, self.eps_low, self.eps_high)


@dataclass(frozen=True)
class SAPO:
    """SAPO (arXiv 2511.20347): soft, sigmoid-gated ratio instead of the hard clip.

    Args:
        tau_pos: gate temperature for A > 0 (verl's default 1.0).
        tau_neg: gate temperature for A <= 0 (1.05: negative tokens' gate decays faster).
    """

    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def __post_init__(self) -> None:
        if self.tau_pos <= 0 or self.tau_neg <= 0:
            raise ValueError(f"policy_loss.tau_pos/tau_neg must be > 0, got {self.tau_pos}/{self.tau_neg}")

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs, old_logprobs, advantages, mask):
        return sapo(logprobs, old_logprobs, advantages, self.tau_pos, self.tau_neg)


@dataclass(frozen=True)
class GMPO:
    """GMPO (arXiv 2507.20673): geometric-mean sequence ratio with sign-aware log-space clipping.

    Args:
        eps_low: log-ratio floor -eps_low (the paper's clip range (e^-0.4, e^0.4)).
        eps_high: log-ratio cap eps_high.
    """

    eps_low: float = 0.4
    eps_high: float = 0.4

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"policy_loss.eps_low/eps_high must be >= 0, got {self.eps_low}/{self.eps_high}")

    @property
    def fused(self) -> None:
        return None

    def __call__(self, logprobs, old_logprobs, advantages, mask):
        return gmpo(logprobs, old_logprobs, advantages, mask, self.eps_low, self.eps_high)
