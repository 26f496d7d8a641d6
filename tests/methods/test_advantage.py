import pytest
import torch

from vrl.methods.advantage import (
    RLOO,
    GroupMean,
    GroupMeanBatchStd,
    GroupZScore,
    ReinforcePP,
    ReinforcePPBaseline,
    group_mean,
    group_zscore,
    rloo,
)


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


# Three sequences: rewards (1, 0, 1), prompts (0, 0, 1), lengths 2, 1, 1 tokens (4 tokens in the batch).
R3, G3 = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1])
MASK3 = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])


def test_reinforce_pp_whitens_over_the_batch_tokens_as_verl():
    # verl compute_reinforce_plus_plus_outcome_advantage, gamma 1: every token's return is r; masked_whiten over
    # the 4 tokens (1, 1, 0, 1): mean 0.75, unbiased var = (2 * 0.25^2 + 0.75^2 + 0.25^2) / 4 * 4/3 = 0.25, std 0.5
    # -> A = (0.25, -0.75, 0.25) / 0.5 = (0.5, -1.5, 0.5). No group baseline: the prompt ids are not read.
    torch.testing.assert_close(ReinforcePP()(R3, G3, MASK3), torch.tensor([0.5, -1.5, 0.5]))
    # Without a mask each sequence counts once: mean 2/3, var = (1/9 + 4/9 + 1/9) / 3 * 3/2 = 1/3, std 0.57735
    # -> (1/3, -2/3, 1/3) / 0.57735 = (0.57735, -1.154701, 0.57735): the token weighting changes the numbers.
    torch.testing.assert_close(ReinforcePP()(R3, G3), torch.tensor([0.57735, -1.154701, 0.57735]))


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens_tokens():
    # verl compute_reinforce_plus_plus_baseline_outcome_advantage: prompt 0 mean 0.5 -> (0.5, -0.5); prompt 1 has one
    # sample, whose mean is taken as 0 -> 1. Tokens (0.5, 0.5, -0.5, 1): mean 0.375; deviations 0.125, -0.875, 0.625;
    # unbiased var = (2 * 0.125^2 + 0.875^2 + 0.625^2) / 4 * 4/3 = 0.3958333, std 0.6291529
    # -> A = (0.198680, -1.390759, 0.993399).
    torch.testing.assert_close(ReinforcePPBaseline()(R3, G3, MASK3), torch.tensor([0.198680, -1.390759, 0.993399]))


def test_fewer_than_two_tokens_give_zero_advantage():
    # the unbiased variance needs two tokens (verl raises); a sequence without tokens gets 0
    assert ReinforcePP()(torch.tensor([3.0]), torch.tensor([0]), torch.ones(1, 1)).tolist() == [0.0]
    a = ReinforcePP()(R3, G3, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert a[1] == 0 and a[0] != 0


def test_batch_std_scaling_as_trl_scale_rewards_batch():
    # TRL scale_rewards="batch": A = (r - mean_g) / (std(r over the batch, unbiased) + 1e-4).
    # r = (1, 0, 1, 1), prompts (0, 0, 1, 1): r - mean_g = (0.5, -0.5, 0, 0); batch mean 0.75,
    # std = sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5 -> A = +-0.5 / 0.5001 = +-0.99980004 (group z-score: +-0.70711)
    a = GroupMeanBatchStd()(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(a, torch.tensor([0.99980004, -0.99980004, 0.0, 0.0]))
    assert not GroupMeanBatchStd.normalises_scale and not ReinforcePP.normalises_scale
