"""Cluster launches, searches and the sweep report, through Hydra's plugins: a real 2 methods x 2 seeds sweep
through submitit's local executor (what ``hydra/launcher=submitit_slurm`` does on SLURM, on this machine) and
``vrl report`` on it, Optuna trials whose objective is the run's final validation metric, and the launcher
configs as they compose."""

import json
import os
import subprocess
import sys

import pytest
import yaml

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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 2 methods x 2 seeds sweep of the tiny model through submitit's local executor (4 jobs at once, each
    in its own process), logged to one MLflow store: (working directory, sweep folder)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cwd = tmp_path_factory.mktemp("sweep")
    out = _vrl(["--multirun", "hydra/launcher=submitit_local", "+method=grpo,dr_grpo", "seed=0,1", *TINY], cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in out.stderr + out.stdout
    (folder,) = (cwd / "multirun").glob("*/*")
    return cwd, folder


@pytest.mark.slow
def test_a_2x2_sweep_runs_through_submitit_local_into_one_mlflow_store(sweep):
    from mlflow.tracking import MlflowClient

    cwd, folder = sweep
    jobs = sorted(p.name for p in folder.iterdir() if p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    assert len([p for p in (folder / ".submitit").iterdir() if p.name != "%j"]) == 4  # one submitit job each
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")  # 4 processes created it at once (one at a time)
    runs = client.search_runs([client.get_experiment_by_name("vrl").experiment_id])
    jobs_runs = [r for r in runs if r.data.tags.get("sweep_job")]
    assert sorted(r.data.tags["sweep_job"] for r in jobs_runs) == jobs
    assert len({r.data.tags["mlflow.parentRunId"] for r in jobs_runs}) == 1  # grouped under one parent row
    assert all(r.info.status == "FINISHED" and "val/accuracy" in r.data.metrics for r in jobs_runs)


@pytest.mark.slow
def test_the_sweep_report_has_curves_a_final_table_and_sits_in_the_mlflow_parent(sweep):
    from mlflow.tracking import MlflowClient

    cwd, folder = sweep
    out = _vrl(["report", str(folder)], cwd)  # `vrl report`, from the multirun folder
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 runs in 2 groups" in out.stdout
    report = folder / "report"
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
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vrl").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`vrl.sweep_parent` != ''")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/index.html"}

    again = _vrl(["vrl", "--tracking-uri", "sqlite:///mlflow.db", "--out", "from_mlflow"], cwd, "vrl.report")
    assert again.returncode == 0, again.stderr[-3000:]  # the same sweep, found in the MLflow experiment
    from_mlflow = json.loads((cwd / "from_mlflow" / "report.json").read_text())
    assert from_mlflow["groups"].keys() == summary["groups"].keys()
    assert from_mlflow["groups"]["method=grpo"]["final"] == summary["groups"]["method=grpo"]["final"]


@pytest.mark.slow
def test_three_optuna_trials_optimise_the_final_validation_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=1"]
    out = _vrl(["+sweep=optuna_grpo", "hydra.sweeper.n_trials=3", "logger=none", *tiny], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # searched: lr and the clip (sampler.group_size, also in the space, is fixed here by the command line)
    assert set(results["best_params"]) == {"optimizer.lr", "policy_loss.eps_high"}
    assert 0.0 <= float(results["best_value"]) <= 1.0  # an accuracy: what `python -m vrl` returned per trial


def test_the_slurm_launcher_config_composes_with_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4"]
    overrides.append("hydra.launcher.partition=gpu")
    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu"
    assert launcher.max_num_timeout == 0  # Lightning's SLURM environment requeues (README, 'Cluster launches')


def test_a_launcher_whose_plugin_is_missing_is_one_line(monkeypatch):
    from vrl import cli
    from vrl.errors import ConfigError

    monkeypatch.setitem(cli.PLUGINS, "submitit", ("hydra_plugins.not_installed_here", "hydra-submitit-launcher"))
    with pytest.raises(ConfigError, match=r'needs the hydra-submitit-launcher package: pip install -e "\.\[cluster\]"'):
        cli.check_plugins(["--multirun", "hydra/launcher=submitit_slurm", "seed=1,2"])
    cli.check_plugins(["hydra/launcher=basic", "+sweep=vppo_ablation"])  # no plugin needed
