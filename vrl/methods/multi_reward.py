"""Multi-reward advantages: the reward components stay separate until the advantage step (others.md, note 5).

The reward set logs each term's unweighted values (``rollout.reward_components``) next to their weighted sum
(``rollout.rewards``). These estimators read the components instead of the sum:

- :class:`WeightedSum`: ``R = sum_k w_k r_k``, then the base estimator. With the reward set's own weights this is
  the base estimator on the total; ``weights`` re-weights terms at the advantage without touching the reward.
- :class:`LogTame` (PaCo-RL, arXiv 2512.04784, ``log_tame_aggregate_fn`` in github.com/X-GenGroup/PaCo-RL
  @08caac6 ``PaCo-GRPO/config/grpo.py``): per component, over the batch, the coefficient of variation
  ``h_k = std(r_k) / (mean(r_k) + 1e-6)`` (population std, as numpy); components with ``h_k`` above the threshold
  (the mean of the h's, their median, or a number) become ``log(1 + r_k)``; then ``R = sum_k w_k r_k`` and the base
  estimator. A spiky, heavy-tailed reward is compressed so it cannot drown the others.
- :class:`ComponentNorm` (PaCo's ``weighted_advantage_sum_aggregate_fn``; Vision-SR1 v2's decoupled advantages):
  each component normalised by the base estimator on its own, then ``A = sum_k w_k A_k``, so a term with a small
  spread still moves the policy.

Weights: ``weights[k]`` when given, else the reward set's weight of term k (passed by the loop), else 1. A term
of weight 0 (a monitoring term) contributes nothing. The base estimator (``base``, default GRPO's
:class:`~vrl.methods.advantage.GroupZScore`) is any option of the ``advantage`` group.

The loop calls ``advantage(rewards, group_ids, response_mask, **advantage_inputs(advantage, rollout, reward))``:
:func:`advantage_inputs` adds ``components=`` and ``weights=`` for estimators that declare ``uses_components``. Without
``components`` (a loop that does not pass them) each estimator warns once and applies its base estimator to the
total reward. NaN component values (a term not measured on some rows, e.g. another rollout branch) count as 0.

Deliberate differences from PaCo-RL: the released tracker returns a custom aggregate function's output as the
advantages themselves, so with ``log_tame_aggregate_fn`` the tamed weighted sum reaches the loss unnormalised
(no baseline); vrl normalises it per group, as the paper describes (R, then GRPO's per-prompt normalisation).
PaCo's own normaliser is ``(R - mean_group) / max(std, 1e-6)`` with the population std of the whole batch
(``global_std=True``); ``base: GroupMeanBatchStd`` is the nearest option (unbiased std + eps). Statistics are this
rank's under DDP (PaCo gathers rewards from every process first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from .advantage import Advantage, GroupZScore

logger = logging.getLogger("vrl")

THRESHOLDS = ("mean", "median")


def component_weights(
    names: list[str], override: Mapping[str, float] | None, reward_weights: Mapping[str, float] | None
) -> dict[str, float]:
    """Weight of each component: ``override`` first, then the reward set's weights, then 1."""
    out = {}
    for name in names:
        if override is not None and name in override:
            out[name] = float(override[name])
        elif reward_weights is not None and name in reward_weights:
            out[name] = float(reward_weights[name])
        else:
            out[name] = 1.0
    return out


def coefficient_of_variation(values: torch.Tensor) -> float:
    """``std / (mean + 1e-6)`` over all values, population std (numpy's default, as PaCo)."""
    v = values.double()
    return float(v.std(unbiased=False) / (v.mean() + 1e-6)) if v.numel() else 0.0


def tamed_components(components: Mapping[str, torch.Tensor], threshold: float | str = "mean") -> dict[str, bool]:
    """Which components log-tame replaces by ``log(1 + r)``: those whose coefficient of variation is above
    ``threshold`` (a number, or ``"mean"`` / ``"median"`` of the components' coefficients; numpy's median, the
    average of the two middle values for an even count)."""
    h = {name: coefficient_of_variation(values) for name, values in components.items()}
    if isinstance(threshold, str):
        if threshold not in THRESHOLDS:
            raise ValueError(f"advantage.threshold must be a number or one of {THRESHOLDS}, got {threshold!r}")
        values = sorted(h.values())
        if threshold == "mean":
            cut = sum(values) / len(values) if values else 0.0
        else:
            mid = len(values) // 2
            cut = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2 if values else 0.0
    else:
        cut = float(threshold)
    return {name: value > cut for name, value in h.items()}


def log_tame(components: Mapping[str, torch.Tensor], threshold: float | str = "mean") -> dict[str, torch.Tensor]:
    """The components after PaCo's log-tame: ``log(1 + r)`` for the high-variation ones, the rest unchanged.

    Raises:
        ValueError: a component to tame has a value <= -1, where ``log(1 + r)`` is undefined (tame only rewards
            that are >= 0, as PaCo's scores are: leave penalties out with ``components``).
    """
    tame = tamed_components(components, threshold)
    out = {}
    for name, values in components.items():
        if tame[name]:
            if values.numel() and float(values.min()) <= -1:
                raise ValueError(
                    f"advantage: log-tame of reward component {name!r} needs values > -1, got {float(values.min())}; "
                    "leave it out with advantage.components"
                )
            values = torch.log1p(values.double()).to(values.dtype)
        out[name] = values
    return out


def advantage_inputs(advantage: Any, rollout: Any, reward: Any) -> dict[str, Any]:
    """The keyword arguments the loop adds to ``advantage(rewards, group_ids, response_mask, ...)``: the rollout's
    reward components and the reward set's weights for an estimator with ``uses_components``, else none (the
    single-reward estimators take neither)."""
    if not getattr(advantage, "uses_components", False):
        return {}
    return {"components": rollout.reward_components, "weights": getattr(reward, "weights", None)}


_WARNED: set[str] = set()  # the classes that warned about a loop passing no components


class Aggregation:
    """What the three estimators share (each holds one): the weights override, the base estimator, the resolution
    of components and weights, and the fallback when the loop passes no components.

    Args:
        owner: the estimator's class name (named in the fallback warning, once per class).
        weights: component -> weight, overriding the reward set's weights (None: the reward set's).
        base: the estimator applied after aggregation (None: GRPO's group z-score, eps 1e-6).
    """

    def __init__(self, owner: str, weights: Mapping[str, float] | None = None, base: Advantage | None = None) -> None:
        self.owner = owner
        self.weights = dict(weights) if weights else None
        self.base = base if base is not None else GroupZScore()

    @property
    def normalises_scale(self) -> bool:
        return bool(getattr(self.base, "normalises_scale", False))

    def resolve(
        self, rewards: torch.Tensor, components: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The components as float64 on the rewards' device (NaN -> 0) and their weights."""
        comps = {k: torch.nan_to_num(v.to(rewards.device, torch.float64), nan=0.0) for k, v in components.items()}
        unknown = sorted(set(self.weights or {}) - set(comps))
        if unknown:
            raise ValueError(f"advantage.weights names {unknown}, which are not reward terms ({sorted(comps)})")
        return comps, component_weights(list(comps), self.weights, weights)

    def fallback(self, rewards: torch.Tensor, group_ids: torch.Tensor, response_mask=None) -> torch.Tensor:
        """The base estimator on the total reward, with a warning once per class: the loop passed no components."""
        if self.owner not in _WARNED:
            _WARNED.add(self.owner)
            logger.warning(
                "advantage %s: the loop passed no reward components, so it falls back to its base estimator on the "
                "total reward. The loop must add vrl.methods.multi_reward.advantage_inputs(advantage, rollout, "
                "reward) to its advantage call.",
                self.owner,
            )
        return self.base(rewards, group_ids, response_mask)


def _normalises_scale(self) -> bool:
    """Whether a per-group multiplicative reward weight cancels: the base estimator's answer (an estimator's
    ``normalises_scale`` property, shared by the three classes)."""
    return self.agg.normalises_scale


class WeightedSum:
    """``R = sum_k w_k r_k`` over the reward components, then ``base`` (PaCo's default aggregation).

    Args:
        weights: component -> weight, overriding the reward set's weights (None: the reward set's).
        base: the estimator applied to R (None: GRPO's group z-score, eps 1e-6).
    """

    uses_components = True  # the loop passes components= and weights= (advantage_inputs)
    normalises_scale = property(_normalises_scale)

    def __init__(self, weights: Mapping[str, float] | None = None, base: Advantage | None = None) -> None:
        self.agg = Aggregation(type(self).__name__, weights, base)

    def __call__(self, rewards, group_ids, response_mask=None, components=None, weights=None) -> torch.Tensor:
        if not components:
            return self.agg.fallback(rewards, group_ids, response_mask)
        comps, w = self.agg.resolve(rewards, components, weights)
        total = sum(w[k] * comps[k] for k in comps)
        return self.agg.base(total.to(rewards.dtype), group_ids, response_mask)


class LogTame:
    """PaCo-RL's log-tamed aggregation: ``log(1 + r_k)`` on high-variation components, weighted sum, ``base``.

    Args:
        threshold: ``mean`` (PaCo's default) or ``median`` of the components' coefficients of variation, or a number.
        components: the components that may be tamed (None: all); the others always enter as they are (e.g. a
            penalty in [-1, 0], where ``log(1 + r)`` is undefined or meaningless). The thresholds' statistics are
            taken over these components only.
        weights: component -> weight, overriding the reward set's weights (None: the reward set's).
        base: the estimator applied to the aggregate (None: GRPO's group z-score).
    """

    uses_components = True  # the loop passes components= and weights= (advantage_inputs)
    normalises_scale = property(_normalises_scale)

    def __init__(
        self,
        threshold: float | str = "mean",
        components: list[str] | None = None,
        weights: Mapping[str, float] | None = None,
        base: Advantage | None = None,
    ) -> None:
        if isinstance(threshold, str) and threshold not in THRESHOLDS:
            raise ValueError(f"advantage.threshold must be a number or one of {THRESHOLDS}, got {threshold!r}")
        if not isinstance(threshold, str) and not math.isfinite(float(threshold)):
            raise ValueError(f"advantage.threshold must be finite, got {threshold}")
        self.threshold = threshold
        self.components = tuple(components) if components is not None else None
        self.agg = Aggregation(type(self).__name__, weights, base)

    def __call__(self, rewards, group_ids, response_mask=None, components=None, weights=None) -> torch.Tensor:
        if not components:
            return self.agg.fallback(rewards, group_ids, response_mask)
        comps, w = self.agg.resolve(rewards, components, weights)
        chosen = list(comps) if self.components is None else list(self.components)
        missing = sorted(set(chosen) - set(comps))
        if missing:
            raise ValueError(f"advantage.components names {missing}, which are not reward terms ({sorted(comps)})")
        comps |= log_tame({k: comps[k] for k in chosen}, self.threshold)
        total = sum(w[k] * comps[k] for k in comps)
        return self.agg.base(total.to(rewards.dtype), group_ids, response_mask)


class ComponentNorm:
    """Each component normalised by ``base`` on its own, then ``A = sum_k w_k A_k`` (decoupled advantages).

    Args:
        weights: component -> weight, overriding the reward set's weights (None: the reward set's).
        base: the per-component estimator (None: GRPO's group z-score); a component that is constant within
            every group adds 0.
    """

    uses_components = True  # the loop passes components= and weights= (advantage_inputs)
    normalises_scale = property(_normalises_scale)

    def __init__(self, weights: Mapping[str, float] | None = None, base: Advantage | None = None) -> None:
        self.agg = Aggregation(type(self).__name__, weights, base)

    def __call__(self, rewards, group_ids, response_mask=None, components=None, weights=None) -> torch.Tensor:
        if not components:
            return self.agg.fallback(rewards, group_ids, response_mask)
        comps, w = self.agg.resolve(rewards, components, weights)
        parts = [w[k] * self.agg.base(comps[k].to(rewards.dtype), group_ids, response_mask) for k in comps if w[k] != 0]
        if not parts:
            return torch.zeros_like(rewards, dtype=torch.float32)
        return torch.stack(parts).sum(0).float()
