"""K2 (segmented_topk_mask_and_shape): mask vs a torch.topk construction, exact k, VPPO scaling.

Tolerances: token masks must be identical (no tolerance); seq_score and alpha between Triton and the
reference agree to 1e-6 absolute (fp32 sums of <= 12 terms, in different orders); mean(alpha) = 1 to
1e-6 (fp32 rounding of a mean of <= 16 values near 1, plus the 1e-8 guard in mu).
"""

import math
from fractions import Fraction

import pytest
import torch

from vrl_kernels import (
    keep_count,
    segmented_topk_mask_and_shape,
    segmented_topk_mask_and_shape_reference,
    segmented_topk_mask_and_shape_triton,
    vppo_alpha_reference,
)

IMPLS = {"torch": segmented_topk_mask_and_shape_reference, "triton": segmented_topk_mask_and_shape_triton}
RHOS = [0.0, 0.2, 0.25, 0.4, 0.5, 0.7, 1.0]


def _tied_batch(device, n: int = 8, length: int = 12):
    """Integer scores in {0..3} (many ties, -0.0 next to +0.0) and irregular response masks."""
    scores = torch.randint(0, 4, (n, length), device=device).float()
    scores[0, :4] = torch.tensor([-0.0, 0.0, -0.0, 0.0])
    scores[1] = -scores[1]  # negative scores order correctly too
    mask = torch.rand(n, length, device=device) > 0.35
    mask[2] = False  # a sequence with no valid token
    mask[3] = True
    mask[4] = torch.arange(length, device=device) % 3 == 1  # non-prefix pattern
    return scores, mask


def _topk_construction(scores: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """Expected mask from torch.topk on a key that encodes the tie rule, with k from exact fractions."""
    length = scores.shape[1]
    s = torch.where(scores == 0, torch.zeros_like(scores), scores)  # -0.0 ties with +0.0
    # Order-preserving integer image of the fp32 scores (they are small integers here, so exact).
    key = (s.double() * 1000).long() * length + (length - 1 - torch.arange(length, device=s.device))
    key = torch.where(mask, key, torch.iinfo(torch.int64).min)
    out = torch.zeros_like(mask)
    for i in range(scores.shape[0]):
        k = math.ceil(Fraction(str(rho)) * int(mask[i].sum()))
        if k:
            out[i, torch.topk(key[i], k).indices] = True
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rho", RHOS)
def test_mask_matches_topk_construction(device, impl, rho):
    scores, mask = _tied_batch(device)
    got = IMPLS[impl](scores, mask, rho=rho)
    want = _topk_construction(scores, mask, rho)
    assert got.token_mask.dtype == torch.bool
    assert torch.equal(got.token_mask, want)
    assert not got.token_mask[~mask].any()


def test_rho_one_keeps_all_valid_tokens(device):
    scores, mask = _tied_batch(device)
    for impl in IMPLS.values():
        assert torch.equal(impl(scores, mask, rho=1.0).token_mask, mask)


def test_keep_count_is_exact():
    # fp32 gets 0.4 * 5 wrong: 2.0000000298 -> ceil 3. The integer form gives 2.
    assert math.ceil(torch.tensor(0.4, dtype=torch.float32).item() * 5) == 3
    assert keep_count(torch.tensor([5]), 0.4).item() == 2
    lengths = torch.arange(0, 2049)
    for rho in (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9, 0.15, 0.333, 1.0):
        want = torch.tensor([math.ceil(Fraction(str(rho)) * n) for n in lengths.tolist()])
        assert torch.equal(keep_count(lengths, rho), want), rho
    with pytest.raises(ValueError):
        keep_count(lengths, 1.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_computed(device, impl):
    # rho = 0.5, beta_min = 0.9; scores (valid tokens only shown, '.' = padding):
    #   seq 0: [1, 3, .]  S = 2,  k = ceil(1.0) = 1 -> keeps position 1 (score 3)
    #   seq 1: [., 4, .]  S = 4,  k = ceil(0.5) = 1 -> keeps position 1
    #   seq 2: [0, 0, 3]  S = 1,  k = ceil(1.5) = 2 -> keeps position 2 and, of the tied zeros, position 0
    # S_min = 1, S_max = 4 -> S_hat = (1/3, 1, 0), mu = 4/9,
    # alpha = 0.9 + S_hat * 0.1 / (4/9) = 0.9 + 0.225 S_hat = (0.975, 1.125, 0.9); mean = 1.
    scores = torch.tensor([[1.0, 3.0, 9.0], [7.0, 4.0, 7.0], [0.0, 0.0, 3.0]], device=device)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 1, 1]], device=device, dtype=torch.bool)
    out = IMPLS[impl](scores, mask, rho=0.5, beta_min=0.9)
    assert out.token_mask.tolist() == [[False, True, False], [False, True, False], [True, False, True]]
    torch.testing.assert_close(out.seq_score, torch.tensor([2.0, 4.0, 1.0], device=device))
    torch.testing.assert_close(out.alpha, torch.tensor([0.975, 1.125, 0.9], device=device), atol=1e-6, rtol=0)


def test_triton_matches_reference_scores_and_alpha(device):
    scores = torch.rand(16, 12, device=device) * 10
    mask = torch.rand(16, 12, device=device) > 0.3
    mask[5] = False
    ranges = ({}, {"score_min": torch.tensor(2.0, device=device), "score_max": torch.tensor(6.0, device=device)})
    for kw in (*ranges, {"score_min": 1.0, "score_max": 7.5}):
        got = segmented_topk_mask_and_shape_triton(scores, mask, rho=0.4, beta_min=0.8, **kw)
        want = segmented_topk_mask_and_shape_reference(scores, mask, rho=0.4, beta_min=0.8, **kw)
        assert torch.equal(got.token_mask, want.token_mask)
        torch.testing.assert_close(got.seq_score, want.seq_score, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.alpha, want.alpha, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_mean_one_and_bounds(device, impl):
    scores = torch.rand(16, 12, device=device) * 10
    mask = torch.rand(16, 12, device=device) > 0.3
    mask[[3, 9]] = False  # rows without tokens: excluded, alpha = 1
    beta_min = 0.7
    out = IMPLS[impl](scores, mask, rho=0.4, beta_min=beta_min)
    has = mask.any(-1)
    assert torch.all(out.alpha[~has] == 1.0)
    alpha = out.alpha[has]
    assert abs(alpha.mean().item() - 1.0) <= 1e-6
    s = out.seq_score[has]
    mu = ((s - s.min()) / (s.max() - s.min())).mean().item()
    assert alpha.min().item() == pytest.approx(beta_min, abs=1e-6)  # the min-score row
    assert alpha.max().item() <= beta_min + (1 - beta_min) / mu + 1e-6
    # Excluded rows do not influence the others.
    kept = IMPLS[impl](scores[has], mask[has], rho=0.4, beta_min=beta_min)
    torch.testing.assert_close(kept.alpha, alpha, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_degenerate_range_gives_alpha_one(device, impl):
    mask = torch.rand(6, 10, device=device) > 0.2
    mask[:, 0] = True
    scores = torch.full((6, 10), 2.5, device=device)
    assert torch.all(IMPLS[impl](scores, mask, rho=0.4).alpha == 1.0)
    empty = IMPLS[impl](scores, torch.zeros_like(mask), rho=0.4)  # no valid token anywhere
    assert torch.all(empty.alpha == 1.0) and torch.all(empty.seq_score == 0) and not empty.token_mask.any()


def test_external_range_clips(device):
    s = torch.tensor([0.0, 1.0, 2.0, 10.0], device=device)
    has = torch.ones(4, dtype=torch.bool, device=device)
    alpha = vppo_alpha_reference(s, has, 0.9, torch.tensor(1.0, device=device), torch.tensor(3.0, device=device))
    # S_hat = clip((s - 1) / 2, 0, 1) = (0, 0, 0.5, 1); mu = 0.375; alpha = 0.9 + S_hat * 0.1 / 0.375.
    want = 0.9 + torch.tensor([0.0, 0.0, 0.5, 1.0], device=device) * (0.1 / 0.375)
    torch.testing.assert_close(alpha, want, atol=1e-6, rtol=0)


def test_dispatch_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        segmented_topk_mask_and_shape(torch.rand(3, 4), torch.ones(3, 5, dtype=torch.bool), rho=0.4)
