"""Triton kernels for K3: masked GRPO/PPO loss from logits, forward and backward.

Imported lazily by `grpo_loss.py`. Forward: one program per token streams its logits row once
(`online_row_stats`), then evaluates the per-token loss in registers and stores O(1) floats per token:
the loss contribution, two gradient coefficients and the row's lse / entropy. Backward: one program per
token re-reads the row, recomputes p = softmax(x / T) from the saved lse and writes dlogits; no fp32
[N, V] softmax is ever stored.

Per token t (w = normalisation weight, m = loss mask; the caller divides by the normaliser; pg and kl use the
clamped log-ratios of `grpo_loss.py`, with zero derivative where a clamp is active):
    loss_t = w * (m * pg + beta * kl - ent_coef * H - nll_coef * logp)
    g_t    = d loss_t / d logp      (the sampled-token path)
    c_t    = ent_coef * w           (the entropy path)
    dlogits_tj = scale / T * (g_t (onehot_j - p_j) + c_t p_j (log p_j + H_t)),  scale = dL / d(sum loss_t).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from ._vocab_stats_kernels import LOG2E, load_scaled, online_row_stats, row_base

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
__all__ = ["INTERPRETED", "LOG2E", "grpo_bwd_kernel", "grpo_fwd_kernel"]


@triton.jit
def _clamp_active(x, bound):
    """clamp(x, -bound, bound) and whether the gradient passes (torch.clamp: the bounds themselves pass)."""
    return tl.minimum(tl.maximum(x, -bound), bound), (x >= -bound) & (x <= bound)


@triton.jit
def _policy_terms(logp, old, adv, eps_low, eps_high, dual_clip, log_ratio_clamp, HAS_DUAL: tl.constexpr):
    """Clipped surrogate pg, its derivative d pg / d logp, and the two clip indicators (as 0/1 floats)."""
    log_ratio, inside = _clamp_active(logp - old, log_ratio_clamp)
    ratio = tl.exp(log_ratio)
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
    pg1 = -adv * ratio
    pg2 = -adv * clipped
    ppo_clip = pg2 > pg1
    pg = tl.where(ppo_clip, pg2, pg1)
    dpg = tl.where(ppo_clip | (inside == 0), 0.0, pg1)  # d(-A r)/d logp = -A r inside the log-ratio clamp
    dual_f = 0.0 * pg
    if HAS_DUAL:
        pg3 = -dual_clip * adv
        dual = (adv < 0.0) & (pg > pg3)
        pg = tl.where(dual, pg3, pg)
        dpg = tl.where(dual, 0.0, dpg)
        dual_f = dual.to(tl.float32)
    return pg, dpg, ppo_clip.to(tl.float32), dual_f


@triton.jit
def grpo_fwd_kernel(
    X,
    IDS,
    OLD,
    ADV,
    LOSS_MASK,
    WEIGHT,
    REF,
    OUT_LOSS,
    OUT_G,
    OUT_C,
    OUT_LSE,
    OUT_ENT,
    OUT_KL,
    OUT_CLIP,
    OUT_DUAL,
    n_cols,
    l_inner,
    stride_outer,
    stride_inner,
    scale2,
    eps_low,
    eps_high,
    dual_clip,
    log_ratio_clamp,
    kl_clamp,
    beta,
    ent_coef,
    nll_coef,
    HAS_REF: tl.constexpr,
    HAS_DUAL: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Per-token loss, gradient coefficients and stats; rows with weight 0 are not read."""
    row = tl.program_id(0).to(tl.int64)
    w = tl.load(WEIGHT + row).to(tl.float32)
    active = w != 0.0
    ptr = X + row_base(row, l_inner, stride_outer, stride_inner)
    m2, z, e2 = online_row_stats(ptr, tl.where(active, n_cols, 0), scale2, BLOCK_V)
    z = tl.where(active, z, 1.0)
    m2 = tl.where(active, m2, 0.0)  # keep skipped rows finite (no overflow in exp below)
    ln2 = 0.6931471805599453
    log2z = tl.log2(z)
    ent = (log2z - e2 / z) * ln2
    tgt = tl.load(IDS + row, mask=active, other=0)
    a_y = tl.load(ptr + tgt, mask=active, other=0.0).to(tl.float32) * scale2
    logp = (a_y - m2 - log2z) * ln2
    old = tl.load(OLD + row).to(tl.float32)
    adv = tl.load(ADV + row).to(tl.float32)
    lmask = tl.load(LOSS_MASK + row).to(tl.float32)
    pg, dpg, ppo_clip, dual = _policy_terms(logp, old, adv, eps_low, eps_high, dual_clip, log_ratio_clamp, HAS_DUAL)
    kl = 0.0 * logp
    dkl = 0.0 * logp
    if HAS_REF:
        delta, d_in = _clamp_active(tl.load(REF + row).to(tl.float32) - logp, log_ratio_clamp)
        kl, kl_in = _clamp_active(tl.exp(delta) - delta - 1.0, kl_clamp)
        dkl = tl.where(d_in & kl_in, 1.0 - tl.exp(delta), 0.0)  # d kl / d logp = -(e^delta - 1) inside both
    loss = w * (lmask * pg + beta * kl - ent_coef * ent - nll_coef * logp)
    g = w * (lmask * dpg + beta * dkl - nll_coef)
    tl.store(OUT_LOSS + row, tl.where(active, loss, 0.0))
    tl.store(OUT_G + row, tl.where(active, g, 0.0))
    tl.store(OUT_C + row, tl.where(active, ent_coef * w, 0.0))
    tl.store(OUT_LSE + row, tl.where(active, (m2 + log2z) * ln2, 0.0))
    tl.store(OUT_ENT + row, tl.where(active, ent, 0.0))
    tl.store(OUT_KL + row, tl.where(active, kl, 0.0))
    counted = tl.where(active, lmask != 0.0, False)
    tl.store(OUT_CLIP + row, tl.where(counted, ppo_clip, 0.0))
    tl.store(OUT_DUAL + row, tl.where(counted, dual, 0.0))


@triton.jit
def grpo_bwd_kernel(
    X,
    IDS,
    G,
    C,
    LSE,
    ENT,
    SCALE,
    DX,
    n_cols,
    l_inner,
    stride_outer,
    stride_inner,
    dx_stride_row,
    scale2,
    inv_t,
    BLOCK_V: tl.constexpr,
):
    """dlogits for one row from the saved per-token coefficients; rows with g = c = 0 write zeros unread."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(G + row)
    c = tl.load(C + row)
    active = (g != 0.0) | (c != 0.0)
    lse2 = tl.load(LSE + row) * 1.4426950408889634
    ent = tl.load(ENT + row)
    tgt = tl.load(IDS + row, mask=active, other=-1)
    coef = tl.load(SCALE).to(tl.float32) * inv_t
    ptr = X + row_base(row, l_inner, stride_outer, stride_inner)
    out = DX + row * dx_stride_row
    offs = tl.arange(0, BLOCK_V)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + offs
        a = load_scaled(ptr, cols, tl.where(active, n_cols, 0), scale2)
        p = tl.exp2(a - lse2)
        logp = (a - lse2) * 0.6931471805599453
        onehot = (cols == tgt).to(tl.float32)
        grad = coef * (g * (onehot - p) + c * p * (logp + ent))
        grad = tl.where(active, grad, 0.0)
        tl.store(out + cols, grad.to(DX.dtype.element_ty), mask=cols < n_cols)
