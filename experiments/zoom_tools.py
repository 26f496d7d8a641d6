"""Issue 13's experiment: GRPO without tools vs `+method=zoom` / `+method=ergo` with the crop tool, on `data=zoom`.

Every run is staged (`+curriculum=zoom_warm_start`): `--sft-steps` supervised steps on scripted traces (the same
number in every arm; vrl/data/zoom_traces.py), then `--rl-steps` GRPO steps (equal in every arm). Arms:

    no_tools  sampler=hf_generate, the question alone (data.train.instruction=none); SFT: <answer>{colour}</answer>
    zoom      +method=zoom (JSON <tool_call> crop calls); SFT trace: the crop call on the detail, then the answer
    ergo      +method=ergo, data.train.instruction=zoom (<zoom>[..]</zoom>); the same trace in ERGO's call format

Accuracy reads only `<answer>..</answer>` in every arm (`reward.accuracy.extract.fallback=none`, as the tool presets
set it); each tool arm keeps its preset's other reward terms. The task (448 px canvas, 12 px checkerboard) is
unreadable in the tiny model's 224 px overview (tests/data/test_zoom.py): without the crop the best policy is a
guess (1/3). Runs go one at a time (`python -m vrl`, OMP_NUM_THREADS=1) into one MLflow store; the script then
reads the histories back and writes `<out>.{md,json,png}`: greedy validation accuracy at the last common step
(mean, std, bootstrap CI; seed-paired differences vs no_tools, vrl/stats.py), tool calls per trajectory at the
first and last RL steps, and curves (validation accuracy, training accuracy, tool calls per trajectory, step time).

    OMP_NUM_THREADS=1 python experiments/zoom_tools.py --seeds 0,1,2 --out experiments/results/zoom_tools
    OMP_NUM_THREADS=1 python experiments/zoom_tools.py --collect-only --workdir /tmp/zt --out /tmp/zt/zoom_tools
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

W = "hooks.curriculum.stages.warm."
ARMS: dict[str, list[str]] = {
    "no_tools": ["data.train.instruction=none", W + "rejection.call=none", "sampler.max_new_tokens=16"],
    "zoom": ["+method=zoom", W + "rejection.call=json", W + "rejection.window=112", "sampler.max_new_tokens=96",
             "sampler.max_total_tokens=320"],
    "ergo": ["+method=ergo", "data.train.instruction=zoom", W + "rejection.call=zoom", W + "rejection.window=112",
             "sampler.max_new_tokens=32", "sampler.max_total_tokens=256"],
}  # fmt: skip
METRICS = (
    "val/accuracy",
    "rollout/accuracy",
    "tools/calls_per_traj",
    "tools/invalid_rate",
    "sft/loss",
    "perf/step_time_s",
    "rollout/reward_mean",
)


def overrides(arm: str, seed: int, args: argparse.Namespace) -> list[str]:
    """One run's Hydra overrides: the task, the staged schedule, tracking; then the arm's."""
    return [
        "experiment=none",
        "data=zoom",
        "+curriculum=zoom_warm_start",
        "reward.accuracy.extract.fallback=none",
        f"data.train.num_samples={args.rows}",
        f"data.val.num_samples={args.val_rows}",
        f"data_loader.batch_size={args.batch}",
        f"sampler.group_size={args.group}",
        f"optimizer.lr={args.lr}",
        W + f"lr={args.sft_lr}",
        W + f"after_steps={args.sft_steps}",
        W + f"rejection.max_prompts={args.rows}",
        f"trainer.max_steps={args.sft_steps + args.rl_steps}",
        f"trainer.val_check_interval={args.val_every}",
        "callbacks.image_use=null",
        "update.log_rollouts_every=0",
        "save_policy=false",
        "trainer.enable_progress_bar=false",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{Path(args.workdir).resolve()}/mlflow.db",
        f"logger.experiment_name={args.name}",
        f"run_name={arm}-s{seed}",
        f"seed={seed}",
        f"output_dir={args.workdir}/{arm}-s{seed}",
        *ARMS[arm],
    ]


def run_one(arm: str, seed: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "vrl", *overrides(arm, seed, args)]
    print(f"[zoom_tools] OMP_NUM_THREADS=1 {shlex.join(cmd[1:])}", flush=True)
    t0 = time.time()
    log = Path(args.workdir) / f"{arm}-s{seed}.log"
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"run {arm} seed {seed} failed: see {log}")
    return time.time() - t0


def collect(args: argparse.Namespace) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run name -> metric -> [(step, value)] from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(args.workdir).resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(args.name)
    runs = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)) for k in METRICS}
        runs[r.info.run_name] = {"run_id": r.info.run_id, **hist}
    return runs


def _mean(points: list[tuple[int, float]], lo: int, hi: int) -> float:
    vals = [v for s, v in points if lo <= s < hi]
    return statistics.mean(vals) if vals else math.nan


def analyse(runs: dict, seeds: list[int], args: argparse.Namespace) -> dict:
    from vrl.stats import common_step, compare_arms, markdown_tables, value_at

    have = {a: [s for s in seeds if f"{a}-s{s}" in runs] for a in ARMS}  # an arm may lack seeds (not run)
    arms = [a for a in ARMS if have[a]]
    step = common_step([runs[f"{a}-s{s}"]["val/accuracy"] for a in arms for s in have[a]])
    val = {a: {s: value_at(runs[f"{a}-s{s}"]["val/accuracy"], step) for s in have[a]} for a in arms}
    result = compare_arms(val, baseline="no_tools")  # verdicts need vrl.stats.MIN_SEEDS_FOR_CLAIMS pairs
    first_rl, end = args.sft_steps, args.sft_steps + args.rl_steps
    per_arm = {}
    for a in arms:
        rs = [runs[f"{a}-s{s}"] for s in have[a]]
        per_arm[a] = {
            "seeds": have[a],
            "val_accuracy": [val[a][s] for s in have[a]],
            "val_accuracy_after_sft": [value_at(r["val/accuracy"], _val_after_sft(r, first_rl)) for r in rs],
            "calls_first_rl_step": [value_at(r["tools/calls_per_traj"], first_rl) for r in rs],
            "calls_last_5_rl": [_mean(r["tools/calls_per_traj"], end - 5, end) for r in rs],
            "invalid_last_5_rl": [_mean(r["tools/invalid_rate"], end - 5, end) for r in rs],
            "train_acc_last_5_rl": [_mean(r["rollout/accuracy"], end - 5, end) for r in rs],
            "sft_loss_last": [r["sft/loss"][-1][1] if r["sft/loss"] else math.nan for r in rs],
            "rl_step_s_median": [statistics.median(v for s, v in r["perf/step_time_s"] if s >= first_rl) for r in rs],
        }
    return {"step": step, "compare": result, "markdown": markdown_tables(result, "val accuracy"), "arms": per_arm}


def _val_after_sft(run: dict, first_rl: int) -> int:
    """The first validation step at or after the end of SFT (the warm-started policy, before most RL)."""
    steps = [s for s, _ in run["val/accuracy"] if s >= first_rl - 1]
    return steps[0] if steps else -1


def plot(runs: dict, seeds: list[int], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("val/accuracy", "rollout/accuracy", "tools/calls_per_traj", "sft/loss")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        for arm, colour in zip(ARMS, ("tab:grey", "tab:blue", "tab:orange")):
            drawn = [s for s in seeds if f"{arm}-s{s}" in runs]
            for s in drawn:
                pts = runs[f"{arm}-s{s}"].get(key) or []
                label, marker = (arm if s == drawn[0] else None), ("o" if key.startswith("val") else None)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, alpha=0.7, label=label, marker=marker)
        ax.axvline(args.sft_steps - 0.5, color="k", lw=0.6, ls=":")
        ax.set_title(key)
        ax.set_xlabel("optimizer step (SFT | RL)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def report(runs: dict, seeds: list[int], args: argparse.Namespace, times: dict, command: str) -> str:
    res = analyse(runs, seeds, args)
    fmt = lambda xs: ", ".join("nan" if math.isnan(x) else f"{x:.2f}" for x in xs)  # noqa: E731
    lines = [
        f"Command: `{command}`",
        "",
        f"{args.sft_steps} SFT steps + {args.rl_steps} GRPO steps per run, B={args.batch} x G={args.group}, "
        f"seeds {seeds}; greedy validation accuracy on {args.val_rows} rows at step {res['step']}.",
        "",
        res["markdown"],
        "",
        "| arm | seeds | val acc after SFT (per seed) | calls/traj at 1st RL step | calls/traj last 5 "
        "| invalid rate last 5 | train acc last 5 | last SFT loss | RL s/step (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a, r in res["arms"].items():
        lines.append(f"| {a} | {r['seeds']} | {fmt(r['val_accuracy_after_sft'])} | {fmt(r['calls_first_rl_step'])} | "
                     f"{fmt(r['calls_last_5_rl'])} | {fmt(r['invalid_last_5_rl'])} | {fmt(r['train_acc_last_5_rl'])} "
                     f"| {fmt(r['sft_loss_last'])} | {fmt(r['rl_step_s_median'])} |")  # fmt: skip
    if times:
        lines += [
            "",
            "Wall time per run (s, shared 2-core box): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    payload = {"command": command, "args": vars(args), "times_s": times, **{k: res[k] for k in ("step", "compare")}}
    out.with_suffix(".json").write_text(json.dumps({**payload, "arms": res["arms"], "runs": runs}, indent=1))
    plot(runs, seeds, args, out.with_suffix(".png"))
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--rl-steps", type=int, default=20)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--rows", type=int, default=256, help="training rows (the SFT traces are written for all)")
    p.add_argument("--val-rows", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="RL lr")
    p.add_argument("--sft-lr", type=float, default=2e-2)
    p.add_argument("--name", default="zoom_tools")
    p.add_argument("--workdir", default="/tmp/vrl-zoom-tools")
    p.add_argument("--out", default="experiments/results/zoom_tools")
    p.add_argument("--collect-only", action="store_true")
    args = p.parse_args()
    command = "OMP_NUM_THREADS=1 " + shlex.join(["python", *sys.argv])
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    times = {}
    if not args.collect_only:
        for seed in seeds:
            for arm in args.arms.split(","):
                times[f"{arm}-s{seed}"] = run_one(arm, seed, args)
                print(f"[zoom_tools] {arm} seed {seed}: {times[f'{arm}-s{seed}']:.0f} s", flush=True)
    print(report(collect(args), seeds, args, times, command))


if __name__ == "__main__":
    main()
