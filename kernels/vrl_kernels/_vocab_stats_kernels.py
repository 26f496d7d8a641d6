"""Triton kernels for K1: one streaming pass over the vocabulary per row (online softmax).

Imported lazily by `vocab_stats.py` (this module imports triton). Conventions shared with
`_grpo_loss_kernels.py`:

* one program per row (token); rows are addressed as `(row // L_inner) * stride_outer +
  (row % L_inner) * stride_inner`, so a [B, L, V] slice of a larger logits tensor is read in place;
  offsets are int64 because N*V exceeds 2**31 at real sizes.
* logits are scaled once by `scale2 = log2(e) / T` and exponentiated with `exp2`; all statistics are
  kept relative to the running maximum, so no term is computed from large absolute logits.
* the running maximum starts at the finite -1e30 (not -inf) and loads are clamped at -1e30, so the
  rescaling corrections `Z * (m_old - m_new)` never form `0 * inf`.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The interpreter flag is read when @triton.jit decorates, i.e. at this module's import.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
NEG = -1e30


@triton.jit
def row_base(row, l_inner, stride_outer, stride_inner):
    """Element offset of row `row` (int64) in a [outer, l_inner, V] view."""
    return (row // l_inner) * stride_outer + (row % l_inner) * stride_inner


@triton.jit
def load_scaled(ptr, cols, n_cols, scale2):
    """Load one tile of a row as fp32 log2-scaled logits; lanes past V (and -inf) become -1e30."""
    x = tl.load(ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
    return tl.maximum(x * scale2, -1e30)


@triton.jit
def online_row_stats(ptr, n_cols, scale2, BLOCK_V: tl.constexpr):
    """Single-pass softmax statistics of one row, in log2 units.

    Returns (m, z, e): m = max_j a_j, z = sum_j 2^(a_j - m), e = sum_j 2^(a_j - m) * (a_j - m), with
    a = x * scale2. Then lse2 = m + log2 z and entropy (bits) = log2 z - e / z. `n_cols` = 0 skips the
    row (z stays 0; callers mask the outputs).
    """
    offs = tl.arange(0, BLOCK_V)
    m = -1e30
    z = 0.0
    e = 0.0
    for start in range(0, n_cols, BLOCK_V):
        a = load_scaled(ptr, start + offs, n_cols, scale2)
        m_new = tl.maximum(m, tl.max(a, 0))
        s = tl.exp2(m - m_new)
        p = tl.exp2(a - m_new)
        e = s * (e + z * (m - m_new)) + tl.sum(p * (a - m_new), 0)
        z = z * s + tl.sum(p, 0)
        m = m_new
    return m, z, e


@triton.jit
def vocab_stats_kernel(
    X,
    IDS,
    ROW_MASK,
    OUT_LOGP,
    OUT_ENT,
    OUT_LSE,
    n_cols,
    l_inner,
    stride_outer,
    stride_inner,
    scale2,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """K1 single form: log p(y), entropy and log-sum-exp (natural units, of x / T) for one row."""
    row = tl.program_id(0).to(tl.int64)
    active = True
    if HAS_ROW_MASK:
        active = tl.load(ROW_MASK + row) != 0
    ptr = X + row_base(row, l_inner, stride_outer, stride_inner)
    m, z, e = online_row_stats(ptr, tl.where(active, n_cols, 0), scale2, BLOCK_V)
    z = tl.where(active, z, 1.0)
    log2z = tl.log2(z)
    tgt = tl.load(IDS + row, mask=active, other=0)
    a_y = tl.load(ptr + tgt, mask=active, other=0.0).to(tl.float32) * scale2
    logp = (a_y - m - log2z) * 0.6931471805599453
    ent = (log2z - e / z) * 0.6931471805599453
    lse = (m + log2z) * 0.6931471805599453
    tl.store(OUT_LOGP + row, tl.where(active, logp, 0.0))
    tl.store(OUT_ENT + row, tl.where(active, ent, 0.0))
    tl.store(OUT_LSE + row, tl.where(active, lse, 0.0))


@triton.jit
def dual_vocab_stats_kernel(
    XA,
    XB,
    IDS,
    ROW_MASK,
    OUT_LOGP_A,
    OUT_LOGP_B,
    OUT_KL,
    OUT_ENT,
    OUT_LSE_A,
    OUT_LSE_B,
    n_cols,
    l_inner,
    sa_outer,
    sa_inner,
    sb_outer,
    sb_inner,
    scale2,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """K1 dual form: reads one row of each logits tensor once and returns KL(P_a || P_b) and friends.

    Accumulators (log2 units, relative to the running maxima ma, mb):
    za = sum 2^(a-ma), zb = sum 2^(b-mb), ea = sum 2^(a-ma) (a-ma),
    d = sum 2^(a-ma) ((a-ma) - (b-mb)); then KL (bits) = d / za - log2 za + log2 zb.
    """
    row = tl.program_id(0).to(tl.int64)
    active = True
    if HAS_ROW_MASK:
        active = tl.load(ROW_MASK + row) != 0
    n_eff = tl.where(active, n_cols, 0)
    pa = XA + row_base(row, l_inner, sa_outer, sa_inner)
    pb = XB + row_base(row, l_inner, sb_outer, sb_inner)
    offs = tl.arange(0, BLOCK_V)
    ma = -1e30
    mb = -1e30
    za = 0.0
    zb = 0.0
    ea = 0.0
    d = 0.0
    for start in range(0, n_eff, BLOCK_V):
        a = load_scaled(pa, start + offs, n_cols, scale2)
        b = load_scaled(pb, start + offs, n_cols, scale2)
        ma_new = tl.maximum(ma, tl.max(a, 0))
        mb_new = tl.maximum(mb, tl.max(b, 0))
        sa = tl.exp2(ma - ma_new)
        # Re-express the old sums relative to the new maxima (exact identities, see docstring).
        d = sa * (d + za * ((ma - ma_new) - (mb - mb_new)))
        ea = sa * (ea + za * (ma - ma_new))
        za = za * sa
        zb = zb * tl.exp2(mb - mb_new)
        ea_t = tl.exp2(a - ma_new)
        da = a - ma_new
        za += tl.sum(ea_t, 0)
        zb += tl.sum(tl.exp2(b - mb_new), 0)
        ea += tl.sum(ea_t * da, 0)
        d += tl.sum(ea_t * (da - (b - mb_new)), 0)
        ma = ma_new
        mb = mb_new
    za = tl.where(active, za, 1.0)
    zb = tl.where(active, zb, 1.0)
    log2za = tl.log2(za)
    log2zb = tl.log2(zb)
    tgt = tl.load(IDS + row, mask=active, other=0)
    a_y = tl.load(pa + tgt, mask=active, other=0.0).to(tl.float32) * scale2
    b_y = tl.load(pb + tgt, mask=active, other=0.0).to(tl.float32) * scale2
    ln2 = 0.6931471805599453
    kl = tl.maximum((d / za - log2za + log2zb) * ln2, 0.0)
    tl.store(OUT_LOGP_A + row, tl.where(active, (a_y - ma - log2za) * ln2, 0.0))
    tl.store(OUT_LOGP_B + row, tl.where(active, (b_y - mb - log2zb) * ln2, 0.0))
    tl.store(OUT_KL + row, tl.where(active, kl, 0.0))
    tl.store(OUT_ENT + row, tl.where(active, (log2za - ea / za) * ln2, 0.0))
    tl.store(OUT_LSE_A + row, tl.where(active, (ma + log2za) * ln2, 0.0))
    tl.store(OUT_LSE_B + row, tl.where(active, (mb + log2zb) * ln2, 0.0))
