"""Best-of-N with a PRM vs greedy on the synthetic suite (issue 16), N in {1, 4, 16}, with the cost per item.

    OMP_NUM_THREADS=1 python experiments/prm_best_of_n.py --policy /tmp/bon_exp/run/policy --items 96

The policy is a saved tiny policy (trained with the default GRPO colour task: ``python -m vrl trainer.max_steps=150
logger=none``); the benchmark is that config's ``data.val``. Per item, 16 responses are sampled once (the sampler's
temperature); best-of-N for N < 16 uses the first N of them (nested draws, so the Ns differ only in N). Selectors:

- ``prm_random``: VL-PRM's "+"/"-" readout (PRM as outcome model) from an untrained tiny VLM (no PRM weights can be
  downloaded here: this is what an uninformative PRM gives);
- ``prm_policy``: the same readout from the policy itself (policy-as-PRM, never trained on "+"/"-");
- ``oracle``: the accuracy reward itself (pass@N: the ceiling any PRM can reach with these samples);
- ``mean``: the expected accuracy of a uniformly random pick (avg@N).

Cost per item for best-of-N: N policy sequences (and their tokens) and N PRM prompts (one readout per response, as
``vrl eval --select bon --aggregate orm`` counts them); greedy: 1 sequence, no PRM. Counts, not seconds: timings on
the shared 2-core box mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prm_best_of_n"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from vrl.models.loading import load_vlm
    from vrl.prm.readout import PlusMinusPRM
    from vrl.prm.steps import best_index
    from vrl.rewards.combine import RewardSet

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.val.num_samples={args.items}", *args.overrides])
    torch.manual_seed(cfg.seed)
    policy = load_vlm(args.policy)
    sampler = instantiate(cfg.sampler)
    reward = RewardSet(instantiate(cfg.reward))
    data = instantiate(cfg.data.val)
    prms = {
        "prm_random": PlusMinusPRM("tiny:qwen2_5_vl", batch_size=16),
        "prm_policy": PlusMinusPRM(policy, batch_size=16),
    }
    ns, rows = (1, 4, 16), [dict(data[i]) for i in range(len(data))]
    picks = {name: {n: [] for n in ns} for name in [*prms, "oracle", "mean"]}
    greedy, tokens = [], dict.fromkeys(ns, 0.0)
    for row in rows:
        g = sampler.generate(policy, [row], greedy=True)
        greedy.append(float(reward(g.responses, g.samples)[1]["accuracy"][0]))
        roll = sampler.generate(policy, [row], group_size=max(ns))
        acc = [float(a) for a in reward(roll.responses, roll.samples)[1]["accuracy"]]
        lengths = roll.response_mask.sum(-1).tolist()
        scores = {
            name: [
                r.p
                for r in prm.score_prefixes(
                    [row] * len(roll.responses), [[r.strip() or "(empty)"] for r in roll.responses]
                )
            ]
            for name, prm in prms.items()
        }
        for n in ns:
            tokens[n] += sum(lengths[:n])
            for name in prms:
                picks[name][n].append(acc[best_index(scores[name][:n])])
            picks["oracle"][n].append(max(acc[:n]))
            picks["mean"][n].append(sum(acc[:n]) / n)
    k = len(rows)
    result = {
        "items": k,
        "policy": args.policy,
        "greedy": {"accuracy": sum(greedy) / k, "policy_sequences_per_item": 1, "prm_prompts_per_item": 0},
        "best_of_n": {
            str(n): {
                **{name: sum(v[n]) / k for name, v in picks.items()},
                "policy_sequences_per_item": n,
                "policy_tokens_per_item": tokens[n] / k,
                "prm_prompts_per_item": n,
            }
            for n in ns
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Best-of-N with a PRM vs greedy, {k} items of the tiny colour task's data.val (policy: {args.policy})",
        "",
        "| selector | N | accuracy | policy seq / item | policy tokens / item | PRM prompts / item |",
        "|---|---|---|---|---|---|",
        f"| greedy | 1 | {result['greedy']['accuracy']:.3f} | 1 | - | 0 |",
    ]
    for n in ns:
        r = result["best_of_n"][str(n)]
        for name in [*prms, "oracle", "mean"]:
            prompts = n if name.startswith("prm") else 0
            lines.append(f"| {name} | {n} | {r[name]:.3f} | {n} | {r['policy_tokens_per_item']:.1f} | {prompts} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
