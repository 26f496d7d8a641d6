"""PEARL's pure pieces and the rollout-branch plumbing it relies on (hand-computed cases)."""

import pytest
import torch

from vrl.data.checklist import ProbeItem
from vrl.hooks import StepContext
from vrl.lit.loss import MAX_BRANCHES
from vrl.methods.filters import group_keep_mask
from vrl.methods.loss_agg import SeqMeanTokenMean, TokenMean
from vrl.methods.pearl import (
    PEARL,
    fidelity_gate,
    main_active_share,
    probe_means,
    reweight,
    score_probe_response,
)
from vrl.types import Rollout, attach_branch

RED = [ProbeItem("What colour is the circle?", "red", "text")]


def test_probe_means_average_each_prompts_probes():
    scores = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    # G_p = 3: prompt 0 -> (1 + 0 + 0.5) / 3 = 0.5, prompt 1 -> 0
    assert probe_means(scores, 3).tolist() == [0.5, 0.0]


def test_gate_is_strict_and_bypass_keeps_all():
    means = torch.tensor([0.5, 0.0, 0.01, 0.02])
    # published: keep iff mean > 0.01, so exactly 0.01 is dropped
    assert fidelity_gate(means, 0.01, bypass=False).tolist() == [True, False, False, True]
    assert fidelity_gate(means, 0.01, bypass=True).tolist() == [True, True, True, True]


def test_reweight_floors_main_rows_and_scales_probe_rows():
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5])
    branch = torch.tensor([0, 0, 1, 1])
    means = torch.tensor([0.2, 0.8, 0.0, 0.0])
    # main: 1 * max(0.2, 0.5) = 0.5, -1 * max(0.8, 0.5) = -0.8; probe: 2 * 0.1 = 0.2, 0.5 * 0.1 = 0.05
    out = reweight(adv, branch, means, tau=0.5, coef=0.1)
    assert torch.allclose(out, torch.tensor([0.5, -0.8, 0.2, 0.05]))
    # tau = 1 switches reweighting off; coef = 0 silences the probe branch
    assert reweight(adv, branch, means, tau=1.0, coef=0.0).tolist() == [1.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("response", "fallback", "expected"),
    [
        ("red blue", "first_word", 1.0),  # first word "red" is right
        ("red blue", "whole", 0.0),  # "red blue" is not "red"
        ("red blue", "boxed", 0.0),  # published: only <a1> or \boxed{} count
        ("\\boxed{red}", "boxed", 1.0),
        ("<a1>blue</a1> red", "first_word", 0.0),  # a tagged answer is never overridden by the fallback
    ],
)
def test_single_item_fallbacks(response, fallback, expected):
    assert score_probe_response(response, RED, "checklist", fallback) == expected


def _rollout(n: int, groups: list[int], components: dict) -> Rollout:
    return Rollout(
        input_ids=torch.arange(n * 3).view(n, 3),
        attention_mask=torch.ones(n, 3, dtype=torch.long),
        response_mask=torch.ones(n, 2),
        pixel_values=None,
        image_grid_thw=None,
        images_per_seq=torch.zeros(n, dtype=torch.long),
        group_ids=torch.tensor(groups),
        samples=[{"i": i} for i in range(n)],
        responses=[str(i) for i in range(n)],
        rewards=torch.arange(n, dtype=torch.float32),
        reward_components=components,
    )


def test_attach_branch_keeps_groups_and_fills_missing_components_with_nan():
    main = _rollout(4, [0, 0, 1, 1], {"accuracy": torch.tensor([1.0, 0.0, 0.0, 0.0])})
    probes = _rollout(2, [1, 0], {"probe_accuracy": torch.tensor([0.5, 1.0])})
    out = attach_branch(main, probes, pad_id=0)
    assert out.group_ids.tolist() == [0, 0, 1, 1, 1, 0]
    assert out.branch.tolist() == [0, 0, 0, 0, 1, 1]
    acc, probe = out.reward_components["accuracy"], out.reward_components["probe_accuracy"]
    assert acc[:4].tolist() == [1.0, 0.0, 0.0, 0.0] and torch.isnan(acc[4:]).all()
    assert torch.isnan(probe[:4]).all() and probe[4:].tolist() == [0.5, 1.0]
    # advantage sets: (group, branch) -> ids g * 2 + b
    assert out.advantage_groups().tolist() == [0, 0, 2, 2, 3, 1]
    assert out.main().num_sequences == 4
    # selecting a group takes its probes along
    g1 = out.select(torch.nonzero(out.group_ids == 1).squeeze(-1))
    assert g1.branch.tolist() == [0, 0, 1]


def test_attach_branch_rejects_probes_of_unknown_groups():
    with pytest.raises(ValueError, match="groups"):
        attach_branch(_rollout(2, [0, 0], {}), _rollout(1, [3], {}), pad_id=0)


def test_or_filter_over_branches_ignores_unmeasured_values():
    nan = float("nan")
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: main accuracy (1, 0) -> mean 0.5 inside (0.01, 0.99); group 1: main (1, 1) -> 1.0 outside
    acc = torch.tensor([1.0, 0.0, nan, 1.0, 1.0, nan])
    # probe accuracy: group 0 -> 1.0 (outside), group 1 -> 0.5 (inside)
    probe = torch.tensor([nan, nan, 1.0, nan, nan, 0.5])
    keep_acc = group_keep_mask(acc, groups, "mean_in_range", 0.01, 0.99)
    keep_probe = group_keep_mask(probe, groups, "mean_in_range", 0.01, 0.99)
    assert keep_acc.tolist() == [True] * 3 + [False] * 3
    assert (keep_acc | keep_probe).tolist() == [True] * 6  # group 1 survives for its perception signal alone
    # a group whose signal is never measured fails
    assert group_keep_mask(torch.full((2,), nan), torch.tensor([0, 0]), "nonzero_std", 0, 1).tolist() == [False] * 2


def test_per_sequence_normaliser_averages_each_branch_on_its_own():
    per_token = torch.tensor([[1.0, 2.0], [3.0, 0.0], [10.0, 20.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    # branch 0 rows 0-1: 3 tokens, sum 1 + 2 + 3 = 6 -> 6 / 3 = 2; branch 1 row 2: 2 tokens, 30 / 2 = 15
    norm = torch.tensor([3.0, 3.0, 2.0])
    assert TokenMean()(per_token, mask, norm).item() == pytest.approx(2 + 15)
    # seq_mean_token_mean: branch 0 sequences (1.5, 3) over 2 sequences = 2.25; branch 1: 15 / 1 = 15
    assert SeqMeanTokenMean()(per_token, mask, torch.tensor([2.0, 2.0, 1.0])).item() == pytest.approx(2.25 + 15)


def test_objective_normaliser_has_one_entry_per_branch():
    from vrl.lit.loss import Objective
    from vrl.methods.policy_loss import PPOClip

    r = attach_branch(_rollout(2, [0, 0], {}), _rollout(1, [0], {}), pad_id=0)
    r.response_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    norm = Objective(PPOClip(), TokenMean()).normalizer(r)
    # main tokens 2 + 1 = 3, probe tokens 2, empty branches 0 (clamped only after the DDP reduction)
    assert norm.tolist() == [3.0, 2.0] + [0.0] * (MAX_BRANCHES - 2)


def test_preset_policy_loss_is_easyr1s_with_dual_clip_3(compose):
    # The released PEARL run (MiliLab/PEARL a271b77) sets clip 0.2 / 0.28 and keeps EasyR1's ActorConfig
    # default clip_ratio_dual = 3.0. Token with log r = 2, A = -1: PPO loss max(e^2, 0.8) = 7.389056,
    # dual clip caps it at -3 A = 3.0. Token with log r = 1, A = +1: max(-e, -1.28) = -1.28.
    from hydra.utils import instantiate

    cfg = compose(["+method=pearl"])
    policy_loss = instantiate(cfg.policy_loss)
    assert (policy_loss.eps_low, policy_loss.eps_high, policy_loss.dual_clip) == (0.2, 0.28, 3.0)
    loss, _ = policy_loss(torch.tensor([[2.0, 1.0]]), torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor([[3.0, -1.28]]))


def test_invalid_knobs_name_the_key():
    with pytest.raises(ValueError, match="hooks.pearl.tau"):
        PEARL(tau=1.5)
    with pytest.raises(ValueError, match="hooks.pearl.denominator"):
        PEARL(denominator="emitted")


def test_main_active_share_counts_groups_with_a_reward_spread_in_the_main_branch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.3, 0.9])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 1, 1])
    branch = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    # main groups: 0 -> (1, 0) differs; 1 -> (0, 0) flat; 2 -> (1, 1) flat. Probe rows (0.3 vs 0.9) do not count.
    assert main_active_share(rewards, groups, branch) == 1 / 3
    assert main_active_share(rewards, groups, torch.ones(8, dtype=torch.long)) == 0.0  # no main group left


def test_main_active_scale_silences_the_probe_branch_while_the_main_task_is_flat():
    main = _rollout(4, [0, 0, 1, 1], {"accuracy": torch.zeros(4)})
    main.rewards = torch.tensor([0.0, 0.0, 0.0, 0.0])  # cold start: no group has a success
    probes = _rollout(2, [0, 1], {"probe_accuracy": torch.tensor([1.0, 0.0])})
    out = attach_branch(main, probes, pad_id=0)
    out.extras["pearl_probe_mean"] = torch.tensor([0.2, 0.2, 0.8, 0.8, 0.2, 0.8])
    logged = {}
    ctx = StepContext(log=logged.update)
    published = PEARL(probe_coef=0.1).advantage_factor(out, ctx)
    # main rows: max(P̄, 0.5) = 0.5, 0.5, 0.8, 0.8; probe rows: lambda = 0.1 (constant, as published)
    assert torch.allclose(published, torch.tensor([0.5, 0.5, 0.8, 0.8, 0.1, 0.1]))
    scaled = PEARL(probe_coef=0.1, probe_coef_scale="main_active").advantage_factor(out, ctx)
    assert scaled[4:].tolist() == [0.0, 0.0] and logged["pearl/probe_coef"] == 0.0  # 0 of 2 groups active
    out.rewards[0] = 1.0  # group 0's main rewards now differ: 1 of 2 groups -> lambda * 1/2
    half = PEARL(probe_coef=0.1, probe_coef_scale="main_active").advantage_factor(out, ctx)
    assert torch.allclose(half[4:], torch.tensor([0.05, 0.05]))
    with pytest.raises(ValueError, match="probe_coef_scale"):
        PEARL(probe_coef_scale="warmup")
