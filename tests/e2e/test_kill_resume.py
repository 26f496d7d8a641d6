"""Kill -9 at the worst moment, then resume: one MLflow run, every step logged exactly once, same numbers.

Also: SIGTERM (preemption) checkpoints and exits 128 + 15, and the run is marked KILLED until resumed.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

# Runs ``python -m vrl`` with the checkpoint writer patched to SIGKILL the process at its N-th write, just
# before or just after writing. "after": the checkpoint of step k is durable and nothing after it ran.
# "before": the steps since the previous checkpoint were trained and their metrics sent, then the process dies
# without a new checkpoint, so the resume recomputes (and must not re-send) them.
HARNESS = """
import os, signal, sys
from vrl.lit import checkpoint
real, count = checkpoint.AtomicCheckpointIO.save_checkpoint, [0]
def save_and_die(self, state, path, storage_options=None):
    count[0] += 1
    die = count[0] == int(os.environ["VRL_TEST_DIE_AT_SAVE"])
    if die and os.environ["VRL_TEST_DIE_WHEN"] == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, state, path, storage_options)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.AtomicCheckpointIO.save_checkpoint = save_and_die
from vrl.train import main
main()
"""

STEPS = 5


def _args(tmp_path, run_dir, extra=(), steps=STEPS, ckpt_every=2):
    return [
        f"hydra.run.dir={run_dir}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/artifacts",
        "data.train.num_samples=32",
        "data.val.num_samples=8",
        "data_loader.batch_size=2",
        "sampler.group_size=4",
        "sampler.max_new_tokens=4",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=5",
        "trainer.enable_progress_bar=false",
        "update.log_rollouts_every=0",
        "save_policy=false",
        f"ckpt_every={ckpt_every}",
        *extra,
    ]


def _vrl(args, cwd, env=None, harness=False):
    cmd = [sys.executable, "-P", "-c", HARNESS, *args] if harness else [sys.executable, "-P", "-m", "vrl", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _history(db, experiment="vrl"):
    """{run_id: {key: [(step, value), ...]}} and {run_id: status} for the runs of one MLflow experiment."""
    con = sqlite3.connect(db)
    query = "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e USING (experiment_id) WHERE e.name = ?"
    runs = dict(con.execute(query, (experiment,)).fetchall())
    hist = {r: {} for r in runs}
    for run, key, step, value in con.execute("SELECT run_uuid, key, step, value FROM metrics ORDER BY step"):
        if run in hist:
            hist[run].setdefault(key, []).append((step, value))
    con.close()
    return hist, runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The metric history of an uninterrupted run (same seed and settings as the killed ones)."""
    tmp = tmp_path_factory.mktemp("straight")
    out = _vrl(_args(tmp, tmp / "run", ["seed=3"]), tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    (metrics,) = _history(tmp / "mlflow.db")[0].values()
    assert len(metrics["rollout/reward_mean"]) == STEPS
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize(("when", "save"), [("after", 1), ("before", 2)])
def test_sigkill_then_resume_logs_each_step_once(tmp_path, reference, when, save):
    # checkpoints at steps 2 and 4 (ckpt_every=2): die after the first write, or before the second one
    args = _args(tmp_path, tmp_path / "run", ["seed=3"])
    killed = _vrl(args, tmp_path, {"VRL_TEST_DIE_AT_SAVE": str(save), "VRL_TEST_DIE_WHEN": when}, harness=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _vrl([*args, "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Lightning's "dataloader is not resumable ... unreliable results" is silenced because vrl restores the data
    # position itself (the equality with the uninterrupted run below is the proof)
    assert "not resumable" not in resumed.stderr
    got, status = _history(tmp_path / "mlflow.db")
    assert len(got) == 1, "resume must continue the killed run, not open a new one"
    assert list(status.values()) == ["FINISHED"]
    (metrics,) = got.values()
    for key in ("rollout/reward_mean", "train/grad_norm", "rollout/response_len_mean"):
        steps = [s for s, _ in metrics[key]]
        assert steps == sorted(set(steps)), f"{key}: a step logged twice: {steps}"
        assert metrics[key] == reference[key], key  # every step present, the values of the uninterrupted run


@pytest.mark.slow
def test_sigterm_checkpoints_exits_nonzero_and_resume_finishes(tmp_path):
    args = _args(tmp_path, tmp_path / "run", steps=400, ckpt_every=1000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-P", "-m", "vrl", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    db = tmp_path / "mlflow.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait until a training step was logged
        time.sleep(1)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("SELECT COUNT(*) FROM metrics WHERE key='rollout/reward_mean'").fetchone()[0]:
                        break
            except sqlite3.OperationalError:  # the store exists but MLflow has not created its tables yet
                continue
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "ckpt_path=last" in err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()  # saved on the signal although ckpt_every was never reached
    _, status = _history(db)
    assert list(status.values()) == ["KILLED"]
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert 1 <= step < 400
    resumed = _vrl([*_args(tmp_path, tmp_path / "run", steps=step + 1, ckpt_every=1000), "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, status = _history(db)
    assert list(status.values()) == ["FINISHED"]  # the same run, finished
