"""High-entropy token focus: the top-rho mask (batch and response scopes) and the hook on a fake context."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_hooks import _rollout
from vrl.hooks import StepContext, VisionLayout
from vrl.methods.entropy_focus import EntropyFocus, top_fraction_mask
from vrl.methods.perturb import NoPerturbation
from vrl.methods.vppo import VPPO

SCORES = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.2, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # 5 valid tokens


def test_batch_scope_ranks_every_valid_token_together():
    # rho 0.2: k = ceil(0.2 * 5) = 1 -> only 0.9; rho 0.5: k = ceil(2.5) = 3 -> 0.9, 0.5, 0.3
    assert top_fraction_mask(SCORES, MASK, 0.2).tolist() == [[0, 0, 1], [0, 0, 0]]
    assert top_fraction_mask(SCORES, MASK, 0.5).tolist() == [[1, 0, 1], [1, 0, 0]]
    # a padded position never counts, even with the largest score
    assert top_fraction_mask(torch.tensor([[0.0, 9.0]]), torch.tensor([[1.0, 0.0]]), 1.0).tolist() == [[1, 0]]


def test_response_scope_ranks_each_sequence_alone():
    # rho 0.5: row 0 has 3 tokens -> ceil(1.5) = 2 (0.9, 0.5); row 1 has 2 -> 1 (0.3)
    assert top_fraction_mask(SCORES, MASK, 0.5, "response").tolist() == [[1, 0, 1], [1, 0, 0]]
    # rho 0.2: ceil(0.6) = 1 and ceil(0.4) = 1 per row, where the batch scope kept one token in all
    assert top_fraction_mask(SCORES, MASK, 0.2, "response").tolist() == [[0, 0, 1], [1, 0, 0]]


def test_ties_go_to_the_earlier_position_and_an_empty_scope_keeps_nothing():
    assert top_fraction_mask(torch.ones(1, 4), torch.ones(1, 4), 0.5).tolist() == [[1, 1, 0, 0]]
    assert top_fraction_mask(SCORES, torch.zeros(2, 3), 0.2).sum() == 0
    with pytest.raises(ValueError, match="scope"):
        top_fraction_mask(SCORES, MASK, 0.2, "group")


def _logits() -> torch.Tensor:
    """[2, 3, 4] logits: uniform rows have entropy ln 4 = 1.386, a 20-logit spike has ~3 * 21 e^-20 ~ 0."""
    spike = torch.tensor([20.0, 0.0, 0.0, 0.0])
    flat = torch.zeros(4)
    return torch.stack([torch.stack([spike, flat, spike]), torch.stack([spike, spike, flat])])


def test_the_hook_keeps_the_uniform_tokens_and_writes_nothing():
    ctx = StepContext(logits=lambda rollout, pixel_values=None: _logits()[: rollout.num_sequences], micro_batch_size=8)
    rollout = _rollout()
    out = EntropyFocus(rho=0.34).extra_pass(rollout, ctx)  # k = ceil(0.34 * 6) = 3 > the 2 uniform tokens
    entropy = out.extras["token_entropy"]
    assert entropy[0, 1] == pytest.approx(math.log(4), abs=1e-5) and entropy[0, 0] < 1e-6
    # the two ln-4 tokens, then the first of the equal near-zero ones (position 0 of row 0)
    assert out.extras["entropy_mask"].tolist() == [[1, 1, 0], [0, 0, 1]]
    assert rollout.extras == {}
    rollout.extras.update(out.extras)
    assert torch.equal(EntropyFocus().token_weights(rollout, ctx).loss, out.extras["entropy_mask"])


def test_vppo_entropy_variant_ors_the_two_masks():
    """VPPO keeps positions 0 and 2 of each row (test_hooks' numbers); entropy adds the uniform tokens."""
    perturbed = torch.tensor([[-1.0, 0.0, -2.0], [-0.1, 0.0, -0.5]])
    ctx = StepContext(
        score=lambda rollout, pixel_values=None, micro_batch_size=None: perturbed,
        logits=lambda rollout, pixel_values=None: _logits(),
        vision=VisionLayout(patch_size=1, merge_size=1),
        micro_batch_size=2,
    )
    rollout = _rollout(old_logprobs=torch.zeros(2, 3))
    hook = VPPO(NoPerturbation(), rho=0.4, paired_pass=False, entropy_rho=0.2)  # ceil(0.2 * 6) = 2: both ln 4
    mask = hook.extra_pass(rollout, ctx).extras["vppo_token_mask"]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 1]]  # [1,0,1] | [0,1,0] and [1,0,1] | [0,0,1]
    with pytest.raises(ValueError, match="entropy_rho"):
        VPPO(NoPerturbation(), entropy_rho=0.0)
