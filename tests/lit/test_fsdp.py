"""FSDP2 on CPU (gloo, 2 forked ranks, ``trainer=fsdp``) equals one process over the same global batch.

Under FSDP every forward of the sharded policy (and reference) is a collective: each unit all-gathers its weights.
The loop runs them in lock-step (``vrl.lit.dist.lockstep``): ``generate`` decodes until every rank is done
(``synced_gpus``), every rank draws again while any rank needs groups (dynamic sampling), and each scoring pass and
each mini-batch runs as many micro-batches on every rank (a rank short of data runs dummy ones, times 0). A rank
that skipped one of them would wait forever in the all-gather: these runs finish, and their weights and logged
metrics equal a 1-process run's.

The harness is tests/lit/test_ddp.py's (per-prompt seeded sampling, a deterministic reward, ``vrl.train.run``
under ``torchrun``-style env vars), with FSDP's overrides for the ranks. VPPO's perturbation is the full mask:
patch blackening draws its mask from each sequence's index, which differs between a rank and the single process.
The cases run in one fresh pytest process with one thread per process, as test_ddp.py's (see its docstring).
"""

from __future__ import annotations

import os

import pytest

from tests.lit.test_ddp import SHORT, WORLD, _compare, _dead_uids, _logged, ran_in_child, run_forking_child

#: the tests that fork ranks: run together in one fresh interpreter (see the module docstring)
FORKING = (
    "test_fsdp_vppo_with_unequal_refills_a_sharded_reference_and_a_resume_equals_one_process",
    "test_fsdp_vppo_ranks_holding_different_micro_batch_counts_equal_one_process",
)
INSIDE_CHILD = os.environ.get("VRL_FSDP_CHILD") == "1"
#: the ranks' strategy: FSDP2 on CPU in fp32 (bf16 and the GPU accelerator are the preset's GPU settings)
FSDP = ("trainer=fsdp", "trainer.precision=32-true", "trainer.strategy.param_dtype=null")
#: VPPO with a perturbation that does not depend on a sequence's index (see the module docstring)
VPPO = ["+method=vppo", "perturb@hooks.vppo.perturbation=full_mask"]


@pytest.fixture(scope="module")
def fsdp_child(request, tmp_path_factory):
    """The forking tests' outcomes, run once in a fresh pytest (None inside it)."""
    return (
        None if INSIDE_CHILD else run_forking_child(request, tmp_path_factory, __file__, FORKING, "VRL_FSDP_CHILD", 900)
    )


def _in_child(fsdp_child, name: str) -> bool:
    return ran_in_child(fsdp_child, name)


def _sharded(ref, ranks):
    assert ref["sharded"] == [False]  # the single process trains an ordinary module ...
    assert all(rank["sharded"] and all(rank["sharded"]) for rank in ranks)  # ... each rank, in each run, a sharded one


@pytest.mark.slow
def test_fsdp_vppo_with_unequal_refills_a_sharded_reference_and_a_resume_equals_one_process(
    compose, tmp_path, tiny_overrides, fsdp_child
):
    if _in_child(fsdp_child, "test_fsdp_vppo_with_unequal_refills_a_sharded_reference_and_a_resume_equals_one_process"):
        return
    # Position 0 is dead (reward 0: VPPO's dynamic sampling drops its group). The single process draws 0-3, keeps
    # 3 groups, refills with 4-7 and keeps 1-4. Rank 0 draws 0 and 2 and needs a refill; rank 1 (1 and 3) has its
    # two groups, but draws 5 and 7 with it (the draw's forwards are collectives) and keeps 1 and 3: together
    # 1-4, and both ranks stay at the single process's stream position for step 1 (8-11). A KL reference is
    # sharded like the policy and scored on both ranks; VPPO's paired pass scores [rollout; perturbed]. The FSDP
    # run stops after step 0 and a new run resumes from last.ckpt (full weights and SGD's momentum, which
    # Lightning's loader needs: it fails on an optimizer without state; validation each step, as the DDP resume
    # test, keeps the resumed run's logged step numbers those of one run).
    extra = [*VPPO, "kl=k3", "kl.coef=0.5", "optimizer.momentum=0.9", "trainer.val_check_interval=1"]
    parallel = (*FSDP, "trainer.strategy.activation_checkpointing=false")
    ref, ranks = _compare(compose, tmp_path, tiny_overrides, extra, dead_positions=(0,), parallel=parallel, resume_at=1)
    assert len(ref["uids"]) == 12  # step 0: two draws of 4, step 1: one
    assert [len(rank["uids"]) for rank in ranks] == [6, 6]  # each rank: the same draws, half the prompts
    assert len(ranks[0]["sharded"]) == 2  # the first run and the resumed one
    _sharded(ref, ranks)


@pytest.mark.slow
def test_fsdp_vppo_ranks_holding_different_micro_batch_counts_equal_one_process(
    compose, tmp_path, tiny_overrides, fsdp_child
):
    if _in_child(fsdp_child, "test_fsdp_vppo_ranks_holding_different_micro_batch_counts_equal_one_process"):
        return
    # No refills; position 1 (rank 1's first prompt) is dead, so at step 0 rank 0 holds 8 sequences and rank 1
    # holds 4. Micro-batches of 2: VPPO's paired pass (chunks of 4 over 16 and 8 rows) runs 4 forwards on rank 0
    # and 2 + 2 dummy ones on rank 1; the update runs 4 micro-batches on rank 0 and 2 + 2 dummy forward-backwards
    # (times 0) on rank 1. The decoder layers are recomputed in backward (activation checkpointing). Position 0's
    # responses stop after 2 tokens: rank 0's first generate ends 2 steps before rank 1's and decodes on (without
    # forwarding its rows) until rank 1's has ended, as synced_gpus does.
    extra = [*VPPO, "hooks.dynamic_sampling.max_tries=1", "update.micro_batch_size=2"]
    parallel = (*FSDP, "trainer.strategy.activation_checkpointing=true")
    SHORT["uids"] = tuple(_dead_uids(compose, [*tiny_overrides, *extra], (0,)))
    try:
        ref, ranks = _compare(compose, tmp_path, tiny_overrides, extra, dead_positions=(1,), parallel=parallel)
    finally:  # the child runs the forking tests in one process: later ones must not inherit it
        SHORT["uids"] = ()
    # step 0 keeps positions 0, 2 and 3, G = 4 each: position 0's responses 2 tokens long, the others 4
    assert _logged(tmp_path / "one")[0]["rollout/response_len_mean"] == pytest.approx((4 * 2 + 8 * 4) / 12)
    assert len(ref["uids"]) == 2 * WORLD * 2  # two steps of 4 prompts, no refill
    _sharded(ref, ranks)


# ----------------------------------------------------------------- what is refused, without processes
def test_what_is_not_lock_step_yet_is_refused_at_start():
    from types import SimpleNamespace

    from vrl.errors import ConfigError
    from vrl.hooks import HookSet
    from vrl.judges.policy import PolicyJudge
    from vrl.lit.fsdp import refuse_unsynced
    from vrl.sampler.hf import HFSampler
    from vrl.sampler.multi_turn import MultiTurnSampler

    module = SimpleNamespace(sampler=HFSampler(), reward={}, hooks=HookSet(), advantage=None)
    refuse_unsynced(module)  # the plain sampler and no judge: nothing to refuse
    with pytest.raises(ConfigError, match="multi-turn sampler is not lock-step"):
        refuse_unsynced(SimpleNamespace(**{**vars(module), "sampler": MultiTurnSampler()}))
    with pytest.raises(ConfigError, match=r"reward\.judge judges with the policy"):
        refuse_unsynced(SimpleNamespace(**{**vars(module), "reward": {"judge": PolicyJudge()}}))
    from vrl.methods.entropy_focus import EntropyFocus
    from vrl.methods.vppo import VPPO

    refuse_unsynced(SimpleNamespace(**{**vars(module), "hooks": HookSet({"vppo": VPPO(None)})}))  # k3_sampled: fine
    for name, hook in (("vppo", VPPO(None, dependency="exact_kl")), ("vppo", VPPO(None, entropy_rho=0.2)),
                       ("entropy_focus", EntropyFocus())):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"hooks\.{name} runs one policy forward per micro-batch"):
            refuse_unsynced(SimpleNamespace(**{**vars(module), "hooks": HookSet({name: hook})}))
