"""Entry point: ``python -m vrl [overrides]`` composes ``conf/train.yaml`` and trains.

Orchestration only: build the objects (``vrl.build``), attach tracking, fit, save the policy.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vrl.utils.threads import configure_threads

log = logging.getLogger("vrl")


def _quiet() -> None:
    """Keep the console to what a user acts on: Lightning logs once (not again through Hydra's root
    handler), and known-harmless warnings are dropped."""
    logging.getLogger("lightning.pytorch").propagate = False
    for message in (
        r".*isinstance\(treespec, LeafSpec\).*",  # Lightning vs torch pytree deprecation, not ours
        r".*litlogger.*",
        r".*IterableDataset. has .__len__. defined.*",  # StepTicks: one process, no workers
        r".*Total length of .list. across ranks is zero.*",  # data.val=null: the empty val loader is on purpose
        # On resume: the train loader only yields step ticks; the data position (which prompts come next) is
        # restored from the checkpoint by the module itself (PromptSource, checkpoint["vrl"]["prompts"]).
        r".*dataloader is not resumable.*",
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
        threads = instantiate(cfg.threads) if cfg.get("threads") else configure_threads()
    except Exception as err:  # Hydra wraps the constructor's ValueError: report the cause, naming the key
        raise ConfigError(str(err.__cause__ or err)) from err
    log.info(threads.describe())
    check_values(cfg, unread)
    import lightning as L

    _quiet()
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vrl.build import build_module, build_trainer
    from vrl.lit.checkpoint import Checkpoints, resolve_resume
    from vrl.tracking import (
        RolloutTableLogger,
        dataset_fingerprint,
        git_commit,
        is_mlflow,
        log_run_metadata,
        reap_dead_runs,
        sweep_parent,
    )

    checkpoints = Path(OmegaConf.select(cfg, "callbacks.checkpoints.dirpath") or f"{cfg.output_dir}/checkpoints")
    resume_from, resumed = resolve_resume(cfg.ckpt_path, checkpoints)  # a bad ckpt_path stops here, in one line
    # a dead tracking server stops the run here, before the model is built. Only rank 0 logs (Lightning's rule), so
    # under DDP the other ranks build no logger: N processes creating one SQLite store at once collide
    logger = _logger(cfg, resumed.get("mlflow_run_id")) if rank_zero_only.rank == 0 else None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    if is_mlflow(logger):
        if resumed.get("mlflow_run_id"):
            logger.continue_run()  # the same MLflow run, each step logged once
        else:
            tags = {"git_commit": git_commit(), "data_fingerprint": dataset_fingerprint(module.train_data)}
            tags |= _sweep_tags() | _host_tags()
            reap_dead_runs(logger.experiment, logger.experiment_id, tags["host"])
            if "sweep" in tags:
                tags["mlflow.parentRunId"] = sweep_parent(logger.experiment, logger.experiment_id, tags["sweep"])
            log_run_metadata(logger, cfg, cfg.output_dir, tags)
        module.rollout_logger = RolloutTableLogger(logger)
    console = _console(cfg)
    trainer = build_trainer(cfg, logger, callbacks=[console] if console else [])
    keeper = next((c for c in trainer.callbacks if isinstance(c, Checkpoints)), None)  # conf/callbacks
    try:
        trainer.fit(module, ckpt_path=resume_from)
    except SystemExit:
        if keeper is None or keeper.signal is None:
            raise
        _stopped_by_signal(keeper, logger, cfg.output_dir, trainer.global_step)
    policy_dir = None
    from vrl.lit.fsdp import full_state_dict

    full = full_state_dict(module.policy) if cfg.save_policy else None  # FSDP: gathered by every rank to rank 0
    if cfg.save_policy and trainer.is_global_zero:
        from vrl.models.loading import save_vlm

        out = Path(cfg.output_dir) / "policy"
        policy_dir = save_vlm(module.vlm, out, merge_lora=cfg.merge_lora, state_dict=full)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return _report(trainer, module, cfg, console, logger, policy_dir, metrics)


def _logger(cfg: DictConfig, run_id: str | None):
    """The run's logger (None with ``logger=none``). MLflow: a new, named run, or the checkpoint's run on resume;
    Lightning's own loggers (``logger=csv|tensorboard|wandb``) as their config says."""
    if not cfg.get("logger"):
        return None
    from vrl.tracking import run_identity, takes_run_name

    if not takes_run_name(cfg.logger._target_):
        return instantiate(cfg.logger)
    if run_id:
        return instantiate(cfg.logger, run_id=run_id)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    name, tags = run_identity(overrides, time.strftime("%m-%d %H:%M:%S"))
    return instantiate(cfg.logger, run_name=cfg.logger.get("run_name") or name, tags=tags)


def _host_tags() -> dict[str, str]:
    """Where the run's process lives: lets a later start tell a crashed run from a live one."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _stopped_by_signal(keeper, logger, output_dir: str, step: int) -> None:
    """A stop signal (preemption): say where the checkpoint is, mark the MLflow run KILLED, exit 128 + signal."""
    name = signal.Signals(keeper.signal).name
    print(
        f"[vrl] stopped by {name} after step {step}; checkpoint: {keeper.saved}\n"
        f"[vrl] resume with: python -m vrl hydra.run.dir={output_dir} ckpt_path=last (same overrides)",
        file=sys.stderr,
    )
    from vrl.tracking import is_mlflow

    if is_mlflow(logger) and logger.run_id:
        logger.experiment.set_terminated(logger.run_id, "KILLED")
    sys.exit(128 + int(keeper.signal))


def _console(cfg: DictConfig):
    """The ``console`` callback (vrl/console.py: parameter count, periodic metrics line), or None."""
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
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {"sweep": hc.sweep.dir, "sweep_job": str(hc.job.num), "overrides": " ".join(hc.overrides.task)}


def main() -> None:
    """``python -m vrl`` / ``vrl``: one-line errors for unknown group options, then Hydra (``_hydra_main``);
    ``vrl report ...`` writes a sweep report (``vrl.report``); ``vrl eval ...`` evaluates a policy
    (``vrl.evaluate``)."""
    if sys.argv[1:2] == ["report"]:  # `vrl report <multirun dir | MLflow experiment>`: vrl/report.py
        from vrl.report import main as report

        sys.exit(report(sys.argv[2:]))
    if sys.argv[1:2] == ["eval"]:  # `vrl eval [policy] [overrides]`: vrl/evaluate.py
        from vrl.evaluate import main as evaluate

        sys.exit(evaluate(sys.argv[2:]))
    from vrl.cli import check_group_overrides, check_plugins
    from vrl.errors import ConfigError

    # a cluster launcher/sweeper config is validated against the plugin's schema of the same name (on purpose)
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    try:
        check_plugins(sys.argv[1:])
        check_group_overrides(sys.argv[1:])
    except ConfigError as err:
        print(f"[vrl] config error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://vrl_conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        metrics = run(cfg)
    except Exception as err:  # bad config or data: one line naming the key/file/row, not a traceback
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"[vrl] {cause.kind} error: {cause}", file=sys.stderr)
        sys.exit(2)
    return objective(metrics)


def objective(metrics: dict[str, float]) -> float | None:
    """What a sweeper (Optuna) optimises: the run's final validation accuracy, or its validation reward when the
    reward has no accuracy term; None when no validation ran."""
    return next((metrics[k] for k in ("val/accuracy", "val/reward") if k in metrics), None)


def _user_error(err: BaseException):
    """The ``UserInputError`` behind ``err``: Hydra wraps what a ``_target_`` raises in its own exception."""
    from vrl.errors import UserInputError

    while err is not None and not isinstance(err, UserInputError):
        err = err.__cause__
    return err


if __name__ == "__main__":
    main()
