"""``vrl report`` on hand-made runs: the paired-by-seed section (vrl/stats.py) in report.json and index.html."""

from __future__ import annotations

import json

from vrl.report import Run, report


def test_report_pairs_groups_by_seed_at_the_common_step(tmp_path):
    runs = []
    for seed in range(8):
        base = [(0, 0.3), (50, 0.35)]
        runs.append(Run(f"g{seed}", ["+method=grpo", f"seed={seed}"], seed, {"val/accuracy": base}))
        better = [(0, 0.3), (50, 0.55 + 0.01 * seed)]  # +0.20..+0.27 in every seed
        runs.append(Run(f"v{seed}", ["+method=vppo", f"seed={seed}"], seed, {"val/accuracy": better}))
    summary = report(runs, tmp_path, "t", ["val/accuracy"], baseline="method=grpo")
    res = json.loads((tmp_path / "report.json").read_text())["comparisons"]["val/accuracy"]
    assert res["step"] == 50 and res["baseline"] == "method=grpo"
    (p,) = res["paired"]
    # mean of 0.20 + 0.01 * s over s = 0..7: 0.20 + 0.035 = 0.235
    assert abs(p["mean_diff"] - 0.235) < 1e-9 and p["verdict"] == "method=vppo > method=grpo"
    assert summary["comparisons"]["val/accuracy"]["paired"][0]["p_value"] == 2 / 256  # W = 0 with 8 pairs
    page = (tmp_path / "index.html").read_text()
    assert "Paired by seed: val/accuracy at step 50" in page and "Wilcoxon" in page


def test_draw_arm_plots_the_mean_at_shared_steps_and_the_min_max_band():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vrl.report import draw_arm

    a = Run("a", [], 0, {"m": [(0, 0.0), (50, 0.2), (100, 0.6)]})
    b = Run("b", [], 1, {"m": [(0, 0.2), (50, 0.4)]})  # stopped early: only steps both logged are drawn
    c = Run("c", [], 2, {})  # logged nothing: left out of the count
    fig, ax = plt.subplots()
    draw_arm(ax, "arm", [a, b, c], "m")
    (line,) = ax.get_lines()
    assert line.get_label() == "arm (2 seeds)" and list(line.get_xdata()) == [0, 50]
    assert [round(y, 9) for y in line.get_ydata()] == [0.1, 0.3]  # (0 + .2) / 2, (.2 + .4) / 2
    (band,) = ax.collections
    ys = sorted({round(float(y), 9) for y in band.get_paths()[0].vertices[:, 1]})
    assert ys == [0.0, 0.2, 0.4]  # min .0/.2 below, max .2/.4 above
    plt.close(fig)


def test_a_reused_sweep_folder_reads_each_jobs_newest_run(tmp_path):
    """A sweep killed and started again into the same folder leaves two MLflow runs for job 0: the newest counts."""
    import time

    import mlflow
    import yaml

    from vrl.report import read_multirun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "multirun" / "ev"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    cfg = {"seed": 0, "logger": {"tracking_uri": uri, "experiment_name": "e"}}
    (sweep / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("e")
    for value in (0.25, 0.75):  # the killed run first (it logged 0.25 at step 10), then the rerun
        run = client.create_run(exp, tags={"sweep": str(sweep), "sweep_job": "0"})
        client.log_metric(run.info.run_id, "diag/accuracy", value, step=10)
        time.sleep(0.01)  # distinct start times
    (run,) = read_multirun(sweep)
    assert run.history["diag/accuracy"] == [(10, 0.75)]
