"""Extra cost per RL step of VPPO's perturbed pass and of PEARL's probes, relative to a GRPO step.

Each arm is one `python -m vrl` run of `--steps` optimizer steps (the real CLI path) on the colour task with
4-token responses (B=16, G=8); group filters are off so every arm trains on full batches. Arms run in
round-robin order `--reps` times so slow drift of the machine (other jobs) hits every arm alike; the
statistic is the median `perf/step_time_s` over steps 6..end of each run, then the *minimum* over reps (another
job can only slow a run down, so the fastest rep is the least disturbed one; every rep is reported too).

    python experiments/bench_method_overhead.py --reps 3 --steps 30 --out experiments/results/method_overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

NO_FILTER = ["hooks.dynamic_sampling=null"]
TINY_PROBES = ["hooks.pearl.group_size=4", "hooks.pearl.max_items=1", "hooks.pearl.plain_single=true",
               "hooks.pearl.fallback=first_word", "hooks.pearl.gate=false"]  # fmt: skip
ARMS = {
    "grpo": [],
    "vppo_base_no_hook": ["+method=vppo", "hooks.vppo=null", *NO_FILTER],  # VPPO's settings, no extra pass
    "vppo_paired": ["+method=vppo", *NO_FILTER],
    "vppo_two_passes": ["+method=vppo", "hooks.vppo.paired_pass=false", *NO_FILTER],
    "pearl": ["+method=pearl", *NO_FILTER, *TINY_PROBES],
    # old log-probs from generate (sampler.logprobs=true): no teacher-forced old pass; VPPO scores the perturbed
    # images only, and with mask_scope=group the G copies share one perturbed image (encoded once)
    "grpo_sampler_lp": ["sampler.logprobs=true"],
    "vppo_sampler_lp": ["+method=vppo", "sampler.logprobs=true", *NO_FILTER],
    "vppo_sampler_lp_group": ["+method=vppo", "sampler.logprobs=true", "hooks.vppo.mask_scope=group", *NO_FILTER],
}


def run_arm(name: str, rep: int, args, uri: str) -> None:
    overrides = [*ARMS[name], "experiment=color_words", f"trainer.max_steps={args.steps}",
                 "trainer.limit_val_batches=0", f"logger.tracking_uri={uri}", "logger.experiment_name=overhead",
                 f"run_name={name}-r{rep}", "save_policy=false", "trainer.enable_progress_bar=false",
                 "update.log_rollouts_every=0", "callbacks.image_use=null"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "vrl", *overrides], cwd=args.workdir, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"arm {name} failed")


def medians(uri: str) -> dict[str, list[float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("overhead")
    out: dict[str, list[float]] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "perf/step_time_s"))
        arm = r.info.run_name.rsplit("-r", 1)[0]
        out.setdefault(arm, []).append(statistics.median(v for s, v in hist[5:]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workdir", default="/tmp/vrl-overhead")
    p.add_argument("--out", default="experiments/results/method_overhead")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    uri = f"sqlite:///{Path(args.workdir).resolve()}/mlflow.db"
    arms = args.arms.split(",")
    for rep in range(args.reps):
        for name in arms:
            print(f"[overhead] rep {rep} {name} ...", flush=True)
            run_arm(name, rep, args, uri)
    per_arm = medians(uri)
    base = min(per_arm["grpo"])
    lines = ["| arm | step s: min over reps (each rep's median) | vs GRPO |", "|---|---|---|"]
    table = {}
    for name in arms:
        m = min(per_arm[name])
        table[name] = {"min_of_medians_s": m, "reps": per_arm[name], "vs_grpo": m / base - 1}
        reps = ", ".join(f"{v:.3f}" for v in per_arm[name])
        lines.append(f"| {name} | {m:.3f} ({reps}) | {m / base - 1:+.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "table": table}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
