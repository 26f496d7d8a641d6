"""Build the run's objects from a composed config: the only place that reads the config tree.

Each group is instantiated by its ``_target_`` and handed to a constructor argument of the same name;
classes never see the config object.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from vrl.lit.rl_module import RLModule
from vrl.rewards.combine import RewardSet


def _optional(node: Any) -> Any:
    """``instantiate`` a group that may be switched off (an empty option file or null)."""
    return instantiate(node) if node else None


def build_module(cfg: DictConfig) -> RLModule:
    """Policy, rollout, rewards, method axes, hooks and data -> the RLModule."""
    vlm = instantiate(cfg.model)
    rollout = instantiate(cfg.rollout)
    hooks = {name: instantiate(node) for name, node in (cfg.get("hooks") or {}).items() if node}
    train_data, val_data = instantiate(cfg.data.train), _optional(cfg.data.get("val"))
    if cfg.data.get("preflight"):  # drop (or stop on) bad rows before the first step: vrl/data/preflight.py
        from vrl.data.preflight import run_preflight

        check = {"system_prompt": rollout.system_prompt, "prompt_suffix": rollout.prompt_suffix, **cfg.data.preflight}
        train_data = run_preflight(train_data, vlm.processor, "train", **check)
        val_data = None if val_data is None else run_preflight(val_data, vlm.processor, "val", **check)
    return RLModule(
        model=vlm,
        rollout=rollout,
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
    """The Lightning Trainer from ``conf/trainer`` plus vrl's checkpointing (crash-safe, signal-aware)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vrl.lit.checkpoint import AtomicCheckpointIO, Checkpoints

    extra = [TQDMProgressBar(refresh_rate=5)] if cfg.trainer.get("enable_progress_bar", True) else []
    if not any(isinstance(c, Checkpoints) for c in callbacks or []):
        extra.append(Checkpoints(f"{cfg.output_dir}/checkpoints", every_n_steps=cfg.get("ckpt_every", 20)))
    return instantiate(
        cfg.trainer,
        logger=logger if logger is not None else False,
        callbacks=[*extra, *(callbacks or [])],
        plugins=[AtomicCheckpointIO()],  # write next to the target, fsync, keep the previous checkpoint
        enable_checkpointing=False,  # no default ModelCheckpoint: Checkpoints above is the only writer
    )
