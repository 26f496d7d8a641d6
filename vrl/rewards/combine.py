"""RewardSet: call every configured reward term, weight and sum them, keep the components for logging.

The reward sandbox lives here too: a term that raises, hangs or returns NaN on one sample costs that sample a
default value and a counter increment, never the run, and never silently (counters, a warning the first time
each kind of failure happens, and a monitor for rewards that carry no signal). How the terms are run
(in-process, in a thread, in worker processes) is in :mod:`vrl.rewards.sandbox`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .context import CONTEXT_KEY, RewardContext
from .routing import row_value, source_metrics, source_sums
from .sandbox import START_METHODS, Outcome, WorkerPool, call_contained, call_in_thread

logger = logging.getLogger("vrl")

ISOLATE = ("none", "thread", "process")
_COUNTERS = ("errors", "timeouts", "nonfinite", "fallbacks")


class RewardSet:
    """The weighted sum of named reward terms (``conf/reward/``), each call contained per sample.

    **Containment.** Each term is called once on the whole batch. If that call fails (raises, times out,
    returns something that is not a number), the term is called again on each sample alone,
    ``term([response], [sample])``, so that one bad sample does not cost the whole batch: the samples that
    fail alone get the default value, the others their own values. A value that is NaN or infinite is
    treated like a failure of that sample. Every event is counted per term (:meth:`pop_stats`) and the
    first of each kind is logged with its traceback on the ``vrl`` logger. The retry assumes a term scores
    each sample independently of the others in its batch (true of every term in ``vrl.rewards``); a term
    that scores a sample relative to its batch sees batches of one during a retry.

    A term that returns a number of values other than the number of responses is a bug in the term, not
    in a sample: that raises ``ValueError`` naming the term at once, in every mode.

    **Isolation.** ``isolate="none"`` (default) calls terms in this thread: no overhead beyond a ``try``,
    no timeout. ``"thread"`` runs each call in a daemon thread and stops waiting after ``timeout_s``; the
    thread cannot be killed and keeps running, so this only suits code that waits (an API call) rather
    than computes. ``"process"`` runs the isolated terms in ``workers`` persistent worker processes and
    kills and replaces a worker whose call passes ``timeout_s``: the timeout then holds even for code that
    ignores signals and holds the GIL (a C extension spinning, ``while True: pass``, a sympy blow-up).
    The terms must pickle (classes importable by module path, as Hydra ``_target_`` classes are; no
    lambdas) and the samples too; any state a term updates while scoring stays in the worker.

    **Timeout cost.** ``timeout_s`` bounds each call: the batch call and, after a failed batch, each
    single-sample retry. A batch with k samples that hang costs about ``(1 + k) * timeout_s``; samples that
    do not hang return at their normal speed. Set it well above a normal batch's time, since a slow but
    healthy batch that hits the limit is retried sample by sample (correct values, wasted time).

    **Degenerate rewards.** When the total reward is the same for every response in a call (all zero: a
    broken term, a format nobody produces; all one: a task already solved) no response is better than
    another and group-normalised advantages are all zero. After ``degenerate_warn_after`` such calls in a
    row a warning is logged once; the streak length is the metric ``reward/degenerate_streak`` and resets
    with the first call whose totals differ. Calls with fewer than two responses are not judged. Every
    call counts, validation calls included.

    Args:
        terms: name -> reward object with ``weight`` and ``__call__(responses, samples) -> list[float]``.
            ``null`` entries are dropped, so a term can be switched off with ``reward.format=null``.
        timeout_s: Seconds one call of an isolated term may take, or None (default) for no limit. Needs
            ``isolate`` ``"thread"`` or ``"process"``: an in-process call cannot be interrupted. None by
            default because CPU tests and the tiny default run score one-word answers in microseconds;
            for math-verify on real runs 10 s with ``isolate="process"`` is a good start (math-verify's
            own alarm is 5 s per parse or comparison, and it is only armed on a main thread).
        default: Unweighted value a failed, timed-out or non-finite sample gets from a term. 0.0 (default)
            is "no credit", right for accuracy-like terms in [0, 1]; for penalty terms (values <= 0) a
            failure may deserve the worst value instead, see ``term_defaults``.
        isolate: ``"none"``, ``"thread"`` or ``"process"`` (see above). ``"none"`` by default: zero cost,
            and the terms shipped with vrl only run regular expressions, except math-verify.
        workers: Worker processes for ``isolate="process"``. 1 (default) is enough for cheap terms; more
            run several isolated terms at once and spread the one-by-one retries of a failed batch. Each
            worker is a process holding the terms' imports (~200 MB resident with torch, mostly pages shared
            with the fork server) and lives as long as this object (:meth:`close` ends them).
        degenerate_warn_after: Consecutive degenerate calls before the warning; 20 by default, long enough
            that an early phase where the policy is always wrong does not cry wolf, short enough to catch
            a broken reward within the first minutes. None or 0: never warn (the metric is kept).
        isolate_terms: Names of the terms to isolate; None (default) isolates every term when ``isolate``
            is not ``"none"``. E.g. ``[accuracy]`` runs only math-verify's term in a worker and keeps the
            regex-only terms in-process, where they cost nothing. Terms not isolated get no timeout.
        term_defaults: name -> default for that term, overriding ``default``; None for none.
        start_method: How worker processes start: ``"forkserver"`` (default: a replacement worker after a
            kill starts in milliseconds) or ``"spawn"`` (portable; each start re-imports, ~1-2 s).
        worker_drop_keys: Sample keys not sent to worker processes; () (default) sends whole rows. Rows are
            pickled on every call, and images dominate that cost (measured with 64 rows sharing 8 images:
            ~0.5 ms at 112 px, 13-21 ms at 448 px, 80-150 ms at 1024 px per call), so name ``images`` here when no
            isolated term reads them. ``Accuracy`` reads them only for "bbox" answers in the ``pixel`` frame.
        source_keys: Row fields (dotted paths) to report per-source metrics by, e.g. ``[data_source,
            reward_spec.verifier]``: per value, the mean total reward, the mean of each component and the row
            count since the last :meth:`pop_stats` (``by_data_source/<value>/reward|<term>|count``;
            :func:`vrl.rewards.routing.source_sums`). Training calls only: a call whose context says
            ``training=False`` (validation) is left out. () (default): none.
        row_weights_key: Dotted path of a row field holding that row's own term weights (``{accuracy: 1.0,
            format: 0.1}``), which replace the configured weights in that row's total; terms it does not name keep
            theirs. None (default): every row uses the configured weights. Components stay unweighted.
    """

    def __init__(
        self,
        terms: Mapping[str, Any],
        timeout_s: float | None = None,
        default: float = 0.0,
        isolate: str | None = "none",
        workers: int = 1,
        degenerate_warn_after: int | None = 20,
        isolate_terms: Sequence[str] | None = None,
        term_defaults: Mapping[str, float] | None = None,
        start_method: str = "forkserver",
        worker_drop_keys: Sequence[str] = (),
        source_keys: Sequence[str] = (),
        row_weights_key: str | None = None,
    ) -> None:
        self.terms = {name: t for name, t in terms.items() if t is not None}
        if not self.terms:
            raise ValueError("reward: no reward terms configured (every entry is null)")
        isolate = isolate or "none"
        if isolate not in ISOLATE:
            raise ValueError(f"reward sandbox: isolate must be one of {ISOLATE}, got {isolate!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"reward sandbox: timeout_s must be > 0 or null, got {timeout_s}")
        if timeout_s is not None and isolate == "none":
            raise ValueError("reward sandbox: timeout_s needs isolate=thread or isolate=process")
        if workers < 1:
            raise ValueError(f"reward sandbox: workers must be >= 1, got {workers}")
        if start_method not in START_METHODS:
            raise ValueError(f"reward sandbox: start_method must be one of {START_METHODS}, got {start_method!r}")
        for knob, names in (("isolate_terms", isolate_terms or ()), ("term_defaults", term_defaults or {})):
            unknown = sorted(set(names) - set(terms))
            if unknown:
                raise ValueError(f"reward sandbox: {knob} names unknown terms {unknown}; terms: {sorted(terms)}")
        self.timeout_s, self.isolate, self.workers = timeout_s, isolate, workers
        self._settings = {
            "timeout_s": timeout_s,
            "default": default,
            "isolate": isolate,
            "workers": workers,
            "degenerate_warn_after": degenerate_warn_after,
            "isolate_terms": isolate_terms,
            "term_defaults": term_defaults,
            "start_method": start_method,
            "worker_drop_keys": worker_drop_keys,
            "source_keys": source_keys,
            "row_weights_key": row_weights_key,
        }
        self.source_keys, self.row_weights_key = tuple(source_keys or ()), row_weights_key
        self._sources: dict[str, list[float]] = {}
        self.degenerate_warn_after = degenerate_warn_after
        self.worker_drop_keys = frozenset(worker_drop_keys or ())
        self.defaults = {name: float((term_defaults or {}).get(name, default)) for name in self.terms}
        chosen = set(self.terms) if isolate_terms is None else set(isolate_terms)
        self.isolated = [name for name in self.terms if isolate != "none" and name in chosen]
        self._pool = None
        if isolate == "process" and self.isolated:
            self._pool = WorkerPool({name: self.terms[name] for name in self.isolated}, workers, start_method)
        self._counts = {kind: dict.fromkeys(self.terms, 0) for kind in _COUNTERS}
        self._logged: set[tuple[str, str, str]] = set()
        self.degenerate_streak = 0

    def __call__(
        self, responses: list[str], samples: list[dict], context: RewardContext | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score N responses.

        Args:
            responses: the N decoded responses.
            samples: their N data rows.
            context: the run's position (:class:`vrl.rewards.context.RewardContext`); every term's rows then carry
                it at ``reward_context`` (copies of the rows; the caller's are untouched).

        Returns:
            total [N] (sum of weight * term) and name -> [N] unweighted component values.

        Raises:
            ValueError: a term returned a number of values other than N (a bug in the term, not in one
                sample, so it stops the run at once, naming the term), or responses and samples differ in
                length.
            RuntimeError: a worker process cannot start (``isolate="process"``: the terms fail to import
                there); a setup problem, raised on the first call.
            TypeError: the samples do not pickle (``isolate="process"``).
        """
        n = len(responses)
        if len(samples) != n:
            raise ValueError(f"reward: {n} responses but {len(samples)} samples")
        rows = samples
        if context is not None:
            samples = [{**s, CONTEXT_KEY: context} if isinstance(s, Mapping) else s for s in samples]
        in_workers = self.isolated if self._pool is not None else []
        values = {name: self._score_here(name, responses, samples) for name in self.terms if name not in in_workers}
        if in_workers:
            values |= self._score_in_workers(in_workers, responses, samples)
        total = torch.zeros(n, dtype=torch.float32)
        components = {}
        weights = self._row_weights(rows)
        for name, term in self.terms.items():  # config order, whichever way each term ran
            components[name] = torch.tensor(values[name], dtype=torch.float32)
            w = weights[name] if weights is not None else float(getattr(term, "weight", 1.0))
            total += w * components[name]
        self._watch(total)
        if self.source_keys and (context is None or context.training):
            for prefix, sums in source_sums(rows, total, components, self.source_keys).items():
                acc = self._sources.setdefault(prefix, [0.0] * len(sums))
                self._sources[prefix] = [a + b for a, b in zip(acc, sums)]
        return total, components

    def _row_weights(self, rows: list[dict]) -> dict[str, torch.Tensor] | None:
        """[N] weight of each term per row when rows carry their own (``row_weights_key``), else None."""
        if self.row_weights_key is None:
            return None
        out = {}
        for name, term in self.terms.items():
            configured = float(getattr(term, "weight", 1.0))
            per_row = []
            for row in rows:
                own = row_value(row, self.row_weights_key) if isinstance(row, Mapping) else None
                per_row.append(float(own[name]) if isinstance(own, Mapping) and name in own else configured)
            out[name] = torch.tensor(per_row, dtype=torch.float32)
        return out

    @property
    def weights(self) -> dict[str, float]:
        """name -> the weight each term's component enters the total with (what multi-reward advantages read)."""
        return {name: float(getattr(term, "weight", 1.0)) for name, term in self.terms.items()}

    def with_terms(self, terms: Mapping[str, Any]) -> RewardSet:
        """A new reward set over ``terms`` with this one's sandbox settings (a curriculum stage's reward).

        ``isolate_terms`` and ``term_defaults`` keep only the names ``terms`` has, so a run that isolates
        ``accuracy`` still isolates a stage's ``accuracy`` while a stage without it does not fail validation.
        """
        names = {name for name, term in terms.items() if term is not None}
        settings = dict(self._settings)
        if settings["isolate_terms"] is not None:
            settings["isolate_terms"] = [name for name in settings["isolate_terms"] if name in names]
        if settings["term_defaults"]:
            settings["term_defaults"] = {k: v for k, v in settings["term_defaults"].items() if k in names}
        return RewardSet(terms, **settings)

    # ----------------------------------------------------------------- running the terms
    def _score_here(self, name: str, responses: list[str], samples: list[dict]) -> list[float]:
        term = self.terms[name]
        call: Callable[[list[str], list[dict]], Outcome]
        if name in self.isolated:  # isolate == "thread"
            call = lambda r, s: call_in_thread(term, r, s, self.timeout_s)
        else:
            call = lambda r, s: call_contained(term, r, s)
        batch = call(responses, samples)
        retries = None
        if self._retry_needed(name, batch, len(responses)):
            retries = [call([r], [s]) for r, s in zip(responses, samples)]
        return self._resolve(name, batch, retries, samples)

    def _score_in_workers(self, names: list[str], responses: list[str], samples: list[dict]) -> dict[str, list]:
        n = len(responses)
        sent = samples
        if self.worker_drop_keys:
            sent = [{k: v for k, v in s.items() if k not in self.worker_drop_keys} for s in samples]
        batches = self._pool.run([(name, responses, sent) for name in names], self.timeout_s)
        failed = [name for name, batch in zip(names, batches) if self._retry_needed(name, batch, n)]
        tasks = [(name, [r], [s]) for name in failed for r, s in zip(responses, sent)]
        retried = self._pool.run(tasks, self.timeout_s) if tasks else []
        retries = {name: retried[i * n : (i + 1) * n] for i, name in enumerate(failed)}
        return {name: self._resolve(name, b, retries.get(name), samples) for name, b in zip(names, batches)}

    def _retry_needed(self, name: str, batch: Outcome, n: int) -> bool:
        """Whether a batch outcome calls for one-by-one retries; raises on a wrong number of values."""
        self._check_count(name, batch, n)
        if batch.kind == "ok" or n < 2:
            return False
        self._counts["fallbacks"][name] += 1
        self._log(
            name,
            ("fallback", batch.kind, _error_type(batch)),
            f"the call on a batch of {n} failed ({batch.error}); scoring its samples one by one",
            "fallbacks",
            batch.detail,
        )
        return True

    def _resolve(self, name: str, batch: Outcome, retries: list[Outcome] | None, samples: list[dict]) -> list[float]:
        """Values for every sample: the batch's, else each retry's; defaults for failures, counted."""
        if batch.kind == "ok":
            outcomes = [Outcome("ok", [v]) for v in batch.values]
        else:
            outcomes = retries if retries is not None else [batch] * len(samples)
        values = []
        for outcome, sample in zip(outcomes, samples):
            self._check_count(name, outcome, 1)
            where = f"sample uid={sample.get('uid')!r}" if isinstance(sample, Mapping) else "a sample"
            value = outcome.values[0] if outcome.kind == "ok" else None
            if outcome.kind != "ok":
                kind = "timeouts" if outcome.kind == "timeout" else "errors"
                self._log(name, (kind, _error_type(outcome)), f"{where} failed ({outcome.error})", kind, outcome.detail)
            elif not math.isfinite(value):
                kind = "nonfinite"
                self._log(name, (kind,), f"{where} got the value {value}", kind, "")
            else:
                values.append(value)
                continue
            self._counts[kind][name] += 1
            values.append(self.defaults[name])
        return values

    @staticmethod
    def _check_count(name: str, outcome: Outcome, n: int) -> None:
        if outcome.kind == "count":
            raise ValueError(f"reward term {name!r} returned {outcome.error} values for {n} responses")

    def _log(self, name: str, key: tuple[str, ...], what: str, counter: str, detail: str) -> None:
        """WARNING the first time a term has this kind of failure (with the traceback), DEBUG after that."""
        first = (name, *key) not in self._logged
        self._logged.add((name, *key))
        tail = "" if counter == "fallbacks" else f"; it gets the default {self.defaults[name]}"
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "reward term %r: %s%s. Counted in reward/%s/%s; further failures of this kind are logged at DEBUG.%s",
            name,
            what,
            tail,
            counter,
            name,
            f"\n{detail.rstrip()}" if first and detail else "",
        )

    # ----------------------------------------------------------------- monitoring
    def state_dict(self) -> dict[str, int]:
        """Counters that change behaviour (the degenerate-reward streak decides when to warn): checkpointed."""
        return {"degenerate_streak": self.degenerate_streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.degenerate_streak = int(state.get("degenerate_streak", 0))

    def _watch(self, total: torch.Tensor) -> None:
        if total.numel() < 2:
            return
        if not bool((total == total[0]).all()):
            self.degenerate_streak = 0
            return
        self.degenerate_streak += 1
        if self.degenerate_warn_after and self.degenerate_streak == self.degenerate_warn_after:
            value = float(total[0])
            what = "all zero" if value == 0 else f"all equal to {value:g}"
            logger.warning(
                "reward: the total reward has been %s within each of the last %d calls: no response is better "
                "than another, so group-normalised advantages are zero and the policy learns nothing. Check "
                "reward/errors/*, reward/timeouts/* and the response format. (Warned once per streak; the "
                "streak is the metric reward/degenerate_streak.)",
                what,
                self.degenerate_streak,
            )

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, then reset; for logging once per step.

        Returns:
            ``reward/errors/<term>``, ``reward/timeouts/<term>``, ``reward/nonfinite/<term>`` (samples that got
            the default for each reason), ``reward/fallbacks/<term>`` (batch calls that failed and were
            retried sample by sample), ``reward/degenerate_streak`` (the current streak; not reset here), and
            whatever terms with a ``pop_stats`` of their own report (judge failures, cache hits), and the
            per-source means (``source_keys``).
        """
        stats = {f"reward/{kind}/{name}": float(c) for kind, per in self._counts.items() for name, c in per.items()}
        self._counts = {kind: dict.fromkeys(self.terms, 0) for kind in _COUNTERS}
        stats["reward/degenerate_streak"] = float(self.degenerate_streak)
        stats |= source_metrics(self._sources, list(self.terms))
        self._sources = {}
        for term in self.terms.values():  # terms' own counters (e.g. a judge's failures), when they keep any
            if callable(getattr(term, "pop_stats", None)):
                stats |= term.pop_stats()
        return stats

    def close(self) -> None:
        """End the worker processes (``isolate="process"``); a later call starts new ones."""
        if self._pool is not None:
            self._pool.close()


def _error_type(outcome: Outcome) -> str:
    return outcome.kind if outcome.kind == "timeout" else outcome.error.split(":", 1)[0]
