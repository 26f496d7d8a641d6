"""One-step-off-policy rollouts: the next prompt batch is generated in a background thread (``sampler.max_staleness``).

The loop draws each batch from its prompt stream (``vrl.data.source.PromptSource``) when it needs it. The server
sampler peeks at the same stream (a copy of its two-integer position, so the loop's own draw is untouched) and
starts generating the batch the loop will draw next, on a worker thread that only speaks HTTP and packs tensors
(no model and no torch random numbers: the server samples under a per-request seed). When the loop asks for that
batch, the finished rollout is used if it is for the same rows (uid and prompt), with the same sampling settings,
and at most ``max_staleness`` weight versions old; otherwise it is dropped and the batch is generated now.

When the prefetch starts decides the staleness: with ``max_staleness=0`` after the weight push that ends a step
(the rollout of step k+1 comes from the weights after step k, as in a synchronous run: the same requests with the
same seeds, so the same run); with ``k >= 1`` right after the current batch was handed out, so the server generates
step k+1 while the learner updates on step k, one weight version behind (one-step-off-policy; pair it with
``+method=rollout_correction``). The weight push waits for a running prefetch, so a rollout never mixes versions.

Determinism contract: the same config and seed give the same requests (rows, settings, seeds) in the same order,
so a deterministic server gives the same run; a pre-rollout hook that rewrites rows (a gate) or a stage that
switches the stream makes the prefetch miss (counted), and the replacement request carries a different seed.
A checkpoint does not hold a prefetched rollout: with ``max_staleness >= 1`` the first step after a resume is
generated fresh (on the restored weights), so the resumed run departs from the uninterrupted one there.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vrl.data.source import PromptSource


def prompt_key(sampler: Any, samples: list[dict], group_size: int) -> tuple:
    """What a prefetched rollout must match: the rows (uid, prompt) and the sampling settings."""
    rows = tuple((str(s.get("uid")), str(s.get("prompt"))) for s in samples)
    return rows, group_size, sampler.temperature, sampler.top_p, sampler.top_k, sampler.max_new_tokens


def peek_batch(source: PromptSource) -> list[dict]:
    """The rows the source's next ``next_batch()`` returns, without advancing it (its state is rebound, never
    mutated in place, so a shallow copy draws independently)."""
    return copy.copy(source).next_batch()


class Prefetch:
    """At most one rollout generating ahead. ``hits`` / ``misses`` count prefetches used and dropped;
    ``staleness`` is the weight-version lag of the last one used."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple, int, Future] | None = None
        self.hits = self.misses = 0
        self.staleness: int | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def take(self, key: tuple, version: int, max_staleness: int):
        """The prefetched rollout for ``key`` if it is at most ``max_staleness`` versions behind ``version``; None
        otherwise. A prefetch for other rows stays pending (an auxiliary generate call, e.g. PEARL's probes, may
        come before the main one) until it is too stale to be used, then it is dropped. Re-raises the prefetch's
        own failure (a ``ServerError`` naming the URL)."""
        if self._pending is None:
            return None
        pending_key, made_at, future = self._pending
        if version - made_at > max_staleness:
            self.drop()
            return None
        if pending_key != key:
            return None
        self._pending = None
        rollout = future.result()
        self.hits += 1
        self.staleness = version - made_at
        return rollout

    def launch(self, key: tuple, version: int, fn) -> None:
        """Start ``fn()`` (generation of the rows ``key`` names, at weight ``version``) in the background."""
        self.drop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrl-prefetch")
        self._pending = (key, version, self._pool.submit(fn))

    def launch_next(self, sampler: Any, vlm: Any) -> None:
        """Prefetch the batch the loop's prompt stream yields next (nothing while a prefetch is pending, and nothing
        for a stream that is not a ``PromptSource``, e.g. a stage's own stream object)."""
        source = sampler.source() if sampler.source is not None else None
        if self._pending is not None or not isinstance(source, PromptSource):
            return
        rows, g = peek_batch(source), sampler.group_size
        seeds = sampler.next_seeds(len(rows))
        self.launch(
            prompt_key(sampler, rows, g), sampler.version, lambda: sampler.generate_now(vlm, rows, g, False, seeds)
        )

    def wait(self) -> None:
        """Block until a running prefetch finished (before the server's weights change)."""
        if self._pending is not None:
            self._pending[2].exception()  # waits; a failure surfaces when the rollout is taken

    def drop(self) -> None:
        """Wait for and discard a pending prefetch (counted as a miss)."""
        if self._pending is not None:
            self._pending[2].exception()
            self._pending = None
            self.misses += 1

    def close(self) -> None:
        """At the end of training: let the last prefetch finish and free the thread (it is never used)."""
        if self._pending is not None:
            self._pending[2].exception()
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
