"""``sampler=openai_server`` against a local stand-in server with a tiny real Qwen2.5-VL (tests/sampler/_vlm_server.py):
token ids and log-probs equal the learner's teacher-forced scoring, the pushed adapter is what the server samples
with, and server failures stop with a message naming the URL."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch

from vrl.build import build_module
from vrl.models.scoring import score_logprobs
from vrl.sampler.hf import suppressed_token_ids
from vrl.sampler.http import ServerError
from vrl.sampler.openai_server import openai_messages


def sampler_overrides(server, *extra):
    return [
        "sampler=openai_server",
        f"sampler.base_url={server.url}",
        "sampler.model=tiny-vl",
        "sampler.backoff_s=0",
        "lora=r8",
        *extra,
    ]


def build(compose, overrides):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    module.objective.suppress_ids = suppressed_token_ids(module.vlm.processor.tokenizer)  # setup() sets it in a run
    return module


def _perturb_lora(policy, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_tokens_and_logprobs_equal_the_learners_scoring_after_an_adapter_push(
    vlm_server, served_vlm, compose, tiny_overrides, tmp_path
):
    with vlm_server(served_vlm) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server, "sampler.temperature=0.7"))
        sampler, rows = module.sampler, [module.train_data[i] for i in range(2)]
        _perturb_lora(module.policy)  # a trained adapter: the policy no longer equals the served base model
        sampler.weight_sync.push(sampler, module.vlm, 3)
        name = "vrl-policy-v3"
        assert server.bodies("/v1/load_lora_adapter") == [
            {"lora_name": name, "lora_path": str((tmp_path / "served_weights" / name).resolve())}
        ]
        assert sampler.served_model == name and (tmp_path / "served_weights" / name / "adapter_config.json").exists()

        rollout = sampler.generate(module.vlm, rows)
        assert [b["model"] for b in server.bodies("/v1/chat/completions")] == [name, name]
        assert [b["n"] for b in server.bodies("/v1/chat/completions")] == [4, 4]  # G per request
        served = rollout.extras["sampler_logprobs"]
        mask = rollout.response_mask
        assert rollout.num_sequences == 8 and served.shape == mask.shape and rollout.old_logprobs is None
        learner = score_logprobs(module.policy, rollout, 0.7, 8, suppress_ids=module.objective.suppress_ids)
        # the same weights, the same tokens, the same transform (logits / 0.7, vision tokens banned): generate's
        # KV-cached forward on the server vs one teacher-forced forward here, fp32 numerics only
        torch.testing.assert_close(served[mask > 0], learner[mask > 0], rtol=0, atol=1e-4)
        assert (served[mask > 0] < 0).all() and bool((served[mask == 0] == 0).all())
        # the same request against the base model gives other numbers: the adapter is what the server sampled with
        sampler.served_model = "tiny-vl"
        base = sampler.generate(module.vlm, rows)
        scored = score_logprobs(module.policy, base, 0.7, 8, suppress_ids=module.objective.suppress_ids)
        valid = base.response_mask > 0
        assert (base.extras["sampler_logprobs"][valid] - scored[valid]).abs().max() > 1e-2


def test_the_request_fields_the_sampler_relies_on(vlm_server, served_vlm, compose, tiny_overrides):
    with vlm_server(served_vlm) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server, "sampler.top_k=5"))
        row = module.train_data[0]
        module.sampler.generate(module.vlm, [row])
        body = server.bodies("/v1/chat/completions")[0]
        assert body["logprobs"] is True and body["return_token_ids"] is True and body["top_logprobs"] == 0
        assert body["top_k"] == 5 and body["max_tokens"] == 4 and body["temperature"] == 1.0
        vision = suppressed_token_ids(module.vlm.processor.tokenizer)
        assert body["logit_bias"] == {str(i): -100 for i in vision}
        assert body["messages"] == openai_messages(row, None, "")
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        # per-request seeds: a function of (seed, weight version, call index, prompt position)
        module.sampler.generate(module.vlm, [row])
        seeds = [b["seed"] for b in server.bodies("/v1/chat/completions")]
        assert seeds[0] != seeds[1]
        module.sampler.set_version(0)  # a new version restarts the call count: the first call's seed again
        module.sampler.generate(module.vlm, [row])
        assert server.bodies("/v1/chat/completions")[2]["seed"] == seeds[0]


def test_a_server_that_renders_prompts_differently_is_refused(vlm_server, served_vlm, compose, tiny_overrides):
    from vrl.models.loading import _set_pixel_bounds

    vlm = served_vlm
    other = copy.deepcopy(vlm.processor)
    _set_pixel_bounds(other, 12544, 12544)  # 56x56 images upscaled to 16 image tokens instead of the run's 4
    with vlm_server(vlm, processor=other) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server))
        with pytest.raises(ServerError, match=r"127\.0\.0\.1.*prompt tokens differ from the local processor"):
            module.sampler.generate(module.vlm, [module.train_data[0]])


def test_token_ids_fall_back_to_the_logprob_tokens_and_missing_prompt_ids_are_named(
    vlm_server, served_vlm, compose, tiny_overrides
):
    with vlm_server(served_vlm, token_ids=False) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server))
        with pytest.raises(ServerError, match="prompt_token_ids.*check_prompt_tokens=false"):
            module.sampler.generate(module.vlm, [module.train_data[0]])
        module.sampler.check_prompt_tokens = False
        rollout = module.sampler.generate(module.vlm, [module.train_data[0]])  # ids from "token_id:<id>"
        learner = score_logprobs(module.policy, rollout, 1.0, 8, suppress_ids=module.objective.suppress_ids)
        mask = rollout.response_mask
        torch.testing.assert_close(rollout.extras["sampler_logprobs"][mask > 0], learner[mask > 0], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("server_kwargs", "sampler_kwargs", "message", "requests"),
    [
        ({"fail_first": 1}, ["sampler.retries=1"], None, 2),  # one 500, retried: fine
        (
            {"fail_first": 9},
            ["sampler.retries=1"],
            r"127\.0\.0\.1:\d+/v1/chat/completions: HTTP 500.*after 2 attempts",
            2,
        ),
        ({"delay_s": 1.5}, ["sampler.retries=0", "sampler.timeout_s=0.3"], "no answer within timeout_s=0.3", 1),
        ({}, ["sampler.model=nope", "sampler.retries=3"], "HTTP 404.*The model `nope` does not exist", 1),  # no retry
    ],
    ids=["retried", "5xx", "timeout", "4xx"],
)
def test_server_failures_are_retried_then_stop_with_the_url(
    vlm_server, served_vlm, compose, tiny_overrides, server_kwargs, sampler_kwargs, message, requests
):
    with vlm_server(served_vlm, **server_kwargs) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server, *sampler_kwargs))
        row = module.train_data[0]
        if message is None:
            assert module.sampler.generate(module.vlm, [row]).num_sequences == 4
        else:
            with pytest.raises(ServerError, match=message):
                module.sampler.generate(module.vlm, [row])
        assert server.chat_requests == requests


def test_weight_sync_mode_lora_needs_a_lora_policy(vlm_server, served_vlm, compose, tiny_overrides):
    from vrl.errors import ConfigError

    with vlm_server(served_vlm) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server, "lora=none"))
        with pytest.raises(ConfigError, match="sampler.weight_sync.mode=lora needs a LoRA policy"):
            module.sampler.weight_sync.push(module.sampler, module.vlm, 0)


def test_full_weight_sync_reloads_the_merged_policy_from_disk(
    vlm_server, served_vlm, compose, tiny_overrides, tmp_path
):
    with vlm_server(served_vlm) as server:
        module = build(compose, tiny_overrides + sampler_overrides(server, "sampler.weight_sync.mode=full"))
        _perturb_lora(module.policy)
        sampler = module.sampler
        sampler.weight_sync.push(sampler, module.vlm, 1)
        assert server.bodies("/update_weights_from_disk") == [
            {"model_path": str((tmp_path / "served_weights" / "full-v1").resolve())}
        ]
        rollout = sampler.generate(module.vlm, [module.train_data[0]])
        assert sampler.served_model == "tiny-vl"  # the base name, now with the merged weights
        learner = score_logprobs(module.policy, rollout, 1.0, 8, suppress_ids=module.objective.suppress_ids)
        mask = rollout.response_mask
        torch.testing.assert_close(rollout.extras["sampler_logprobs"][mask > 0], learner[mask > 0], rtol=0, atol=1e-4)
        sampler.weight_sync.push(sampler, module.vlm, 2)
        assert not Path(tmp_path / "served_weights" / "full-v1").exists()  # only the served version stays
