"""Issue 20's sweeps and runner (conf/sweep/evidence_*.yaml, experiments/evidence.py): every job composes (the first
of each sweep validates), the runner's arms pick the right jobs, and its statistics on hand-made histories are right."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from vrl.report import Run
from vrl.validate import validate_config

REPO = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("evidence", REPO / "experiments" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jobs(compose, name: str) -> list[list[str]]:
    """The sweep's jobs as override lists (every arm, seed 0 only), expanded the way Hydra's basic sweeper does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = hydra_compose("train", [f"+sweep=evidence_{name}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert list(
        OverridesParser.create().parse_overrides([f"seed={params.pop('seed')}"])[0].sweep_string_iterator()
    ) == [str(s) for s in range(8)]  # 8 seeds, 0..7, in every sweep
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]  # fmt: skip
    return [[*combo, "seed=0"] for combo in itertools.product(*choices)]


@pytest.mark.parametrize("name", ["vppo", "pearl", "perception_r1", "curriculum", "rewardmap"])
def test_every_job_of_the_sweep_composes_validates_and_is_an_arm_of_the_runner(compose, name):
    runner = _runner()
    jobs = _jobs(compose, name)
    assert len(jobs) == len(runner.ARMS[name])  # one job per arm and seed: the runner's arms are the sweep's
    for k, overrides in enumerate(jobs):
        cfg = compose([*overrides, "output_dir=/tmp/unused"])
        if k == 0:  # the arms differ in the values the runner matches; one full validation per sweep
            validate_config(cfg)
        run = Run("j", overrides, 0)
        matched = [a for a, runs in runner.arm_runs([run], runner.ARMS[name]).items() if runs]
        assert len(matched) == 1, (overrides, matched)
    if name == "rewardmap":  # tiny maps in the run's data and in every stage of the staged arm
        cfg = compose([j for j in jobs if "curriculum=rewardmap_warm" in j][0])  # resolved: no run starts
        assert cfg.data.train.difficulties == ["tiny"]
        stages = cfg.hooks.curriculum.stages
        assert stages.planning.data.difficulties == stages.warm.data.difficulties == ["tiny"]
        # the warm start comes first, on other rows than RL's; RL is anchored to the warmed policy
        order = [k for k, v in stages.items() if v is not None]
        assert order == ["warm", "tf", "count_lines", "count_stops", "planning"]
        assert stages.warm.data.split == "warm" and stages.tf.reset_reference
        from hydra.utils import instantiate

        from vrl.data.transit import build_transit_maps
        from vrl.rewards.combine import RewardSet

        row = build_transit_maps(num_samples=1, difficulties=["tiny"], question_types=["planning"], mode="stream")[0]
        total, parts = RewardSet(instantiate(cfg.reward))([row["answer"]], [row])  # a tiny map has a weight W
        assert parts["accuracy"].tolist() == [1.0] and total.item() > 0


def test_runner_statistics_on_hand_made_histories():
    runner = _runner()
    arms = {"grpo": [], "vppo": []}
    for seed in range(8):
        base = {"diag/accuracy": [(0, 0.3), (250, 0.4)], "diag/shuffled/kl": [(250, 0.0)]}
        moved = {
            "diag/accuracy": [(0, 0.3), (250, 0.4 + (0.1 if seed % 2 else -0.1))],
            "diag/shuffled/kl": [(250, 0.2)],
        }
        arms["grpo"].append(Run(f"g{seed}", ["+method=[]", f"seed={seed}"], seed, base))
        arms["vppo"].append(Run(f"v{seed}", ["+method=vppo", f"seed={seed}"], seed, moved))
    res = runner.analyse(arms, [("grpo", "vppo")])
    assert res["step"] == 250
    (p,) = res["paired"]
    # differences +-0.1, four of each: mean 0, and the interval covers 0
    assert abs(p["mean_diff"]) < 1e-12 and p["verdict"] == "no evidence"
    assert res["diag"]["diag/shuffled/kl"]["vppo"]["mean"] == pytest.approx(0.2)
    text = runner.markdown("vppo", res, [["python", "-m", "vrl"]], "abc1234")
    assert "| vppo - grpo | 8 | +0.000 |" in text and "diag/shuffled/kl @ 250" in text


def _job(folder: Path, num: int, overrides: list[str], seed: int, accuracy: float) -> None:
    """A finished job as Hydra and logger=csv leave it: overrides, config, one metrics row at step 250."""
    import yaml

    (folder / str(num) / ".hydra").mkdir(parents=True)
    (folder / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    (folder / str(num) / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (folder / str(num) / "csv" / "version_0").mkdir(parents=True)
    (folder / str(num) / "csv" / "version_0" / "metrics.csv").write_text(f"step,diag/accuracy\n250,{accuracy}\n")


def test_runner_reads_a_sweep_run_in_parts_and_lists_comparisons_it_cannot_make(tmp_path):
    runner = _runner()
    # the sweep's own folder holds the 'pearl' arm, a part folder the main_active arm; vppo's folder the baseline
    for seed in range(2):
        _job(tmp_path / "vppo", seed, ["+method=[]"], seed, 0.5)
        _job(tmp_path / "pearl", seed, ["+method=pearl", "hooks.pearl.probe_coef_scale=constant"], seed, 0.25)
        _job(tmp_path / "pearl.pearl_main_active", seed,
             ["+method=pearl", "hooks.pearl.probe_coef_scale=main_active"], seed, 0.75)  # fmt: skip
    by_arm = runner.read_sweep("pearl", tmp_path)
    assert {a: len(r) for a, r in by_arm.items()} == {
        "pearl": 2, "pearl_main_active": 2, "vppo+pearl": 0, "vppo+pearl_main_active": 0}  # fmt: skip
    by_arm = {"grpo": runner.read_sweep("vppo", tmp_path)["grpo"], **by_arm}
    res = runner.analyse(by_arm, runner.PAIRS["pearl"])
    diffs = {(p["a"], p["b"]): p["mean_diff"] for p in res["paired"]}
    # 0.25 - 0.5, 0.75 - 0.5, 0.75 - 0.25 in both seeds
    assert diffs == pytest.approx({("grpo", "pearl"): -0.25, ("grpo", "pearl_main_active"): 0.25,
                                   ("pearl", "pearl_main_active"): 0.5})  # fmt: skip
    assert res["not_run"] == ["vppo+pearl - grpo", "vppo+pearl_main_active - grpo"]


def test_runner_runs_chosen_arms_one_multirun_each(tmp_path):
    runner = _runner()
    args = runner.argparse.Namespace(workdir=str(tmp_path), smoke=False, extra=[], arms=["staged_sparse"])
    (cmd,) = runner.commands("rewardmap", args)
    assert f"hydra.sweep.dir={tmp_path.resolve() / 'rewardmap.staged_sparse'}" in cmd
    # the sweep's method comes first: its preset adds the curriculum group and the reward.rewardmap keys
    picked = cmd[cmd.index("+method=rewardmap") :]
    assert picked[:3] == ["+method=rewardmap", "curriculum=rewardmap_warm", "reward.rewardmap.detail_coef=0"]
    args.arms = None
    (whole,) = runner.commands("rewardmap", args)
    assert not any(c.startswith("curriculum=") for c in whole)


def test_runner_leaves_out_runs_still_in_progress():
    runner = _runner()
    done = Run("0", ["+method=[]", "seed=0"], 0, {"diag/accuracy": [(0, 0.1), (250, 0.5)]})
    running = Run("1", ["+method=vppo", "seed=0"], 0, {"diag/accuracy": [(0, 0.1), (50, 0.2)]})
    kept, unfinished = runner.finished({"grpo": [done], "vppo": [running]})
    # the common step stays 250 (the sweep's end), not 50: the running job is listed instead of compared
    assert kept == {"grpo": [done], "vppo": []} and unfinished == ["vppo seed 0"]
