"""What the loop agrees on across data-parallel ranks (Lightning DDP): the loop's collectives in one place.

Each rank draws its own prompts and builds its own rollout, so ranks can differ in what they hold (refills,
gates, auxiliary branches). Every decision that changes the sequence of collective calls (DDP's gradient
all-reduce runs inside each backward) must be the same on every rank, or the job hangs: whether the step is
empty, how many mini- and micro-batches it has, whether an optimizer step is skipped. Under FSDP every forward
is a collective too (each unit all-gathers its weights), so ranks also agree on how many draws a step makes
(refills), how many micro-batches each scoring pass runs, and ``generate`` decodes until every rank is done
(``synced_gpus``). These helpers make them so. With one process they return their input and communicate nothing.
"""

from __future__ import annotations

from typing import Any

import torch


def world_size(module: Any) -> int:
    """Data-parallel ranks of the module's trainer (1 without one)."""
    return max(1, module.trainer.world_size) if module._trainer is not None else 1


def reduce_value(module: Any, value: float, op: str) -> float:
    """``value`` reduced over ranks with ``op`` (``sum``, ``mean``, ``min``, ``max``); NaN anywhere stays NaN
    under ``sum`` and ``mean``."""
    if world_size(module) == 1:
        return value
    t = torch.tensor(float(value), dtype=torch.float64 if module.device.type == "cpu" else torch.float32)
    return float(module.trainer.strategy.reduce(t.to(module.device), reduce_op=op))


def gather_objects(module: Any, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` on one process."""
    if world_size(module) == 1:
        return [obj]
    out: list[Any] = [None] * world_size(module)
    torch.distributed.all_gather_object(out, obj)
    return out


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """0 x every trainable parameter: a backward that gives each parameter a zero gradient. A rank runs it for a
    micro-batch that only other ranks have, so that every rank calls backward (and DDP's all-reduce) as often."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.stack([p.sum() for p in params]).sum() * 0.0


def lockstep(module: Any) -> bool:
    """True when the policy is sharded (FSDP) over more than one rank: every forward is then a collective (each
    unit all-gathers its weights), so ranks must run as many forwards, not only as many backwards."""
    from vrl.models.sharding import is_sharded

    return world_size(module) > 1 and is_sharded(module.policy)


def agreed_count(module: Any, n: int) -> int:
    """How many forwards of a kind (micro-batches of a scoring pass) every rank runs: ``n`` alone, the most any
    rank needs when the policy is sharded (a rank with fewer runs dummy ones, :func:`vrl.models.scoring`)."""
    return int(reduce_value(module, n, "max")) if lockstep(module) else n


def any_rank(module: Any, flag: bool) -> bool:
    """``flag`` on any rank when the policy is sharded (a refill every rank draws while any rank needs rows);
    this rank's ``flag`` otherwise (under DDP ranks refill on their own)."""
    return bool(reduce_value(module, float(flag), "max")) if lockstep(module) else flag
