"""Issue 20: the five headline ablations on the calibrated testbed, 8 seeds each, with seed-paired statistics.

Each ablation is a Hydra sweep (`conf/sweep/evidence_<name>.yaml`: arms x seeds 0..7, equal steps); this script runs
it (`python -m vrl +sweep=evidence_<name>`, one job at a time, OMP_NUM_THREADS=1, every job tracked in one MLflow
store), then reads the jobs back (their `.hydra/overrides.yaml` and MLflow histories, via `vrl.report`) and writes
`<out>/evidence_<name>.{md,json,png}`:

- per arm: final greedy accuracy (`diag/accuracy`: 96 validation rows, at equal optimizer steps; see METRIC) at the
  common step (mean, std, min..max, bootstrap 95% CI) and the image-use
  diagnostics (`diag/blank/accuracy`, `diag/shuffled/accuracy`, `diag/blank/kl`, `diag/shuffled/kl`);
- per comparison (`PAIRS` below): the seed-paired difference, its bootstrap CI, the Wilcoxon signed-rank test and
  the verdict (`no evidence` when the CI covers 0; `vrl/stats.py`);
- learning curves (mean over seeds, min..max band) of that accuracy and of the shuffled-image KL.

    python experiments/evidence.py                                  # all five: ~150 runs; hours on a quiet CPU box
    python experiments/evidence.py --sweeps vppo,pearl --workdir /tmp/ev
    python experiments/evidence.py --collect-only --workdir /tmp/ev # tables and plots again from the runs
    python experiments/evidence.py --sweeps vppo --smoke            # 2 seeds x 4 steps: checks the plumbing only
    python experiments/evidence.py --dry-run                        # print the commands

PEARL's comparisons use evidence_vppo's GRPO arm as their baseline (same task, steps and seeds), so run `vppo` first
(or together). Extra Hydra overrides after `--` go to every job (e.g. `-- data.train.tasks=[half]`).

`--arms a,b` runs only those arms (one multirun per arm, the arm's overrides on the command line, into
`<workdir>/<name>.<arm>`); the reader takes `<workdir>/<name>` and every `<workdir>/<name>.*` folder, so a sweep can
be finished in parts, and a comparison whose arm was not run is listed as such instead of failing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The compared metric: greedy accuracy on the first 96 validation rows, logged by callbacks.image_use at optimizer
#: steps 0, 50, 100, ... Not Lightning's val/accuracy: validation runs every val_check_interval *batches* and logs at
#: the batch count, and a method with dynamic sampling (VPPO, PEARL) has batches without an optimizer step, so its
#: val/accuracy "at step 250" can be from optimizer step 40 (seen in the smoke run of this script).
METRIC = "diag/accuracy"
DIAG = ("diag/blank/accuracy", "diag/shuffled/accuracy", "diag/blank/kl", "diag/shuffled/kl")
#: sweep -> arm name -> the overrides (as the sweep writes them) that pick the arm's jobs.
ARMS: dict[str, dict[str, dict[str, str]]] = {
    "vppo": {"grpo": {"+method": "[]"}, "vppo": {"+method": "vppo"}},
    "pearl": {
        "pearl": {"+method": "pearl", "hooks.pearl.probe_coef_scale": "constant"},
        "pearl_main_active": {"+method": "pearl", "hooks.pearl.probe_coef_scale": "main_active"},
        "vppo+pearl": {"+method": "[vppo,pearl]", "hooks.pearl.probe_coef_scale": "constant"},
        "vppo+pearl_main_active": {"+method": "[vppo,pearl]", "hooks.pearl.probe_coef_scale": "main_active"},
    },
    "perception_r1": {"visual": {"reward.visual.weight": "0.7"}, "no_visual": {"reward.visual.weight": "0"}},
    "curriculum": {"curriculum": {"+curriculum": "testbed_difficulty"}, "shuffled": {"+curriculum": "none"}},
    "rewardmap": {
        "staged_detail": {"curriculum": "rewardmap_warm", "reward.rewardmap.detail_coef": "0.5"},
        "staged_sparse": {"curriculum": "rewardmap_warm", "reward.rewardmap.detail_coef": "0"},
        "shuffled_detail": {"curriculum": "transit_warm", "reward.rewardmap.detail_coef": "0.5"},
        "shuffled_sparse": {"curriculum": "transit_warm", "reward.rewardmap.detail_coef": "0"},
    },
}
#: sweep -> (baseline arm, compared arm) pairs; the difference is compared - baseline.
PAIRS: dict[str, list[tuple[str, str]]] = {
    "vppo": [("grpo", "vppo")],
    "pearl": [
        ("grpo", "pearl"),
        ("grpo", "vppo+pearl"),
        ("grpo", "pearl_main_active"),
        ("grpo", "vppo+pearl_main_active"),
        ("pearl", "pearl_main_active"),
    ],  # fmt: skip
    "perception_r1": [("no_visual", "visual")],
    "curriculum": [("shuffled", "curriculum")],
    "rewardmap": [
        ("staged_sparse", "staged_detail"),
        ("shuffled_sparse", "shuffled_detail"),
        ("shuffled_detail", "staged_detail"),
    ],  # fmt: skip
}
#: arms borrowed from another sweep: sweep -> (other sweep, arm).
BORROWED = {"pearl": ("vppo", "grpo")}
SMOKE = ["seed=0,1", "trainer.max_steps=4", "trainer.val_check_interval=2", "data.train.num_samples=64",
         "data.val.num_samples=8", "data_loader.batch_size=2", "sampler.group_size=2",
         "callbacks.image_use.every_n_steps=2", "callbacks.image_use.num_rows=4"]  # fmt: skip


def command(name: str, args: argparse.Namespace, arm: str | None = None) -> list[str]:
    """The `python -m vrl` multirun of one sweep (or of one of its arms), logging to the work folder's MLflow store."""
    work = Path(args.workdir).resolve()
    folder, picked = (name, []) if arm is None else (f"{name}.{arm}", _picked(name, arm))
    return [sys.executable, "-m", "vrl", "--multirun", f"+sweep=evidence_{name}", f"hydra.sweep.dir={work / folder}",
            *picked,
            f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}", f"logger.experiment_name=evidence_{name}",
            f"logger.artifact_location={work / 'mlartifacts'}", "save_policy=false", "ckpt_every=100000",
            "trainer.enable_progress_bar=false", *(SMOKE if args.smoke else []), *args.extra]  # fmt: skip


def _picked(name: str, arm: str) -> list[str]:
    """An arm's overrides on the command line (they win over the sweep's values). Keys that exist only once the
    sweep's method is composed (``reward.rewardmap.*``, a ``curriculum`` its preset adds) need that method on the
    command line too, since Hydra composes the command line before the sweep's parameters."""
    import yaml

    want = dict(ARMS[name][arm])
    sweep = yaml.safe_load((REPO / "conf" / "sweep" / f"evidence_{name}.yaml").read_text())
    method = sweep["hydra"]["sweeper"]["params"].get("+method")
    if method is not None and "+method" not in want and "," not in str(method):
        want = {"+method": method, **want}
    return [f"{k}={v}" for k, v in want.items()]


def commands(name: str, args: argparse.Namespace) -> list[list[str]]:
    """The whole sweep in one multirun, or one multirun per arm asked for with --arms."""
    if args.arms is None:
        return [command(name, args)]
    return [command(name, args, arm) for arm in args.arms if arm in ARMS[name]]


def run_sweep(name: str, args: argparse.Namespace) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for cmd in commands(name, args):
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        log = Path(cmd[5].split("=", 1)[1] + ".log")  # hydra.sweep.dir + .log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise SystemExit(f"sweep {name} failed (log: {log})")


# ----------------------------------------------------------------- reading the runs back
def overrides_of(run) -> dict[str, str]:
    """A job's overrides as key -> value (the key keeps a leading + or ~)."""
    return dict(o.split("=", 1) for o in run.overrides if "=" in o)


def arm_runs(runs: list, arms: dict[str, dict[str, str]]) -> dict[str, list]:
    """arm -> its runs (a run belongs to the arm whose every override it carries)."""
    out: dict[str, list] = {a: [] for a in arms}
    for run in runs:
        given = overrides_of(run)
        for arm, want in arms.items():
            if all(given.get(k) == v for k, v in want.items()):
                out[arm].append(run)
    return out


def read_sweep(name: str, workdir: Path) -> dict[str, list]:
    from vrl.report import read_multirun

    folders = [f for f in [workdir / name, *sorted(workdir.glob(f"{name}.*"))] if f.is_dir()]
    if not folders:
        raise SystemExit(f"no runs of sweep {name} under {workdir / name}[.*]: run it first")
    return arm_runs([run for folder in folders for run in read_multirun(folder)], ARMS[name])


# ----------------------------------------------------------------- statistics
def analyse(by_arm: dict[str, list], pairs: list[tuple[str, str]], min_seeds: int = 8) -> dict:
    """Arm statistics of METRIC and the diagnostics at their common steps, and the paired comparisons."""
    from vrl.stats import arm_stats, common_step, paired, value_at

    histories = [r.history.get(METRIC, []) for runs in by_arm.values() for r in runs]
    step = common_step(histories)
    values = {a: {r.seed: value_at(r.history.get(METRIC, []), step) for r in runs} for a, runs in by_arm.items()}
    arms = {a: arm_stats(a, list(v.values())).as_dict() for a, v in values.items() if v}
    ran = [(a, b) for a, b in pairs if values.get(a) and values.get(b)]
    compared = [paired(values[a], values[b], (a, b), min_seeds=min_seeds).as_dict() for a, b in ran]
    diag: dict[str, dict] = {}
    for key in DIAG:
        logged = [r.history[key] for runs in by_arm.values() for r in runs if r.history.get(key)]
        if not logged:
            continue
        at = common_step(logged)
        diag[key] = {
            "step": at,
            **{a: arm_stats(a, [value_at(r.history.get(key, []), at) for r in runs]).as_dict()
               for a, runs in by_arm.items() if runs},
        }  # fmt: skip
    not_run = [f"{b} - {a}" for a, b in pairs if (a, b) not in ran]
    return {"metric": METRIC, "step": step, "values": values, "arms": arms, "paired": compared, "diag": diag,
            "not_run": not_run}  # fmt: skip


def markdown(name: str, result: dict, cmds: list[list[str]], commit: str) -> str:
    from vrl.stats import markdown_tables

    tables = markdown_tables({**result, "arms": list(result["arms"].values()), "confidence": 0.95,
                              "min_seeds": 8}, f"{METRIC} @ step {result['step']}")  # fmt: skip
    lines = [f"# evidence_{name}", "", f"Commit {commit}. Commands:", "",
             *[f"    python {' '.join(cmd[1:])}" for cmd in cmds], "", tables, ""]  # fmt: skip
    if result.get("not_run"):
        lines += [f"Not run (an arm has no runs): {', '.join(result['not_run'])}.", ""]
    if result.get("unfinished"):
        lines += [f"Left out, still running when collected: {', '.join(result['unfinished'])}.", ""]
    if result["diag"]:
        keys = list(result["diag"])
        lines += ["Image use (callbacks.image_use; mean over seeds at each metric's common step):", "",
                  "| arm | " + " | ".join(f"{k} @ {result['diag'][k]['step']}" for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]  # fmt: skip
        for arm in result["arms"]:
            cells = [result["diag"][k].get(arm, {}).get("mean", math.nan) for k in keys]
            lines.append(f"| {arm} | " + " | ".join(f"{c:.3g}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(by_arm: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vrl.report import draw_arm

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, (METRIC, "diag/shuffled/kl")):
        for arm, runs in by_arm.items():
            draw_arm(ax, arm, runs, key)
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finished(by_arm: dict[str, list]) -> tuple[dict[str, list], list[str]]:
    """Drop runs still in progress (their METRIC stops before the sweep's last logged step), which would otherwise
    pull every arm's common step down to theirs; returns the kept runs and ``arm seed N`` labels of the dropped."""
    last = {id(r): max((s for s, _ in r.history.get(METRIC, [])), default=-1) for rs in by_arm.values() for r in rs}
    end = max(last.values(), default=-1)
    kept = {a: [r for r in rs if last[id(r)] == end] for a, rs in by_arm.items()}
    return kept, [f"{a} seed {r.seed}" for a, rs in by_arm.items() for r in rs if last[id(r)] != end]


def collect(name: str, args: argparse.Namespace) -> dict:
    workdir, out = Path(args.workdir), Path(args.out)
    by_arm = read_sweep(name, workdir)
    if name in BORROWED:
        other, arm = BORROWED[name]
        by_arm = {arm: read_sweep(other, workdir)[arm], **by_arm}
    by_arm, unfinished = finished(by_arm)
    result = analyse(by_arm, PAIRS[name])
    result["unfinished"] = unfinished
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"evidence_{name}.md").write_text(markdown(name, result, commands(name, args), commit))
    (out / f"evidence_{name}.json").write_text(json.dumps(result, indent=1, default=str))
    plot(by_arm, out / f"evidence_{name}.png")
    for p in result["paired"]:
        lo, hi = p["ci"]
        print(f"{name}: {p['b']} - {p['a']} = {p['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] -> {p['verdict']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", default=",".join(ARMS), help=f"comma-separated, from {list(ARMS)}")
    parser.add_argument("--workdir", default="/tmp/vrl_evidence", help="multirun folders, MLflow store, logs")
    parser.add_argument("--out", default="experiments/results", help="where evidence_<name>.{md,json,png} go")
    parser.add_argument("--collect-only", action="store_true", help="no runs: tables and plots from the workdir")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--smoke", action="store_true", help="2 seeds x 4 steps, tiny data: the plumbing only")
    parser.add_argument("--arms", type=lambda s: [a for a in s.split(",") if a], default=None,
                        help="run only these arms, one multirun each, into <workdir>/<sweep>.<arm>")  # fmt: skip
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    names = [n for n in args.sweeps.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"unknown sweeps {unknown}; known: {list(ARMS)}")
    known_arms = {a for n in names for a in ARMS[n]}
    if args.arms is not None and not set(args.arms) <= known_arms:
        raise SystemExit(f"unknown arms {sorted(set(args.arms) - known_arms)}; known: {sorted(known_arms)}")
    if not args.collect_only:
        for name in names:
            run_sweep(name, args)
    if not args.dry_run:
        for name in names:
            collect(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
