"""Seed statistics for method comparisons: mean, spread, bootstrap intervals and a paired test at equal steps.

A tiny-model RL run is noisy: the same config with another seed can move accuracy by 0.2. A claim "B beats A"
therefore needs several seeds per arm (:data:`MIN_SEEDS_FOR_CLAIMS`, 8 by default), the *same* seeds in both arms
(seed ``s`` of A and of B see the same prompts and initial weights, so their difference cancels most of the
seed's effect), values read at the same optimizer step, and an interval for the difference.

- Per arm: mean, sample standard deviation, min..max and a bootstrap confidence interval of the mean
  (``scipy.stats.bootstrap``, BCa by default, fixed RNG seed so a report is reproducible).
- Per pair of arms: the per-seed differences ``B - A`` over the seeds both ran, a bootstrap interval of their
  mean, and the **Wilcoxon signed-rank test** (``scipy.stats.wilcoxon``, two-sided). Why Wilcoxon rather than the
  paired t-test: accuracies are bounded and often skewed or bimodal across seeds (a seed that "takes off" and
  one that does not), and with 8 pairs normality cannot be checked; the signed-rank test assumes only that the
  differences are symmetric about their median under the null. Its price: with n pairs the smallest two-sided
  p-value is 2 / 2^n (0.0078 at n = 8), so fewer than 6 pairs can never reach p < 0.05.
- The verdict reads the interval, not the p-value: ``no evidence`` when the interval of the mean difference covers
  0, else ``B > A`` or ``B < A``; runs with fewer than ``min_seeds`` pairs are marked ``too few seeds`` whatever
  the interval says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Seeds per arm below which a comparison is reported but never called evidence.
MIN_SEEDS_FOR_CLAIMS = 8
NO_EVIDENCE = "no evidence"
TOO_FEW = "too few seeds"


@dataclass(frozen=True)
class ArmStats:
    """One arm's values over seeds: ``n``, mean, sample std (0 for one value), min, max, CI of the mean."""

    name: str
    n: int
    mean: float
    std: float
    minimum: float
    maximum: float
    ci: tuple[float, float]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """``b - a`` over the seeds both arms ran: mean difference, its CI, the Wilcoxon test and the verdict."""

    a: str
    b: str
    seeds: tuple[int, ...]
    mean_diff: float
    ci: tuple[float, float]
    statistic: float
    p_value: float
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0, method: str = "BCa"
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of ``values`` (``scipy.stats.bootstrap``).

    Degenerate samples get the point interval (v, v) (all values equal: every resample has the same mean, and
    BCa's acceleration is undefined). If BCa returns NaN (possible with very few distinct values), the percentile
    interval of the same resamples is returned instead.

    Raises:
        ValueError: fewer than 2 values (an interval needs a spread to resample).
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a bootstrap interval needs >= 2 values, got {x.size}")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    kw = dict(confidence_level=confidence, n_resamples=n_resamples, vectorized=True, axis=-1)
    res = bootstrap((x,), np.mean, method=method, rng=np.random.default_rng(seed), **kw)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        res = bootstrap((x,), np.mean, method="percentile", rng=np.random.default_rng(seed), **kw)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def arm_stats(name: str, values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> ArmStats:
    """Mean, spread and bootstrap CI of one arm's per-seed values (NaNs dropped: a run that logged nothing)."""
    x = [float(v) for v in values if not math.isnan(float(v))]
    if not x:
        nan = math.nan
        return ArmStats(name, 0, nan, nan, nan, nan, (nan, nan))
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
    ci = bootstrap_ci(x, confidence, seed=seed) if len(x) > 1 else (mean, mean)
    return ArmStats(name, len(x), mean, std, min(x), max(x), ci)


def paired(
    a: Mapping[int, float],
    b: Mapping[int, float],
    names: tuple[str, str] = ("A", "B"),
    confidence: float = 0.95,
    min_seeds: int = MIN_SEEDS_FOR_CLAIMS,
    seed: int = 0,
) -> Paired:
    """Compare arm ``b`` with arm ``a`` seed by seed (module docstring).

    Args:
        a, b: seed -> value (read at the same step in both arms); seeds present in one arm only are ignored.
        names: the arms' labels (a, b).
        confidence: level of the bootstrap interval of the mean difference.
        min_seeds: pairs needed before the verdict may be anything but ``too few seeds``.
        seed: RNG seed of the bootstrap.
    """
    from scipy.stats import wilcoxon

    seeds = tuple(sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s]))))
    diff = np.array([b[s] - a[s] for s in seeds], dtype=float)
    if diff.size == 0:
        return Paired(*names, seeds, math.nan, (math.nan, math.nan), math.nan, math.nan, TOO_FEW)
    mean = float(diff.mean())
    ci = bootstrap_ci(diff, confidence, seed=seed) if diff.size > 1 else (mean, mean)
    if np.all(diff == 0):  # no pair differs: the signed-rank statistic is 0 and nothing is evidence
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(diff, alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
    if diff.size < min_seeds:
        verdict = TOO_FEW
    elif ci[0] <= 0.0 <= ci[1]:
        verdict = NO_EVIDENCE
    else:
        verdict = f"{names[1]} > {names[0]}" if mean > 0 else f"{names[1]} < {names[0]}"
    return Paired(*names, seeds, mean, ci, stat, p, verdict)


def value_at(history: Sequence[tuple[int, float]], step: int) -> float:
    """The value logged at optimizer step ``step`` (the last one logged at that step); NaN if none was."""
    found = [v for s, v in history if s == step]
    return float(found[-1]) if found else math.nan


def common_step(histories: Sequence[Sequence[tuple[int, float]]]) -> int:
    """The latest step at which every history has a value: where all arms are compared (equal steps).

    Raises:
        ValueError: no step is shared by all histories.
    """
    shared = set.intersection(*({s for s, _ in h} for h in histories)) if histories else set()
    if not shared:
        raise ValueError("the runs share no logged step: compare them at equal steps (same val_check_interval)")
    return max(shared)


def compare_arms(
    arms: Mapping[str, Mapping[int, float]],
    baseline: str | None = None,
    confidence: float = 0.95,
    min_seeds: int = MIN_SEEDS_FOR_CLAIMS,
) -> dict:
    """Every arm's statistics and every other arm paired against ``baseline`` (default: the first arm).

    Args:
        arms: arm name -> seed -> value (at the common step).

    Returns:
        ``{"baseline", "arms": [ArmStats dicts], "paired": [Paired dicts], "min_seeds", "confidence"}``.
    """
    if not arms:
        raise ValueError("no arms to compare")
    base = baseline if baseline is not None else next(iter(arms))
    if base not in arms:
        raise ValueError(f"baseline {base!r} is not an arm; arms: {list(arms)}")
    stats = [arm_stats(name, list(v.values()), confidence).as_dict() for name, v in arms.items()]
    pairs = [
        paired(arms[base], v, (base, name), confidence, min_seeds).as_dict() for name, v in arms.items() if name != base
    ]
    return {"baseline": base, "arms": stats, "paired": pairs, "min_seeds": min_seeds, "confidence": confidence}


def markdown_tables(result: Mapping, metric: str = "value") -> str:
    """The two tables of :func:`compare_arms` as Markdown (arms, then paired differences with verdicts)."""
    level = f"{round(100 * result['confidence'])}%"
    lines = [
        f"| arm | seeds | mean {metric} | std | min..max | {level} CI (bootstrap) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["arms"]:
        lo, hi = s["ci"]
        lines.append(
            f"| {s['name']} | {s['n']} | {s['mean']:.3f} | {s['std']:.3f} | {s['minimum']:.3f}..{s['maximum']:.3f} "
            f"| [{lo:.3f}, {hi:.3f}] |"
        )
    lines += [
        "",
        f"| comparison | pairs | mean diff | {level} CI of diff | Wilcoxon W | p | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["paired"]:
        lo, hi = p["ci"]
        lines.append(
            f"| {p['b']} - {p['a']} | {len(p['seeds'])} | {p['mean_diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
            f"| {p['statistic']:.1f} | {p['p_value']:.3g} | {p['verdict']} |"
        )
    lines.append(
        f"\nVerdict: `no evidence` when the CI of the mean paired difference covers 0; `{TOO_FEW}` below "
        f"{result['min_seeds']} paired seeds. Test: Wilcoxon signed-rank, two-sided (vrl/stats.py)."
    )
    return "\n".join(lines)


def compare_runs(
    runs: Sequence[tuple[str, int | None, Sequence[tuple[int, float]]]],
    baseline: str | None = None,
    confidence: float = 0.95,
    min_seeds: int = MIN_SEEDS_FOR_CLAIMS,
) -> dict | None:
    """:func:`compare_arms` of runs given as (group, seed, metric history), read at their :func:`common_step`.

    Runs without a seed or without the metric are left out; None when fewer than two groups remain. The result
    also holds ``step`` (where the arms were read).
    """
    kept = [(g, s, h) for g, s, h in runs if s is not None and h]
    groups = list(dict.fromkeys(g for g, _, _ in kept))
    if len(groups) < 2:
        return None
    step = common_step([h for _, _, h in kept])
    arms: dict[str, dict[int, float]] = {g: {} for g in groups}
    for group, seed, history in kept:
        arms[group][int(seed)] = value_at(history, step)
    return {**compare_arms(arms, baseline, confidence, min_seeds), "step": step}


def paired_tables(
    runs: Sequence[tuple[str, int | None, Mapping[str, Sequence[tuple[int, float]]]]],
    metrics: Sequence[str],
    baseline: str | None = None,
) -> dict[str, dict]:
    """Per metric, :func:`compare_runs` plus its :func:`markdown_tables` (``vrl report``'s paired section).

    Args:
        runs: (group, seed, metric -> history) per run.

    Returns:
        metric -> the comparison with a ``markdown`` entry, or ``{"error": ...}`` when the runs share no step or the
        baseline is not a group (the report says so instead of failing).
    """
    out = {}
    for metric in metrics:
        try:
            res = compare_runs([(g, s, h.get(metric, [])) for g, s, h in runs], baseline)
        except ValueError as err:
            out[metric] = {"error": str(err)}
            continue
        if res is not None:
            out[metric] = {**res, "markdown": markdown_tables(res, metric)}
    return out
