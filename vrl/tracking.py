"""MLflow tracking: the logger, run metadata (config, overrides, git commit, data fingerprint) and
tables of sample rollouts with their images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vrl.errors import ConfigError
from vrl.types import Rollout


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (relative to the working directory).

    Relative SQLite paths would otherwise depend on whichever directory a later ``mlflow ui`` runs in.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def build_mlflow_logger(
    tracking_uri: str = "sqlite:///mlflow.db",
    experiment_name: str = "vrl",
    run_name: str | None = None,
    artifact_location: str | None = "mlartifacts",
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    connect_timeout_s: float = 10.0,
):
    """Lightning's ``MLFlowLogger`` against an embedded SQLite store (default) or any tracking URI.

    Args:
        tracking_uri: ``sqlite:///mlflow.db`` (relative to the working directory), ``http://host:port``,
            or any MLflow URI. A server that does not answer within ``connect_timeout_s`` stops the run at
            start with one line (MLflow itself would retry for minutes).
        experiment_name: MLflow experiment; sweep jobs share it and are grouped under a parent run.
        run_name: MLflow run name; vrl names runs after the method and the overrides (``vrl.train``).
        artifact_location: where a *new* experiment stores artifacts for file/SQLite stores; made
            absolute. Ignored for an existing experiment and for server URIs (the server decides).
        tags: extra run tags.
        run_id: continue this run instead of starting one (set by vrl on resume, from the checkpoint).
        connect_timeout_s: how long to wait for an HTTP tracking server at start.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        check_tracking_server(uri, connect_timeout_s)
    location = None
    if artifact_location and not uri.startswith(("http://", "https://")):
        location = Path(artifact_location).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        create_sqlite_store(uri, experiment_name, location)
    from vrl.lit.run_logger import ResumableMLFlowLogger  # Lightning: imported only once the config is valid

    return ResumableMLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags=dict(tags or {}),
        artifact_location=location,
        log_model=False,
        run_id=run_id,
    )


def create_sqlite_store(uri: str, experiment_name: str, artifact_location: str | None = None) -> None:
    """Create (and migrate) the SQLite store and the experiment one process at a time: the first jobs of a sweep
    under ``hydra/launcher=submitit_local`` start together, and processes creating one store (``duplicate column
    name``) or one experiment at once fail. The lock is on the store's folder (no lock file left behind)."""
    import fcntl

    folder = Path(uri[len("sqlite:///") :]).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)  # creates the tables, or finds them
        if client.get_experiment_by_name(experiment_name) is None:
            client.create_experiment(experiment_name, artifact_location=artifact_location)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _require(package: str, option: str) -> None:
    """Stop at start, in one line, when ``logger=<option>`` needs a package that is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger={option} needs the {package} package, which is not installed: pip install {package} "
            "(or use logger=mlflow, logger=csv or logger=none)"
        )


def build_tensorboard_logger(save_dir: str, name: str = "tensorboard", **kwargs: Any):
    """Lightning's ``TensorBoardLogger`` (``logger=tensorboard``); ``tensorboard`` must be installed."""
    _require("tensorboard", "tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=save_dir, name=name, version="", default_hp_metric=False, **kwargs)


def build_wandb_logger(project: str = "vrl", name: str | None = None, save_dir: str = ".", **kwargs: Any):
    """Lightning's ``WandbLogger`` (``logger=wandb``); ``wandb`` must be installed."""
    _require("wandb", "wandb")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=project, name=name, save_dir=save_dir, **kwargs)


def is_mlflow(logger: Any) -> bool:
    """Whether ``logger`` is the MLflow logger (run metadata, rollout tables and resume apply to it only)."""
    return logger is not None and hasattr(logger, "run_id") and hasattr(logger, "_tracking_uri")


def takes_run_name(target: str) -> bool:
    """Whether the logger ``target`` (a ``_target_`` path) accepts ``run_name`` and ``tags`` (vrl's MLflow
    builder); Lightning's own loggers are built from their config as it is."""
    import inspect

    from hydra.utils import get_method

    params = inspect.signature(get_method(target)).parameters
    return "run_name" in params and "tags" in params


def check_tracking_server(uri: str, timeout_s: float) -> None:
    """Raise ``ConfigError`` unless an MLflow server answers ``GET /health`` at ``uri`` within ``timeout_s``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, unreachable, timed out, malformed URL
        reason = str(getattr(err, "reason", err))
    raise ConfigError(
        f"logger.tracking_uri={uri}: no MLflow server answers ({reason}); start one (mlflow server --host "
        "127.0.0.1 --port ...), or log locally with logger.tracking_uri=sqlite:///mlflow.db, or use logger=none"
    )


def run_identity(overrides: list[str], when: str) -> tuple[str, dict[str, str]]:
    """A unique, readable run name and the ``method`` tag, from the command line's overrides.

    ``["+method=[vppo,pearl]", "seed=1"]`` at ``12-05 17:40:02`` -> ``("vppo+pearl seed=1 @12-05 17:40:02",
    {"method": "vppo+pearl"})``. Without a ``+method`` the method is ``grpo`` (the base config). Overrides that
    only move files or switch logging (``hydra.*``, ``output_dir``, ``logger*``) are left out of the name.
    """
    method, rest = "grpo", []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key == "method":
            method = "+".join(v.strip() for v in value.strip("[]").split(",") if v.strip()) or method
        elif not key.startswith(("hydra.", "hydra/", "output_dir", "logger")):
            rest.append(item.lstrip("+"))
    name = " ".join([method, *rest, f"@{when}"])
    return name, {"method": method}


def sweep_parent(client: Any, experiment_id: str, sweep_dir: str) -> str:
    """The MLflow run that groups a sweep's jobs (created by the first job, found by its tag after that).

    Jobs carry ``mlflow.parentRunId`` = this id, so the MLflow UI nests them under one row per sweep.
    """
    tag = "vrl.sweep_parent"
    found = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{sweep_dir}'", max_results=1)
    if found:
        return found[0].info.run_id
    name = f"sweep {Path(sweep_dir).parent.name}/{Path(sweep_dir).name}"
    run_id = client.create_run(experiment_id, tags={tag: sweep_dir, "mlflow.runName": name}).info.run_id
    client.set_terminated(run_id, "FINISHED")  # a grouping row: it runs nothing itself
    return run_id


def reap_dead_runs(client: Any, experiment_id: str, host: str) -> list[str]:
    """Mark KILLED the runs still RUNNING whose process (tags ``host``/``pid``, this host) no longer exists.

    A SIGKILL leaves no chance to say so; the next run started on the same host tidies up. Returns their ids.
    """
    reaped = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500):
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit() or _alive(int(tags["pid"])):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        reaped.append(run.info.run_id)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def git_commit(path: str | Path | None = None) -> str:
    """HEAD commit of the repository containing ``path`` (this package by default), or ``unknown``."""
    where = Path(path or Path(__file__).parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_fingerprint(dataset: Any) -> str:
    """The ``datasets`` fingerprint when the data is a ``datasets.Dataset``; a stable description otherwise."""
    fp = getattr(dataset, "_fingerprint", None)
    if fp:
        return str(fp)
    fp = getattr(dataset, "fingerprint", None)
    return str(fp() if callable(fp) else fp) if fp else f"{type(dataset).__name__}:{len(dataset)}"


def log_run_metadata(logger, cfg: DictConfig, output_dir: str | Path, tags: dict[str, str]) -> None:
    """Flattened resolved config as params; composed config and overrides as artifacts; tags."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(resolved)
    client, run_id = logger.experiment, logger.run_id
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    composed = out / "composed_config.yaml"
    composed.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    client.log_artifact(run_id, str(composed), artifact_path="config")
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        path = out / ".hydra" / name
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path="config/hydra")


class RolloutTableLogger:
    """Logs a table of sample rollouts (image, prompt, response, answer, rewards) to the MLflow run."""

    def __init__(self, logger, max_rows: int = 8) -> None:
        self.logger = logger
        self.max_rows = max_rows

    def __call__(self, rollout: Rollout, step: int) -> None:
        import mlflow

        rows = range(min(self.max_rows, rollout.num_sequences))
        table: dict[str, list] = {
            "step": [],
            "group": [],
            "image": [],
            "prompt": [],
            "response": [],
            "answer": [],
        }
        table |= {f"reward/{k}": [] for k in rollout.reward_components}
        table["reward"] = []
        tools = any("turns" in rollout.samples[i] for i in rows)  # multi-turn: boxes, tool output, transcript
        if tools:
            table |= {"tool_image": [], "turns": []}
        for i in rows:
            sample = rollout.samples[i]
            images = sample.get("images") or []
            table["step"].append(step)
            table["group"].append(int(rollout.group_ids[i]))
            if tools:
                from vrl.tools.view import boxed_image, transcript

                boxed, outputs = boxed_image(sample), sample.get("tool_images") or []
                images = [boxed] if boxed is not None else images
                table["tool_image"].append(mlflow.Image(outputs[-1].convert("RGB")) if outputs else None)
                table["turns"].append(transcript(sample))
            table["image"].append(mlflow.Image(images[0].convert("RGB")) if images else None)
            table["prompt"].append(str(sample.get("prompt", "")))
            table["response"].append(rollout.responses[i])
            table["answer"].append(str(sample.get("answer", "")))
            for k, v in rollout.reward_components.items():
                table[f"reward/{k}"].append(float(v[i]))
            table["reward"].append(float(rollout.rewards[i]))
        self.logger.experiment.log_table(self.logger.run_id, data=table, artifact_file=f"rollouts/step_{step:06d}.json")
