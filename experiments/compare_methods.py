"""Compare method presets on the synthetic suite at equal steps, several seeds, tracked in MLflow.

Each (method, seed) is one `python -m vrl` run (the real CLI path) logging to one MLflow experiment; the
script then reads the runs back and writes a table, a JSON and a learning-curve plot.

    python experiments/compare_methods.py --methods grpo_base,vppo --seeds 0,1,2 --out experiments/results/cmp
    python experiments/compare_methods.py --methods grpo_base,vppo --seeds 0 --steps 20   # smoke

Method names are `+method=` presets; `grpo_base` means vrl's base config (GRPO, no KL) with no preset; `a+b`
stacks presets (`+method=[a,b]`). `--pearl-overrides` go to the arms that include PEARL only.

    python experiments/compare_methods.py --methods grpo_base,vppo,pearl,vppo+pearl --seeds 0,1,2 \
        --pearl-overrides hooks.pearl.group_size=4 hooks.pearl.max_items=1 hooks.pearl.plain_single=true \
        hooks.pearl.fallback=first_word --out experiments/results/compare_four
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


def run_one(method: str, seed: int, args, tracking_uri: str) -> float:
    overrides = [f"experiment={args.experiment}", f"seed={seed}", f"trainer.max_steps={args.steps}",
                 f"logger.tracking_uri={tracking_uri}", f"logger.experiment_name={args.name}",
                 f"run_name={method}-s{seed}", "save_policy=false", "trainer.enable_progress_bar=false",
                 f"trainer.val_check_interval={args.val_every}", *args.extra]  # fmt: skip
    if method != "grpo_base":
        overrides.insert(0, f"+method=[{','.join(method.split('+'))}]")
    if "pearl" in method.split("+"):
        overrides += args.pearl_overrides
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "vrl", *overrides], cwd=args.workdir, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"run {method} seed {seed} failed")
    return time.time() - t0


def collect(tracking_uri: str, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        hist = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                for k in ("rollout/accuracy", "val/accuracy", "perf/step_time_s", "perf/vppo_pass_s",
                          "pearl/probe_score", "pearl/gate_pass", "rollout/generate_calls")}  # fmt: skip
        runs[r.info.run_name] = {"run_id": r.info.run_id, **{k: sorted(v) for k, v in hist.items()}}
    return runs


def summarise(runs: dict, methods: list[str], seeds: list[int]) -> dict:
    table = {}
    for m in methods:
        finals, lasts, times = [], [], []
        for s in seeds:
            r = runs[f"{m}-s{s}"]
            finals.append(r["val/accuracy"][-1][1])
            acc = [v for _, v in r["rollout/accuracy"]]
            lasts.append(statistics.mean(acc[-50:]))
            times.append(statistics.median(v for _, v in r["perf/step_time_s"]))
        table[m] = {
            "val_acc_final": finals, "val_acc_mean": statistics.mean(finals),
            "val_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "train_acc_last50_mean": statistics.mean(lasts), "step_time_median_s": statistics.mean(times),
        }  # fmt: skip
    return table


def plot(runs: dict, methods: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(methods):
        color = f"C{i}"
        for s in seeds:
            r = runs[f"{m}-s{s}"]
            steps, acc = zip(*r["rollout/accuracy"])
            window = 10
            smooth = [statistics.mean(acc[max(0, j - window + 1) : j + 1]) for j in range(len(acc))]
            ax1.plot(steps, smooth, color=color, alpha=0.7, label=m if s == seeds[0] else None)
            vs, va = zip(*r["val/accuracy"])
            ax2.plot(vs, va, "o-", color=color, alpha=0.7, label=m if s == seeds[0] else None)
    for ax, title in ((ax1, "train accuracy (10-step mean)"), (ax2, "greedy val accuracy")):
        ax.axhline(1 / 3, color="grey", ls="--", lw=1)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="grpo_base,vppo")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--experiment", default="color_words")
    p.add_argument("--name", default="compare_methods")
    p.add_argument("--out", default="experiments/results/compare_methods")
    p.add_argument("--workdir", default="/tmp/vrl-compare")
    p.add_argument("--pearl-overrides", nargs="*", default=[], help="Hydra overrides for arms with PEARL")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = p.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    tracking_uri = f"sqlite:///{Path(args.workdir).resolve()}/mlflow.db"
    for m in methods:
        for s in seeds:
            print(f"[compare] {m} seed {s} ...", flush=True)
            print(f"[compare]   done in {run_one(m, s, args, tracking_uri):.0f} s", flush=True)
    runs = collect(tracking_uri, args.name)
    table = summarise(runs, methods, seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "table": table, "runs": runs}, indent=1))
    lines = ["| method | final val acc (mean ± std) | per seed | train acc, last 50 steps | median step s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for m, row in table.items():
        per_seed = ", ".join(f"{v:.3f}" for v in row["val_acc_final"])
        lines.append(f"| {m} | {row['val_acc_mean']:.3f} ± {row['val_acc_std']:.3f} | {per_seed} | "
                     f"{row['train_acc_last50_mean']:.3f} | {row['step_time_median_s']:.3f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(runs, methods, seeds, out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"[compare] wrote {out}.{{md,json,png}}; MLflow: {tracking_uri}")


if __name__ == "__main__":
    main()
