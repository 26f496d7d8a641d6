"""Visual-RFT's detection reward with and without its confidence term, on the synthetic detection task (issue 14).

Two arms, each a `python -m vrl +method=visual_rft` run (the real CLI path) per seed, one after the other:

    iou_conf   R_IoU + R_conf + format (the released recipe)
    iou_only   R_IoU + format (`reward.confidence=null`)

Both log to one MLflow store; the script reads the runs back and writes a table (markdown + JSON) and learning
curves of R_IoU (`rollout/accuracy`, the term keyed `accuracy`), the format reward and the greedy validation R_IoU.

    OMP_NUM_THREADS=1 python experiments/visual_rft_confidence.py --seeds 0,1,2 --steps 60 \
        --out experiments/results/visual_rft_confidence
    OMP_NUM_THREADS=1 python experiments/visual_rft_confidence.py --seeds 0 --steps 2 --out /tmp/smoke   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = {"iou_conf": [], "iou_only": ["reward.confidence=null"]}
METRICS = ("rollout/accuracy", "reward/format_mean", "reward/confidence_mean", "rollout/reward_mean", "val/accuracy")
#: The task made as easy as the synthetic detection allows: colour categories (one or two boxes), one or two objects.
TASK = [
    "data.train.categories=[color]",
    "data.train.difficulties=[1]",
    "data.train.num_samples=512",
    "data.val.num_samples=32",
    "sampler.max_new_tokens=48",
    "data_loader.batch_size=4",
    "callbacks.image_use=null",
]


def run_one(arm: str, seed: int, args, tracking_uri: str) -> float:
    overrides = ["+method=visual_rft", *ARMS[arm], *TASK, f"seed={seed}", f"trainer.max_steps={args.steps}",
                 f"trainer.val_check_interval={args.val_every}", "logger=mlflow", f"logger.tracking_uri={tracking_uri}",
                 f"logger.experiment_name={args.name}", f"run_name={arm}-s{seed}", "save_policy=false",
                 "trainer.enable_progress_bar=false", f"output_dir={args.workdir}/{arm}-s{seed}"]  # fmt: skip
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "vrl", *overrides], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"run {arm} seed {seed} failed")
    return time.time() - t0


def collect(tracking_uri: str, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = {}
    for r in client.search_runs([exp.experiment_id], max_results=100):
        hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)) for k in METRICS}
        runs[r.info.run_name] = {"run_id": r.info.run_id, **hist}
    return runs


def summarise(runs: dict, seeds: list[int], last: int) -> dict:
    table = {}
    for arm in ARMS:
        rows = [runs[f"{arm}-s{s}"] for s in seeds]
        val = [r["val/accuracy"][-1][1] if r["val/accuracy"] else float("nan") for r in rows]
        iou = [statistics.mean(v for _, v in r["rollout/accuracy"][-last:]) for r in rows]
        fmt = [statistics.mean(v for _, v in r["reward/format_mean"][-last:]) for r in rows]
        table[arm] = {"val_iou_final": val, "train_iou_last": iou, "train_format_last": fmt,
                      "val_iou_mean": statistics.mean(val), "train_iou_mean": statistics.mean(iou),
                      "train_format_mean": statistics.mean(fmt)}  # fmt: skip
    return table


def plot(runs: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key in zip(axes, ("rollout/accuracy", "reward/format_mean", "val/accuracy")):
        for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
            for s in seeds:
                points = runs[f"{arm}-s{s}"][key]
                label, marker = (arm if s == seeds[0] else None), ("o" if key.startswith("val") else None)
                ax.plot(
                    [p[0] for p in points], [p[1] for p in points], color=color, alpha=0.6, label=label, marker=marker
                )
        ax.set_title(key if key != "rollout/accuracy" else "rollout/accuracy (R_IoU)")
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--last", type=int, default=20, help="steps averaged for the training numbers")
    p.add_argument("--name", default="visual_rft_confidence")
    p.add_argument("--out", default="experiments/results/visual_rft_confidence")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.workdir = tempfile.mkdtemp(prefix="vrl-visual-rft-conf-")
    tracking_uri = f"sqlite:///{args.workdir}/mlflow.db"
    times = {}
    for seed in seeds:
        for arm in ARMS:
            times[f"{arm}-s{seed}"] = run_one(arm, seed, args, tracking_uri)
            print(f"{arm} seed {seed}: {times[f'{arm}-s{seed}']:.0f} s", flush=True)
    runs = collect(tracking_uri, args.name)
    table = summarise(runs, seeds, args.last)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"table": table, "times_s": times, "runs": runs}, indent=1))
    lines = [
        "| arm | val R_IoU (final, per seed) | train R_IoU (last steps) | train format (last steps) |",
        "|---|---|---|---|",
    ]
    for arm, t in table.items():
        lines.append(f"| {arm} | {', '.join(f'{v:.3f}' for v in t['val_iou_final'])} | "
                     f"{t['train_iou_mean']:.3f} | {t['train_format_mean']:.3f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(runs, seeds, out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
