"""Issue 6 ablations of Perception-R1, Curr-ReFT and RewardMap on the synthetic suite (tiny model, CPU, MLflow).

Each (arm, seed) is one `python -m vrl` subprocess (the real CLI path) logging to one sqlite MLflow store; the
script then reads the runs back and writes `<out>.md` (table), `<out>.json` (table + every curve) and
`<out>.png` (learning curves per arm). Arms are Hydra override lists; `--steps` is the RL-step budget
of one run, split over a curriculum's stages in the preset's proportions, so every arm of a method gets the
same number of RL steps (`arms_for`). Subprocesses run with OMP_NUM_THREADS=1 (on the shared 2-core box two
OpenMP threads per run made steps 2-20x slower whenever other jobs ran).

The issue-6 set as run (32.5 minutes on the shared 2-core box, 33 runs), from a snapshot of the working tree:

    cp -r /work/main /tmp/i6_snap   # then /tmp/i6_pp/{vrl,vrl_conf,vrl_kernels} -> symlinks into the snapshot
    export PYTHONPATH=/tmp/i6_pp
    python experiments/ablate_methods.py --method perception_r1 --seeds 0,1,2 --steps 200 --val-every 50
    python experiments/ablate_methods.py --method rewardmap --seeds 0,1,2 --steps 96 --val-every 32
    python experiments/ablate_methods.py --method curr_reft --seeds 0,1,2 --steps 170 --val-every 34
    python experiments/ablate_methods.py --method curr_reft --arms shuffled+sft --seeds 0,1,2 --steps 170 \
        --val-every 34 --out /tmp/i6_work/crf_extra
    python experiments/ablate_methods.py --method curr_reft --arms curriculum+sft,curriculum,shuffled,shuffled+sft \
        --seeds 0,1,2 --steps 170 --val-every 34 --collect-only

Smoke (one seed, a few steps): `python experiments/ablate_methods.py --method rewardmap --seeds 0 --steps 8
--val-every 4 --workdir /tmp/i6_smoke --out /tmp/i6_smoke/rm`. `--arms a,b` runs a subset; `--collect-only`
rebuilds the table and plot from the MLflow store; extra Hydra overrides after `--` go to every run.
`--val-every` must divide `--steps`: a run that ends at `trainer.max_steps` validates at the end only then.

Arms (`arms_for` below: overrides shared by a method's arms, then each arm's own; experiments/LOG.md, 2026-11-25):

- perception_r1 (colour task, `experiment=color_words`, 6-token responses): `visual` (preset: 0.9 acc
  + 0.1 format + 0.7 r_vis + repetition) vs `no_visual` (`reward.visual.weight=0`).
- curr_reft (mixed synthetic tasks + multi-label classify, 4-token responses, stages 60:50:230 scaled to
  `--steps`): `curriculum+sft` (preset), `curriculum` (SFT stage removed), `shuffled` (`curriculum=none`; the
  run's data is the three stages' formats concatenated in the curriculum's row counts, drawn shuffled), and
  optionally `shuffled+sft` (one mixed RL stage, then the same SFT stage).
- rewardmap (easy 112 px transit maps, 1-token responses, stage blocks 2:2:1:1 of `--steps` x B rows):
  `staged` (preset: detail reward, TorF -> counting -> planning), `staged_sparse`
  (`reward.rewardmap.detail_coef=0`), `shuffled` (`curriculum=none`, all types mixed, same rows per type).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

S = "hooks.curriculum.stages."
CURR_TASKS = "[classify,color,shape,count,spatial,chart]"  # the preset's yes/no and multiple-choice stages
OPEN_TASKS = "[classify,color,shape,count,grounding,spatial,chart]"  # its open stage adds grounding
# Curr-ReFT's open-stage accuracy (set-IoU on label rows, the run's checker elsewhere) as the run's accuracy
# in every arm: it equals the plain checker on yes/no and choice rows, so training in stages 1-2 is unchanged,
# and validation (which scores with the reward active at that step) reads the same metric in every arm.
LABEL_ACC = (
    "+reward.accuracy={_target_:vrl.rewards.set_iou.LabelSetAccuracy,tasks:[classify,color,shape],"
    "accuracy:{_target_:vrl.rewards.Accuracy,extract:{_target_:vrl.rewards.AnswerExtractor,fallback:first_word},"
    "synonyms:{grey:gray}}}"
)


def _mixed(fmt: str, tasks: str, n: int) -> str:
    return (
        f"{{_target_:vrl.data.multilabel.build_with_classify,tasks:{tasks},formats:[{fmt}],num_samples:{n},"
        "seed:${seed},split:train,image_size:112}"
    )


def curr_reft_steps(steps: int) -> tuple[int, int, int]:
    """The preset's stage lengths 60:50:230 scaled to ``steps`` RL steps in all (each at least 1)."""
    judge, choice = max(1, round(steps * 60 / 340)), max(1, round(steps * 50 / 340))
    return judge, choice, max(1, steps - judge - choice)


def rewardmap_rows(steps: int, batch: int) -> tuple[int, int, int, int]:
    """Rows of the TorF / Counting2+3 / Counting1 / planning blocks: 2:2:1:1 of ``steps`` x ``batch``."""
    unit = max(1, round(steps / 6))
    return 2 * unit * batch, 2 * unit * batch, unit * batch, (steps - 5 * unit) * batch


def arms_for(method: str, steps: int, batch: int) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides shared by every arm, arm name -> its own overrides)."""
    if method == "perception_r1":
        base = ["experiment=color_words", "+method=perception_r1", "sampler.max_new_tokens=6",
                f"trainer.max_steps={steps}"]  # fmt: skip
        return base, {"visual": [], "no_visual": ["reward.visual.weight=0"]}
    if method == "curr_reft":
        judge, choice, open_ = curr_reft_steps(steps)
        parts = [_mixed("yesno", CURR_TASKS, judge * batch), _mixed("mc", CURR_TASKS, choice * batch),
                 _mixed("open", OPEN_TASKS, open_ * batch)]  # fmt: skip
        union = f"+data.train={{_target_:torch.utils.data.ConcatDataset,datasets:[{','.join(parts)}]}}"
        val = (
            f"+data.val={{_target_:vrl.data.multilabel.build_with_classify,tasks:{OPEN_TASKS},formats:[yesno,mc,open],"
            "num_samples:96,seed:${seed},split:val,image_size:112}"
        )
        base = ["experiment=none", "+method=curr_reft", f"data_loader.batch_size={batch}", "sampler.max_new_tokens=4",
                "~reward.accuracy", LABEL_ACC, "~data.train", union, "~data.val", val]  # fmt: skip
        staged = [
            f"~{S}open.reward",
            f"{S}judge.after_steps={judge}",
            f"{S}choice.after_steps={choice}",
            f"{S}open.after_steps={open_}",
            f"{S}sft.rejection.threshold=1.0",  # accuracy 1: the format reward cannot be earned in 4 tokens
            f"trainer.max_steps={steps + 200}",
        ]  # fmt: skip  (an upper bound: the curriculum ends the run)
        one_stage = [f"~{S}choice", f"~{S}open", f"~{S}judge.data", union.replace("+data.train", f"+{S}judge.data"),
                     f"{S}judge.after_steps={steps}", f"{S}sft.rejection.threshold=1.0",
                     f"trainer.max_steps={steps + 200}"]  # fmt: skip
        return base, {
            "curriculum+sft": staged,
            "curriculum": [*staged, f"~{S}sft"],
            "shuffled": ["curriculum=none", "sampler.group_size=4", f"trainer.max_steps={steps}"],
            "shuffled+sft": one_stage,
        }
    if method == "rewardmap":
        tf, lines, stops, plan = rewardmap_rows(steps, batch)
        base = ["experiment=none", "+method=rewardmap", f"data_loader.batch_size={batch}", "sampler.group_size=4",
                "sampler.max_new_tokens=1", "data.train.image_size=112", "data.train.difficulties=[easy]",
                "data.train.mode=stream", f"data.train.num_samples={steps * batch}"]  # fmt: skip
        staged = [
            f"{S}tf.data.num_samples={tf}",
            f"{S}count_lines.data.num_samples={lines}",
            f"{S}count_stops.data.num_samples={stops}",
            f"{S}planning.data.num_samples={plan}",
            f"trainer.max_steps={steps + 20}",
        ]  # fmt: skip  (an upper bound: the last block ends the run)
        return base, {
            "staged": staged,
            "staged_sparse": [*staged, "reward.rewardmap.detail_coef=0"],
            "shuffled": ["curriculum=none", f"trainer.max_steps={steps}"],
        }
    raise SystemExit(f"unknown method {method!r}")


DEFAULT_ARMS = {"perception_r1": "visual,no_visual", "curr_reft": "curriculum+sft,curriculum,shuffled",
                "rewardmap": "staged,staged_sparse,shuffled"}  # fmt: skip
DEFAULT_STEPS = {"perception_r1": 200, "curr_reft": 170, "rewardmap": 96}
DEFAULT_BATCH = {"perception_r1": 16, "curr_reft": 16, "rewardmap": 16}
DEFAULT_VAL_EVERY = {"perception_r1": 50, "curr_reft": 34, "rewardmap": 32}
METRICS = ("curriculum/done", "rollout/reward_mean", "rollout/accuracy", "val/accuracy", "val/reward",
           "perf/step_time_s", "reward/visual_mean", "reward/accuracy_mean", "reward/format_mean",
           "reward/rewardmap_mean", "curriculum/stage", "sft/kept", "sft/candidates", "sft/loss",
           "rollout/response_len_mean")  # fmt: skip


def run_one(arm: str, overrides: list[str], seed: int, args, tracking_uri: str) -> float:
    cmd = [sys.executable, "-m", "vrl", *overrides, f"seed={seed}", f"logger.tracking_uri={tracking_uri}",
           f"logger.experiment_name={args.name}", f"run_name={arm}-s{seed}", "save_policy=false",
           "trainer.enable_progress_bar=false", f"trainer.val_check_interval={args.val_every}", "ckpt_every=100000",
           f"output_dir={args.workdir}/{arm}-s{seed}", *args.extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    out = subprocess.run(cmd, cwd=args.workdir, capture_output=True, text=True, env=env)
    Path(args.workdir, f"{arm}-s{seed}.log").write_text(" ".join(cmd) + "\n\n" + out.stdout + "\n" + out.stderr)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"run {arm} seed {seed} failed (log: {args.workdir}/{arm}-s{seed}.log)")
    return time.time() - t0


def collect(tracking_uri: str, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"]):
        hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)) for k in METRICS}
        # Lightning re-sends the last value of every step metric on steps that did not log it: the SFT steps and
        # the curriculum's final no-op tick repeat the last RL step's numbers. Keep each metric where it is real.
        done = {s for s, _ in hist["curriculum/done"]}
        not_rl = done | {s for s, _ in hist["sft/kept"]}
        for k in hist:
            if not k.startswith(("val/", "sft/", "curriculum/")):
                hist[k] = [(s, v) for s, v in hist[k] if s not in not_rl]
            elif k == "sft/loss":
                hist[k] = [(s, v) for s, v in hist[k] if s not in done]
        stages = {k: int(v) for k, v in r.data.params.items() if k.startswith("curriculum/")}
        wall = (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None
        # a re-run of the same (arm, seed) replaces the older one
        runs[r.info.run_name] = {"run_id": r.info.run_id, "wall_s": wall, "stage_starts": stages, **hist}
    return runs


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(runs: dict, arms: list[str], seeds: list[int], last: int) -> dict:
    table = {}
    for arm in arms:
        row: dict[str, list] = {k: [] for k in ("val_acc", "val_reward", "train_reward", "train_acc", "visual",
                                                "step_s", "rl_steps", "sft_kept", "wall_s")}  # fmt: skip
        for s in seeds:
            r = runs[f"{arm}-s{s}"]
            row["val_acc"].append(r["val/accuracy"][-1][1])
            row["val_reward"].append(r["val/reward"][-1][1])
            rew = [v for _, v in r["rollout/reward_mean"]]
            row["train_reward"].append(statistics.mean(rew[-last:]))
            row["train_acc"].append(statistics.mean(v for _, v in r["rollout/accuracy"][-last:]))
            if r["reward/visual_mean"]:
                row["visual"].append(statistics.mean(v for _, v in r["reward/visual_mean"][-last:]))
            row["step_s"].append(statistics.median(v for _, v in r["perf/step_time_s"]))
            row["rl_steps"].append(len(rew))
            row["sft_kept"].append(r["sft/kept"][-1][1] if r["sft/kept"] else None)
            row["wall_s"].append(r["wall_s"])
        out = {"per_seed": row}
        for key in ("val_acc", "val_reward", "train_reward", "train_acc", "visual"):
            if row[key]:
                out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(row[key])
        out["step_s_median"] = statistics.median(row["step_s"])
        table[arm] = out
    return table


def markdown(table: dict, last: int) -> str:
    has_visual = any("visual_mean" in row for row in table.values())
    has_sft = any(k is not None for row in table.values() for k in row["per_seed"]["sft_kept"])
    head = ["arm", "final greedy val acc (mean ± std)", "per seed", "final val reward (mean ± std)", "per seed",
            f"train reward, last {last} RL steps", f"train acc, last {last}"]  # fmt: skip
    head += [f"r_vis, last {last}"] if has_visual else []
    head += ["SFT pairs kept (per seed)"] if has_sft else []
    head += ["RL steps", "median step s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, row in table.items():
        ps = row["per_seed"]
        cells = [arm, f"{row['val_acc_mean']:.3f} ± {row['val_acc_std']:.3f}",
                 ", ".join(f"{v:.3f}" for v in ps["val_acc"]),
                 f"{row['val_reward_mean']:.3f} ± {row['val_reward_std']:.3f}",
                 ", ".join(f"{v:.3f}" for v in ps["val_reward"]),
                 f"{row['train_reward_mean']:.3f} ± {row['train_reward_std']:.3f}",
                 f"{row['train_acc_mean']:.3f} ± {row['train_acc_std']:.3f}"]  # fmt: skip
        if has_visual:
            cells.append(f"{row['visual_mean']:.3f} ± {row['visual_std']:.3f}" if "visual_mean" in row else "—")
        if has_sft:
            cells.append(", ".join("—" if k is None else f"{k:.0f}" for k in ps["sft_kept"]))
        cells += [", ".join(str(n) for n in sorted(set(ps["rl_steps"]))), f"{row['step_s_median']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, arms: list[str], seeds: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, arm in enumerate(arms):
        color = f"C{i}"
        for s in seeds:
            r = runs[f"{arm}-s{s}"]
            label = arm if s == seeds[0] else None
            for ax, key in ((ax1, "rollout/reward_mean"), (ax2, "rollout/accuracy")):
                steps, vals = zip(*r[key])
                smooth = [statistics.mean(vals[max(0, j - 9) : j + 1]) for j in range(len(vals))]
                ax.plot(steps, smooth, color=color, alpha=0.7, label=label)
            vs, va = zip(*r["val/accuracy"])
            ax3.plot(vs, va, "o-", color=color, alpha=0.7, label=label)
            for step in r["stage_starts"].values():
                if step > 0:
                    ax1.axvline(step, color=color, ls=":", lw=0.8, alpha=0.5)
    titles = ("train reward (10-step mean; dotted: stage switches)", "train accuracy (10-step mean)",
              "greedy val accuracy")  # fmt: skip
    for ax, t in zip((ax1, ax2, ax3), titles):
        ax.set_xlabel("step")
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=sorted(DEFAULT_ARMS))
    p.add_argument("--arms", default=None, help="comma-separated subset of the method's arms (default: all main)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (split over stages)")
    p.add_argument("--batch", type=int, default=None, help="prompts per step (B)")
    p.add_argument("--val-every", type=int, default=None, help="steps between greedy validations; divides --steps")
    p.add_argument("--last", type=int, default=20, help="train metrics: mean over the last N RL steps")
    p.add_argument("--name", default=None, help="MLflow experiment name (default issue6_<method>)")
    p.add_argument("--out", default=None, help="output stem (default experiments/results/issue6_<method>)")
    p.add_argument("--workdir", default="/tmp/i6_work")
    p.add_argument("--collect-only", action="store_true", help="only read the MLflow store and write outputs")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run (after --)")
    args = p.parse_args()
    steps = args.steps or DEFAULT_STEPS[args.method]
    batch = args.batch or DEFAULT_BATCH[args.method]
    args.val_every = args.val_every or DEFAULT_VAL_EVERY[args.method]
    args.name = args.name or f"issue6_{args.method}"
    out = Path(args.out or f"experiments/results/issue6_{args.method}").resolve()
    arms = (args.arms or DEFAULT_ARMS[args.method]).split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    base, arm_overrides = arms_for(args.method, steps, batch)
    if steps % args.val_every:  # a run that ends at max_steps validates at the end only on a multiple
        raise SystemExit(f"--val-every {args.val_every} must divide --steps {steps} (final validation)")
    unknown = [a for a in arms if a not in arm_overrides]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; {args.method} has {sorted(arm_overrides)}")
    os.makedirs(args.workdir, exist_ok=True)
    tracking_uri = f"sqlite:///{Path(args.workdir).resolve()}/mlflow.db"
    if not args.collect_only:
        for arm in arms:
            for s in seeds:
                print(f"[ablate] {args.method} {arm} seed {s} ...", flush=True)
                wall = run_one(arm, base + arm_overrides[arm], s, args, tracking_uri)
                print(f"[ablate]   done in {wall:.0f} s", flush=True)
    runs = collect(tracking_uri, args.name)
    table = summarise(runs, arms, seeds, args.last)
    out.parent.mkdir(parents=True, exist_ok=True)
    commands = {arm: base + arm_overrides[arm] for arm in arms}
    payload = {"args": vars(args), "steps": steps, "batch": batch, "overrides": commands, "table": table,
               "runs": {k: v for k, v in runs.items() if k.rsplit("-s", 1)[0] in arms}}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    md = markdown(table, args.last)
    out.with_suffix(".md").write_text(f"# issue 6: {args.method} ablation ({steps} RL steps, B={batch}, seeds "
                                      f"{args.seeds})\n\n{md}")  # fmt: skip
    plot(runs, arms, seeds, out.with_suffix(".png"), f"{args.method}: {steps} RL steps, seeds {args.seeds}")
    print(md)
    print(f"[ablate] wrote {out}.{{md,json,png}}; MLflow: {tracking_uri}")


if __name__ == "__main__":
    main()
