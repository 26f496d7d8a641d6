"""Truncated / masked importance sampling between sampler and learner: hand-computed weights and statistics."""

from __future__ import annotations

import math

import pytest
import torch

from vrl.hooks import StepContext
from vrl.methods.rollout_correction import SAMPLER_LOGPROBS, RolloutCorrection, is_weights, log_ratios
from vrl.types import Rollout

# two sequences, three response slots; the second has two valid tokens
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LEARNER = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.6, 1.0]])) * MASK
SAMPLER = torch.log(torch.tensor([[0.1, 0.4, 0.1], [0.3, 0.2, 1.0]])) * MASK
# per-token ratios pi_old / pi_s: [[5, 0.5, 1], [1, 3, -]]


def test_token_truncation_and_its_statistics():
    w, st = is_weights(LEARNER, SAMPLER, MASK, cap=2.0, level="token")
    # min(rho, 2) on valid tokens, 0 on padding
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 1.0], [1.0, 2.0, 0.0]]))
    assert not w.requires_grad
    torch.testing.assert_close(st["ratio_mean"], torch.tensor(2.1))  # (5 + 0.5 + 1 + 1 + 3) / 5
    torch.testing.assert_close(st["ratio_max"], torch.tensor(5.0))
    torch.testing.assert_close(st["ratio_min"], torch.tensor(0.5))
    torch.testing.assert_close(st["clipped_frac"], torch.tensor(0.4))  # 5 and 3 exceed 2: 2 of 5 tokens
    # k1 = mean(log pi_s - log pi_old) = (-ln 5 + ln 2 + 0 + 0 - ln 3) / 5 = ln(2/15) / 5
    torch.testing.assert_close(st["kl_k1"], torch.tensor(math.log(2 / 15) / 5))
    # k3 = mean(rho - 1 - ln rho) = [(4 - ln 5) + (-0.5 + ln 2) + 0 + 0 + (2 - ln 3)] / 5
    k3 = ((4 - math.log(5)) + (-0.5 + math.log(2)) + (2 - math.log(3))) / 5
    torch.testing.assert_close(st["kl_k3"], torch.tensor(k3))
    torch.testing.assert_close(st["logp_diff_abs_max"], torch.tensor(math.log(5)))
    # ESS of the weights [2, .5, 1, 1, 2]: 6.5^2 / (5 * 10.25)
    torch.testing.assert_close(st["ess"], torch.tensor(6.5**2 / (5 * 10.25)))


def test_token_masking_drops_what_exceeds_the_cap():
    w, st = is_weights(LEARNER, SAMPLER, MASK, cap=2.0, level="token", mode="mask")
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(st["ess"], torch.tensor(9.0 / (5 * 3)))  # weights [0,1,1,1,0]: 3^2 / (5 * 3)


def test_sequence_and_geometric_levels():
    # sequence ratios: 5 * 0.5 * 1 = 2.5 and 1 * 3 = 3, both above 2 -> every valid token weighs 2
    w, st = is_weights(LEARNER, SAMPLER, MASK, cap=2.0, level="sequence")
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 2.0], [2.0, 2.0, 0.0]]))
    torch.testing.assert_close(st["ratio_mean"], torch.tensor(2.75))  # (2.5 + 3) / 2, one value per sequence
    torch.testing.assert_close(st["clipped_frac"], torch.tensor(1.0))
    # geometric: 2.5 ** (1/3) = 1.3572 and 3 ** (1/2) = 1.7321, below the cap
    w, st = is_weights(LEARNER, SAMPLER, MASK, cap=2.0, level="geometric")
    g1, g2 = 2.5 ** (1 / 3), 3**0.5
    torch.testing.assert_close(w, torch.tensor([[g1, g1, g1], [g2, g2, 0.0]]))
    assert float(st["clipped_frac"]) == 0.0
    torch.testing.assert_close(
        log_ratios(LEARNER, SAMPLER, MASK, "geometric")[1, :2], torch.full((2,), math.log(3) / 2)
    )


def test_equal_distributions_give_unit_weights_and_zero_kl():
    w, st = is_weights(LEARNER, LEARNER.clone(), MASK, cap=2.0)
    assert torch.equal(w, MASK)
    assert float(st["kl_k1"]) == 0.0 and float(st["kl_k3"]) == 0.0 and float(st["ess"]) == 1.0


def test_a_huge_sequence_ratio_neither_overflows_nor_escapes_the_cap():
    learner = torch.zeros(1, 200)
    sampler = torch.full((1, 200), -5.0)  # log rho = 1000 per sequence
    w, st = is_weights(learner, sampler, torch.ones(1, 200), cap=3.0, level="sequence")
    assert torch.equal(w, torch.full((1, 200), 3.0))
    assert math.isfinite(float(st["ratio_max"])) and math.isfinite(float(st["kl_k3"]))


def test_bad_settings_name_the_knob():
    with pytest.raises(ValueError, match="rollout_correction.level"):
        is_weights(LEARNER, SAMPLER, MASK, level="seq")
    with pytest.raises(ValueError, match="rollout_correction.cap"):
        is_weights(LEARNER, SAMPLER, MASK, cap=0)


def _rollout(old=None, extras=None) -> Rollout:
    n, length = MASK.shape
    return Rollout(
        input_ids=torch.zeros(n, 2 + length, dtype=torch.long),
        attention_mask=torch.ones(n, 2 + length, dtype=torch.long),
        response_mask=MASK.clone(),
        pixel_values=None,
        image_grid_thw=None,
        images_per_seq=torch.zeros(n, dtype=torch.long),
        group_ids=torch.zeros(n, dtype=torch.long),
        samples=[{}, {}],
        responses=["", ""],
        old_logprobs=old,
        extras=extras or {},
    )


def test_the_hook_moves_hf_sampling_logprobs_aside_and_weights_the_pg_term():
    hook = RolloutCorrection(cap=2.0)
    assert hook.needs_old_logprobs  # the loop then scores the learner's teacher-forced old log-probs
    moved = hook.on_rollout(_rollout(old=SAMPLER.clone()), StepContext())
    assert moved.old_logprobs is None and torch.equal(moved.extras[SAMPLER_LOGPROBS], SAMPLER)
    moved.old_logprobs = LEARNER.clone()  # what the loop's old-policy pass writes
    logged = {}
    weights = hook.token_weights(moved, StepContext(log=logged.update))
    torch.testing.assert_close(weights.loss, torch.tensor([[2.0, 0.5, 1.0], [1.0, 2.0, 0.0]]))
    assert weights.norm is None  # the loss is still averaged over every valid token
    assert logged["rollout_correction/clipped_frac"] == pytest.approx(0.4)
    # a server sampler's rollout carries the extras (and old_logprobs too with sampler.logprobs=true): the
    # learner's own pass must replace old_logprobs, or every ratio would be 1
    served = hook.on_rollout(_rollout(old=SAMPLER.clone(), extras={SAMPLER_LOGPROBS: SAMPLER}), StepContext())
    assert served.old_logprobs is None and served.extras[SAMPLER_LOGPROBS] is SAMPLER
    with pytest.raises(ValueError, match="sampler.logprobs=true"):
        hook.on_rollout(_rollout(), StepContext())
