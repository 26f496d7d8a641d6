import pytest
import torch

from vrl.methods.advantage import RLOO, GroupMean, GroupZScore, group_mean, group_zscore, rloo


def test_group_zscore_hand_computed():
    # group 0: rewards [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4*0.25/3) = sqrt(1/3) = 0.57735
    #   -> A = +-0.5 / 0.57735 = +-0.866025
    # group 1: rewards [1, 1, 1, 1]: std 0 -> A = 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = group_zscore(r, g, eps=0.0 + 1e-12)
    torch.testing.assert_close(a, torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0]))


def test_groups_need_not_be_contiguous():
    r = torch.tensor([1.0, 5.0, 0.0, 7.0])
    g = torch.tensor([0, 1, 0, 1])
    # group 0 = {1, 0} mean 0.5 -> [0.5, -0.5]; group 1 = {5, 7} mean 6 -> [-1, 1]
    torch.testing.assert_close(group_mean(r, g), torch.tensor([0.5, -1.0, -0.5, 1.0]))


def test_rloo_is_leave_one_out_baseline():
    r = torch.tensor([3.0, 0.0, 0.0])
    g = torch.zeros(3, dtype=torch.long)
    # r0 - mean(0, 0) = 3; r1 - mean(3, 0) = -1.5; r2 likewise -1.5
    torch.testing.assert_close(rloo(r, g), torch.tensor([3.0, -1.5, -1.5]))


def test_single_sample_group_gets_zero_rloo_advantage():
    torch.testing.assert_close(rloo(torch.tensor([2.0]), torch.tensor([0])), torch.tensor([0.0]))


def test_zscore_advantages_sum_to_zero_per_group():
    torch.manual_seed(0)
    r = torch.rand(32)
    g = torch.arange(4).repeat_interleave(8)
    a = group_zscore(r, g)
    for k in range(4):
        assert abs(float(a[g == k].sum())) < 1e-5


def test_classes_call_the_formulas_and_say_whether_they_normalise_scale():
    r, g = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(GroupZScore(eps=1e-3)(r, g), group_zscore(r, g, 1e-3))
    torch.testing.assert_close(GroupMean()(r, g, torch.ones(4, 2)), group_mean(r, g))  # the mask is not read
    torch.testing.assert_close(RLOO()(r, g), rloo(r, g))
    assert GroupZScore.normalises_scale and not GroupMean.normalises_scale and not RLOO.normalises_scale


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="advantage.eps"):
        GroupZScore(eps=-1.0)
