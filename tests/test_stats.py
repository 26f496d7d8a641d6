"""Seed statistics (vrl/stats.py): hand-worked values, bootstrap properties, the paired Wilcoxon test, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vrl.stats import (
    NO_EVIDENCE,
    TOO_FEW,
    arm_stats,
    bootstrap_ci,
    common_step,
    compare_arms,
    compare_runs,
    markdown_tables,
    paired,
    value_at,
)


def test_arm_stats_by_hand():
    s = arm_stats("grpo", [0.2, 0.4, 0.6, math.nan])  # the NaN (a run that logged nothing) is dropped
    # mean (0.2 + 0.4 + 0.6) / 3 = 0.4; sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    assert s.n == 3 and s.mean == pytest.approx(0.4) and s.std == pytest.approx(0.2)
    assert (s.minimum, s.maximum) == (0.2, 0.6)
    assert s.ci[0] <= s.mean <= s.ci[1] and s.ci[0] >= 0.2 and s.ci[1] <= 0.6  # a mean's CI lies within the data
    assert arm_stats("one", [0.5]).ci == (0.5, 0.5) and arm_stats("none", []).n == 0


def test_bootstrap_contains_the_mean_for_random_samples():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.uniform(0, 1, size=8)
        lo, hi = bootstrap_ci(x)
        assert lo < x.mean() < hi


def test_bootstrap_covers_zero_for_symmetric_noise_and_excludes_it_for_a_clear_shift():
    symmetric = [-0.3, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.3]  # mean 0, mirror-symmetric
    lo, hi = bootstrap_ci(symmetric, seed=0)
    assert lo < 0 < hi
    shifted = [0.30, 0.32, 0.28, 0.31, 0.29, 0.33, 0.27, 0.30]  # every value > 0: every resample mean is > 0
    lo, hi = bootstrap_ci(shifted, seed=0)
    assert 0.27 <= lo < 0.30 < hi <= 0.33
    assert bootstrap_ci(shifted, seed=0) == bootstrap_ci(shifted, seed=0)  # fixed seed, same interval


def test_bootstrap_degenerate_and_too_small():
    assert bootstrap_ci([0.25] * 8) == (0.25, 0.25)
    with pytest.raises(ValueError, match=">= 2 values"):
        bootstrap_ci([1.0])


def test_paired_wilcoxon_by_hand():
    a = dict.fromkeys(range(8), 0.5)
    b = {s: 0.5 + d for s, d in enumerate([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, -0.08])}
    b[9] = 1.0  # a seed only one arm ran is ignored
    r = paired(a, b, ("grpo", "vppo"))
    assert r.seeds == tuple(range(8))
    # mean diff (0.01 + ... + 0.07 - 0.08) / 8 = (0.28 - 0.08) / 8 = 0.025
    assert r.mean_diff == pytest.approx(0.025)
    # |d| ranks 1..8, only rank 8 negative: W- = 8, W+ = 28, W = min = 8. Exact null: subsets of {1..8} with rank sum
    # <= 8 number 1+1+1+2+2+3+4+5+6 = 25 (sums 0..8), so p = 2 * 25 / 2^8 = 0.1953125
    assert r.statistic == 8.0 and r.p_value == pytest.approx(50 / 256)


def test_paired_verdicts():
    a = dict.fromkeys(range(8), 0.4)
    up = {s: 0.4 + 0.1 + 0.01 * s for s in range(8)}  # every seed better: W = 0, p = 2 / 2^8
    r = paired(a, up, ("grpo", "vppo"))
    assert r.statistic == 0.0 and r.p_value == pytest.approx(2 / 256)
    assert r.ci[0] > 0 and r.verdict == "vppo > grpo"
    assert paired(up, a, ("vppo", "grpo")).verdict == "grpo < vppo"
    noise = {s: 0.4 + d for s, d in enumerate([-0.3, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.3])}
    assert paired(a, noise).verdict == NO_EVIDENCE
    same = paired(a, dict(a))
    assert (same.p_value, same.verdict, same.ci) == (1.0, NO_EVIDENCE, (0.0, 0.0))
    three = {s: up[s] for s in range(3)}  # all better, but 3 pairs can never be evidence
    assert paired(a, three).verdict == TOO_FEW


def test_equal_steps():
    h1, h2 = [(0, 0.1), (50, 0.3), (100, 0.5)], [(0, 0.2), (50, 0.4)]
    assert common_step([h1, h2]) == 50  # the second run stopped early: compare both at step 50
    assert value_at(h1, 50) == 0.3 and math.isnan(value_at(h2, 100))
    with pytest.raises(ValueError, match="equal steps"):
        common_step([[(1, 0.0)], [(2, 0.0)]])


def test_compare_arms_and_tables():
    arms = {"grpo": dict.fromkeys(range(8), 0.4), "vppo": {s: 0.4 + 0.01 * (s - 3.5) for s in range(8)}}
    res = compare_arms(arms)
    assert res["baseline"] == "grpo" and [s["name"] for s in res["arms"]] == ["grpo", "vppo"]
    (p,) = res["paired"]
    assert p["verdict"] == NO_EVIDENCE  # differences -0.035..+0.035, symmetric about 0
    text = markdown_tables(res, "val/accuracy")
    assert "| vppo - grpo | 8 | +0.000 |" in text and NO_EVIDENCE in text
    with pytest.raises(ValueError, match="baseline"):
        compare_arms(arms, baseline="dapo")


def test_compare_runs_reads_every_arm_at_the_common_step():
    runs = [("grpo", s, [(50, 0.3), (100, 0.4)]) for s in range(8)]
    runs += [("vppo", s, [(50, 0.5), (100, 0.9), (150, 1.0)]) for s in range(8)]
    runs += [("vppo", None, [(50, 0.0)]), ("dapo", 3, [])]  # no seed / no metric: left out
    res = compare_runs(runs)
    assert res["step"] == 100 and res["baseline"] == "grpo"  # vppo's step 150 is past grpo's last step
    (p,) = res["paired"]
    assert p["mean_diff"] == pytest.approx(0.5) and p["verdict"] == "vppo > grpo"  # 0.9 - 0.4 in every seed
    assert compare_runs([("grpo", 0, [(1, 0.0)])]) is None  # one group: nothing to pair


def test_paired_tables_reports_what_cannot_be_compared():
    from vrl.stats import paired_tables

    runs = [("a", 0, {"acc": [(1, 0.1)]}), ("b", 0, {"acc": [(2, 0.2)]})]
    assert "equal steps" in paired_tables(runs, ["acc"])["acc"]["error"]  # the runs share no step
    assert (
        "baseline"
        in paired_tables([("a", 0, {"acc": [(1, 0.1)]}), ("b", 0, {"acc": [(1, 0.2)]})], ["acc"], "c")["acc"]["error"]
    )
    assert paired_tables([("a", 0, {"acc": [(1, 0.1)]})], ["acc"]) == {}  # one group: nothing to pair
