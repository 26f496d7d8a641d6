"""The run's two "stop after too many in a row" rules, and the guarded optimizer step they come from.

- A non-finite loss or gradient norm skips the optimizer step (the weights stay as they were); more than
  ``max_bad_steps`` in a row stop the run, with the last checkpoint written before them intact.
- A step whose groups were all gated or filtered out makes no update; more than ``max_empty_steps`` in a row
  stop the run (a filter that can never pass would otherwise stall it without an optimizer step).

Both counters travel with checkpoints, so a resumed run stops on the same step as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class StepGuard:
    """Guarded optimizer steps and the consecutive bad / empty step counters of an ``RLModule``.

    Args:
        max_grad_norm: gradient clipping norm; None disables clipping (the norm is still returned).
        max_bad_steps: consecutive non-finite steps tolerated (skipped) before the run stops.
        max_empty_steps: consecutive steps without any surviving group before the run stops.
    """

    def __init__(self, max_grad_norm: float | None, max_bad_steps: int, max_empty_steps: int) -> None:
        self.max_grad_norm, self.max_bad_steps, self.max_empty_steps = max_grad_norm, max_bad_steps, max_empty_steps
        self.bad_steps, self.empty_steps = 0, 0

    def step(self, module: Any, loss_total: float) -> float | None:
        """Clip, then step the optimizer and the LR schedule; the gradient norm, or None (step skipped) when
        the loss or the norm is not finite."""
        opt, sched = module.optimizers(), module.lr_schedulers()
        params = [p for p in module.policy.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else 0.0
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
        if not (np.isfinite(loss_total) and np.isfinite(norm)):
            opt.zero_grad(set_to_none=True)
            self._bad(module, loss_total, norm)
            return None
        self.bad_steps = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        return norm

    def _bad(self, module: Any, loss_total: float, norm: float) -> None:
        self.bad_steps += 1
        module.log("train/skipped_steps", float(self.bad_steps), on_step=True)
        module.print(f"[vrl] step {module.global_step}: non-finite loss={loss_total} grad_norm={norm}; step skipped")
        if self.bad_steps > self.max_bad_steps:
            raise RuntimeError(
                f"{self.bad_steps} consecutive non-finite steps (update.max_bad_steps={self.max_bad_steps}); "
                "stopping. The last checkpoint was written before these steps and is intact."
            )

    def empty(self, module: Any, generate_calls: int) -> None:
        """Count a step with nothing to learn from; stop the run after too many in a row."""
        self.empty_steps += 1
        if self.empty_steps > self.max_empty_steps:
            raise RuntimeError(
                f"group filters dropped every group for {self.empty_steps} RL steps in a row "
                f"(update.max_empty_steps={self.max_empty_steps}): check the hooks' keys and bounds"
            )
        if self.empty_steps in (1, 10) or self.empty_steps % 100 == 0:
            module.print(
                f"[vrl] {self.empty_steps} RL step(s) so far had every group filtered out "
                f"(last: {generate_calls} generate calls); no update on those"
            )

    def state_dict(self) -> dict[str, int]:
        return {"bad_steps": self.bad_steps, "empty_steps": self.empty_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bad_steps, self.empty_steps = int(state.get("bad_steps", 0)), int(state.get("empty_steps", 0))
