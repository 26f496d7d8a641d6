"""Choose torch's CPU threads on purpose, from the CPUs this process may actually use.

Why: torch sizes its intra-op pool from the machine's core count and its OpenMP threads spin while they wait
for each other. On a small machine shared with other work that collapses throughput: on the project's
2-core box a 10-step run took 89 s with the default threads while another process was busy, 6 s with one
thread (experiments/LOG.md, 2026-12-05). So vrl picks the count itself, prints it at start, and lets
``threads.intra_op=N`` override it.

``auto`` means: ``OMP_NUM_THREADS`` when the user set it; otherwise the CPUs available to this process (its
CPU affinity, capped by a cgroup CPU quota such as a container's or a SLURM job's), never the host's core
count. The choice does not depend on the machine's momentary load, so the same config on the same machine
gives the same thread count (and the same numbers: torch's CPU reductions may round differently with a
different thread count).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadChoice:
    """What was set, and why (printed at start and logged with the run)."""

    intra_op: int
    inter_op: int
    reason: str

    def describe(self) -> str:
        return f"threads: intra-op {self.intra_op}, inter-op {self.inter_op} ({self.reason})"


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup (v2 or v1) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, math.floor(quota))) if quota else n


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in CPUs (``quota / period``) of this process's cgroup, or ``None`` when unlimited."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            quota = int(v1.read_text())
            return None if quota <= 0 else quota / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def resolve_threads(intra_op: int | str = "auto", inter_op: int | str = 1) -> ThreadChoice:
    """Turn the ``threads`` config into counts without touching torch.

    Args:
        intra_op: threads inside one op (matmuls, reductions). ``auto`` or an integer >= 1.
        inter_op: threads running independent ops concurrently (only TorchScript forks use them in eager
            PyTorch); ``auto`` = same as ``intra_op``. Default 1: vrl has no inter-op parallelism to feed.

    Raises:
        ValueError: a count that is not ``auto`` or an integer >= 1 (the message names the key).
    """
    for key, value in (("intra_op", intra_op), ("inter_op", inter_op)):
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"threads.{key} must be 'auto' or an integer >= 1, got {value!r}")
    if intra_op != "auto":
        n, reason = int(intra_op), "threads.intra_op"
    elif (env := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(env) >= 1:
        n, reason = int(env), "auto: OMP_NUM_THREADS is set"
    else:
        n = available_cpus()
        reason = f"auto: {n} CPU{'s' if n != 1 else ''} available to this process; threads.intra_op=N to change"
    return ThreadChoice(intra_op=n, inter_op=n if inter_op == "auto" else int(inter_op), reason=reason)


def configure_threads(intra_op: int | str = "auto", inter_op: int | str = 1) -> ThreadChoice:
    """Resolve the counts (see ``resolve_threads``) and apply them to torch; returns the choice.

    Before torch is imported this also sets ``OMP_NUM_THREADS`` (so the OpenMP pool starts at that size) and,
    unless the user chose one, ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning, which
    keeps a shared machine usable (measured in experiments/LOG.md, 2026-12-05). The inter-op count can only be
    set once per process; a later different request is ignored (the pool keeps its size).
    """
    choice = resolve_threads(intra_op, inter_op)
    if "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(choice.intra_op)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(choice.intra_op)
    if torch.get_num_interop_threads() != choice.inter_op:
        # already started in this process (tests, notebooks): keep the running pool
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(choice.inter_op)
    return choice
