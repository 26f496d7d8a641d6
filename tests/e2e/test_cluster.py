"""Cluster launches and searches through Hydra's plugins: a 2-job sweep through submitit's local executor (what
``hydra/launcher=submitit_slurm`` does on SLURM, on this machine), Optuna trials whose objective is the run's
final validation metric, and the launcher configs as they compose."""

import os
import subprocess
import sys

import pytest
import yaml

TINY = [
    "save_policy=false",
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "data.train.num_samples=16",
    "data.val.num_samples=4",
    "data_loader.batch_size=2",
    "sampler.group_size=2",
    "sampler.max_new_tokens=4",
    "console.every_n_steps=0",
]


def _vrl(args, cwd):
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-P", "-m", "vrl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_two_job_sweep_runs_through_submitit_local(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = _vrl(["--multirun", "hydra/launcher=submitit_local", "+method=grpo,dr_grpo", "logger=csv", *TINY], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in out.stderr + out.stdout
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:  # each job ran in its own submitit process and logged its step and its validation
        assert (job / "csv" / "version_0" / "metrics.csv").read_text().count("\n") >= 2
    assert len([p for p in (sweep / ".submitit").iterdir() if p.name != "%j"]) == 2  # submitit's job folders


@pytest.mark.slow
def test_three_optuna_trials_optimise_the_final_validation_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = _vrl(["+sweep=optuna_grpo", "hydra.sweeper.n_trials=3", "logger=none", *TINY], tmp_path)
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
