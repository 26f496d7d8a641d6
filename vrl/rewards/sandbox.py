"""Run reward terms so that one bad call cannot take the run down: in-process, in a thread, or in a worker process.

Every runner returns an :class:`Outcome` instead of raising: ``ok`` (with the values as floats), ``error`` (an
exception, a value that is not a number, a worker that died), ``timeout`` (the runner's deadline passed, or the
term raised ``TimeoutError``: a term that bounds its own work, like ``Accuracy``'s math check, reports a
timeout that way) or ``count`` (the term returned a number of values other than the number of responses).
What to do with an outcome (defaults, counters, the per-sample retry, raising on ``count``) is
:class:`vrl.rewards.combine.RewardSet`'s business.

Three ways to run a term, from cheapest to strongest:

``call_contained``
    In the calling thread, exceptions caught. No timeout, no overhead beyond a ``try``.
``call_in_thread``
    In a fresh daemon thread, joined with a timeout. It enforces a timeout only on code that gives the GIL
    back or finishes eventually (I/O, an API call, C code that releases the GIL). A timed-out thread cannot
    be killed: it is abandoned and keeps running (and, if it spins in Python, keeps taking CPU and the GIL)
    until it returns. (``Accuracy`` bounds its math check off the main thread with a worker process.)
``WorkerPool``
    A persistent pool of worker processes, each holding its own copy of the terms, fed through pipes. A
    call that passes its deadline gets its worker killed (SIGKILL) and replaced, so the timeout holds for
    anything: a C extension spinning, ``while True: pass`` holding the GIL, a sympy blow-up, a segfault
    (a worker that dies is an ``error``). Terms must be picklable (classes importable by module path, as
    every Hydra ``_target_`` is; no lambdas or closures), and state a term mutates while scoring stays in
    the worker. Inside a worker the term runs on the main thread, where :func:`alarm_deadline` works.
    Workers are started lazily, by ``forkserver`` by default: the fork server imports the terms' modules
    once, after which a replacement worker starts in milliseconds instead of the ~1-2 s a fresh interpreter
    needs to import torch and vrl. A worker's start-up never counts against a timeout.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

#: Seconds a worker may take to start (import the terms' modules, unpickle the terms) before the pool gives up
#: loudly. Generous: a cold start that imports torch from a network file system can take tens of seconds.
BOOT_TIMEOUT_S = 300.0

START_METHODS = ("forkserver", "spawn")

#: Modules that terms import lazily and that are slow to import (math-verify pulls in sympy and antlr, ~0.5 s):
#: the fork server imports them up front when they are installed, so a worker that replaces a killed one
#: does not spend its first call's timeout on imports.
PRELOAD = ("math_verify",)


class Outcome(NamedTuple):
    """What one call of a term on some responses came to.

    Attributes:
        kind: ``ok``, ``error``, ``timeout`` or ``count``.
        values: the values as floats (``ok`` only, else None).
        error: short description: ``"ZeroDivisionError: division by zero"``, ``"timed out after 10 s"``,
            or the number of values returned (``count``).
        detail: the formatted traceback, when there is one.
    """

    kind: str
    values: list[float] | None = None
    error: str = ""
    detail: str = ""


def call_contained(term: Callable, responses: list[str], samples: list[dict]) -> Outcome:
    """Call ``term(responses, samples)`` here and now; a ``TimeoutError`` becomes a ``timeout`` outcome, other
    exceptions and non-numbers an ``error`` outcome."""
    try:
        values = list(term(responses, samples))
        if len(values) != len(responses):
            return Outcome("count", error=str(len(values)))
        return Outcome("ok", [float(v) for v in values])
    except TimeoutError as exc:  # the term bounded its own work (e.g. Accuracy's math check) and gave up
        return Outcome("timeout", error=f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
    except Exception as exc:  # containment is the point: any failure of user code becomes an outcome
        return Outcome("error", error=f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())


def call_in_thread(term: Callable, responses: list[str], samples: list[dict], timeout_s: float | None) -> Outcome:
    """:func:`call_contained` in a new daemon thread, waited on for at most ``timeout_s`` seconds.

    On timeout the thread is abandoned, not stopped (Python cannot stop a thread); being a daemon it does
    not keep the interpreter alive at exit.
    """
    box: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: box.append(call_contained(term, responses, samples)), name="vrl-reward", daemon=True
    )
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive() or not box:
        return Outcome("timeout", error=f"timed out after {timeout_s} s (thread abandoned, still running)")
    return box[0]


class _Expired(BaseException):
    """Raised by :func:`alarm_deadline`'s signal handler: not an ``Exception``, so that library code's
    ``except Exception`` (sympy and math-verify have many) cannot swallow it."""


@contextlib.contextmanager
def alarm_deadline(seconds: float, what: str = "the call", error: type[Exception] = TimeoutError) -> Iterator[None]:
    """Raise ``error`` (a ``TimeoutError`` by default) when the block runs longer than ``seconds``.

    SIGALRM based, so main thread only (``signal.signal`` raises ``ValueError`` elsewhere). Python code is
    interrupted between two bytecodes, as by Ctrl-C, and so is CPython's integer power, which checks for
    signals as it multiplies (``9**387420489``, the heart of a ``9^{9^{9^{9}}}`` blow-up in sympy); C code that
    never checks is interrupted only when it returns. After the first expiry the alarm repeats every 50 ms
    until the block ends, so code that swallows the interruption (a bare ``except:``) is interrupted again.
    Any other ``ITIMER_REAL`` timer is cancelled.
    """

    def expire(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Expired:
        raise error(f"{what} took longer than {seconds} s") from None
    finally:
        signal.signal(signal.SIGALRM, previous)


def _worker_main(conn: Connection, blob: bytes) -> None:
    """A worker's loop: unpickle the terms once, then answer ``(name, responses, samples)`` with an outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us on the way out
    try:
        terms = pickle.loads(blob)
    except Exception as exc:
        conn.send(("boot_error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        name, responses, samples = task
        conn.send(("done", call_contained(terms[name], responses, samples)))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, blob: bytes) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, blob), name="vrl-reward-worker", daemon=True)
        self.process.start()
        child_conn.close()  # keep only the child's copy, so that its death reads as EOF here
        self.ready = False
        self.boot_deadline = time.monotonic() + BOOT_TIMEOUT_S

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()

    def stop(self) -> None:
        """Ask politely (the worker exits its loop), then kill what is still there."""
        with contextlib.suppress(Exception):
            self.conn.send(None)
            self.process.join(1)
        self.kill()


class WorkerPool:
    """Persistent worker processes that run named terms with a per-call timeout.

    Args:
        terms: name -> term; pickled here once, so an unpicklable term fails at construction, by name.
        size: number of worker processes; tasks handed to :meth:`run` together are spread over them.
        start_method: ``forkserver`` (default; Linux and macOS) or ``spawn`` (everywhere; each start imports
            everything again, ~1-2 s). Never ``fork``: forking a process that runs torch threads can deadlock.
    """

    def __init__(self, terms: Mapping[str, Any], size: int = 1, start_method: str = "forkserver") -> None:
        if size < 1:
            raise ValueError(f"reward sandbox: workers must be >= 1, got {size}")
        if start_method not in START_METHODS:
            raise ValueError(f"reward sandbox: start_method must be one of {START_METHODS}, got {start_method!r}")
        for name, term in terms.items():
            try:
                pickle.dumps(term)
            except Exception as exc:
                raise TypeError(
                    f"reward term {name!r} cannot run in a worker process: it does not pickle ({exc}). Make it a "
                    "class importable by module path (as a Hydra _target_ is), or isolate it by thread or not at all."
                ) from exc
        self._blob = pickle.dumps(dict(terms))
        modules = {"vrl.rewards.sandbox", *PRELOAD} | {type(t).__module__ for t in terms.values()}
        self._modules = sorted(modules - {"__main__"})  # the fork server skips those that fail to import
        self.size, self.start_method = size, start_method
        self._workers: list[_Worker] = []
        self._pid = os.getpid()

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # we were forked: those workers belong to the parent; start our own
            self._workers, self._pid = [], os.getpid()
        if not self._workers:
            ctx = mp.get_context(self.start_method)
            if self.start_method == "forkserver":  # no effect once the fork server runs (then it is only slower)
                ctx.set_forkserver_preload(self._modules)
            self._ctx = ctx
            self._workers = [_Worker(ctx, self._blob) for _ in range(self.size)]
        for i, worker in enumerate(self._workers):  # e.g. killed by the OOM killer while idle
            if not worker.process.is_alive():
                self._replace(i)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx, self._blob)

    def run(self, tasks: Sequence[tuple[str, list[str], list[dict]]], timeout_s: float | None) -> list[Outcome]:
        """Run ``(term name, responses, samples)`` tasks over the workers, each with ``timeout_s`` from dispatch.

        Raises:
            RuntimeError: a worker could not start (its terms fail to unpickle or import there, or it took
                longer than :data:`BOOT_TIMEOUT_S`): a setup problem, not a sample's.
            TypeError: a task's samples do not pickle.
        """
        self._ensure_started()
        results: list[Outcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (task index, deadline)
        try:
            while queue or busy:
                self._dispatch(tasks, queue, busy, timeout_s)
                self._collect(results, busy, timeout_s)
        except BaseException:
            for slot in list(busy):  # their answers would arrive as answers to the next tasks: start clean
                self._replace(slot)
            raise
        return results  # type: ignore[return-value]

    def _dispatch(self, tasks: Sequence, queue: deque, busy: dict[int, tuple[int, float]], timeout_s) -> None:
        for slot, worker in enumerate(self._workers):
            if not queue or slot in busy or not worker.ready:
                continue
            index = queue.popleft()
            name, responses, samples = tasks[index]
            try:
                payload = ForkingPickler.dumps((name, responses, samples))
            except Exception as exc:
                raise TypeError(
                    f"reward term {name!r}: the samples cannot be sent to a worker process ({exc})"
                ) from exc
            try:
                worker.conn.send_bytes(payload)
            except OSError:  # died since the last look: replace it and try the task again
                queue.appendleft(index)
                self._replace(slot)
                continue
            busy[slot] = (index, time.monotonic() + timeout_s if timeout_s is not None else float("inf"))

    def _collect(self, results: list[Outcome | None], busy: dict[int, tuple[int, float]], timeout_s) -> None:
        """Wait for the first answer, start-up message or deadline; handle everything that is ready then."""
        waiting = [(slot, w) for slot, w in enumerate(self._workers) if slot in busy or not w.ready]
        deadlines = [busy[slot][1] if slot in busy else w.boot_deadline for slot, w in waiting]
        pause = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.0
        ready = wait([w.conn for _, w in waiting], None if pause == float("inf") else pause)
        for slot, worker in waiting:
            if worker.conn not in ready:
                continue
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):  # the worker died: a segfault, os._exit, the OOM killer
                message = ("died",)
            if message[0] == "died":
                worker.process.join(1)
                code = worker.process.exitcode
                if slot not in busy:
                    raise RuntimeError(f"reward sandbox: a worker process died while starting (exit code {code})")
                results[busy.pop(slot)[0]] = Outcome("error", error=f"worker process died (exit code {code})")
                self._replace(slot)
            elif message[0] == "ready":
                worker.ready = True
            elif message[0] == "boot_error":
                raise RuntimeError(
                    f"reward sandbox: the terms fail to load in a worker process: {message[1]}\n{message[2]}"
                )
            else:
                results[busy.pop(slot)[0]] = message[1]
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if slot in busy and now >= busy[slot][1]:
                results[busy.pop(slot)[0]] = Outcome(
                    "timeout", error=f"timed out after {timeout_s} s (worker killed and replaced)"
                )
                self._replace(slot)
            elif not worker.ready and slot not in busy and now >= worker.boot_deadline:
                raise RuntimeError(f"reward sandbox: a worker process did not start within {BOOT_TIMEOUT_S} s")

    def close(self) -> None:
        """Stop every worker. The pool starts new ones if :meth:`run` is called again."""
        if self._pid == os.getpid():
            for worker in self._workers:
                worker.stop()
        self._workers = []

    def __del__(self) -> None:
        try:  # noqa: SIM105 (not contextlib.suppress: at interpreter exit module globals may be None already)
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        # Processes and pipes do not travel; a copy starts its own workers when first used.
        return {k: v for k, v in self.__dict__.items() if k not in ("_workers", "_ctx")} | {"_workers": []}
