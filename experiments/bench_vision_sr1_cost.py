"""Cost of Vision-SR1's second pass (the policy re-reading its own description, text only) relative to a GRPO step.

Two arms on the same data, model and warm start as the self-reward experiment (`experiment=vision_sr1_self_reward`,
which includes the preset and the warm-start curriculum: `--warm` SFT steps that teach the layout, so responses carry
descriptions and pass 2 really runs, then `--steps` RL steps): `pass2` keeps the visual term (pass 2 on every
distinct description of the batch, greedy, up to `reward.visual.judge.max_new_tokens` tokens); `no_pass2` deletes it
(`~reward.visual`: the same v1 reward minus r_vis, i.e. a GRPO step on the same responses). `reward.visual.weight=0`
is *not* the baseline: a zero-weight term is still computed, so pass 2 would still run. Each arm is one `python -m
vrl` run; arms alternate `--reps` times so slow drift of the machine hits both alike. Statistic: the median
`perf/step_time_s` over the RL steps after the first `--skip`, then the minimum over reps (other jobs only slow a
run down); the ratio pass2 / no_pass2 - 1 is the second pass's relative cost. Run it on a quiet machine (timings on
a shared box mean little); the exact commands are printed.

    python experiments/bench_vision_sr1_cost.py --reps 3 --steps 30 --out experiments/results/vision_sr1_cost
    python experiments/bench_vision_sr1_cost.py --steps 2 --warm 2 --reps 1 --skip 0   # smoke: the plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BASE = ["experiment=vision_sr1_self_reward"]  # includes method=vision_sr1 and curriculum=vision_sr1_warm_start
ARMS = {"no_pass2": ["~reward.visual"], "pass2": []}


def command(name: str, rep: int, args: argparse.Namespace, uri: str) -> list[str]:
    return [sys.executable, "-m", "vrl", *BASE, *ARMS[name], f"hooks.curriculum.stages.warm.after_steps={args.warm}",
            f"trainer.max_steps={args.warm + args.steps}", f"logger.tracking_uri={uri}",
            "logger.experiment_name=vision_sr1_cost", f"run_name={name}-r{rep}", "save_policy=false",
            "ckpt_every=100000", "trainer.enable_progress_bar=false", "update.log_rollouts_every=0",
            "callbacks.image_use=null", f"hydra.run.dir={Path(args.workdir).resolve() / f'{name}-r{rep}'}"]  # fmt: skip


def run_arm(name: str, rep: int, args: argparse.Namespace, uri: str) -> None:
    cmd = command(name, rep, args, uri)
    print(" ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run(cmd, cwd=args.workdir, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"arm {name} failed")


def rl_medians(uri: str, warm: int, skip: int) -> dict[str, list[tuple[float, float]]]:
    """arm -> per rep (median step time over the RL steps after ``skip``, mean pass-2 items per RL step)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vision_sr1_cost")
    out: dict[str, list[tuple[float, float]]] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        times = [v for s, v in sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id,
                 "perf/step_time_s")) if s >= warm + skip]  # fmt: skip
        items = [m.value for m in client.get_metric_history(r.info.run_id, "judge/visual/items") if m.step >= warm]
        arm = r.info.run_name.rsplit("-r", 1)[0]
        median = statistics.median(times) if times else float("nan")
        out.setdefault(arm, []).append((median, sum(items) / len(items) if items else 0.0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="RL steps per run (after the warm start)")
    p.add_argument("--warm", type=int, default=100, help="warm-start SFT steps (so responses carry descriptions)")
    p.add_argument("--skip", type=int, default=5, help="first RL steps left out of the median")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/vrl-vision-sr1-cost")
    p.add_argument("--out", default="experiments/results/vision_sr1_cost")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    uri = f"sqlite:///{Path(args.workdir).resolve()}/mlflow.db"
    for rep in range(args.reps):
        for name in ARMS:
            run_arm(name, rep, args, uri)
    per_arm = rl_medians(uri, args.warm, args.skip)
    base = min(t for t, _ in per_arm["no_pass2"])
    lines = ["| arm | RL step s: min over reps (each rep's median) | vs no_pass2 | pass-2 items per step |",
             "|---|---|---|---|"]  # fmt: skip
    table = {}
    for name in ARMS:
        m = min(t for t, _ in per_arm[name])
        items = statistics.mean(i for _, i in per_arm[name])
        table[name] = {"min_of_medians_s": m, "reps": per_arm[name], "vs_no_pass2": m / base - 1, "items": items}
        reps = ", ".join(f"{t:.3f}" for t, _ in per_arm[name])
        lines.append(f"| {name} | {m:.3f} ({reps}) | {m / base - 1:+.0%} | {items:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    commands = {n: " ".join(command(n, 0, args, uri)) for n in ARMS}
    record = {"args": vars(args), "commands": commands, "table": table}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
