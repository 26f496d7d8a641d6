"""``vrl eval``: accuracy of a saved policy (or any local / hub model) on a benchmark, logged next to training runs.

    vrl eval outputs/2026-12-05/10-00-00/policy                 # the run's data.val, greedy
    vrl eval outputs/.../policy --samples 8 --k 1,4,8 data.val.num_samples=500
    vrl eval --model Qwen/Qwen2.5-VL-3B-Instruct experiment=none data=rlvr_local data.val.path=bench.parquet

The config is the training config (``conf/train.yaml``) with the same groups and overrides, so a policy is
evaluated with the prompts, sampler settings and reward it was trained with; the policy path replaces
``model.name_or_path``. The benchmark is ``data.val`` (``--split train`` for ``data.train``): the synthetic suite,
or local files in the documented RLVR schema (``data=rlvr_local``, README "Training on your own data").

Per item: the greedy response's accuracy (the reward's ``accuracy`` term; the total reward when there is none,
as validation does), and with ``--samples n`` n sampled responses at the sampler's temperature: avg@n (the mean
accuracy over samples) and pass@k for each k <= n (the unbiased estimator of Chen et al. 2021, arXiv 2107.03374:
1 - C(n - c, k) / C(n, k), with c samples of accuracy >= ``--correct-at``), logged as ``avg_at_<n>`` and
``pass_at_<k>`` (MLflow keys cannot hold "@"). Every metric also per source (a row
field, ``--source-key``; default: ``data_source`` if rows have it, else ``task``). The metrics and a markdown
table go to an MLflow run (tag ``vrl.kind=eval``) in the training runs' store and experiment (``logger=none``:
printed only). ``--extract-judge NAME`` (a ``conf/judge`` entry: ``policy``, ``local``, ``http``, ``tiny_local``;
its fields as overrides ``extract_judge.<field>=...``) lets that model read each response and copy out its answer
before the accuracy term grades it (``vrl.judges.extract``); the total reward still grades the raw response.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SOURCE_KEYS = ("data_source", "task")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class ItemScore:
    """One benchmark item: its source, its greedy accuracy, its sampled accuracies (may be empty) and its greedy
    total reward."""

    source: str
    greedy: float
    samples: list[float] = field(default_factory=list)
    greedy_reward: float = math.nan


def _accuracy(
    reward: Callable, rollout: Any, context: Any, extract: Callable | None = None
) -> tuple[list[float], list[float]]:
    """Per response: accuracy (the ``accuracy`` term, else the total reward; on the answers ``extract`` copied out
    when given) and the total reward (on the raw response)."""
    total, components = reward(rollout.responses, rollout.samples, context=context)
    values = components.get("accuracy", total)
    if extract is not None:
        graded_total, graded = reward(
            extract(rollout.samples, list(rollout.responses)), rollout.samples, context=context
        )
        values = graded.get("accuracy", graded_total)
    return [float(v) for v in values], [float(v) for v in total]


def score_items(
    generate: Callable[..., Any],
    reward: Callable,
    rows: Sequence[dict],
    batch_size: int,
    samples: int = 0,
    source_key: str | None = None,
    context: Any = None,
    extract: Callable | None = None,
) -> list[ItemScore]:
    """Greedy (and ``samples`` sampled) accuracies of every row, in batches of ``batch_size`` rows.

    Args:
        generate: ``generate(rows, group_size=None, greedy=False) -> Rollout`` (a row's samples adjacent).
        reward: a ``RewardSet``-like callable ``(responses, rows, context=) -> (total [N], components)``.
        extract: ``extract(rows, responses) -> responses to grade`` (``vrl.judges.extract.JudgeExtractor``).
    """
    items = []
    for start in range(0, len(rows), batch_size):
        part = list(rows[start : start + batch_size])
        greedy, totals = _accuracy(reward, generate(part, greedy=True), context, extract)
        sampled = _accuracy(reward, generate(part, group_size=samples), context, extract)[0] if samples else []
        for i, row in enumerate(part):
            source = str(row.get(source_key, "all")) if source_key else "all"
            items.append(ItemScore(source, greedy[i], sampled[i * samples : (i + 1) * samples], totals[i]))
    return items


def summarise(
    items: Sequence[ItemScore], ks: Sequence[int] = (), correct_at: float = 1.0, label: str = "greedy"
) -> dict[str, float]:
    """``eval/<metric>`` over all items and ``eval/by_source/<source>/<metric>``: the item count, greedy accuracy
    and total reward (``label``: ``greedy``, or a PRM selection's name), avg@n and pass@k for each k <= n."""
    groups: dict[str, list[ItemScore]] = defaultdict(list)
    for item in items:
        groups[item.source].append(item)
    out = {}
    for prefix, members in [("eval/", list(items))] + [(f"eval/by_source/{s}/", m) for s, m in sorted(groups.items())]:
        out[prefix + "count"] = float(len(members))
        out[prefix + f"{label}_accuracy"] = sum(m.greedy for m in members) / max(len(members), 1)
        out[prefix + f"{label}_reward"] = sum(m.greedy_reward for m in members) / max(len(members), 1)
        n = min((len(m.samples) for m in members), default=0)
        if n:
            out[prefix + f"avg_at_{n}"] = sum(sum(m.samples) / len(m.samples) for m in members) / len(members)
            for k in [k for k in ks if k <= n]:
                passed = [pass_at_k(n, sum(v >= correct_at for v in m.samples[:n]), k) for m in members]
                out[prefix + f"pass_at_{k}"] = sum(passed) / len(members)
    return out


def table(metrics: dict[str, float]) -> str:
    """A markdown table: one row per source (``all`` first), one column per metric."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        parts = key.split("/")
        by_source = len(parts) == 4 and parts[1] == "by_source"
        source, name = (parts[2], parts[3]) if by_source else ("all", "/".join(parts[1:]))
        rows[source][name] = value
    names = list(rows["all"])
    lines = ["| source | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for source, values in rows.items():
        cells = [f"{int(values[n])}" if n == "count" else f"{values.get(n, math.nan):.4f}" for n in names]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Selection:
    """``--select``: how each item's response is picked with a PRM (:mod:`vrl.prm.select`)."""

    how: str = "greedy"
    n: int = 4
    prm: Any = None
    aggregate: str = "orm"
    max_steps: int = 8


def score_selected(select: Callable, reward: Callable, rows: Sequence[dict], source_key: str | None, context: Any):
    """Items scored on the response ``select(row) -> (response, cost)`` picks, and the mean cost per item."""
    items, totals = [], defaultdict(float)
    for row in rows:
        response, cost = select(row)
        total, components = reward([response], [row], context=context)
        acc = components.get("accuracy", total)
        items.append(
            ItemScore(str(row.get(source_key, "all")) if source_key else "all", float(acc[0]), [], float(total[0]))
        )
        for key, value in cost.items():
            totals[key] += value
    return items, {f"eval/cost/{k}_per_item": v / max(len(rows), 1) for k, v in totals.items()}


def _prm(cfg: Any, selection: Selection) -> Any:
    """The selection's PRM: given, else the config's ``reward.prm`` term's (``+method=vl_prm``)."""
    from hydra.utils import instantiate

    if selection.prm is not None or selection.how == "greedy" or "prm" not in (cfg.reward or {}):
        return selection.prm
    return instantiate(cfg.reward.prm).prm


def evaluate(
    cfg: Any,
    policy: str | None,
    split: str,
    samples: int,
    ks: Sequence[int],
    source_key: str,
    correct_at: float,
    selection: Selection | None = None,
    extract_judge: bool = False,
) -> dict[str, float]:
    """Build model, sampler, reward and benchmark from ``cfg`` and score every item (greedy and sampled, or the
    responses a PRM ``selection`` picks); with ``extract_judge``, ``cfg.extract_judge`` reads out the answers."""
    import torch
    from hydra.utils import instantiate

    from vrl.rewards.combine import RewardSet
    from vrl.rewards.context import RewardContext

    if policy:
        cfg.model.name_or_path = policy
    torch.manual_seed(cfg.seed)
    vlm = instantiate(cfg.model)
    vlm.model.to("cuda" if torch.cuda.is_available() else "cpu")
    sampler = instantiate(cfg.sampler)
    prm = _prm(cfg, selection) if selection is not None else None
    terms = {k: v for k, v in instantiate(cfg.reward).items() if k != "prm"}  # a PRM term picks, it does not grade
    reward = (instantiate(cfg.reward_sandbox) if cfg.get("reward_sandbox") else RewardSet)(terms)
    node = cfg.data.get(split)
    if node is None:
        from vrl.errors import ConfigError

        raise ConfigError(f"vrl eval: data.{split} is null: nothing to evaluate on (--split, or set data.{split})")
    data = instantiate(node)
    rows = [dict(data[i]) for i in range(len(data))]
    if source_key == "auto":
        source_key = next((k for k in SOURCE_KEYS if rows and k in rows[0]), None)

    def generate(part, group_size=None, greedy=False):
        return sampler.generate(vlm, part, group_size=group_size, greedy=greedy)

    context = RewardContext(0, None, training=False)
    try:
        if selection is None:
            extract = _extractor(cfg, vlm) if extract_judge else None
            batch = cfg.data_loader.val_batch_size
            items = score_items(generate, reward, rows, batch, samples, source_key, context, extract)
            return summarise(items, ks, correct_at) | (extract.metrics() if extract else {})
        from vrl.prm.select import select_item

        s = selection

        def pick(row):
            return select_item(s.how, row, sampler, vlm, prm, s.n, s.aggregate, max_steps=s.max_steps)

        items, cost = score_selected(pick, reward, rows, source_key, context)
        return summarise(items, (), correct_at, label=f"{s.how}{s.n if s.how != 'greedy' else ''}") | cost
    finally:
        reward.close()


def _extractor(cfg: Any, vlm: Any) -> Any:
    """``cfg.extract_judge`` (``--extract-judge``) as a :class:`~vrl.judges.extract.JudgeExtractor`; a policy judge
    is bound to the evaluated model."""
    from hydra.utils import instantiate

    from vrl.judges.extract import JudgeExtractor

    judge = instantiate(cfg.extract_judge)
    if hasattr(judge, "bind_policy"):
        judge.bind_policy(vlm)
    return JudgeExtractor(judge)


def _prm_from_flags(args: Any) -> Any:
    if args.gm_prm:
        from vrl.prm.generative import GenerativePRM

        return GenerativePRM(args.gm_prm)
    if args.prm:
        from vrl.prm.readout import PlusMinusPRM

        return PlusMinusPRM(args.prm)
    return None


def judge_bench(cfg: Any, judge: str | None, source: str, runs: int) -> dict[str, float]:
    """VL-RewardBench (:mod:`vrl.bench.vl_rewardbench`) with the policy (or ``judge``) as the judge."""
    import torch
    from hydra.utils import instantiate

    from vrl.bench.vl_rewardbench import load_items, run_bench, synthetic_items, vlm_judge

    if judge:
        cfg.model.name_or_path = judge
    vlm = instantiate(cfg.model)
    vlm.model.to("cuda" if torch.cuda.is_available() else "cpu")
    items = synthetic_items(seed=cfg.seed) if source == "synthetic" else load_items(source)
    metrics, _ = run_bench(items, vlm_judge(vlm, max_new_tokens=cfg.sampler.max_new_tokens), runs, cfg.seed)
    return metrics


def log_to_mlflow(cfg: Any, metrics: dict[str, float], text: str, tags: dict[str, str]) -> str | None:
    """One MLflow run in the training runs' store and experiment; its id, or None without an MLflow logger."""
    from hydra.utils import instantiate

    from vrl.tracking import is_mlflow

    if not cfg.get("logger"):
        return None
    logger = instantiate(cfg.logger, run_name=tags.get("vrl.eval_name"))
    if not is_mlflow(logger):
        return None
    client, run_id = logger.experiment, logger.run_id
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    logger.log_metrics(metrics, step=0)
    client.log_text(run_id, text, "eval/table.md")
    logger.finalize("success")
    return run_id


def main(argv: list[str] | None = None) -> int:
    """``vrl eval [POLICY] [--samples n] [--k 1,4] [--split val] [overrides ...]``."""
    parser = argparse.ArgumentParser(prog="vrl eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("policy", nargs="?", help="a saved policy folder (or --model); default: the config's model")
    parser.add_argument("--model", help="a local folder or hub id (same as the positional POLICY)")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="which data node is the benchmark")
    parser.add_argument("--samples", type=int, default=0, help="n sampled responses per item (avg@n, pass@k)")
    parser.add_argument("--k", default="1", help="comma-separated k for pass@k (each <= --samples)")
    parser.add_argument("--correct-at", type=float, default=1.0, help="a sample counts for pass@k at accuracy >= this")
    parser.add_argument("--source-key", default="auto", help="row field for per-source tables (auto: data_source|task)")
    parser.add_argument(
        "--select",
        choices=("greedy", "bon", "step_search", "refined_bon"),
        help="pick each item's response with a PRM (vrl/prm/select.py); greedy: the baseline",
    )
    parser.add_argument("--n", type=int, default=4, help="--select: samples (bon, refined_bon) or candidates per step")
    parser.add_argument("--prm", help="--select: a '+'/'-' PRM model (VL-PRM); default: the config's reward.prm")
    parser.add_argument("--gm-prm", help="--select refined_bon: a generative PRM model (GM-PRM)")
    parser.add_argument("--aggregate", default="orm", help="--select bon: orm | min | mean | product | last")
    parser.add_argument("--max-steps", type=int, default=8, help="--select step_search: steps before it stops")
    parser.add_argument(
        "--extract-judge",
        help="a conf/judge entry (policy, local, http, tiny_local) that copies each answer out before grading; "
        "its fields as overrides extract_judge.<field>=...",
    )
    parser.add_argument("--judge-bench", help="VL-RewardBench instead: 'synthetic' or a file in its item schema")
    parser.add_argument("--runs", type=int, default=10, help="--judge-bench: judge runs per item (majority vote)")
    args, overrides = parser.parse_known_args(argv)
    policy = args.model or args.policy
    if policy and "=" in policy:  # the first override, not a policy
        overrides, policy = [policy, *overrides], args.model
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from vrl.validate import validate_config

    if args.extract_judge:
        overrides = [f"+judge@extract_judge={args.extract_judge}", *overrides]
    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if OmegaConf.is_interpolation(cfg, "output_dir"):  # ${hydra:runtime.output_dir}: no Hydra run here
        cfg.output_dir = "."
    validate_config(cfg)
    ks = [int(k) for k in args.k.split(",") if k]
    if args.judge_bench:
        metrics = judge_bench(cfg, policy, args.judge_bench, args.runs)
    else:
        selection = None
        if args.select:
            prm = _prm_from_flags(args)
            selection = Selection(args.select, args.n, prm, args.aggregate, args.max_steps)
        metrics = evaluate(
            cfg, policy, args.split, args.samples, ks, args.source_key, args.correct_at, selection, args.extract_judge
        )
    text = table(metrics)
    print(text)
    tags = {"vrl.kind": "eval", "vrl.eval_policy": str(policy or cfg.model.name_or_path), "vrl.eval_split": args.split}
    tags["vrl.eval_name"] = f"eval {tags['vrl.eval_policy']}"
    run_id = log_to_mlflow(cfg, metrics, text, tags)
    if run_id:
        print(f"[vrl] eval: MLflow run {run_id} ({cfg.logger.tracking_uri}, experiment {cfg.logger.experiment_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
