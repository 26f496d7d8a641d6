"""Multi-reward advantages, hand-computed: weighted sum, PaCo's log-tame, per-component normalisation."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from vrl.methods.advantage import GroupMean, group_zscore
from vrl.methods.multi_reward import (
    ComponentNorm,
    LogTame,
    WeightedSum,
    coefficient_of_variation,
    log_tame,
    tamed_components,
)
from vrl.rewards.combine import RewardSet

R2 = 1 / math.sqrt(2)  # a group of two different values z-scores to -+ 1/sqrt(2) (unbiased std |a - b| / sqrt 2)

# two groups of two: accuracy and format disagree
G = torch.tensor([0, 0, 1, 1])
COMPONENTS = {"accuracy": torch.tensor([1.0, 0.0, 1.0, 1.0]), "format": torch.tensor([1.0, 1.0, 0.0, 1.0])}
WEIGHTS = {"accuracy": 1.0, "format": 0.1}
TOTAL = torch.tensor([1.1, 0.1, 1.0, 1.1])  # 1 * accuracy + 0.1 * format


def test_weighted_sum_with_the_reward_sets_weights_is_grpo_on_the_total():
    a = WeightedSum()(TOTAL, G, components=COMPONENTS, weights=WEIGHTS)
    torch.testing.assert_close(a, group_zscore(TOTAL, G))
    # group 0: R = [1.1, 0.1] -> [+, -]; group 1: R = [1.0, 1.1] -> [-, +]: the format tenth gets full scale
    # (eps 1e-6 against group 1's std of 0.1 / sqrt 2 moves it by ~1.4e-5)
    torch.testing.assert_close(a, torch.tensor([R2, -R2, -R2, R2]), atol=3e-5, rtol=0)


def test_weighted_sum_weights_override_the_reward_sets():
    # format weight 0 here: R = accuracy = [1, 0, 1, 1] -> group 0 [+, -], group 1 constant -> 0
    a = WeightedSum(weights={"format": 0.0})(TOTAL, G, components=COMPONENTS, weights=WEIGHTS)
    torch.testing.assert_close(a, torch.tensor([R2, -R2, 0.0, 0.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not reward terms"):
        WeightedSum(weights={"fromat": 0.0})(TOTAL, G, components=COMPONENTS, weights=WEIGHTS)


def test_component_norm_keeps_each_terms_weight():
    # A = 1 * z(accuracy) + 0.1 * z(format)
    # z(accuracy): group 0 [1, 0] -> [+R2, -R2]; group 1 [1, 1] -> [0, 0]
    # z(format):   group 0 [1, 1] -> [0, 0];     group 1 [0, 1] -> [-R2, +R2]
    # A = [R2, -R2, -0.1 R2, 0.1 R2]
    a = ComponentNorm()(TOTAL, G, components=COMPONENTS, weights=WEIGHTS)
    torch.testing.assert_close(a, torch.tensor([R2, -R2, -0.1 * R2, 0.1 * R2]), atol=1e-5, rtol=0)
    # with Dr. GRPO's base: A = 1 * (acc - mean) + 0.1 * (fmt - mean) = [0.5, -0.5, -0.05, 0.05]
    a = ComponentNorm(base=GroupMean())(TOTAL, G, components=COMPONENTS, weights=WEIGHTS)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, -0.05, 0.05]))


def test_coefficient_of_variation_and_which_components_are_tamed():
    spiky, steady = torch.tensor([0.0, 0.0, 0.0, 8.0]), torch.tensor([1.0, 2.0, 1.0, 2.0])
    # spiky: mean 2, population variance (4 + 4 + 4 + 36) / 4 = 12 -> h = sqrt(12) / 2 = 1.7321
    # steady: mean 1.5, population std 0.5 -> h = 1/3
    assert coefficient_of_variation(spiky) == pytest.approx(math.sqrt(12) / 2, rel=1e-6)
    assert coefficient_of_variation(steady) == pytest.approx(1 / 3, rel=1e-6)
    comps = {"spiky": spiky, "steady": steady}
    # mean threshold (1.7321 + 0.3333) / 2 = 1.0327: only the spiky one is above
    assert tamed_components(comps, "mean") == {"spiky": True, "steady": False}
    assert tamed_components(comps, 0.2) == {"spiky": True, "steady": True}
    # median of three h's (1.7321, 0.3333, 0 for a constant): 0.3333, not above itself
    assert tamed_components(comps | {"flat": torch.ones(4)}, "median") == {
        "spiky": True,
        "steady": False,
        "flat": False,
    }
    tamed = log_tame(comps)
    torch.testing.assert_close(tamed["spiky"], torch.tensor([0.0, 0.0, 0.0, math.log(9.0)]))
    assert tamed["steady"] is steady


def test_log_tame_advantage_is_the_group_zscore_of_the_tamed_sum():
    comps = {"spiky": torch.tensor([0.0, 0.0, 0.0, 8.0]), "steady": torch.tensor([1.0, 2.0, 1.0, 2.0])}
    one_group = torch.zeros(4, dtype=torch.long)
    total = comps["spiky"] + comps["steady"]
    # R = log(1 + spiky) + steady = [1, 2, 1, 2 + ln 9]
    expected = group_zscore(torch.tensor([1.0, 2.0, 1.0, 2.0 + math.log(9.0)]), one_group)
    torch.testing.assert_close(LogTame()(total, one_group, components=comps), expected)
    # only `steady` may be tamed: its h is the only one, not above their mean -> R is the plain sum
    torch.testing.assert_close(
        LogTame(components=["steady"])(total, one_group, components=comps), group_zscore(total, one_group)
    )


def test_log_tame_refuses_values_it_cannot_take_the_log_of():
    # a threshold of -10 tames everything (the penalty's h is negative: its mean is)
    comps = {"penalty": torch.tensor([0.0, -1.0, 0.0, 0.0]), "acc": torch.tensor([1.0, 1.0, 1.0, 0.9])}
    with pytest.raises(ValueError, match="'penalty'"):
        LogTame(threshold=-10.0)(torch.zeros(4), torch.zeros(4, dtype=torch.long), components=comps)
    LogTame(threshold=-10.0, components=["acc"])(torch.zeros(4), torch.zeros(4, dtype=torch.long), components=comps)


def test_without_components_each_falls_back_to_its_base_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr("vrl.methods.multi_reward._WARNED", set())
    for cls in (WeightedSum, LogTame, ComponentNorm):
        with caplog.at_level(logging.WARNING, logger="vrl"):
            torch.testing.assert_close(cls()(TOTAL, G), group_zscore(TOTAL, G))
    assert caplog.text.count("advantage_inputs(advantage, rollout, reward)") == 3  # once per class


def test_nan_components_count_as_zero_and_the_reward_set_exposes_its_weights():
    comps = {"accuracy": torch.tensor([1.0, float("nan"), 1.0, 0.0])}
    torch.testing.assert_close(
        WeightedSum()(TOTAL, G, components=comps), group_zscore(torch.tensor([1.0, 0.0, 1.0, 0.0]), G)
    )

    class Term:
        weight = 0.1

        def __call__(self, responses, samples):
            return [0.0] * len(responses)

    assert RewardSet({"format": Term(), "accuracy": None}).weights == {"format": 0.1}


def test_the_loop_adds_components_only_for_estimators_that_use_them():
    from types import SimpleNamespace

    from vrl.methods.advantage import GroupZScore
    from vrl.methods.multi_reward import advantage_inputs

    rollout, reward = SimpleNamespace(reward_components=COMPONENTS), SimpleNamespace(weights=WEIGHTS)
    assert advantage_inputs(GroupZScore(), rollout, reward) == {}
    extra = advantage_inputs(ComponentNorm(), rollout, reward)
    assert extra == {"components": COMPONENTS, "weights": WEIGHTS}
    torch.testing.assert_close(ComponentNorm()(TOTAL, G, None, **extra), torch.tensor([R2, -R2, -0.1 * R2, 0.1 * R2]))
