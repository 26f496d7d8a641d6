"""Start-time checks of settings that are each valid but do not fit together (vrl/fit_checks.py)."""

from __future__ import annotations

import logging

import pytest

from vrl.validate import ConfigError, validate_config


def _warnings(compose, caplog, overrides: list[str]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vrl"):
        validate_config(compose([*overrides, "output_dir=/tmp/x"]))
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _one(messages: list[str], text: str) -> str:
    found = [m for m in messages if text in m]
    assert len(found) == 1, messages
    assert "\n" not in found[0]  # one line
    return found[0]


def test_overlong_penalty_on_one_token_responses_warns(compose, caplog):
    # the default experiment caps responses at 1 token; DAPO's window is 20% of max_len = max(1, round(0.2)) = 1
    # token, so it starts at 1 - 1 = 0 free tokens and every response (length 1) is penalised
    message = _one(_warnings(compose, caplog, ["+method=dapo"]), "penalises every response")
    assert "reward.overlong" in message
    assert "sampler.max_new_tokens" in message
    # color_words allows 4 tokens: window 1 token (round(0.8)), lengths 1..3 are free: nothing to say
    assert not [m for m in _warnings(compose, caplog, ["+method=dapo", "experiment=color_words"]) if "overlong" in m]


def test_overlong_window_beyond_the_cap_warns_that_it_never_applies(compose, caplog):
    # max_len 20, window round(0.2 * 20) = 4 tokens: penalties start at 17 tokens, but responses stop at 4
    warnings = _warnings(compose, caplog, ["+method=dapo", "experiment=color_words", "reward.overlong.max_len=20"])
    assert "starts at 17 tokens" in _one(warnings, "never applies")


@pytest.mark.parametrize(("group_size", "passes"), [(2, False), (4, True)])
def test_range_filter_that_no_group_of_g_can_pass_is_an_error(compose, group_size, passes):
    # 0/1 accuracy: a group's mean is k/G. G=2: 0, 0.5, 1, none strictly inside (0.6, 0.99); G=4: 0.75 is
    overrides = ["+method=vppo", f"sampler.group_size={group_size}", "hooks.dynamic_sampling.lo=0.6"]
    if passes:
        validate_config(compose([*overrides, "output_dir=/tmp/x"]))
        return
    with pytest.raises(ConfigError, match=r"hooks\.dynamic_sampling: no group can pass.*G=2.*0, 0\.5, 1"):
        validate_config(compose([*overrides, "output_dir=/tmp/x"]))


def test_range_filter_with_partial_credit_is_not_judged(compose):
    # choice_partial_credit makes accuracy a fraction, so group means are not limited to k/G
    overrides = ["+method=vppo", "sampler.group_size=2", "hooks.dynamic_sampling.lo=0.6"]
    validate_config(compose([*overrides, "+reward.accuracy.choice_partial_credit=true", "output_dir=/tmp/x"]))


def test_empty_range_and_greedy_sampling_are_errors(compose):
    with pytest.raises(ConfigError, match=r"hooks\.dynamic_sampling: lo=0\.5 >= hi=0\.5"):
        validate_config(
            compose(["+method=vppo", "hooks.dynamic_sampling.lo=0.5", "hooks.dynamic_sampling.hi=0.5", "output_dir=/x"])
        )
    with pytest.raises(ConfigError, match=r"sampler\.top_k=1 .* identical"):
        validate_config(compose(["sampler.top_k=1", "output_dir=/tmp/x"]))


def test_format_reward_that_cannot_fit_in_the_response_warns(compose, caplog):
    # <think> </think> <answer> </answer>: at least one token each, plus a one-token answer = 5 > 1
    message = _one(_warnings(compose, caplog, ["reward=think_format"]), "can never score")
    assert ">= 5 tokens" in message
    roomy = _warnings(compose, caplog, ["reward=think_format", "sampler.max_new_tokens=5"])
    assert not [m for m in roomy if "never" in m]
    # Perception-R1's own pattern spells out <think> </think> <answer> </answer>: 4 tokens at least
    assert ">= 4 tokens" in _one(_warnings(compose, caplog, ["+method=perception_r1"]), "reward.format can never")


def test_validation_interval_longer_than_the_run_warns(compose, caplog):
    # tiny_color validates every 50 steps
    message = _one(_warnings(compose, caplog, ["trainer.max_steps=10"]), "no validation will run")
    assert "trainer.val_check_interval=10" in message
    assert not _warnings(compose, caplog, ["trainer.max_steps=10", "data.val=null"])


def test_lora_in_a_frozen_vision_tower_is_an_error(compose):
    with pytest.raises(ConfigError, match="model.freeze_vision=true contradicts model.lora.include_vision=true"):
        validate_config(compose(["lora=r64_vision", "model.freeze_vision=true", "output_dir=/tmp/x"]))
    validate_config(compose(["lora=r64_vision", "output_dir=/tmp/x"]))


def test_the_default_run_fits_without_warnings(compose, caplog):
    assert _warnings(compose, caplog, []) == []


def test_tool_rewards_need_the_multi_turn_sampler(compose, caplog):
    # a tool preset with its sampler overridden stops at its tools (the single-turn sampler has no such key) ...
    with pytest.raises(ConfigError, match="sampler.tools: unknown key"):
        validate_config(compose(["+method=zoom", "sampler=hf_generate", "output_dir=/tmp/x"]))
    # ... and a tool reward term on a single-turn run at the term
    term = "+reward.tf={_target_:vrl.rewards.tools.ToolFormat,weight:0.1}"
    with pytest.raises(ConfigError, match="reward.tf scores tool trajectories"):
        validate_config(compose([term, "output_dir=/tmp/x"]))
    assert not _warnings(compose, caplog, ["experiment=none", "+method=zoom"])
    message = _one(_warnings(compose, caplog, ["sampler=multi_turn"]), "has no tools")
    assert "+tool@sampler.tools.crop=crop" in message
