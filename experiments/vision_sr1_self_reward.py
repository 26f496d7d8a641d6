"""Issue 15's experiment: Vision-SR1's visual self-reward on vs off, 3 seeds, equal steps, with seed-paired statistics.

One Hydra sweep (`conf/sweep/vision_sr1_self_reward.yaml`: reward.visual.weight 1.0 (on, the released v1) and 0
(off: pass 2 still runs and r_vis is logged, it enters no reward) x seeds 0..2), each job 100 warm-start SFT steps
(`conf/curriculum/vision_sr1_warm_start.yaml`: the layout and pass 2's reading, from ground truth) then 60 RL steps
(B=4, G=8) on the testbed's big_color task (`conf/experiment/vision_sr1_self_reward.yaml`). Jobs run one at a time with
OMP_NUM_THREADS=1, tracked in one MLflow store under the work folder. Then the jobs are read back (`vrl.report`) and
`<out>/vision_sr1_self_reward.{md,json,png}` written:

- per arm: final greedy accuracy (`diag/accuracy`, 48 validation rows, at the common last step: mean, std,
  min..max, bootstrap CI) and the seed-paired difference on - off (bootstrap CI, Wilcoxon, verdict; `vrl/stats.py`);
- per arm, mean over the last 20 RL steps: the rollout's accuracy, format and r_vis, pass 2's coverage (responses with
  a description / all), and how many distinct values r_vis took within a group (0 spread = no GRPO signal from it);
- curves: diag/accuracy and the rollout's accuracy, format and r_vis per step (mean over seeds, min..max band).

    python experiments/vision_sr1_self_reward.py                       # 6 runs, ~35 min on a shared 2-core box
    python experiments/vision_sr1_self_reward.py --collect-only        # tables and plot again from the workdir
    python experiments/vision_sr1_self_reward.py --smoke               # 2 seeds x (4 SFT + 2 RL) steps: plumbing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

NAME = "vision_sr1_self_reward"
METRIC = "diag/accuracy"
ARMS = {"off": {"reward.visual.weight": "0"}, "self_reward": {"reward.visual.weight": "1.0"}}
ROLLOUT = ("reward/accuracy_mean", "reward/format_mean", "reward/visual_mean")
SMOKE = ["seed=0,1", "trainer.max_steps=6", "++hooks.curriculum.stages.warm.after_steps=4", "data.train.num_samples=64",
         "data.val.num_samples=8", "callbacks.image_use.every_n_steps=2", "callbacks.image_use.num_rows=4"]  # fmt: skip
LAST = 20  # RL steps averaged for the rollout table


def command(args: argparse.Namespace) -> list[str]:
    """The `python -m vrl` multirun, logging to one MLflow store under the work folder."""
    work = Path(args.workdir).resolve()
    return [sys.executable, "-m", "vrl", "--multirun", f"+sweep={NAME}", f"hydra.sweep.dir={work / NAME}",
            f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}", f"logger.experiment_name={NAME}",
            f"logger.artifact_location={work / 'mlartifacts'}", "save_policy=false", "ckpt_every=100000",
            "trainer.enable_progress_bar=false", *(SMOKE if args.smoke else []), *args.extra]  # fmt: skip


def run(args: argparse.Namespace) -> None:
    cmd = command(args)
    print(" ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = Path(args.workdir) / f"{NAME}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed (log: {log})")


def read(workdir: Path) -> dict[str, list]:
    """arm -> its runs (a run belongs to the arm whose every override it carries)."""
    from vrl.report import read_multirun

    runs = read_multirun(workdir / NAME)
    out: dict[str, list] = {a: [] for a in ARMS}
    for r in runs:
        given = dict(o.split("=", 1) for o in r.overrides if "=" in o)
        for arm, want in ARMS.items():
            if all(given.get(k) == v for k, v in want.items()):
                out[arm].append(r)
    return out


def rl_start(run) -> int:
    """The first RL step: where the curriculum's stage index turns 1 (the warm stage is 0)."""
    stages = run.history.get("curriculum/stage", [])
    return next((s for s, v in stages if v >= 1), 0)


def tail_mean(run, key: str, last: int = LAST) -> float:
    values = [v for s, v in run.history.get(key, []) if s >= rl_start(run)][-last:]
    return sum(values) / len(values) if values else math.nan


def analyse(by_arm: dict[str, list], min_seeds: int) -> dict:
    from vrl.stats import arm_stats, common_step, paired, value_at

    step = common_step([r.history.get(METRIC, []) for runs in by_arm.values() for r in runs])
    values = {a: {r.seed: value_at(r.history.get(METRIC, []), step) for r in runs} for a, runs in by_arm.items()}
    arms = {a: arm_stats(a, list(v.values())).as_dict() for a, v in values.items() if v}
    compared = [paired(values["off"], values["self_reward"], ("off", "self_reward"), min_seeds=min_seeds).as_dict()]
    rollout = {}
    for arm, runs in by_arm.items():
        row = {k: sum(tail_mean(r, k) for r in runs) / max(len(runs), 1) for k in ROLLOUT}
        cover = [1 - tail_mean(r, "reward/visual/no_description") / tail_mean(r, "reward/visual/samples") for r in runs]
        row["pass2_coverage"] = sum(cover) / max(len(cover), 1)
        row["rl_start"] = [rl_start(r) for r in runs]
        rollout[arm] = row
    same = {}  # did the two arms of a seed train identically (same rollout accuracy at every logged step)?
    off = {r.seed: dict(r.history.get("reward/accuracy_mean", [])) for r in by_arm["off"]}
    for r in by_arm["self_reward"]:
        h = dict(r.history.get("reward/accuracy_mean", []))
        if r.seed in off:
            steps = sorted(set(h) & set(off[r.seed]))
            same[r.seed] = max((abs(h[s] - off[r.seed][s]) for s in steps), default=math.nan)
    return {"metric": METRIC, "step": step, "values": values, "arms": arms, "paired": compared, "rollout": rollout,
            "max_abs_diff_rollout_accuracy": same}  # fmt: skip


def markdown(result: dict, cmd: list[str], commit: str, min_seeds: int) -> str:
    from vrl.stats import markdown_tables

    tables = markdown_tables({**result, "arms": list(result["arms"].values()), "confidence": 0.95,
                              "min_seeds": min_seeds}, f"{METRIC} @ step {result['step']}")  # fmt: skip
    lines = [f"# {NAME}", "", f"Commit {commit}. Command: `python {' '.join(cmd[1:])}`", "", tables, "",
             f"Rollouts, mean over the last {LAST} RL steps and the seeds (r_vis is logged in both arms):", "",
             "| arm | accuracy | format | r_vis | pass-2 coverage | RL from step |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for arm, row in result["rollout"].items():
        cells = [row[k] for k in ROLLOUT] + [row["pass2_coverage"]]
        lines.append(f"| {arm} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {row['rl_start']} |")
    diffs = ", ".join(f"seed {s}: {d:.3g}" for s, d in result["max_abs_diff_rollout_accuracy"].items())
    lines += ["", f"Max |on - off| of the rollout accuracy over the logged steps, per seed: {diffs}."]
    return "\n".join(lines) + "\n"


def plot(by_arm: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vrl.report import draw_arm

    keys = (METRIC, *ROLLOUT)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for arm, runs in by_arm.items():
            draw_arm(ax, arm, runs, key)
        ax.set_title(key)
        ax.set_xlabel("optimizer step (SFT, then RL)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collect(args: argparse.Namespace) -> dict:
    by_arm = read(Path(args.workdir))
    min_seeds = 2 if args.smoke else 3
    result = analyse(by_arm, min_seeds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(markdown(result, command(args), commit, min_seeds))
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=1, default=str))
    plot(by_arm, out / f"{NAME}.png")
    for p in result["paired"]:
        lo, hi = p["ci"]
        print(f"{p['b']} - {p['a']} = {p['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] -> {p['verdict']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/vrl_vision_sr1", help="multirun folder, MLflow store, log")
    parser.add_argument("--out", default="experiments/results", help=f"where {NAME}.{{md,json,png}} go")
    parser.add_argument("--collect-only", action="store_true", help="no runs: tables and plot from the workdir")
    parser.add_argument("--smoke", action="store_true", help="2 seeds x 6 steps, tiny data: the plumbing only")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if not args.collect_only:
        run(args)
    collect(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
