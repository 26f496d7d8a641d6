"""Build the run's objects from a composed config: the only place that reads the config tree.

Each group is instantiated by its ``_target_`` and handed to a constructor argument of the same name;
classes never see the config object.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from vrl.lit.rl_module import RLModule
from vrl.rewards.combine import RewardSet

log = logging.getLogger("vrl")


def _optional(node: Any) -> Any:
    """``instantiate`` a group that may be switched off (an empty option file or null)."""
    return instantiate(node) if node else None


def build_module(cfg: DictConfig) -> RLModule:
    """Policy, sampler, rewards, method axes, hooks and data -> the RLModule."""
    vlm = instantiate(cfg.model)
    sampler = instantiate(cfg.sampler)
    hooks = {name: instantiate(node) for name, node in (cfg.get("hooks") or {}).items() if node}
    train_data, val_data = instantiate(cfg.data.train), _optional(cfg.data.get("val"))
    if cfg.data.get("preflight"):  # drop (or stop on) bad rows before the first step: vrl/data/preflight.py
        from vrl.data.preflight import run_preflight

        check = {"system_prompt": sampler.system_prompt, "prompt_suffix": sampler.prompt_suffix, **cfg.data.preflight}
        train_data = run_preflight(train_data, vlm.processor, "train", **check)
        val_data = None if val_data is None else run_preflight(val_data, vlm.processor, "val", **check)
    return RLModule(
        model=vlm,
        sampler=sampler,
        reward=(instantiate(cfg.reward_sandbox) if cfg.get("reward_sandbox") else RewardSet)(instantiate(cfg.reward)),
        advantage=instantiate(cfg.advantage),
        objective=instantiate(cfg.objective),
        optimizer=instantiate(cfg.optimizer),
        scheduler=_optional(cfg.get("scheduler")),
        train_data=train_data,
        val_data=val_data,
        batch_size=cfg.data_loader.batch_size,
        val_batch_size=cfg.data_loader.val_batch_size,
        hooks=hooks,
        data_seed=cfg.seed,
        **cfg["update"],
    )


def build_trainer(cfg: DictConfig, logger: Any = None, callbacks: list | None = None):
    """The Lightning Trainer from ``conf/trainer``, with the ``conf/callbacks`` group's callbacks and ``callbacks``
    (a ``Checkpoints`` passed here replaces the config's)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vrl.lit.checkpoint import AtomicCheckpointIO, Checkpoints

    extra = list(callbacks or [])
    made = instantiate_callbacks(cfg.get("callbacks"), logger, cfg.trainer.get("enable_progress_bar", True))
    if any(isinstance(c, Checkpoints) for c in extra):
        made = [c for c in made if not isinstance(c, Checkpoints)]
    every = [*made, *extra]
    return instantiate(
        cfg.trainer,
        logger=logger if logger is not None else False,
        callbacks=every,
        plugins=[AtomicCheckpointIO()],  # write next to the target, fsync, keep the previous checkpoint
        # no default ModelCheckpoint: vrl's Checkpoints is the writer (one a user adds by config is kept)
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in every),
    )


def instantiate_callbacks(node: Any, logger: Any, progress_bar: bool) -> list:
    """Every non-null entry of the ``callbacks`` group, except the two Lightning would reject: an LR monitor
    without a logger (it raises), a progress bar with ``trainer.enable_progress_bar=false``."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar

    out = []
    for name, entry in (node or {}).items():
        if not entry:
            continue
        callback = instantiate(entry)
        if isinstance(callback, LearningRateMonitor) and logger is None:
            log.info("callbacks.%s: LearningRateMonitor left out (no logger); train/lr is logged by the module", name)
        elif not (isinstance(callback, ProgressBar) and not progress_bar):
            out.append(callback)
    return out
