"""A few training steps with ``sampler=openai_server`` against the stand-in server: the adapter is pushed after every
optimizer step, the next step samples with it, and the truncated-IS hook sees learner == sampler (same weights)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"  # non-zero advantages: a gradient


def fit(compose, overrides):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, trainer


def server_overrides(server, *extra):
    return [
        "sampler=openai_server",
        f"sampler.base_url={server.url}",
        "sampler.model=tiny-vl",
        "sampler.backoff_s=0",
        "lora=r8",
        "optimizer.lr=0.05",  # LoRA on the tiny model: steps large enough to change the sampled log-probs
        LENGTH_REWARD,
        *extra,
    ]


def test_each_step_pushes_the_adapter_and_the_next_step_samples_with_it(
    vlm_server, served_vlm, compose, tiny_overrides, tmp_path
):
    with vlm_server(served_vlm) as server:
        extra = ["+method=rollout_correction", "trainer.max_steps=2"]
        module, trainer = fit(compose, tiny_overrides + server_overrides(server, *extra))
    names = [f"vrl-policy-v{k}" for k in range(3)]
    # pushed at the start (v0) and after each of the 2 optimizer steps; each older version unloaded
    assert [b["lora_name"] for b in server.bodies("/v1/load_lora_adapter")] == names
    assert [b["lora_name"] for b in server.bodies("/v1/unload_lora_adapter")] == names[:2]
    chats = server.bodies("/v1/chat/completions")
    train = [b["model"] for b in chats if b["temperature"] > 0]
    assert train == [names[0]] * 2 + [names[1]] * 2  # B=2 prompts per step, each step on the last pushed adapter
    assert {b["model"] for b in chats if b["temperature"] == 0} == {names[2]}  # validation after step 2
    assert sorted(p.name for p in (tmp_path / "served_weights").iterdir()) == [names[2]]  # older folders removed
    m = trainer.callback_metrics
    # the server sampled with exactly the learner's weights: fp32 numerics only, ratios 1 to ~1e-5
    assert float(m["rollout_correction/logp_diff_abs_max"]) < 1e-4
    assert abs(float(m["rollout_correction/ratio_mean"]) - 1) < 1e-4
    assert float(m["rollout_server/weight_version"]) == 1.0  # step 2 sampled at version 1
    assert float(m["train/grad_norm"]) > 0 and "val/reward" in m


@pytest.mark.slow
def test_a_resumed_run_pushes_its_adapter_and_repeats_the_uninterrupted_run(
    vlm_server, served_vlm, compose, tiny_overrides, tmp_path
):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += ["ckpt_every=1", "trainer.limit_val_batches=0"]
    with vlm_server(served_vlm) as server:
        straight, _ = fit(compose, base + server_overrides(server, f"output_dir={tmp_path}/a", "trainer.max_steps=2"))
    with vlm_server(served_vlm) as server:  # one server for both halves: it still holds v1 when the resume starts
        fit(compose, base + server_overrides(server, f"output_dir={tmp_path}/b", "trainer.max_steps=1"))
        ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
        again = server_overrides(server, f"output_dir={tmp_path}/b", "trainer.max_steps=2", f"ckpt_path={ckpt}")
        resumed, _ = fit(compose, base + again)
    loads = [b["lora_name"] for b in server.bodies("/v1/load_lora_adapter")]
    # first half: v0, v1; the resumed process pushes its restored v1 (the server answers "already loaded", so it
    # is unloaded and loaded again), then v2 after its step
    assert loads == ["vrl-policy-v0", "vrl-policy-v1", "vrl-policy-v1", "vrl-policy-v1", "vrl-policy-v2"]
    # the same requests (adapter version and seed per step) as the uninterrupted run, hence the same weights
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)
