"""Step metrics computed from a scored rollout (names follow ``<section>/<name>``), merged over DDP ranks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vrl.lit.dist import gather_objects
from vrl.types import Rollout


def rollout_columns(rollout: Rollout, max_len: int | None = None) -> dict[str, Any]:
    """What the rollout metrics are computed from, one value per sequence, on the CPU: rewards, reward
    components, response lengths, whether each hit the length cap ``max_len`` (default: the response width), and
    group ids. Under DDP each rank's columns are gathered and merged (:func:`merge_columns`) first, so the metrics
    describe the global batch."""
    lengths = rollout.response_mask.sum(-1).float().cpu()
    return {
        "rewards": rollout.rewards.float().cpu(),
        "components": {k: v.float().cpu() for k, v in rollout.reward_components.items()},
        "lengths": lengths,
        "truncated": (lengths >= (max_len or rollout.response_mask.shape[1])).float(),
        "group_ids": rollout.group_ids.cpu(),
    }


def merge_columns(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several ranks' :func:`rollout_columns` as one batch (group ids offset to stay distinct)."""
    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += int(part["group_ids"].max()) + 1 if part["group_ids"].numel() else 0
    keys = list(dict.fromkeys(k for part in parts for k in part["components"]))
    return {
        "rewards": torch.cat([p["rewards"] for p in parts]),
        "components": {
            k: torch.cat([p["components"].get(k, torch.full_like(p["rewards"], float("nan"))) for p in parts])
            for k in keys
        },
        "lengths": torch.cat([p["lengths"] for p in parts]),
        "truncated": torch.cat([p["truncated"] for p in parts]),
        "group_ids": torch.cat([p["group_ids"] + off for p, off in zip(parts, offsets)]),
    }


def rollout_metrics(rollout: Rollout | dict[str, Any], max_len: int | None = None) -> dict[str, float]:
    """Reward mean/std per component, accuracy, response length and group-degeneracy statistics, from a rollout
    or from its (merged) :func:`rollout_columns`."""
    cols = rollout if isinstance(rollout, dict) else rollout_columns(rollout, max_len)
    out: dict[str, float] = {}
    rewards = cols["rewards"]
    out["rollout/reward_mean"] = rewards.mean().item()
    out["rollout/reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
    for name, values in cols["components"].items():
        values = values[~torch.isnan(values)]  # NaN: a term of another rollout branch (not measured here)
        if values.numel():
            out[f"reward/{name}_mean"] = values.mean().item()
            out[f"reward/{name}_std"] = values.std().item() if values.numel() > 1 else 0.0
    if "accuracy" in cols["components"]:
        out["rollout/accuracy"] = cols["components"]["accuracy"].mean().item()
    out["rollout/response_len_mean"] = cols["lengths"].mean().item()
    out["rollout/response_len_max"] = cols["lengths"].max().item()
    out["rollout/truncated_frac"] = cols["truncated"].mean().item()
    out["rollout/equal_reward_group_frac"] = equal_reward_group_fraction(rewards, cols["group_ids"])
    return out


#: How per-rank scalars become the step's value under DDP (anything else: the mean over the ranks that logged
#: it, e.g. a hook's ``ctx.log`` values): the slowest rank's time, the job's throughput.
RANK_MAX = ("perf/step_time_s", "perf/rollout_time_s")
RANK_SUM = (
    "perf/tokens_per_s",
    # what a stage's builder made on this rank (each rank builds from its own shard): the run's count is the sum
    "dpo/pairs_built", "dpo/pairs_dropped", "dpo/questions", "sft/candidates", "sft/kept",
)  # fmt: skip


def merge_scalars(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank scalar metrics -> one value each (:data:`RANK_MAX`, :data:`RANK_SUM`, else the mean)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = [float(part[key]) for part in parts if key in part]
        out[key] = max(values) if key in RANK_MAX else sum(values) if key in RANK_SUM else sum(values) / len(values)
    return out


def merge_totals(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank token sums of the update (``Objective`` stats) -> global sums."""
    out: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0.0) + float(value)
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


def global_metrics(module: Any, scalars: dict, columns: dict | None = None, totals: dict | None = None) -> dict:
    """A step's metrics over the global batch: under DDP every rank's rollout columns, scalars and update sums are
    gathered (one collective) and merged, so every rank logs (and a curriculum reads) the same values, equal to one
    process's over the same prompts. ``_totals`` holds the merged update sums."""
    parts = gather_objects(module, (scalars, columns, totals or {}))
    out = merge_scalars([p[0] for p in parts])
    if columns is not None:
        out |= rollout_metrics(merge_columns([p[1] for p in parts]))
    return out | {"_totals": merge_totals([p[2] for p in parts])} if totals is not None else out


def log_step(module: Any, metrics: dict[str, float], prog_bar: dict[str, float] | None = None) -> None:
    """One training step's metrics as one record: to every logger, and to what callbacks and stage rules read.

    Why not ``self.log_dict``: Lightning's per-key bookkeeping (a result object per key, moved and detached key by
    key) cost ~7 ms of a 78 ms small-batch step for the ~35 keys vrl logs (LOG 2026-11-25, speed yardstick), and
    a training step's values are already global Python floats (:func:`global_metrics`) that need no reduction.
    The record goes where Lightning's own logging would put it: ``trainer.callback_metrics`` (stage rules, the
    console, checkpoint monitors), the progress bar, and each logger at Lightning's step count, on rank 0 only (the
    loggers' ``log_metrics`` are rank-zero-only), honouring ``trainer.log_every_n_steps``.
    """
    trainer = module.trainer
    connector = trainer._logger_connector  # the step count, epoch key and save() exactly as Lightning logs them
    trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in (metrics | (prog_bar or {})).items()})
    if prog_bar:
        trainer.progress_bar_metrics.update({k: float(v) for k, v in prog_bar.items()})
    if connector.should_update_logs:
        connector.log_metrics({k: float(v) for k, v in metrics.items()})
