"""Step metrics computed from a scored rollout (names follow ``<section>/<name>``)."""

from __future__ import annotations

import numpy as np
import torch

from vrl.types import Rollout


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """Reward mean/std per component, accuracy, response length and group-degeneracy statistics."""
    out: dict[str, float] = {}
    rewards = rollout.rewards.float()
    out["rollout/reward_mean"] = rewards.mean().item()
    out["rollout/reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
    for name, values in rollout.reward_components.items():
        values = values.float()
        values = values[~torch.isnan(values)]  # NaN: a term of another rollout branch (not measured here)
        if values.numel():
            out[f"reward/{name}_mean"] = values.mean().item()
            out[f"reward/{name}_std"] = values.std().item() if values.numel() > 1 else 0.0
    if "accuracy" in rollout.reward_components:
        out["rollout/accuracy"] = rollout.reward_components["accuracy"].float().mean().item()
    lengths = rollout.response_mask.sum(-1).float()
    out["rollout/response_len_mean"] = lengths.mean().item()
    out["rollout/response_len_max"] = lengths.max().item()
    out["rollout/truncated_frac"] = (lengths >= rollout.response_mask.shape[1]).float().mean().item()
    out["rollout/equal_reward_group_frac"] = equal_reward_group_fraction(rewards, rollout.group_ids)
    return out


def equal_reward_group_fraction(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Fraction of groups whose G rewards are all equal (they carry zero GRPO signal)."""
    groups = torch.unique(group_ids)
    if groups.numel() == 0:
        return 0.0
    equal = [bool((rewards[group_ids == g] == rewards[group_ids == g][0]).all()) for g in groups.tolist()]
    return sum(equal) / len(equal)


def update_metrics(totals: dict[str, float], losses: list[float], grad_norms: list[float]) -> dict[str, float]:
    """The update's metrics from token sums accumulated over micro-batches (``Objective`` stats), the losses
    and the gradient norms of the optimizer steps taken."""
    tokens = max(totals.get("tokens", 0.0), 1.0)
    out = {"train/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan")}
    if losses:
        out["train/loss"] = float(np.mean(losses))
    out["policy/clipfrac"] = totals.get("clipped_sum", 0.0) / max(totals.get("kept_tokens", 0.0), 1.0)
    out["policy/kept_token_frac"] = totals.get("kept_tokens", 0.0) / tokens
    if "pg_sum" in totals:  # the fused kernel path does not split the loss into terms
        out["policy/pg_loss_token_mean"] = totals["pg_sum"] / tokens
    for key in ("kl", "entropy", "nll"):
        if f"{key}_sum" in totals:
            out[f"policy/{key}" if key != "kl" else "policy/kl_ref"] = totals[f"{key}_sum"] / tokens
    return out


def perf_metrics(rollout: Rollout, elapsed: float, rollout_time: float) -> dict[str, float]:
    """Step time, the share spent sampling and scoring rewards, and tokens (prompt + response) per second."""
    return {
        "perf/step_time_s": elapsed,
        "perf/rollout_time_s": rollout_time,
        "perf/tokens_per_s": float(rollout.attention_mask.sum()) / elapsed,
    }
