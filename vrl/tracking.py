"""MLflow tracking: the logger, run metadata (config, overrides, git commit, data fingerprint) and
tables of sample rollouts with their images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
):
    """Lightning's ``MLFlowLogger`` against an embedded SQLite store (default) or any tracking URI.

    Args:
        tracking_uri: ``sqlite:///mlflow.db`` (relative to the working directory), ``http://host:port``,
            or any MLflow URI.
        experiment_name: MLflow experiment; sweep jobs share it and are grouped by the ``sweep`` tag.
        run_name: MLflow run name (defaults to MLflow's generated one).
        artifact_location: where a *new* experiment stores artifacts for file/SQLite stores; made
            absolute. Ignored for an existing experiment and for server URIs (the server decides).
        tags: extra run tags.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = resolve_tracking_uri(tracking_uri)
    location = None
    if artifact_location and not uri.startswith(("http://", "https://")):
        location = Path(artifact_location).resolve().as_uri()
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags=dict(tags or {}),
        artifact_location=location,
        log_model=False,
    )


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
        for i in rows:
            sample = rollout.samples[i]
            images = sample.get("images") or []
            table["step"].append(step)
            table["group"].append(int(rollout.group_ids[i]))
            table["image"].append(mlflow.Image(images[0].convert("RGB")) if images else None)
            table["prompt"].append(str(sample.get("prompt", "")))
            table["response"].append(rollout.responses[i])
            table["answer"].append(str(sample.get("answer", "")))
            for k, v in rollout.reward_components.items():
                table[f"reward/{k}"].append(float(v[i]))
            table["reward"].append(float(rollout.rewards[i]))
        self.logger.experiment.log_table(self.logger.run_id, data=table, artifact_file=f"rollouts/step_{step:06d}.json")
