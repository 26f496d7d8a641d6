import pytest
import torch

from vrl.methods.filters import DynamicSampling, group_keep_mask
from vrl.types import Rollout


def test_nonzero_std_drops_groups_with_equal_rewards():
    values = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # group 0 all 1, group 2 all 0: no signal; group 1 mixed: kept
    assert group_keep_mask(values, groups, "nonzero_std", 0, 1).tolist() == [False, False, True, True, False, False]


def test_mean_in_range_is_strict():
    values = torch.tensor([1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    # group means 1.0 (not < 0.99) and 0.5 (inside)
    assert group_keep_mask(values, groups, "mean_in_range", 0.01, 0.99).tolist() == [False, False, True, True]


def _rollout(acc, probe):
    n = len(acc)
    return Rollout(
        input_ids=torch.zeros(n, 3, dtype=torch.long), attention_mask=torch.ones(n, 3), response_mask=torch.ones(n, 1),
        pixel_values=None, image_grid_thw=None, images_per_seq=torch.zeros(n, dtype=torch.long),
        group_ids=torch.arange(n) // 2, samples=[{}] * n, responses=[""] * n, rewards=torch.tensor(acc),
        reward_components={"accuracy": torch.tensor(acc), "probe": torch.tensor(probe)},
    )  # fmt: skip


def test_or_filter_keeps_a_group_if_any_key_has_signal():
    r = _rollout([1.0, 1.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0])
    # group 0: accuracy flat but probe varies -> kept by OR, dropped by AND; group 1 flat on both
    assert DynamicSampling(keys=["accuracy", "probe"], combine="any").filter_groups(r).tolist() == [1, 1, 0, 0]
    assert DynamicSampling(keys=["accuracy", "probe"], combine="all").filter_groups(r).tolist() == [0, 0, 0, 0]


def test_unknown_key_names_the_available_terms():
    with pytest.raises(KeyError, match="accuracy, probe"):
        DynamicSampling(keys=["acc"]).filter_groups(_rollout([1.0, 0.0], [0.0, 0.0]))
