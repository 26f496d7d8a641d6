"""Reward terms that misbehave on purpose, for the sandbox tests.

They live in a module of their own, at top level, because worker processes import them by module path when
unpickling; the tests put this folder on ``sys.path`` (see ``terms`` in ``test_sandbox.py``).
"""

from __future__ import annotations

import importlib
import os
import threading
import time

#: Set by the tests after a thread-mode timeout, so the abandoned thread returns.
RELEASE = threading.Event()


class Scripted:
    """Each response is a script for its own value: a number, or one of the misbehaviours below.

    ``raise``: ValueError. ``nan`` / ``inf``: that float. ``spin``: ``while True: pass`` in pure Python,
    holding the GIL and ignoring signals. ``block``: wait (releasing the GIL) until :data:`RELEASE` is set.
    ``die``: the process exits at once, as after a segfault. ``pid``: the scoring process's pid.
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.calls = 0

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        self.calls += 1
        return [self.score(r) for r in responses]

    @staticmethod
    def score(response: str) -> float:
        if response == "raise":
            raise ValueError(f"cannot score {response!r}")
        if response == "spin":
            while True:
                pass
        if response == "block":
            RELEASE.wait(30)
            return -1.0
        if response == "die":
            os._exit(3)
        if response == "pid":
            return float(os.getpid())
        if response == "sleep":
            time.sleep(0.05)
            return 1.0
        return float(response)  # "nan" and "inf" parse as floats


class OneTooMany:
    """Returns N + 1 values: a bug in the term."""

    weight = 1.0

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [0.0] * (len(responses) + 1)


class Unloadable:
    """Pickles fine here; unpickling it imports a module that does not exist."""

    weight = 1.0

    def __reduce__(self):
        return (importlib.import_module, ("no_such_module_for_vrl_tests",))


class HasImages:
    """1.0 for a sample that still carries its ``images``, else 0.0."""

    weight = 1.0

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [float("images" in s) for s in samples]
