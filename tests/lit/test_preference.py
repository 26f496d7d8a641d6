"""DPO (+ NLL) on preference pairs: the loss and its gradient by hand, micro-batching, pair records."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vrl.errors import DataError
from vrl.lit.preference import DPOLoss, dpo_loss, file_record, segment_logps
from vrl.types import Rollout

# Two pairs, three segments: pair 0 is one segment (weight 1); pair 1 is two segments (weight 0.5 each, VisRL's
# box step + answer step). Summed log-probs per segment (policy chosen, reference chosen, policy rejected, ref):
#   s0: pc -2, rc -3, pr -4, rr -3 -> beta * [(-2 + 3) - (-4 + 3)] = 0.1 * 2    =  0.2
#   s1: pc -1, rc -1, pr -2, rr -2 -> 0.1 * [0 - 0]                            =  0.0
#   s2: pc -5, rc -3, pr -1, rr -3 -> 0.1 * [(-5 + 3) - (-1 + 3)] = 0.1 * -4   = -0.4
PC, RC, PR, RR = [-2.0, -1.0, -5.0], [-3.0, -1.0, -3.0], [-4.0, -2.0, -1.0], [-3.0, -2.0, -3.0]
W = [1.0, 0.5, 0.5]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _run(loss: DPOLoss, tokens=None):
    pc, pr = torch.tensor(PC, requires_grad=True), torch.tensor(PR, requires_grad=True)
    total, stats = dpo_loss(pc, pr, torch.tensor(RC), torch.tensor(RR), torch.tensor(W), 2, loss, tokens)
    total.backward()
    return float(total.detach()), stats, pc.grad, pr.grad


def test_dpo_loss_and_gradient_by_hand_on_a_two_pair_multi_segment_batch():
    total, stats, g_chosen, g_rejected = _run(DPOLoss(beta=0.1))
    # -log sigmoid(m) = softplus(-m): 1/P * [1 * sp(-0.2) + 0.5 * sp(0) + 0.5 * sp(0.4)]
    #   = 1/2 * [0.598139 + 0.5 * 0.693147 + 0.5 * 0.913016] = 1/2 * 1.401220 = 0.700610
    expected = 0.5 * (_softplus(-0.2) + 0.5 * _softplus(0.0) + 0.5 * _softplus(0.4))
    assert math.isclose(expected, 0.700610, abs_tol=1e-6)
    assert math.isclose(total, expected, rel_tol=1e-6)
    # d/d pc_s [w_s/P * softplus(-m_s)] = -w_s/P * beta * sigmoid(-m_s); d/d pr_s is its negative:
    #   s0: -1/2 * 0.1 * sigmoid(-0.2) = -0.05 * 0.450166 = -0.0225083
    #   s1: -0.5/2 * 0.1 * 0.5 = -0.0125
    #   s2: -0.5/2 * 0.1 * sigmoid(0.4) = -0.025 * 0.598688 = -0.0149672
    want = torch.tensor([-0.05 * _sigmoid(-0.2), -0.0125, -0.025 * _sigmoid(0.4)])
    assert math.isclose(float(want[0]), -0.0225083, abs_tol=1e-7)
    torch.testing.assert_close(g_chosen, want)
    torch.testing.assert_close(g_rejected, -want)
    assert stats["dpo/correct"] == 1.0  # only s0's margin is > 0
    assert math.isclose(stats["dpo/margin"], 0.2 + 0.0 - 0.4, abs_tol=1e-6)
    assert stats["dpo/nll"] == pytest.approx((2 + 1 + 5) / 2)  # reported even when its coefficient is 0


def test_the_nll_term_adds_its_scaled_summed_chosen_log_prob():
    total, _, g_chosen, g_rejected = _run(DPOLoss(beta=0.1, nll_coef=1 / 1024))
    # NLL = 1/P * sum_s -pc_s = (2 + 1 + 5) / 2 = 4; STIC's 1/1024 on it: + 4/1024 = 0.00390625
    dpo = 0.5 * (_softplus(-0.2) + 0.5 * _softplus(0.0) + 0.5 * _softplus(0.4))
    assert math.isclose(total, dpo + 4 / 1024, rel_tol=1e-6)
    # each chosen log-prob gets an extra -1/1024/P = -0.00048828125; the rejected ones nothing
    want = torch.tensor([-0.05 * _sigmoid(-0.2), -0.0125, -0.025 * _sigmoid(0.4)]) - 1 / 2048
    torch.testing.assert_close(g_chosen, want)
    torch.testing.assert_close(g_rejected, torch.tensor([0.05 * _sigmoid(-0.2), 0.0125, 0.025 * _sigmoid(0.4)]))


def test_token_mean_nll_divides_each_chosen_segment_by_its_tokens():
    total, _, g_chosen, _ = _run(DPOLoss(beta=0.1, nll_coef=0.5, nll_average="token_mean"), torch.tensor([2.0, 1, 4]))
    # NLL = 1/2 * (2/2 + 1/1 + 5/4) = 1.625, x 0.5 = 0.8125
    dpo = 0.5 * (_softplus(-0.2) + 0.5 * _softplus(0.0) + 0.5 * _softplus(0.4))
    assert math.isclose(total, dpo + 0.8125, rel_tol=1e-6)
    # extra chosen gradient: -0.5 / (P * tokens_s) = -0.125, -0.25, -0.0625
    want = torch.tensor([-0.05 * _sigmoid(-0.2), -0.0125, -0.025 * _sigmoid(0.4)]) + torch.tensor(
        [-0.125, -0.25, -0.0625]
    )
    torch.testing.assert_close(g_chosen, want)


def test_micro_batches_of_segments_add_up_to_the_batch_loss():
    parts = [_run_part([0, 1]), _run_part([2])]
    whole = _run_part([0, 1, 2])
    assert math.isclose(parts[0] + parts[1], whole, rel_tol=1e-6)


def _run_part(idx):
    sel = lambda xs: torch.tensor([xs[i] for i in idx])  # noqa: E731
    loss, _ = dpo_loss(sel(PC), sel(PR), sel(RC), sel(RR), sel(W), 2, DPOLoss())
    return float(loss)


def test_bad_settings_and_rows_are_named():
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)
    with pytest.raises(ValueError, match="nll_average"):
        DPOLoss(nll_average="mean")
    with pytest.raises(DataError, match=r"row 3 \(uid='u3'\): field 'rejected'"):
        file_record({"uid": "u3", "prompt": "p", "chosen": "a", "rejected": None}, 3)
    with pytest.raises(DataError, match=r"segments\[1\].chosen"):
        file_record({"uid": "u", "segments": [{"chosen": "a", "rejected": "b"}, {"rejected": "c"}]}, 0)
    rec = file_record({"segments": [{"chosen": "a", "rejected": "b", "weight": 0.5, "prompt": "q"}]}, 7)
    assert rec == {"index": 7, "segments": [{"chosen": "a", "rejected": "b", "weight": 0.5, "prompt": "q"}]}


class FixedLogits(torch.nn.Module):
    """Logits for row r are a trainable table; row r is named by its first input id."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask, logits_to_keep, use_cache):
        return SimpleNamespace(logits=self.table[input_ids[:, 0]][:, -logits_to_keep:])


def test_segment_log_probs_sum_the_response_tokens_only():
    ln2 = math.log(2.0)
    table = torch.zeros(2, 3, 3)  # [rows, L + 1, V]; position t predicts response token t
    table[0, 0] = torch.tensor([0.0, ln2, 0.0])  # p(token 1) = 2/4
    table[1, 1] = torch.tensor([9.0, 9.0, 9.0])  # after row 1's one response token: padding, must not count
    rollout = Rollout(
        input_ids=torch.tensor([[0, 1, 2], [1, 1, 0]]),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        pixel_values=None,
        image_grid_thw=None,
        images_per_seq=torch.zeros(2, dtype=torch.long),
        group_ids=torch.arange(2),
        samples=[{}, {}],
        responses=["", ""],
    )
    logps = segment_logps(FixedLogits(table), rollout)
    # row 0: log(2/4) + log(1/3) (uniform); row 1: log(1/3) for its one token
    torch.testing.assert_close(logps, torch.tensor([math.log(0.5) + math.log(1 / 3), math.log(1 / 3)]))
