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
    trainer = build_trainer(cfg, logger)
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    if cfg.save_policy and trainer.is_global_zero:
        from vrl.models.loading import save_vlm

        out = Path(cfg.output_dir) / "policy"
        save_vlm(module.vlm, out, merge_lora=cfg.merge_lora)
        log.info("saved policy to %s", out)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if logger is not None and trainer.is_global_zero:
        _print_tracking_hint(logger)
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


def _print_tracking_hint(logger) -> None:
    uri = logger._tracking_uri
    view = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    print(f"\n[vrl] run {logger.run_id} logged to {uri}\n[vrl] view it with: {view}\n")


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
