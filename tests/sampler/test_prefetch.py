"""One-step-off-policy rollouts (``sampler.max_staleness``): the prefetch machinery on its own, then training runs
against the stand-in server: staleness 0 is the synchronous run exactly, staleness 1 samples one version behind."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.data.source import PromptSource
from vrl.sampler.http import ServerError
from vrl.sampler.prefetch import Prefetch, peek_batch

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


def test_peek_returns_the_next_batch_without_advancing_the_stream():
    rows = [{"uid": str(i), "prompt": f"q{i}"} for i in range(5)]
    source = PromptSource(rows, batch_size=2, seed=3)
    for _ in range(4):  # across an epoch boundary (5 rows, batches of 2)
        peeked = peek_batch(source)
        assert peeked == source.next_batch()
    assert source.state_dict() == {"epoch": 1, "cursor": 3, "rows_drawn": 8}


def test_a_prefetch_is_used_for_its_own_rows_within_the_staleness_bound():
    p = Prefetch()
    p.launch(("a",), version=3, fn=lambda: "rollout-a")
    assert p.take(("b",), version=3, max_staleness=1) is None and p.pending  # other rows: kept for later
    assert p.take(("a",), version=4, max_staleness=1) == "rollout-a" and p.staleness == 1 and not p.pending
    p.launch(("a",), version=3, fn=lambda: "old")
    assert p.take(("a",), version=5, max_staleness=1) is None  # two versions behind: dropped
    p.launch(("c",), version=5, fn=lambda: "c")
    assert p.take(("x",), version=7, max_staleness=1) is None and not p.pending  # never matched, now stale: dropped
    p.launch(("c",), version=5, fn=lambda: "c")
    p.launch(("d",), version=5, fn=lambda: "d")  # replaces the unused one
    assert (p.hits, p.misses) == (1, 3)

    def fails():
        raise ServerError("rollout server http://127.0.0.1:1/v1/chat/completions: HTTP 500 (after 3 attempts)")

    p.launch(("e",), version=5, fn=fails)
    p.wait()  # what the weight push does first: the failure does not surface there...
    with pytest.raises(ServerError, match="127.0.0.1:1"):  # ...but where the rollout is used
        p.take(("e",), version=5, max_staleness=1)
    p.close()


def _run(vlm_server, served_vlm, compose, overrides):
    with vlm_server(served_vlm) as server:
        cfg = compose(
            overrides
            + [
                "sampler=openai_server",
                f"sampler.base_url={server.url}",
                "sampler.model=tiny-vl",
                "lora=r8",
                "optimizer.lr=0.05",
                "trainer.limit_val_batches=0",
                LENGTH_REWARD,
            ]
        )
        L.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg)
        trainer = build_trainer(cfg)
        trainer.fit(module)
    weights = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    return weights, trainer.callback_metrics, server


def test_staleness_zero_is_the_synchronous_run(vlm_server, served_vlm, compose, tiny_overrides):
    steps = ["trainer.max_steps=3"]
    sync, _, sync_server = _run(vlm_server, served_vlm, compose, tiny_overrides + steps)
    piped, m, piped_server = _run(vlm_server, served_vlm, compose, tiny_overrides + steps + ["sampler.max_staleness=0"])
    # every step's rollout came from the background thread (3 used, none dropped), with the requests (rows, seeds,
    # adapter version) of the synchronous run, so the same weights bit for bit
    assert float(m["rollout_server/prefetch_hits"]) == 3 and float(m["rollout_server/prefetch_misses"]) == 0
    assert float(m["rollout_server/staleness"]) == 0
    assert all(torch.equal(sync[n], piped[n]) for n in sync)
    assert any(not torch.equal(p, 0 * p) for n, p in sync.items() if "lora_B" in n)  # the run did learn
    sync_chats = [(b["model"], b["seed"]) for b in sync_server.bodies("/v1/chat/completions")]
    piped_chats = [(b["model"], b["seed"]) for b in piped_server.bodies("/v1/chat/completions")]
    # (a step's B requests are in flight together, so they arrive in any order; v3 is the 4th batch, never used)
    assert sorted(c for c in piped_chats if c[0] != "vrl-policy-v3") == sorted(sync_chats)
    assert [c[0] for c in piped_chats].count("vrl-policy-v3") == 2


def test_staleness_one_samples_one_version_behind_and_the_correction_sees_it(
    vlm_server, served_vlm, compose, tiny_overrides
):
    extra = ["trainer.max_steps=3", "sampler.max_staleness=1", "+method=rollout_correction"]
    _, m, server = _run(vlm_server, served_vlm, compose, tiny_overrides + extra)
    models = [b["model"] for b in server.bodies("/v1/chat/completions")]
    # step 1 now at v0, and during step 1 the prefetch of step 2 at v0; step 3's during step 2 at v1; the 4th at v2
    assert models == ["vrl-policy-v0"] * 4 + ["vrl-policy-v1"] * 2 + ["vrl-policy-v2"] * 2
    assert float(m["rollout_server/staleness"]) == 1 and float(m["rollout_server/weight_version"]) == 2
    assert float(m["rollout_server/prefetch_hits"]) == 2 and float(m["rollout_server/prefetch_misses"]) == 0
    # step 3 learned at v2 from tokens sampled at v1: the learner's log-probs differ from the sampler's
    assert float(m["rollout_correction/logp_diff_abs_max"]) > 1e-3
    assert float(m["rollout_correction/kl_k3"]) > 0
