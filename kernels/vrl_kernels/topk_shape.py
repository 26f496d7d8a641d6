"""K2: segmented top-k token mask and VPPO trajectory-level advantage scaling, without host syncs.

Shapes: scores and response_mask are [N, L] (N sequences, L response positions); per-sequence outputs
are [N]. Forward only (masks and scales are constants for the loss).

**Tie rule.** In each sequence the kept tokens are the first k of the valid tokens ordered by score
descending, equal scores by lower position first. Exactly k tokens are kept even when scores tie (VPPO
clamps its score to [0, 10], so ties at 0 and 10 are common, and `torch.sort` on CUDA is not stable, so
the original code's mask is not deterministic there). Scores must not be NaN.

**k = ceil(rho * L_valid), exactly.** Float arithmetic gets this wrong at exact multiples: in fp32,
0.4 * 5 = 2.0000000298 and ceil gives 3 instead of 2. So rho is snapped to the nearest fraction p/q
with q <= 10**6 (exact for every decimal with at most 6 digits, e.g. 0.4 -> 2/5, 0.2 -> 1/5) and
k = (p * L_valid + q - 1) // q is evaluated in int64. For rho not of that form the snap moves it by
less than 1e-12, which only matters if rho * L_valid lies within that distance of an integer.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple

import torch

from ._dispatch import load_kernels, next_pow2, resolve_impl

MAX_TRITON_L = 8192  # one program sorts a whole sequence in registers (16k: slow compile, spills)
MAX_TRITON_SEQS = 16384  # one program reduces all sequences (no spills at 4096 with 16 warps)


class TopkShape(NamedTuple):
    """Outputs of `segmented_topk_mask_and_shape`."""

    token_mask: torch.Tensor  # bool [N, L]: token carries the policy-gradient term
    seq_score: torch.Tensor  # fp32 [N]: mean score over *all* valid tokens (0 if none)
    alpha: torch.Tensor  # fp32 [N]: advantage scale; mean 1 over sequences with valid tokens


@functools.lru_cache(maxsize=64)
def _rho_fraction(rho: float) -> tuple[int, int]:
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    frac = Fraction(rho).limit_denominator(1_000_000)
    return frac.numerator, frac.denominator


@torch.compiler.assume_constant_result  # a host-side constant: no graph break under torch.compile
def rho_fraction(rho: float) -> tuple[int, int]:
    """rho as (p, q) with p/q the nearest fraction with q <= 10**6; see the module docstring."""
    return _rho_fraction(rho)


def keep_count(n_valid: torch.Tensor, rho: float) -> torch.Tensor:
    """k = ceil(rho * n_valid) per sequence, in exact int64 arithmetic (no host sync)."""
    p, q = rho_fraction(rho)
    return (n_valid.long() * p + (q - 1)) // q


def _scalar(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim fp32 tensor on like's device (a float costs one small host-to-device copy)."""
    return torch.as_tensor(value, device=like.device).float().reshape(())


def vppo_alpha_reference(
    seq_score: torch.Tensor,
    has_tokens: torch.Tensor,
    beta_min: float,
    score_min: float | torch.Tensor | None = None,
    score_max: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """VPPO trajectory scaling alpha [N] from per-sequence scores [N] (pure torch, sync-free).

    S_hat = clip((S - S_min) / (S_max - S_min), 0, 1), mu = mean(S_hat),
    alpha = beta_min + S_hat (1 - beta_min) / (mu + 1e-8), and alpha = 1 when S_max - S_min <= 1e-6.
    Rows without tokens (`has_tokens` False) are left out of min/max/mean and get alpha = 1.
    """
    s = seq_score.float()
    s_min = torch.where(has_tokens, s, float("inf")).amin() if score_min is None else _scalar(score_min, s)
    s_max = torch.where(has_tokens, s, float("-inf")).amax() if score_max is None else _scalar(score_max, s)
    span = s_max - s_min
    ok = span > 1e-6
    s_hat = ((s - s_min) / torch.where(ok, span, torch.ones_like(span))).clamp(0.0, 1.0)
    s_hat = torch.where(has_tokens, s_hat, torch.zeros_like(s_hat))
    mu = s_hat.sum() / has_tokens.sum().clamp_min(1)
    alpha = beta_min + s_hat * (1.0 - beta_min) / (mu + 1e-8)
    return torch.where(ok & has_tokens, alpha, torch.ones_like(alpha))


def segmented_topk_mask_and_shape_reference(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    rho: float,
    beta_min: float = 0.9,
    score_min: float | torch.Tensor | None = None,
    score_max: float | torch.Tensor | None = None,
) -> TopkShape:
    """Pure-PyTorch spec of `segmented_topk_mask_and_shape` (stable sorts implement the tie rule)."""
    valid = response_mask.bool()
    s = scores.float()
    n_valid = valid.sum(-1)
    # Lexicographic order: valid first, then score descending, then position ascending. A stable sort
    # keeps the previous order among equals, so sort by the minor key first, then by the major key.
    by_score = torch.sort(s, dim=-1, descending=True, stable=True).indices
    valid_sorted = valid.gather(-1, by_score).to(torch.int8)
    order = by_score.gather(-1, torch.sort(valid_sorted, dim=-1, descending=True, stable=True).indices)
    positions = torch.arange(s.shape[-1], device=s.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    token_mask = valid & (rank < keep_count(n_valid, rho).unsqueeze(-1))
    total = torch.where(valid, s, torch.zeros_like(s)).sum(-1)
    seq_score = total / n_valid.clamp_min(1)
    alpha = vppo_alpha_reference(seq_score, n_valid > 0, beta_min, score_min, score_max)
    return TopkShape(token_mask, seq_score, alpha)


def segmented_topk_mask_and_shape_triton(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    rho: float,
    beta_min: float = 0.9,
    score_min: float | torch.Tensor | None = None,
    score_max: float | torch.Tensor | None = None,
) -> TopkShape:
    """Triton `segmented_topk_mask_and_shape`: two launches, L <= 8192, N <= 16384 sequences."""
    n_seq, n_cols = _check(scores, response_mask)
    if n_cols > MAX_TRITON_L or n_seq > MAX_TRITON_SEQS:
        raise ValueError(f"Triton K2 supports L <= {MAX_TRITON_L} and N <= {MAX_TRITON_SEQS}")
    kern = load_kernels("_topk_shape_kernels", scores)
    p, q = rho_fraction(rho)
    dev = scores.device
    mask = response_mask.view(torch.uint8) if response_mask.dtype == torch.bool else response_mask
    token_mask = torch.empty((n_seq, n_cols), device=dev, dtype=torch.bool)
    seq_score = torch.empty(n_seq, device=dev, dtype=torch.float32)
    count = torch.empty(n_seq, device=dev, dtype=torch.int32)
    alpha = torch.empty(n_seq, device=dev, dtype=torch.float32)
    if n_seq == 0:
        return TopkShape(token_mask, seq_score, alpha)
    if n_cols:
        kern.topk_mask_kernel[(n_seq,)](
            scores, mask, token_mask.view(torch.int8), seq_score, count,
            n_cols, scores.stride(0), scores.stride(1), mask.stride(0), mask.stride(1), p, q,
            BLOCK_L=next_pow2(n_cols), num_warps=_sort_warps(n_cols),
        )  # fmt: skip
    else:
        seq_score.zero_()
        count.zero_()
    has_range = score_min is not None or score_max is not None
    if has_range and (score_min is None or score_max is None):
        raise ValueError("pass both score_min and score_max, or neither")
    if has_range:
        score_min, score_max = _scalar(score_min, seq_score), _scalar(score_max, seq_score)
    kern.vppo_alpha_kernel[(1,)](
        seq_score, count, score_min, score_max, alpha, n_seq, beta_min,
        HAS_RANGE=has_range, BLOCK_N=next_pow2(n_seq), num_warps=4 if n_seq <= 1024 else 16,
    )  # fmt: skip
    return TopkShape(token_mask, seq_score, alpha)


def _sort_warps(n_cols: int) -> int:
    """Warps for the per-sequence sort, from ptxas register counts for sm_90 (no spills up to 4096,
    ~100 bytes of spill at 8192 with 16 warps)."""
    return 4 if n_cols <= 1024 else 8 if n_cols <= 2048 else 16


def _check(scores: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    if scores.dim() != 2 or response_mask.shape != scores.shape:
        raise ValueError(
            f"scores and response_mask must both be [N, L], got {tuple(scores.shape)} and {tuple(response_mask.shape)}"
        )
    return scores.shape[0], scores.shape[1]


def segmented_topk_mask_and_shape(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    rho: float,
    beta_min: float = 0.9,
    score_min: float | torch.Tensor | None = None,
    score_max: float | torch.Tensor | None = None,
    impl: str = "auto",
) -> TopkShape:
    """VPPO's token filter and trajectory scaling from per-token scores, with no host syncs.

    Per sequence: keep k = ceil(rho * L_valid) tokens by score (tie rule in the module docstring), and
    S = mean score over all valid tokens. Across sequences: alpha from `vppo_alpha_reference`. The
    policy loss then uses `token_mask` as its loss mask and `alpha * A` as advantages.

    Args:
        scores: [N, L] per-token scores (e.g. VPPO's clamped k3, or `dual_vocab_stats(...).kl`).
        response_mask: [N, L] bool/int/float; nonzero marks valid response tokens (any pattern).
        rho: keep ratio in [0, 1]; rho = 1 keeps every valid token, rho = 0 none.
        beta_min: VPPO's `advantage_scaling_min` (0.9 in the paper's scripts).
        score_min, score_max: optional normalisation range, e.g. over the mini-batch or all-reduced
            across ranks (VPPO's code uses the local mini-batch); default is the min/max over these rows.
            0-dim device tensors avoid a host copy. mu is always the mean over these rows.
        impl: "auto", "triton" or "torch".

    Returns:
        TopkShape(token_mask [N, L] bool, seq_score [N] fp32, alpha [N] fp32).
    """
    _check(scores, response_mask)
    fits = scores.shape[1] <= MAX_TRITON_L and scores.shape[0] <= MAX_TRITON_SEQS
    kwargs = dict(rho=rho, beta_min=beta_min, score_min=score_min, score_max=score_max)
    if resolve_impl(impl, scores, response_mask, max_ok=fits) == "triton":
        return segmented_topk_mask_and_shape_triton(scores, response_mask, **kwargs)
    return segmented_topk_mask_and_shape_reference(scores, response_mask, **kwargs)
