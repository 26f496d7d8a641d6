"""Step metrics computed from a scored rollout (names follow ``<section>/<name>``)."""

from __future__ import annotations

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
