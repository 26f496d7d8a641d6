"""Checkpoints that survive any kill, and the choice of which one to resume from.

Lightning's default writer goes through a temporary file in the system temp folder and then moves it; when that
folder is on another filesystem (tmpfs) the move is a copy, and a kill during it leaves ``last.ckpt`` at 0
bytes with the previous one already gone. Here a checkpoint is written next to its target, flushed and fsynced,
the previous good one is kept as ``<name>.prev.ckpt``, and only then is the new one renamed into place (an
atomic step on one filesystem). Resuming checks that the newest one reads and falls back to the previous one,
saying so in one line; temporary files a kill left behind are removed at start.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vrl.errors import ConfigError
from vrl.lit.context import metrics_seen

log = logging.getLogger("vrl")

TMP_MARK = ".tmp-"


def previous_path(path: str | Path) -> Path:
    """Where the previous good checkpoint is kept: ``last.ckpt`` -> ``last.prev.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, made crash-safe (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def remove_checkpoint(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (POSIX: a directory's entries are flushed by fsyncing the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows): the rename is still atomic, just not yet durable
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_orphans(folder: str | Path) -> list[Path]:
    """Delete temporary checkpoint files a killed writer left in ``folder``; returns what was removed."""
    folder = Path(folder)
    orphans = [p for p in folder.glob(f".*{TMP_MARK}*") if p.is_file()] if folder.is_dir() else []
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` memory-mapped (cheap to open, tensors read on use), or None if unreadable."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - truncated or corrupt: any failure to read means "not usable"
        return None


def resolve_resume(ckpt_path: str | None, checkpoint_dir: str | Path) -> tuple[Path | None, dict[str, Any]]:
    """Which checkpoint to resume from, checked before anything is built.

    Args:
        ckpt_path: ``None`` (a fresh run), ``last`` (this output directory's newest checkpoint) or a path.
        checkpoint_dir: the run's checkpoint folder (``<output_dir>/checkpoints``); orphaned temporary files in
            it are removed.

    Returns:
        ``(path, vrl_state)``: the checkpoint to hand to ``trainer.fit`` (None for a fresh run) and its
        ``"vrl"`` entry (the MLflow run id, the last step's metrics, ...; empty for a fresh run).

    Raises:
        ConfigError: the path does not exist, or neither it nor its previous copy can be read.
    """
    removed = clean_orphans(checkpoint_dir)
    if removed:
        log.info("removed %d unfinished checkpoint file(s) left by a killed run in %s", len(removed), checkpoint_dir)
    if ckpt_path is None:
        return None, {}
    want = Path(checkpoint_dir) / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    candidates = [want, previous_path(want)]
    if not any(p.exists() for p in candidates):
        where = f"no checkpoint in {want.parent}" if ckpt_path == "last" else f"{want} does not exist"
        raise ConfigError(
            f"ckpt_path={ckpt_path}: {where}; to continue a run, point hydra.run.dir at its output folder "
            "(ckpt_path=last) or give the .ckpt file; to start fresh, leave ckpt_path unset"
        )
    for path in candidates:
        state = read_checkpoint(path)
        if state is not None:
            if path != want:
                print(f"[vrl] {want} is unreadable (interrupted write?); resuming from the previous one, {path}")
            return path, {**(state.get("vrl") or {}), **(state.get("vrl_run") or {})}
    raise ConfigError(f"ckpt_path={ckpt_path}: {want} (and {previous_path(want).name}) cannot be read as a checkpoint")


class Checkpoints(Callback):
    """When checkpoints are written, and what travels with them.

    - Every ``every_n_steps`` optimizer steps and at the end of training, ``last.ckpt`` in ``dirpath``. It is
      written at the start of the next step rather than at the end of the current one (Lightning's
      ``ModelCheckpoint``): by then Lightning has sent the finished step's metrics to the logger, so a kill
      right after a checkpoint can no longer lose that step's metrics, and after a resume every step is logged
      exactly once (``ResumableMLFlowLogger`` skips what the killed process had already sent).
    - The MLflow run id, so a resume continues the same run.
    - On SIGTERM (and SIGUSR1 outside SLURM, where Lightning's own requeue handler owns it) Lightning finishes
      the current step and raises ``SIGTERMException``; a checkpoint is written then, and the signal recorded
      so ``python -m vrl`` exits with ``128 + signal`` (a scheduler must not read a preempted job as success).

    Args:
        dirpath: the run's checkpoint folder.
        every_n_steps: optimizer steps between checkpoints (``ckpt_every``); 0 = only at the end and on signals.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 20) -> None:
        if every_n_steps < 0:
            raise ValueError(f"ckpt_every must be >= 0, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.signal: int | None = None
        self.saved: Path | None = None
        self._saved_step = -1
        self._previous_usr1: Any = None

    def save(self, trainer: Any) -> None:
        if trainer.global_step == self._saved_step:
            return
        self.saved = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(self.saved)
        self._saved_step = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.save(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        self._saved_step = trainer.global_step  # a resumed run has this step on disk already
        if hasattr(signal, "SIGUSR1") and not SLURMEnvironment.detect():
            self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.signal = signum
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: finish the step, then stop

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["vrl_run"] = {"mlflow_run_id": getattr(trainer.logger, "run_id", None)}
        # Lightning counts logged steps in ``_batches_that_stepped`` and, on restart, adds one on the assumption
        # that the checkpoint was written at the end of a batch, before its increment. Every save here comes after
        # the increment (start of the next batch, end of training, a signal), so store the value that assumption
        # expects: the resumed run then logs its first step under the same number as the uninterrupted run.
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        if loop.get("_batches_that_stepped", 0) > 0:
            loop["_batches_that_stepped"] -= 1

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = self.signal or signal.SIGTERM
            self.save(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None


def rng_state() -> dict[str, Any]:
    """torch, Python and NumPy global RNG states, as plain tensors and ints (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def loop_state(module: Any) -> dict[str, Any]:
    """Everything an ``RLModule`` needs besides its weights to continue exactly: the prompt stream's position,
    the hooks' state, the lr a stage replaced, the last logged metrics (a curriculum's switch rule reads them),
    the bad/empty step counters, the reward set's state and every RNG."""
    settings = module.settings
    return {
        "prompts": settings.base["prompts"].state_dict() if settings else None,
        "hooks": module.hooks.state_dict(),
        "settings": settings.state_dict() if settings else {},
        "metrics": metrics_seen(module),
        **module.guard.state_dict(),
        "reward": module.reward.state_dict(),
        "rng": rng_state(),
    }


def restore_loop_state(module: Any, state: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
    """Put back what :func:`loop_state` saved (after ``setup`` built the prompt stream).

    A DDP checkpoint holds every rank's state under ``ranks``: each rank takes its own. Resumed with another
    number of ranks, every rank takes rank 0's (the run continues; which prompts come next changes)."""
    saved = len(state.get("ranks") or [state])
    if saved == world_size > 1:
        state = state["ranks"][rank]
    elif saved != world_size and rank == 0:
        log.warning(
            "resuming a %d-rank checkpoint on %d ranks: each rank continues from rank 0's state", saved, world_size
        )
    if state.get("prompts") and module.settings is not None:
        module.settings.base["prompts"].load_state_dict(state["prompts"])
    module.hooks.load_state_dict(state.get("hooks", {}))
    if module.settings is not None:
        module.settings.load_state_dict(state.get("settings", {}))
    module._restored_metrics = dict(state.get("metrics", {}))
    module.guard.load_state_dict(state)
    module.reward.load_state_dict(state.get("reward", {}))
    set_rng_state(state["rng"])
