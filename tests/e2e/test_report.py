"""``vrl report``: a real 2 methods x 2 seeds sweep of the tiny model, as an HTML page with pictures, a final-metric
table and the report attached to the sweep's MLflow parent run; from the multirun folder and from MLflow."""

import json
import os
import subprocess
import sys

import pytest

TINY = [
    "save_policy=false",
    "trainer.max_steps=3",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "data.train.num_samples=16",
    "data.val.num_samples=4",
    "data_loader.batch_size=2",
    "sampler.group_size=2",
    "sampler.max_new_tokens=4",
    "console.every_n_steps=0",
]


def _vrl(args, cwd, module="vrl"):
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-P", "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_2x2_sweep_reports_curves_a_final_table_and_its_mlflow_parent_holds_it(tmp_path):
    sweep_run = _vrl(["--multirun", "+method=grpo,dr_grpo", "seed=0,1", *TINY], tmp_path)  # MLflow: ./mlflow.db
    assert sweep_run.returncode == 0, sweep_run.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("*/*")

    out = _vrl(["report", str(sweep)], tmp_path)  # `vrl report`, from the multirun folder
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 runs in 2 groups" in out.stdout
    report = sweep / "report"
    for name in ("index.html", "curves.png", "curve_val_accuracy.png", "curve_rollout_reward_mean.png"):
        assert (report / name).stat().st_size > 1000, name
    summary = json.loads((report / "report.json").read_text())
    assert set(summary["groups"]) == {"method=grpo", "method=dr_grpo"}  # the seed is not a configuration
    for group in summary["groups"].values():
        assert sorted(r["seed"] for r in group["runs"]) == [0, 1]
        assert len(group["final"]["val/accuracy"]) == 2  # per seed, then mean and std
        mean, std = group["stats"]["val/accuracy"]
        assert 0.0 <= mean <= 1.0 and std >= 0.0
        assert group["stats"]["perf/step_time_s"][0] > 0
    page = (report / "index.html").read_text()
    assert "method=dr_grpo" in page and "&plusmn;" in page and 'src="curves.png"' in page

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vrl").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`vrl.sweep_parent` != ''")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/index.html"}

    again = _vrl(["vrl", "--tracking-uri", "sqlite:///mlflow.db", "--out", "from_mlflow"], tmp_path, "vrl.report")
    assert again.returncode == 0, again.stderr[-3000:]
    from_mlflow = json.loads((tmp_path / "from_mlflow" / "report.json").read_text())
    assert from_mlflow["groups"].keys() == summary["groups"].keys()
    assert from_mlflow["groups"]["method=grpo"]["final"] == summary["groups"]["method=grpo"]["final"]
