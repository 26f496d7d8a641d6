"""Lightning DDP on CPU (gloo, 2 forked ranks) equals one process over the same global batch.

Each case runs ``vrl.train.run`` (the ``python -m vrl`` path: logger, checkpoints, saved policy) twice: once as
2 DDP ranks with B prompts each, once as 1 process with 2B prompts, from the same seed. Two things are pinned
so that both runs see the same rollouts, and what is compared is the loop: the sampler draws each prompt's
group under a seed of its own (uid and prompt), so a prompt's responses do not depend on which rank or batch
draws it; and the reward is a deterministic function of the response (distinct within a group, so advantages
and gradients are not zero), 0 for chosen prompts so that DAPO's filter drops them and the loop refills.

Compared after the last step: the saved policy's weights, and per step the logged loss, rewards, gradient norm
and kept-group fraction (read back from ``logger=csv``). Ranks start as ``torchrun``/SLURM starts them (env
vars; Lightning then launches nothing); forked, not spawned, as in tests/methods/test_loss_agg_ddp.py.

The four multi-process cases run in one fresh pytest process (``ddp_child``) with one thread per process: in the
clean-clone CI run (no OMP_NUM_THREADS) every case hit the 240 s launch timeout, 3 processes x 2 threads on
2 cores; a process that has run nothing else also forks without inheriting the suite's threads and servers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

#: the tests that fork ranks: run together in one fresh interpreter (see the module docstring)
FORKING = (
    "test_ddp_token_mean_with_dapo_refills_equals_one_process",
    "test_ddp_seq_mean_with_pearl_probe_branch_equals_one_process",
    "test_ddp_unequal_ranks_and_a_resume_equal_one_uninterrupted_process",
    "test_a_step_where_one_rank_has_nothing_is_skipped_by_every_rank",
    "test_ddp_dpo_stage_equals_one_process",
)
INSIDE_CHILD = os.environ.get("VRL_DDP_CHILD") == "1"
#: set by a test before forking (the ranks inherit it): responses of these uids stop after ``tokens`` tokens, so a
#: rank's generate ends before another's (tests/lit/test_fsdp.py: a sharded generate must go on until all are done)
SHORT = {"uids": (), "tokens": 2}
#: set by a test before forking (the ranks inherit it): give the hook set a local judge with a model of
#: its own, which setup registers under ``RLModule.judges`` (it judges nothing: only where it lives is checked)
WITH_JUDGE = {"on": False}


def run_forking_child(request, tmp_path_factory, test_file: str, names, flag: str, timeout: int) -> dict:
    """Outcome and failure text of each named test of ``test_file``, run once in a fresh ``python -m pytest`` with
    ``flag=1`` in its environment (the tests see it and run their bodies there)."""
    report = tmp_path_factory.mktemp(flag.lower()) / "junit.xml"
    nodes = [f"{Path(test_file).resolve()}::{name}" for name in names]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *nodes]
    # one thread per process: 3 processes x 2 threads on CI's 2 cores ran ~10x slower (threads.intra_op=auto
    # follows OMP_NUM_THREADS; oversubscribed, the first CI run hit the 240 s launch timeout on every case)
    env = {**os.environ, flag: "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, env=env, cwd=request.config.rootpath, capture_output=True, text=True, timeout=timeout)
    if not report.exists():
        pytest.fail(f"the child pytest ({flag}) wrote no report (rc {out.returncode}):\n"
                    f"{out.stdout[-3000:]}{out.stderr[-2000:]}")  # fmt: skip
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcomes[case.get("name")] = None if failed is None else (failed.text or failed.get("message") or "failed")
    return outcomes


def ran_in_child(outcomes: dict | None, name: str) -> bool:
    """True when test ``name`` ran in the child (its outcome is asserted here); False: run the body (in the child)."""
    if outcomes is None:
        return False
    assert name in outcomes, f"{name} did not run in the child process"
    assert outcomes[name] is None, outcomes[name][-4000:]
    return True


@pytest.fixture(scope="module")
def ddp_child(request, tmp_path_factory):
    """The forking tests' outcomes, run once in a fresh pytest (None inside it)."""
    return (
        None if INSIDE_CHILD else run_forking_child(request, tmp_path_factory, __file__, FORKING, "VRL_DDP_CHILD", 1200)
    )


def _in_child(ddp_child, name: str) -> bool:
    return ran_in_child(ddp_child, name)


WORLD, B = 2, 2
COMPARED = (
    "train/loss",
    "train/grad_norm",
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/kept_group_frac",
    "rollout/response_len_mean",
    "policy/clipfrac",
    "policy/kl_ref",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed_of(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _per_prompt_seeded(generate, pad_id, seen):
    """The sampler's ``generate``, one prompt at a time under a seed of its own (uid, prompt, G)."""
    from vrl.types import cat_rollouts

    def call(vlm, samples, group_size=None, greedy=False):
        if not samples:
            return generate(vlm, samples, group_size=group_size, greedy=greedy)
        parts, sampler = [], generate.__self__
        for s in samples:
            cap = sampler.max_new_tokens
            sampler.max_new_tokens = SHORT["tokens"] if str(s.get("uid")) in SHORT["uids"] else cap
            with torch.random.fork_rng():
                torch.manual_seed(_seed_of(s.get("uid"), s["prompt"], group_size, greedy))
                parts.append(generate(vlm, [s], group_size=group_size, greedy=greedy))
            sampler.max_new_tokens = cap
            if group_size is None and not greedy:  # a main rollout (not a probe, not validation)
                seen.append(str(s["uid"]))
        return cat_rollouts(parts, pad_id)

    return call


class CoinReward:
    """A deterministic reward per response, distinct within a group; 0 for every response of a ``dead`` uid."""

    def __init__(self, dead):
        self.dead = set(dead)

    def __call__(self, responses, samples, context=None):
        values, previous, position = [], None, 0
        for response, sample in zip(responses, samples):
            uid = str(sample.get("uid"))
            position = position + 1 if uid == previous else 0
            previous = uid
            coin = _seed_of(uid, response) % 89 / 89
            values.append(0.0 if uid in self.dead else 0.5 * coin + 0.1 * position)
        t = torch.tensor(values)
        return t, {"accuracy": t}

    def pop_stats(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        return None


def _job(index, port, compose, runs, dead, out, parallel=("trainer.strategy=ddp",)):
    """Process ``index`` of the launch: the single-process reference (index 0) or DDP rank ``index - 1``
    (``parallel``: the ranks' strategy overrides; tests/lit/test_fsdp.py passes FSDP's)."""
    import vrl.build
    import vrl.lit.checkpoint
    import vrl.models.loading

    world, rank = (1, 0) if index == 0 else (WORLD, index - 1)
    if world > 1:  # what torchrun / srun set before the process starts
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0",
            RANK=str(rank), LOCAL_RANK=str(rank),
        )  # fmt: skip
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = rank  # what lightning computes from those variables at import
    seen, writes = [], []
    build, save_vlm, save_ckpt = (
        vrl.build.build_module,
        vrl.models.loading.save_vlm,
        vrl.lit.checkpoint.AtomicCheckpointIO.save_checkpoint,
    )

    modules = []

    def patched_build(cfg):
        module = build(cfg)
        pad = module.vlm.processor.tokenizer.pad_token_id
        module.sampler.generate = _per_prompt_seeded(module.sampler.generate, pad, seen)
        module.reward = CoinReward(dead)
        if WITH_JUDGE["on"]:
            from vrl.judges import LocalJudge
            from vrl.judges.tiny import tiny_text_model
            from vrl.models.tiny import build_tiny_tokenizer

            module.hooks.judge = LocalJudge(tiny_text_model(seed=0), tokenizer=build_tiny_tokenizer())
        modules.append(module)
        return module

    def recorded_save_vlm(*args, **kwargs):
        writes.append("policy")
        return save_vlm(*args, **kwargs)

    def recorded_save_ckpt(self, *args, **kwargs):
        writes.append("checkpoint")
        return save_ckpt(self, *args, **kwargs)

    vrl.build.build_module = patched_build
    vrl.models.loading.save_vlm = recorded_save_vlm
    vrl.lit.checkpoint.AtomicCheckpointIO.save_checkpoint = recorded_save_ckpt
    from vrl.train import run

    extra = [*(parallel if world > 1 else ()), "trainer.accelerator=cpu", f"trainer.devices={world}"]
    metrics = {}
    for overrides in runs[min(index, 1)]:  # one or more runs in turn (a resume: the first stops, the next continues)
        metrics = run(compose([*overrides, *extra]))
    judges = [  # per run (a resume builds a new module): each judge model's size, devices, trainability, checksum
        {
            name: (
                sum(p.numel() for p in m.parameters()),
                sorted({str(p.device) for p in m.parameters()}),
                any(p.requires_grad for p in m.parameters()),
                float(sum(p.double().sum() for p in m.parameters())),
            )
            for name, m in (module.judges or {}).items()
        }
        for module in modules
    ]
    from vrl.models.sharding import is_sharded

    sharded = [is_sharded(module.policy) for module in modules]  # FSDP: the policy's forwards were collectives
    out[index] = {"metrics": metrics, "uids": seen, "writes": writes, "judges": judges, "sharded": sharded}


def _launch(compose, reference, ddp, dead, timeout_s=240, parallel=("trainer.strategy=ddp",)):
    """The single-process runs ``reference`` and the 2-rank runs ``ddp`` at once, on 3 forked processes; what
    each process reported, by index (0: reference, 1 + r: DDP rank r)."""
    _preload(compose, reference[0])
    with mp.Manager() as manager:
        out = manager.dict()
        args = (_free_port(), compose, (reference, ddp), dead, out, tuple(parallel))
        ctx = mp.start_processes(_job, args=args, nprocs=1 + WORLD, join=False, start_method="fork")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"a run is still going after {timeout_s} s (a hang?)")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return {index: dict(value) for index, value in out.items()}


def _preload(compose, overrides):
    """Import what a run imports before forking, so each process does not import it again (~4 s each)."""
    import importlib

    cfg = compose(overrides)
    for node in (cfg.model, cfg.data.train):
        importlib.import_module(node._target_.rpartition(".")[0])
    import lightning.pytorch.strategies.ddp  # noqa: F401
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401

    import vrl.train  # noqa: F401


def _logged(run_dir: Path) -> dict[int, dict[str, float]]:
    """Step -> logged metrics, from logger=csv (one row per logging call) or logger=mlflow (one run: rank 0's)."""
    steps: dict[int, dict[str, float]] = {}
    if (run_dir / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("vrl").experiment_id])  # rank 1 logs nothing
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                steps.setdefault(m.step, {})[key] = m.value
        return steps
    for version in sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        for row in csv.DictReader((version / "metrics.csv").open()):  # a resumed run: the next version
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
            steps.setdefault(int(row["step"]), {}).update(values)
    return steps


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "policy" / "model.safetensors")


def _dead_uids(compose, overrides, positions):
    """The uids at these positions of the (single-process) prompt order: DAPO's filter drops their groups."""
    from hydra.utils import instantiate

    from vrl.data.source import PromptSource

    cfg = compose(overrides)
    rows = PromptSource(instantiate(cfg.data.train), 1, seed=cfg.seed).next_rows(max(positions) + 1)
    return [str(rows[p].get("uid")) for p in positions]


def _base(tiny_overrides, run_dir, logger="csv"):
    keep = [o for o in tiny_overrides if not o.startswith(("output_dir", "logger", "save_policy", "data_loader"))]
    if logger == "mlflow":
        keep += [f"logger.tracking_uri=sqlite:///{run_dir}/mlflow.db", f"logger.artifact_location={run_dir}/art"]
    return [
        *keep,
        f"output_dir={run_dir}",
        f"logger={logger}",
        "save_policy=true",
        "optimizer=sgd",  # weights move linearly in the gradient: a gradient mismatch shows as it is
        "data.val.num_samples=8",
    ]


def _compare(
    compose, tmp_path, tiny_overrides, extra, dead_positions=(), steps=2, resume_at=None, logger="csv", parallel=None
):
    """Reference (1 process, 2B prompts) vs DDP (2 ranks, B each; ``parallel``: other strategy overrides); with
    ``resume_at`` the DDP run stops after that many steps and a new launch resumes it from its checkpoint."""
    one, two = tmp_path / "one", tmp_path / "two"
    reference = [[*_base(tiny_overrides, one, logger), *extra, f"data_loader.batch_size={WORLD * B}"]]
    ddp = [*_base(tiny_overrides, two, logger), *extra, f"data_loader.batch_size={B}"]
    ddp = [ddp] if resume_at is None else [[*ddp, f"trainer.max_steps={resume_at}"], [*ddp, "ckpt_path=last"]]
    dead = _dead_uids(compose, reference[0], dead_positions) if dead_positions else []
    out = _launch(compose, reference, ddp, dead, parallel=parallel or ("trainer.strategy=ddp",))
    assert sorted(out) == [0, 1, 2], "a process did not finish"
    ref, ranks = out[0], [out[1 + r] for r in range(WORLD)]
    # prompt sharding: disjoint, and together the prompts the single process drew
    assert not set(ranks[0]["uids"]) & set(ranks[1]["uids"])
    assert sorted(ranks[0]["uids"] + ranks[1]["uids"]) == sorted(ref["uids"])
    # only rank 0 writes the policy and checkpoints (the logger writes on rank 0 only: Lightning's rule)
    assert "policy" in ranks[0]["writes"] and "checkpoint" in ranks[0]["writes"]
    assert ranks[1]["writes"] == []
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    logged_one, logged_two = _logged(one), _logged(two)
    assert sorted(logged_one) == sorted(logged_two) == list(range(steps))
    for step in range(steps):
        assert logged_one[step]["train/grad_norm"] > 0  # a real update, not a zero gradient on both sides
        for key in COMPARED:
            assert (key in logged_one[step]) == (key in logged_two[step]), key
            if key in logged_one[step]:
                got, want = logged_two[step][key], logged_one[step][key]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"step {step} {key}: {got} != {want}")
    for key in ("val/accuracy", "val/reward"):
        torch.testing.assert_close(ranks[0]["metrics"][key], ref["metrics"][key], msg=key)
        torch.testing.assert_close(ranks[1]["metrics"][key], ref["metrics"][key], msg=key)  # every rank agrees
    return ref, ranks


@pytest.mark.slow
def test_ddp_token_mean_with_dapo_refills_equals_one_process(compose, tmp_path, tiny_overrides, ddp_child):
    if _in_child(ddp_child, "test_ddp_token_mean_with_dapo_refills_equals_one_process"):
        return
    # positions 0, 1 (step 0) and 8, 11 (step 1) are dead: one per rank in each step's first draw, so each
    # rank refills once and keeps the same groups as the single process's refill (see the module docstring)
    ref, _ = _compare(compose, tmp_path, tiny_overrides, ["+method=dapo"], dead_positions=(0, 1, 8, 11))
    assert len(ref["uids"]) == 16  # two draws per step: the refills happened


@pytest.mark.slow
def test_ddp_seq_mean_with_pearl_probe_branch_equals_one_process(compose, tmp_path, tiny_overrides, ddp_child):
    if _in_child(ddp_child, "test_ddp_seq_mean_with_pearl_probe_branch_equals_one_process"):
        return
    # PEARL attaches its probes as a second branch with its own loss denominator (a [branches] normaliser
    # reduced over ranks); the gate is off so that a random policy's probes do not gate every prompt. Logged to
    # MLflow: one run (rank 1 builds no logger; two processes creating one SQLite store collided)
    extra = ["+method=pearl", "loss_agg=seq_mean_token_mean", "hooks.pearl.gate=false", "hooks.pearl.group_size=2"]
    _compare(compose, tmp_path, tiny_overrides, extra, logger="mlflow")


@pytest.mark.slow
def test_ddp_unequal_ranks_and_a_resume_equal_one_uninterrupted_process(compose, tmp_path, tiny_overrides, ddp_child):
    if _in_child(ddp_child, "test_ddp_unequal_ranks_and_a_resume_equal_one_uninterrupted_process"):
        return
    # Dr. GRPO's aggregation; step 0 drops position 1 (rank 1's first prompt) without a refill, so rank 0 holds
    # 8 sequences (4 micro-batches of 2) and rank 1 holds 4 (2 micro-batches, then 2 zero-gradient backwards to
    # match rank 0's all-reduces). The DDP run stops after step 1 and a new run resumes it from last.ckpt.
    extra = ["+method=dapo", "hooks.dynamic_sampling.max_tries=1", "update.micro_batch_size=2"]
    extra += ["loss_agg=seq_mean_token_sum_norm", "trainer.val_check_interval=1"]
    extra += ["kl=k3", "kl.coef=0.5"]  # KL to each rank's frozen reference (a registered submodule; rebuilt on resume)
    WITH_JUDGE["on"] = True  # and a judge with its own model (registered under RLModule.judges; rebuilt on resume)
    try:
        ref, ranks = _compare(compose, tmp_path, tiny_overrides, extra, dead_positions=(1,), resume_at=1)
    finally:  # the child runs the forking tests in one process: later ones must not inherit the judge
        WITH_JUDGE["on"] = False
    # every rank (and the single process), in each of its runs, holds exactly one copy of the judge: frozen, on the
    # rank's device, the same weights everywhere (built from the same seed, not loaded from a checkpoint)
    held = [run for proc in (ref, *ranks) for run in proc["judges"]]
    assert len(held) == 1 + WORLD * 2  # the reference's run; each rank's first run and its resumed run
    assert all(list(run) == ["hooks__judge"] for run in held)
    (size, devices, trains, checksum) = held[0]["hooks__judge"]
    assert size > 0 and devices == ["cpu"] and not trains
    assert all(run["hooks__judge"] == (size, devices, trains, checksum) for run in held)


# ----------------------------------------------------------------- the rules, without processes
@pytest.mark.parametrize(("rows", "world"), [(32, 2), (33, 2), (30, 3)])
def test_prompt_shards_are_disjoint_and_cover_each_epoch(rows, world):
    from vrl.data.source import PromptSource

    data = [{"prompt": str(i), "uid": str(i)} for i in range(rows)]
    usable = rows - rows % world  # equal shards keep ranks in lock-step; the rest waits for the next epoch
    shards = [PromptSource(data, 1, seed=3, rank=r, world_size=world).next_rows(usable // world) for r in range(world)]
    uids = [[row["uid"] for row in shard] for shard in shards]
    assert sum(len(u) for u in uids) == len({x for u in uids for x in u}) == usable  # disjoint
    one = PromptSource(data, 1, seed=3).next_rows(usable)  # the single process's epoch order ...
    assert [u for i in range(usable // world) for u in (s[i] for s in uids)] == [r["uid"] for r in one]  # ... dealt


def test_metrics_merged_over_ranks_equal_those_of_one_batch():
    from vrl.lit.metrics import merge_columns, merge_scalars, merge_totals, rollout_metrics

    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    cols = {
        "rewards": rewards,
        "components": {"accuracy": (rewards > 0.5).float()},
        "lengths": torch.randint(1, 5, (12,), generator=g).float(),
        "group_ids": torch.arange(3).repeat_interleave(4),
    }
    cols["truncated"] = (cols["lengths"] >= 4).float()
    whole = rollout_metrics(cols)
    halves = []
    for lo, hi in [(0, 8), (8, 12)]:  # unequal ranks: 2 groups and 1 group
        half = {k: v[lo:hi] for k, v in cols.items() if k != "components"}
        half["components"] = {"accuracy": cols["components"]["accuracy"][lo:hi]}
        half["group_ids"] = half["group_ids"] - half["group_ids"].min()  # each rank numbers its groups from 0
        halves.append(half)
    merged = rollout_metrics(merge_columns(halves))
    assert merged.keys() == whole.keys()
    for key in whole:
        assert merged[key] == pytest.approx(whole[key]), key
    scalars = merge_scalars([{"perf/step_time_s": 1.0, "perf/tokens_per_s": 10.0, "pearl/x": 1.0}, {
        "perf/step_time_s": 3.0, "perf/tokens_per_s": 30.0, "pearl/x": 3.0}])  # fmt: skip
    assert scalars == {"perf/step_time_s": 3.0, "perf/tokens_per_s": 40.0, "pearl/x": 2.0}
    assert merge_totals([{"tokens": 3.0}, {"tokens": 4.0, "kl_sum": 1.0}]) == {"tokens": 7.0, "kl_sum": 1.0}


def test_a_switch_rule_that_fired_on_another_rank_switches_this_one_too():
    from vrl.hooks import StepContext
    from vrl.lit.stages import MetricRule, Stage, StageScheduler

    scheduler = StageScheduler([Stage("a", metric=MetricRule("m", 0.5)), Stage("b")])
    other_rank = torch.tensor(0.0)
    ctx = StepContext(
        metrics={"m": 0.0},  # never fires here
        train_data=[{"prompt": str(i), "uid": str(i)} for i in range(8)],
        world_size=2,
        gather=lambda t: torch.stack([t, other_rank]),
        print=lambda line: None,
    )
    scheduler.on_step_start(ctx)
    scheduler.on_step_start(ctx)
    assert scheduler.index == 0  # neither rank's rule fired
    other_rank = torch.tensor(1.0)  # e.g. an `exhausted` rule: the other rank drew more prompts (refills)
    scheduler.on_step_start(ctx)
    assert scheduler.index == 1


@pytest.mark.slow
def test_a_step_where_one_rank_has_nothing_is_skipped_by_every_rank(compose, tmp_path, tiny_overrides, ddp_child):
    if _in_child(ddp_child, "test_a_step_where_one_rank_has_nothing_is_skipped_by_every_rank"):
        return
    # DAPO without refills; positions 1 and 3 (rank 1's whole first draw) are dead, so at the first RL step rank 1
    # has no group while rank 0 has two. Rank 0 used to train alone and wait forever in DDP's all-reduce; now every
    # rank skips that step (an empty step) and the run goes on with the next prompts.
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["+method=dapo", "hooks.dynamic_sampling.max_tries=1", "trainer.max_steps=1"]
    extra.append("trainer.val_check_interval=1")
    reference = [[*_base(tiny_overrides, one), *extra, f"data_loader.batch_size={WORLD * B}"]]
    ddp = [[*_base(tiny_overrides, two), *extra, f"data_loader.batch_size={B}"]]
    out = _launch(compose, reference, ddp, _dead_uids(compose, reference[0], (1, 3)))
    assert sorted(out) == [0, 1, 2], "a process did not finish"
    assert len(out[0]["uids"]) == 4  # one process: its first draw had 2 live groups, it trained on them
    assert len(out[1]["uids"]) == len(out[2]["uids"]) == 4  # each rank: two draws (the skipped step, the next)
    rows = [row for version in sorted((two / "csv").glob("version_*")) for row in csv.DictReader(
        (version / "metrics.csv").open())]  # fmt: skip
    assert any(row.get("train/empty_steps") == "1.0" for row in rows)
    assert any(row.get("train/loss") for row in rows)  # then a real optimizer step


@pytest.mark.slow
def test_ddp_dpo_stage_equals_one_process(compose, tmp_path, tiny_overrides, ddp_child):
    if _in_child(ddp_child, "test_ddp_dpo_stage_equals_one_process"):
        return
    # A DPO stage on 4 pairs from a file (STIC's schema), 2 epochs: the single process takes all 4 per step, each
    # rank 2 (its shard). Responses of different lengths make the ranks' sums differ, so a wrong normaliser (pairs
    # per rank instead of the global count) or a pair seen twice shows in the weights (SGD: linear in the
    # gradient) and in the logged DPO loss, accuracy and margin.
    from PIL import Image

    colours = ("red", "green", "blue", "white")
    for c in colours:
        Image.new("RGB", (56, 56), c).save(tmp_path / f"{c}.png")
    chat = lambda a: [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = [{"image": f"{c}.png", "chosen": chat(f"a {c} square" + " here" * i), "rejected": chat(f"a cat {i}")}
            for i, c in enumerate(colours)]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = "hooks.curriculum.stages.pref"
    data = f"{stage}.data={{_target_:vrl.data.preference.load_preference,path:{tmp_path}/pairs.jsonl}}"
    extra = ["+method=stic", data, f"~{stage}.preference.pairs", f"{stage}.epochs=2",
             "hooks.curriculum.stages.describe=null", "optimizer.lr=0.5", "trainer.max_steps=20"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    reference = [[*_base(tiny_overrides, one), *extra, f"{stage}.preference.batch_size={WORLD * B}"]]
    ddp = [[*_base(tiny_overrides, two), *extra, f"{stage}.preference.batch_size={B}"]]
    out = _launch(compose, reference, ddp, [])
    assert sorted(out) == [0, 1, 2], "a process did not finish"
    a, b = _weights(one), _weights(two)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    logged_one, logged_two = _logged(one), _logged(two)
    steps = sorted(s for s in logged_one if "dpo/loss" in logged_one[s])
    assert len(steps) == 2 and steps == sorted(s for s in logged_two if "dpo/loss" in logged_two[s])
    assert math.isclose(logged_one[steps[0]]["dpo/loss"], math.log(2.0), rel_tol=1e-5)  # policy == reference
    assert logged_one[steps[1]]["dpo/loss"] != logged_one[steps[0]]["dpo/loss"]  # the first step moved the policy
    for step in steps:
        for key in ("dpo/loss", "dpo/nll", "dpo/accuracy", "dpo/margin", "dpo/pairs", "train/grad_norm"):
            got, want = logged_two[step][key], logged_one[step][key]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"step {step} {key}: {got} != {want}")
    assert logged_one[steps[0]]["dpo/pairs"] == 4  # every pair in each step, once
