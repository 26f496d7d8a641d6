"""``FileReward``: a reward term whose scoring function lives in a plain Python file (verl's
``custom_reward_function.path`` / ``.name``).

The term is an ordinary member of the reward set, so everything the set does for built-in terms holds for it: an
exception, a NaN or a hang in one sample costs that sample the default and a counter increment
(``reward/errors|nonfinite|timeouts/<term>``), ``isolate=process`` runs it in a worker process that is killed past
``timeout_s``, and its unweighted values are logged as ``reward/<term>_mean``. An exception raised by the function
comes back as :class:`RewardFileError` naming the file and the function (the original is its ``__cause__``, so the
logged traceback shows the line); a ``TimeoutError`` stays one, and counts as a timeout.

Loading a file runs its code, so, like a ``_target_`` outside vrl's packages, a file runs only when opted in:
``export VRL_ALLOWED_TARGETS=/abs/path/my_reward.py`` (the file, or a folder holding it; comma-separated entries
with the package names). The check, the import and the function lookup happen when the config is validated
(``check``) and again when the term is built, each failure one line naming the file and the function.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from vrl.errors import ConfigError

STYLES = ("sample", "batch", "verl")
ALLOW_ENV = "VRL_ALLOWED_TARGETS"  # the same opt-in as user packages in _target_ (vrl.validate)


class RewardFileError(RuntimeError):
    """The user's reward function raised; the message names the file and the function."""


def allowed_paths() -> list[Path]:
    """Files and folders opted in through :data:`ALLOW_ENV` (its entries that look like paths)."""
    entries = [e.strip() for e in os.environ.get(ALLOW_ENV, "").split(",") if e.strip()]
    return [Path(e).expanduser().resolve() for e in entries if os.sep in e or e.endswith(".py")]


def resolve_reward_file(path: str, check_allowed: bool = True) -> Path:
    """The absolute path of an existing reward file, opted in unless ``check_allowed`` is False.

    Raises:
        ConfigError: the file does not exist, is not a ``.py`` file, or is not opted in.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(
            f"reward file {path!r} does not exist (resolved to {file}; relative paths start at {Path.cwd()})"
        )
    if file.suffix != ".py":
        raise ConfigError(f"reward file {file} is not a .py file")
    if check_allowed and not any(file == p or p in file.parents for p in allowed_paths()):
        raise ConfigError(
            f"reward file {file} is not opted in: a config may only run code you allowed; "
            f"export {ALLOW_ENV}={file} (or its folder; comma-separated with other entries)"
        )
    return file


def load_reward_function(path: str, function: str, check_allowed: bool = True) -> Callable[..., Any]:
    """Import ``path`` (opted in, see :func:`resolve_reward_file`) and return its ``function``.

    Raises:
        ConfigError: the file is missing or not opted in, fails to import (the exception named), or has no
            callable ``function`` (the callables it has listed).
    """
    file = resolve_reward_file(path, check_allowed)
    module = _import_file(file)
    fn = getattr(module, function, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        got = "not defined" if fn is None else f"not a function (type {type(fn).__name__})"
        raise ConfigError(f"reward file {file}: {function!r} is {got}; functions there: {', '.join(names) or 'none'}")
    return fn


def _import_file(file: Path) -> ModuleType:
    name = f"vrl_reward_file_{hashlib.sha1(str(file).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"reward file {file} fails to import: {type(exc).__name__}: {exc}") from exc
    return module


class FileReward:
    """A reward term computed by ``function`` in the Python file ``path``.

    Args:
        path: the file (absolute, or relative to the working directory); it must be opted in (module docstring).
        function: the function's name in the file.
        weight: multiplier applied by the reward set.
        style: how the function is called: ``sample`` (default): ``fn(response, sample) -> float`` once per
            response, ``sample`` being the data row (all columns; ``answer`` is the ground truth); ``batch``:
            ``fn(responses, samples) -> list[float]``; ``verl``: verl's ``compute_score(data_source, solution_str,
            ground_truth, extra_info)`` with ``data_source`` the row's ``data_source`` (None without one),
            ``ground_truth`` its ``answer`` and ``extra_info`` the whole row. A returned mapping is read at its
            ``score`` key (verl's dict results).
        kwargs: extra keyword arguments for every call (verl's ``reward_kwargs``); None for none.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        path: str,
        function: str = "compute_score",
        weight: float = 1.0,
        style: str = "sample",
        kwargs: Mapping[str, Any] | None = None,
        name: str = "file",
    ) -> None:
        if style not in STYLES:
            raise ConfigError(f"FileReward: style must be one of {STYLES}, got {style!r}")
        self.path = str(resolve_reward_file(path))
        self.function, self.weight, self.style, self.name = function, float(weight), style, name
        self.kwargs = dict(kwargs or {})
        self._fn: Callable[..., Any] | None = load_reward_function(self.path, function)

    @staticmethod
    def check(cfg: Any, path: str) -> None:
        """Validation (``vrl.validate``): the file exists, is opted in, imports and defines the function."""
        node = cfg
        for key in path.split("."):
            node = node[key]
        try:
            load_reward_function(str(node["path"]), str(node.get("function", "compute_score")))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def __getstate__(self) -> dict:
        # A worker process re-imports the file by path (functions from a file loaded this way do not pickle).
        return {k: v for k, v in self.__dict__.items() if k != "_fn"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fn = None

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        fn = self._function()
        if self.style == "batch":
            values = list(self._run(fn, responses, samples))
            return [_score(v, self) for v in values]
        if self.style == "verl":
            return [
                _score(self._run(fn, s.get("data_source"), r, s.get("answer"), s), self)
                for r, s in zip(responses, samples)
            ]
        return [_score(self._run(fn, r, s), self) for r, s in zip(responses, samples)]

    def _function(self) -> Callable[..., Any]:
        if self._fn is None:  # a copy in a worker process: the file was opted in where this term was built
            self._fn = load_reward_function(self.path, self.function, check_allowed=False)
        return self._fn

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args, **self.kwargs)
        except TimeoutError:
            raise
        except Exception as exc:
            raise RewardFileError(f"{self.path}:{self.function} raised {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"FileReward({self.path}:{self.function}, style={self.style!r})"


def _score(value: Any, term: FileReward) -> float:
    """A returned value as a float (a mapping's ``score``); a wrong type names the file and the function. NaN and
    infinities pass through: the reward set counts them (``reward/nonfinite/<term>``)."""
    if isinstance(value, Mapping):
        value = value.get("score")
    if not isinstance(value, int | float):  # bool is an int: True scores 1
        raise RewardFileError(
            f"{term.path}:{term.function} returned {value!r} ({type(value).__name__}); expected a number"
            + (" or a mapping with a 'score'" if term.style == "verl" else "")
        )
    return float(value)
