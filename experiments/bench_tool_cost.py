"""Cost of tool use (issue 13): RL step time without tools vs `+method=zoom` with a turn budget of 1, 2 and 4 calls.

Each arm builds the real training module from the config (`data=zoom`, tiny Qwen2.5-VL, B prompts x G trajectories)
and runs `--warmup + --steps` optimizer steps in this process; the statistic is the median (and mean) wall time of
the last `--steps` steps, measured around Lightning's `training_step` (rollout, tools, scoring, update).

So that the turns actually happen, the tool arms' policy is scripted (`vrl.sampler.scripted.ScriptedTurns`: the real
model runs every forward of `generate`, its choice is replaced by the script's token): per trajectory `max_turns`
crop calls (a valid 28 x 28 frame-px box; each observation is the crop enlarged to 112 x 112 px, 16 image tokens),
then `<answer>red</answer>` and EOS. The no-tool arm is GRPO on `sampler=hf_generate` with `max_new_tokens=5`, the
length of that answer turn (4 tokens + EOS), so the arms differ by the call turns and their observations only.
Rewards are whatever the script earns (not the point here); `tools/*` metrics are recorded to show the turns ran.

    OMP_NUM_THREADS=1 python experiments/bench_tool_cost.py --steps 20 --out experiments/results/tool_cost
    OMP_NUM_THREADS=1 python experiments/bench_tool_cost.py --steps 2 --warmup 1 --out /tmp/tool_cost  # smoke

Time it on a quiet machine: every arm runs in one process, one after the other, `--reps` times round-robin; the
reported value per arm is the minimum over reps of the median step time (other jobs can only slow a run down).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ARMS = {"no_tools": 0, "zoom_turns1": 1, "zoom_turns2": 2, "zoom_turns4": 4}
CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [96, 56, 124, 84]}}</tool_call>'
ANSWER = "<answer>red</answer>"
TOOL_METRICS = ("tools/calls_per_traj", "tools/turns_mean", "tools/observation_tokens_mean", "tools/answered_frac")


def overrides(arm: str, args: argparse.Namespace, workdir: str) -> list[str]:
    """The run's Hydra overrides: the zoom task, B x G, no validation or tracking; the arm's sampler."""
    turns = ARMS[arm]
    common = [
        "experiment=none",
        "data=zoom",
        f"data_loader.batch_size={args.batch}",
        f"sampler.group_size={args.group}",
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "callbacks.image_use=null",
        "update.log_rollouts_every=0",
        "save_policy=false",
        f"ckpt_every={10**6}",
        f"seed={args.seed}",
        f"output_dir={workdir}/{arm}",
    ]
    if turns == 0:
        return [*common, "data.train.instruction=none", "sampler.max_new_tokens=5"]
    return [*common, "+method=zoom", f"sampler.max_turns={turns}", "sampler.max_new_tokens=96",
            "sampler.max_total_tokens=1024"]  # fmt: skip


def run_arm(arm: str, args: argparse.Namespace, workdir: str) -> dict:
    """One arm's step times (s) after warm-up and its last tool metrics."""
    import lightning as L
    from hydra import compose, initialize_config_module

    from vrl.build import build_module, build_trainer
    from vrl.sampler.scripted import ScriptedTurns

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(arm, args, workdir))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    if ARMS[arm]:  # max_turns calls, then the answer: the same script for every row of a batch
        script = [CALL] * ARMS[arm] + [ANSWER]
        module.sampler.logits_processor = ScriptedTurns(module.vlm.processor.tokenizer, [script] * args.batch)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tools: dict[str, float] = {}

        def on_train_batch_start(self, *a) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *a) -> None:
            self.times.append(time.perf_counter() - self.t0)
            m = trainer.callback_metrics
            self.tools = {k: float(m[k]) for k in TOOL_METRICS if k in m}

    timer = Timer()
    build_trainer(cfg, callbacks=[timer]).fit(module)
    times = timer.times[args.warmup :]
    return {"times_s": times, "median_s": statistics.median(times), "mean_s": statistics.mean(times), **timer.tools}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="B prompts per step")
    p.add_argument("--group", type=int, default=4, help="G trajectories per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/results/tool_cost")
    args = p.parse_args()
    command = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " " + shlex.join([sys.executable, *sys.argv])
    print(f"[tool_cost] {command}", flush=True)
    workdir = tempfile.mkdtemp(prefix="vrl-tool-cost-")
    arms = args.arms.split(",")
    reps: dict[str, list[dict]] = {a: [] for a in arms}
    for rep in range(args.reps):
        for arm in arms:
            reps[arm].append(run_arm(arm, args, workdir))
            print(f"[tool_cost] rep {rep} {arm}: median {reps[arm][-1]['median_s']:.3f} s/step", flush=True)
    base = min(r["median_s"] for r in reps[arms[0]])
    lines = [
        f"Command: `{command}`",
        "",
        f"| arm | max calls | s/step (min over reps of the median) | vs {arms[0]} | calls/traj | turns | obs tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    table = {}
    for arm in arms:
        best = min(reps[arm], key=lambda r: r["median_s"])
        table[arm] = {"max_turns": ARMS[arm], "median_s": best["median_s"], "vs_first": best["median_s"] / base,
                      "reps": reps[arm]}  # fmt: skip
        tools = [best.get(k, 0.0) for k in TOOL_METRICS[:3]]
        lines.append(f"| {arm} | {ARMS[arm]} | {best['median_s']:.3f} | x{best['median_s'] / base:.2f} | "
                     f"{tools[0]:.2f} | {tools[1]:.2f} | {tools[2]:.1f} |")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "args": vars(args), "table": table}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
