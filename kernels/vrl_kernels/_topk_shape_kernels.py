"""Triton kernels for K2: per-sequence top-k token mask and VPPO trajectory scaling.

Imported lazily by `topk_shape.py`. Two launches, no host syncs: one program per sequence builds the
mask and the mean score; one program over all sequences computes the scaling alpha.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
INT64_MIN = tl.constexpr(-9223372036854775808)  # jit code may only read constexpr globals


@triton.jit
def topk_mask_kernel(
    S,
    M,
    OUT_MASK,
    OUT_MEAN,
    OUT_COUNT,
    n_cols,
    s_stride_n,
    s_stride_l,
    m_stride_n,
    m_stride_l,
    rho_num,
    rho_den,
    BLOCK_L: tl.constexpr,
):
    """Keep the k = ceil(rho_num * L_valid / rho_den) highest-scoring valid tokens of one sequence.

    Tie rule: higher score first, equal scores by lower position. It is enforced by sorting one int64
    key per token, (order-preserving int32 image of the fp32 score) << 32 | (BLOCK_L - 1 - position),
    so all keys are distinct and exactly k tokens survive. -0.0 is folded into +0.0 first so that the
    two zeros tie, as they do under float comparison.
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    lane = offs < n_cols
    s = tl.load(S + row * s_stride_n + offs * s_stride_l, mask=lane, other=0.0).to(tl.float32)
    valid = lane & (tl.load(M + row * m_stride_n + offs * m_stride_l, mask=lane, other=0) != 0)
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (BLOCK_L - 1 - offs).to(tl.int64)
    key = tl.where(valid, key, INT64_MIN)
    count = tl.sum(valid.to(tl.int64), 0)
    k = (count * rho_num + rho_den - 1) // rho_den
    ranked = tl.sort(key, descending=True)
    kth = tl.max(tl.where(offs.to(tl.int64) == k - 1, ranked, INT64_MIN), 0)
    keep = valid & (key >= kth) & (k > 0)
    tl.store(OUT_MASK + row * n_cols + offs, keep.to(tl.int8), mask=lane)
    total = tl.sum(tl.where(valid, s, 0.0), 0)
    tl.store(OUT_MEAN + row, total / tl.maximum(count, 1).to(tl.float32))
    tl.store(OUT_COUNT + row, count.to(tl.int32))


@triton.jit
def vppo_alpha_kernel(
    MEAN,
    COUNT,
    S_MIN,
    S_MAX,
    OUT_ALPHA,
    n_seq,
    beta_min,
    HAS_RANGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """alpha_i = beta_min + S_hat_i (1 - beta_min) / (mean(S_hat) + 1e-8); 1 if max - min <= 1e-6.

    Sequences without valid tokens are left out of min/max/mean and get alpha = 1. The range comes
    from S_MIN/S_MAX when given (e.g. all-reduced over a mini-batch), else from these rows.
    """
    offs = tl.arange(0, BLOCK_N)
    lane = offs < n_seq
    mean = tl.load(MEAN + offs, mask=lane, other=0.0)
    has = lane & (tl.load(COUNT + offs, mask=lane, other=0) > 0)
    if HAS_RANGE:
        s_min = tl.load(S_MIN).to(tl.float32)
        s_max = tl.load(S_MAX).to(tl.float32)
    else:
        s_min = tl.min(tl.where(has, mean, float("inf")), 0)
        s_max = tl.max(tl.where(has, mean, float("-inf")), 0)
    span = s_max - s_min
    ok = span > 1e-6
    s_hat = tl.minimum(tl.maximum((mean - s_min) / tl.where(ok, span, 1.0), 0.0), 1.0)
    s_hat = tl.where(has, s_hat, 0.0)
    mu = tl.sum(s_hat, 0) / tl.maximum(tl.sum(has.to(tl.float32), 0), 1.0)
    alpha = beta_min + s_hat * (1.0 - beta_min) / (mu + 1e-8)
    alpha = tl.where(has, alpha, 1.0)
    tl.store(OUT_ALPHA + offs, tl.where(ok, alpha, 1.0), mask=lane)
