"""Importance-sampling correction for the sampler/learner mismatch (truncated IS, "TIS", and masked IS).

The tokens are drawn by a *sampler* (an inference server such as vLLM, HF ``generate``, or an older copy of the
policy in one-step-off-policy training) whose probabilities ``pi_s`` differ from the learner's ``pi_old``
(teacher-forced log-probs of the policy that the PPO ratio is taken against): other kernels and precision, a
stale weight version. The policy gradient is an expectation under ``pi_old``, so each token's (or sequence's)
loss is reweighted by ``rho = pi_old / pi_s`` (detached), truncated at ``cap`` to bound the variance
(Yao et al., "Your efficient RL framework secretly brings you off-policy RL training", 2025; verl's
``rollout_corr`` and TRL's ``vllm_importance_sampling_correction`` implement the same estimator). ``mode=mask``
instead drops the tokens (sequences) whose ratio exceeds ``cap`` (rejection, "MIS").

Shapes: N sequences, L response tokens. Pure functions first, the hook last.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from vrl.hooks import Hook, StepContext, TokenWeights
from vrl.types import SAMPLER_LOGPROBS, Rollout

LEVELS = ("token", "sequence", "geometric")
MODES = ("truncate", "mask")
_MAX_LOG_RATIO = 20.0  # exp(20) ~ 4.9e8: ratios are reported (not used) up to this, so a max never overflows


def log_ratios(learner: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log rho per token [N, L] (0 on padding): the token's own (``token``), its sequence's sum over valid tokens
    (``sequence``: the probability ratio of the whole response) or that sum divided by the response length
    (``geometric``: the per-token geometric mean, length-neutral), broadcast over the sequence's tokens."""
    if level not in LEVELS:
        raise ValueError(f"rollout_correction.level must be one of {LEVELS}, got {level!r}")
    delta = (learner.float() - sampler.float()) * mask
    if level == "token":
        return delta
    per_seq = delta.sum(-1, keepdim=True)
    if level == "geometric":
        per_seq = per_seq / mask.sum(-1, keepdim=True).clamp(min=1)
    return per_seq * mask


def is_weights(
    learner: torch.Tensor,
    sampler: torch.Tensor,
    mask: torch.Tensor,
    cap: float = 2.0,
    level: str = "token",
    mode: str = "truncate",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights on the policy-gradient term and the mismatch statistics.

    Args:
        learner: [N, L] log pi_old(y_t) from the learner's teacher-forced pass (detached).
        sampler: [N, L] log pi_s(y_t) the sampler reported for the same tokens.
        mask: [N, L] 1.0 on valid response tokens.
        cap: C > 0; ``truncate``: w = min(rho, C); ``mask``: w = 1 where rho <= C, else 0.
        level: ``token`` | ``sequence`` | ``geometric`` (see :func:`log_ratios`).
        mode: ``truncate`` | ``mask``.

    Returns:
        weights [N, L] (0 on padding, no gradient) and detached 0-dim stats over valid tokens (token level) or
        sequences with at least one valid token (other levels): ``ratio_mean|max|min``, ``clipped_frac`` (share
        above C), ``kl_k1`` = mean(log pi_s - log pi_old) and ``kl_k3`` = mean(rho - 1 - log rho), both per-token
        estimates of KL(pi_s || pi_old) from the sampler's own draws, ``logp_diff_abs_mean|max`` (per token) and
        ``ess`` = (sum w)^2 / (n sum w^2), the normalised effective sample size of the weights (1 = uniform).
    """
    if cap <= 0:
        raise ValueError(f"rollout_correction.cap must be > 0, got {cap}")
    if mode not in MODES:
        raise ValueError(f"rollout_correction.mode must be one of {MODES}, got {mode!r}")
    mask = mask.float()
    learner, sampler = learner.detach(), sampler.detach()
    log_rho = log_ratios(learner, sampler, mask, level)
    log_cap = math.log(cap)
    if mode == "truncate":
        weights = torch.exp(log_rho.clamp(max=log_cap)) * mask  # exp(min(.,log C)): never overflows
    else:
        weights = (log_rho <= log_cap).float() * mask
    # the units the statistics average over: tokens, or one entry per non-empty sequence
    if level == "token":
        valid = mask > 0
        unit_log_rho, unit_w = log_rho[valid], weights[valid]
    else:
        valid = mask.sum(-1) > 0
        first = mask.argmax(-1, keepdim=True)  # the broadcast value sits on every valid token: read the first
        unit_log_rho = log_rho.gather(-1, first).squeeze(-1)[valid]
        unit_w = weights.gather(-1, first).squeeze(-1)[valid]
    return weights.detach(), _stats(learner, sampler, mask, unit_log_rho, unit_w, log_cap)


def _stats(learner, sampler, mask, unit_log_rho, unit_w, log_cap) -> dict[str, torch.Tensor]:
    tokens = mask > 0
    delta = (learner.float() - sampler.float())[tokens]  # per token: log pi_old - log pi_s
    zero = torch.zeros((), device=mask.device)
    if unit_log_rho.numel() == 0 or delta.numel() == 0:
        keys = ("ratio_mean", "ratio_max", "ratio_min", "clipped_frac", "kl_k1", "kl_k3")
        return dict.fromkeys((*keys, "logp_diff_abs_mean", "logp_diff_abs_max", "ess"), zero)
    rho = torch.exp(unit_log_rho.clamp(max=_MAX_LOG_RATIO))
    tok_rho = torch.exp(delta.clamp(max=_MAX_LOG_RATIO))
    w = unit_w.float()
    return {
        "ratio_mean": rho.mean(),
        "ratio_max": rho.max(),
        "ratio_min": rho.min(),
        "clipped_frac": (unit_log_rho > log_cap).float().mean(),
        "kl_k1": (-delta).mean(),
        "kl_k3": (tok_rho - 1 - delta).mean(),
        "logp_diff_abs_mean": delta.abs().mean(),
        "logp_diff_abs_max": delta.abs().max(),
        "ess": w.sum() ** 2 / (w.numel() * (w**2).sum()).clamp(min=1e-30),
    }


class RolloutCorrection(Hook):
    """Reweights the policy-gradient term by the truncated IS ratio between learner and sampler (H5 + H9).

    It needs the sampler's log-probs of the sampled tokens: ``rollout.extras["sampler_logprobs"]`` (what
    ``sampler=openai_server`` returns), or ``rollout.old_logprobs`` from ``sampler.logprobs=true`` (HF
    ``generate``). Its ``on_rollout`` keeps them in the extras and clears ``old_logprobs`` (whichever sampler set
    it), and it declares ``needs_old_logprobs``, so the loop scores the learner's teacher-forced old log-probs;
    ``token_weights`` then returns ``w`` [N, L] (multiplied into the PG term's token weights: the KL,
    entropy and NLL terms are not reweighted, as in TRL and verl) and logs ``rollout_correction/*``. The weights
    are token weights like VPPO's mask, so ``policy/kept_token_frac`` reads their mean (it can exceed 1) and
    ``policy/clipfrac`` is weighted by them.

    Args:
        cap: C, the truncation (or rejection) threshold on rho; 2.0 as TRL's default
            (``vllm_importance_sampling_cap``).
        level: ``token`` (TIS, per-token ratios: TRL's original correction) | ``sequence`` | ``geometric``.
        mode: ``truncate`` (min(rho, C)) | ``mask`` (drop what exceeds C).
        order: after other ``on_rollout`` hooks (a branch they attach still carries ``old_logprobs``).
    """

    needs_old_logprobs = True

    def __init__(self, cap: float = 2.0, level: str = "token", mode: str = "truncate", order: int = 90) -> None:
        if cap <= 0 or level not in LEVELS or mode not in MODES:
            raise ValueError(
                f"rollout_correction: need cap > 0, level in {LEVELS}, mode in {MODES}; got {cap}, {level!r}, {mode!r}"
            )
        self.cap, self.level, self.mode, self.order = cap, level, mode, order

    def on_rollout(self, rollout: Rollout, ctx: StepContext) -> Rollout:
        sampler = rollout.extras.get(SAMPLER_LOGPROBS, rollout.old_logprobs)
        if sampler is None:
            raise ValueError(
                "hooks.rollout_correction needs the sampler's log-probs: use sampler=openai_server, or "
                "sampler.logprobs=true with the HF sampler"
            )
        extras = {**rollout.extras, SAMPLER_LOGPROBS: sampler}
        return replace(rollout, extras=extras, old_logprobs=None)  # the loop scores the learner's own

    def token_weights(self, rollout: Rollout, ctx: StepContext) -> TokenWeights:
        mask = rollout.response_mask
        sampler = rollout.extras[SAMPLER_LOGPROBS].to(mask.device)
        weights, stats = is_weights(rollout.old_logprobs, sampler, mask, self.cap, self.level, self.mode)
        ctx.log({f"rollout_correction/{k}": float(v) for k, v in stats.items()})
        return TokenWeights(loss=weights)
