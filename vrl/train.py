"""Entry point: ``python -m vrl [overrides]`` composes ``conf/train.yaml`` and trains.

Orchestration only: build the objects (``vrl.build``), attach tracking, fit, save the policy.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vrl.utils.threads import configure_threads

log = logging.getLogger("vrl")


def _quiet() -> None:
    """Keep the console to what a user acts on: Lightning logs once (not again through Hydra's root
    handler), and known-harmless warnings are dropped."""
    logging.getLogger("lightning.pytorch").propagate = False
    for message in (
        r".*isinstance\(treespec, LeafSpec\).*",  # Lightning vs torch pytree deprecation, not ours
        r".*ModelCheckpoint with manual optimization.*",  # vrl checkpoints after the step on purpose
        r".*litlogger.*",
        r".*IterableDataset. has .__len__. defined.*",  # StepTicks: one process, no workers
        r".*Total length of .list. across ranks is zero.*",  # data.val=null: the empty val loader is on purpose
    ):
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def run(cfg: DictConfig) -> dict[str, float]:
    """Train with a composed config; returns the final logged metrics (used by sweeps and tests)."""
    from vrl.validate import ConfigError, check_keys, check_values

    unread = check_keys(cfg)  # before torch: a typo costs a second, not the imports below
    try:
        threads = configure_threads(**{k: v for k, v in (cfg.get("threads") or {}).items() if k != "_target_"})
    except ValueError as err:
        raise ConfigError(str(err)) from err
    log.info(threads.describe())
    check_values(cfg, unread)
    import lightning as L

    _quiet()
    from vrl.build import build_module, build_trainer
    from vrl.tracking import RolloutTableLogger, dataset_fingerprint, git_commit, log_run_metadata

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    logger = None
    if cfg.get("logger"):
        from hydra.utils import instantiate

        logger = instantiate(cfg.logger)
        tags = {"git_commit": git_commit(), "data_fingerprint": dataset_fingerprint(module.train_data)}
        tags |= _sweep_tags()
        log_run_metadata(logger, cfg, cfg.output_dir, tags)
        module.rollout_logger = RolloutTableLogger(logger)
    console = _console(cfg)
    trainer = build_trainer(cfg, logger, callbacks=[console] if console else None)
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    policy_dir = None
    if cfg.save_policy and trainer.is_global_zero:
        from vrl.models.loading import save_vlm

        policy_dir = save_vlm(module.vlm, Path(cfg.output_dir) / "policy", merge_lora=cfg.merge_lora)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return _report(trainer, module, cfg, console, logger, policy_dir, metrics)


def _console(cfg: DictConfig):
    """The ``console`` callback (vrl/console.py: parameter count, periodic metrics line), or None."""
    from hydra.utils import instantiate

    return instantiate(cfg.console) if cfg.get("console") else None


def _report(trainer, module, cfg, console, logger, policy_dir, metrics: dict[str, float]) -> dict[str, float]:
    """Print the end-of-run summary; a single run that stopped before its last step exits with status 3."""
    from vrl.console import EXIT_STOPPED, run_summary

    elapsed = console.elapsed() if console is not None else None
    summary = run_summary(trainer, module.hooks.hooks, cfg.output_dir, policy_dir, logger, elapsed)
    if trainer.is_global_zero:
        print("\n" + summary.text + "\n", flush=True)
    if summary.stopped is not None and not _sweep_tags():  # a sweep goes on with its next job
        sys.exit(EXIT_STOPPED)
    return metrics


def _sweep_tags() -> dict[str, str]:
    """Group multirun jobs: one experiment, a ``sweep`` tag naming the sweep directory, the job number."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {"sweep": hc.sweep.dir, "sweep_job": str(hc.job.num), "overrides": " ".join(hc.overrides.task)}


@hydra.main(version_base="1.3", config_path="pkg://vrl_conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vrl.errors import UserInputError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        metrics = run(cfg)
    except UserInputError as err:  # bad config or data: one line naming the key/file/row, not a traceback
        print(f"[vrl] {err.kind} error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/accuracy")


if __name__ == "__main__":
    main()
