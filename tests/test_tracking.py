"""Run names, the tracking-server check, sweep parents and the reaper of dead runs (MLflow, SQLite store)."""

import os
import subprocess
import sys

import pytest

from vrl.errors import ConfigError
from vrl.tracking import check_tracking_server, reap_dead_runs, run_identity, sweep_parent


def test_run_identity_names_method_and_overrides():
    name, tags = run_identity(["+method=[vppo,pearl]", "seed=1", "hydra.run.dir=x", "logger=none"], "12-05 17:40:02")
    assert name == "vppo+pearl seed=1 @12-05 17:40:02"
    assert tags == {"method": "vppo+pearl"}
    assert run_identity(["optimizer.lr=0.01"], "t") == ("grpo optimizer.lr=0.01 @t", {"method": "grpo"})
    assert run_identity(["+method=dapo"], "t")[1] == {"method": "dapo"}


def test_dead_tracking_server_is_one_config_error():
    # port 9 (discard) has no server on this machine: refused at once, reported with the key and the fixes
    with pytest.raises(ConfigError, match=r"logger.tracking_uri=http://127.0.0.1:9: no MLflow server answers"):
        check_tracking_server("http://127.0.0.1:9", timeout_s=5)


@pytest.fixture
def client(tmp_path):
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    return c, c.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())


def test_sweep_parent_is_created_once(client):
    c, exp = client
    first = sweep_parent(c, exp, "multirun/2026-12-05/10-00-00")
    assert sweep_parent(c, exp, "multirun/2026-12-05/10-00-00") == first  # found by its tag, not created twice
    assert sweep_parent(c, exp, "multirun/2026-12-05/11-00-00") != first  # another sweep, another parent
    assert c.get_run(first).data.tags["mlflow.runName"] == "sweep 2026-12-05/10-00-00"


def test_reaper_marks_only_dead_local_runs(client):
    c, exp = client
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid_gone = dead.stdout.strip()  # that process has exited
    runs = {"dead": ("h1", pid_gone), "alive": ("h1", str(os.getpid())), "elsewhere": ("h2", pid_gone)}
    ids = {k: c.create_run(exp, tags={"host": h, "pid": p}).info.run_id for k, (h, p) in runs.items()}
    assert reap_dead_runs(c, exp, "h1") == [ids["dead"]]
    status = {k: c.get_run(v).info.status for k, v in ids.items()}
    assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
