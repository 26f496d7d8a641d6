"""Extension points a method fills without editing the loop (shared/methods/core.md §6).

A hook is any object with some of the methods below and an integer ``order``; methods it lacks are
skipped. ``HookSet`` calls them at fixed points of a training step, in ascending ``order`` (ties by
config name), which is how stacked presets compose: e.g. VPPO + PEARL multiply their advantage factors in
the documented order. Configure hooks as a dict under ``hooks:``; a preset adds its own key.

Per step, in order:

1. ``on_step_start(step, module)``                 H1  stage scheduling, curricula
   ``replace_step(module) -> stats | None``         H11  a non-RL step (an SFT stage): the first hook returning
                                                    a dict runs the step itself, the RL step is skipped
2. ``on_prompts(samples, module) -> samples``      H5/H6  probe rollouts, pre-rollout gates
   ``on_rollout(rollout, module) -> rollout``      H5  after the main rewards: attach auxiliary branches
3. ``filter_groups(rollout, module) -> keep [N]``  H6  post-rollout group filters (dynamic sampling)
4. ``extra_pass(rollout, module)``                 H7  extra teacher-forced passes; write ``rollout.extras``
5. ``transform_advantages(rollout, module) -> [N]``H8  sequence-level transforms after group normalisation
6. ``token_mask(rollout, module) -> [N, L]``       H9  token weights on the PG term (multiplied together)
7. ``extra_loss(micro, out, normalizer, module) -> (scalar, stats)``  H10  added to each micro-batch loss
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from vrl.types import Rollout


class Hook(Protocol):
    """Structural type of a hook: ``order`` plus any subset of the stage methods listed above."""

    order: int


class HookSet:
    """Ordered collection of hooks; each ``run_*`` method is one stage of the step."""

    def __init__(self, hooks: Mapping[str, Any] | None = None) -> None:
        items = [(name, h) for name, h in (hooks or {}).items() if h is not None]
        self.hooks = [h for _, h in sorted(items, key=lambda kv: (getattr(kv[1], "order", 0), kv[0]))]
        self.names = [name for name, _ in sorted(items, key=lambda kv: (getattr(kv[1], "order", 0), kv[0]))]

    def _with(self, stage: str) -> list[Any]:
        return [h for h in self.hooks if callable(getattr(h, stage, None))]

    def on_step_start(self, step: int, module) -> None:
        for h in self._with("on_step_start"):
            h.on_step_start(step, module)

    def replace_step(self, module) -> dict[str, float] | None:
        """Metrics of the first hook that ran this step itself (e.g. an SFT stage), or None for an RL step."""
        for h in self._with("replace_step"):
            if (stats := h.replace_step(module)) is not None:
                return stats
        return None

    def on_prompts(self, samples: list[dict], module) -> list[dict]:
        for h in self._with("on_prompts"):
            samples = h.on_prompts(samples, module)
        return samples

    def on_rollout(self, rollout: Rollout, module) -> Rollout:
        for h in self._with("on_rollout"):
            rollout = h.on_rollout(rollout, module)
        return rollout

    def filter_groups(self, rollout: Rollout, module) -> torch.Tensor | None:
        """AND of every filter's keep mask [N], or None when no hook filters."""
        keep = None
        for h in self._with("filter_groups"):
            k = h.filter_groups(rollout, module).to(torch.bool)
            keep = k if keep is None else keep & k
        return keep

    def extra_pass(self, rollout: Rollout, module) -> None:
        for h in self._with("extra_pass"):
            h.extra_pass(rollout, module)

    def transform_advantages(self, rollout: Rollout, module) -> torch.Tensor:
        adv = rollout.advantages
        for h in self._with("transform_advantages"):
            rollout.advantages = adv = h.transform_advantages(rollout, module)
        return adv

    def token_mask(self, rollout: Rollout, module) -> torch.Tensor:
        mask = rollout.response_mask.clone()
        for h in self._with("token_mask"):
            mask = mask * h.token_mask(rollout, module).to(mask.dtype)
        return mask

    def extra_loss(self, micro: Rollout, out: dict, normalizer: torch.Tensor, module):
        total, stats = None, {}
        for h in self._with("extra_loss"):
            loss, s = h.extra_loss(micro, out, normalizer, module)
            total = loss if total is None else total + loss
            stats.update(s)
        return total, stats

    def state_dict(self) -> dict[str, Any]:
        """State of stateful hooks (schedulers, running statistics) for exact resume."""
        return {n: h.state_dict() for n, h in zip(self.names, self.hooks) if callable(getattr(h, "state_dict", None))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for n, h in zip(self.names, self.hooks):
            if n in state and callable(getattr(h, "load_state_dict", None)):
                h.load_state_dict(state[n])
