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
