"""Tracking against a real ``mlflow server`` on 127.0.0.1: train, read the run back, stop the server."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy in 60 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_training_logs_params_metrics_tables_and_tags(mlflow_server, compose, tiny_overrides, tmp_path):
    from mlflow.tracking import MlflowClient

    from vrl.train import run

    overrides = [o for o in tiny_overrides if not o.startswith(("logger=", "update.log_rollouts_every"))]
    cfg = compose(
        overrides
        + [
            f"logger.tracking_uri={mlflow_server}",
            "logger.experiment_name=vrl-test",
            "update.log_rollouts_every=1",
            "run_name=server-test",
        ]
    )
    run(cfg)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("vrl-test")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.run_name == "server-test"
    assert r.data.params["sampler/group_size"] == "4"  # flattened resolved config
    assert r.data.params["advantage/_target_"] == "vrl.methods.advantage.GroupZScore"
    history = client.get_metric_history(r.info.run_id, "rollout/reward_mean")
    assert len(history) == 2  # two training steps
    for key in ("reward/accuracy_mean", "train/grad_norm", "perf/step_time_s", "perf/tokens_per_s", "train/lr"):
        assert key in r.data.metrics, key
    assert r.data.tags["git_commit"] and r.data.tags["data_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "config")}
    assert "config/composed_config.yaml" in artifacts
    tables = {a.path for a in client.list_artifacts(r.info.run_id, "rollouts")}
    assert "rollouts/step_000000.json" in tables
