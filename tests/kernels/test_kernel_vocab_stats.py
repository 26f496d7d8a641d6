"""K1 (vocab_stats, dual_vocab_stats): Triton vs fp64 / bf16 references, masks, strides, KL properties.

Tolerances (max abs error against the fp64 reference evaluated on the *same* quantised inputs):

| input | output            | Triton tol | also required                        |
|-------|-------------------|------------|--------------------------------------|
| bf16  | logprob, lse      | 1e-4       | <= 2x the bf16-reference's error     |
| bf16  | entropy, kl       | 1e-4       | <= 2x the bf16-reference's error     |
| fp32  | logprob, lse      | 1e-5       | logits up to ~|60| / T              |
| fp32  | entropy, kl       | 1e-5       |                                      |

The bf16 reference computes in bf16 (plain eager bf16), whose errors here are ~1e-2; the Triton kernel
accumulates in fp32, so its error is that of fp32 arithmetic on values up to ~20 (ulp 2e-6).
"""

import math

import pytest
import torch

from vrl_kernels import (
    dual_vocab_stats,
    dual_vocab_stats_reference,
    dual_vocab_stats_triton,
    vocab_stats,
    vocab_stats_reference,
    vocab_stats_triton,
)

N, V, BLOCK = 16, 300, 64  # 5 vocabulary tiles, the last one partial
TOL_BF16 = {"logprob": 1e-4, "lse": 1e-4, "entropy": 1e-4, "kl": 1e-4, "logprob_pert": 1e-4, "lse_pert": 1e-4}
TOL_FP32 = 1e-5


def _logits(n: int = N, v: int = V, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, v) * 3.0 + shift
    x[0, -1] += 15.0  # row max in the last, partial tile: forces a late rescale
    x[1, 0] += 15.0  # row max in the first tile
    return x


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_single_three_way_bf16(device):
    x = _logits().to(device, torch.bfloat16)
    ids = torch.randint(0, V, (N,), device=device)
    ref64 = vocab_stats_reference(x.double(), ids, temperature=0.8)
    ref16 = vocab_stats_reference(x, ids, temperature=0.8, compute_dtype=torch.bfloat16)
    tri = vocab_stats_triton(x, ids, temperature=0.8, block_v=BLOCK)
    for name in ("logprob", "entropy", "lse"):
        err_tri = _max_err(getattr(tri, name), getattr(ref64, name))
        err_bf16 = _max_err(getattr(ref16, name), getattr(ref64, name))
        assert err_tri <= TOL_BF16[name], (name, err_tri)
        assert err_tri <= 2 * err_bf16, (name, err_tri, err_bf16)


def test_dual_three_way_bf16(device):
    xa = _logits().to(device, torch.bfloat16)
    xb = (xa.float() + torch.randn(N, V, device=device)).bfloat16()
    ids = torch.randint(0, V, (N,), device=device)
    ref64 = dual_vocab_stats_reference(xa.double(), xb.double(), ids, temperature=1.3)
    ref16 = dual_vocab_stats_reference(xa, xb, ids, temperature=1.3, compute_dtype=torch.bfloat16)
    tri = dual_vocab_stats_triton(xa, xb, ids, temperature=1.3, block_v=BLOCK)
    for name in ref64._fields:
        err_tri = _max_err(getattr(tri, name), getattr(ref64, name))
        err_bf16 = _max_err(getattr(ref16, name), getattr(ref64, name))
        assert err_tri <= TOL_BF16[name], (name, err_tri)
        assert err_tri <= 2 * err_bf16, (name, err_tri, err_bf16)


@pytest.mark.parametrize("shift", [0.0, 40.0])  # large absolute logits must not cost precision
def test_fp32_tight(device, shift):
    xa = _logits(shift=shift).to(device)
    xb = xa + 0.5 * torch.randn(N, V, device=device)
    ids = torch.randint(0, V, (N,), device=device)
    single = vocab_stats_triton(xa, ids, temperature=0.7, block_v=BLOCK)
    dual = dual_vocab_stats_triton(xa, xb, ids, temperature=0.7, block_v=BLOCK)
    for got, want in (
        (single, vocab_stats_reference(xa.double(), ids, temperature=0.7)),
        (dual, dual_vocab_stats_reference(xa.double(), xb.double(), ids, temperature=0.7)),
    ):
        for name in want._fields:
            scale = max(1.0, getattr(want, name).abs().max().item() / 20.0)  # lse grows with the shift
            assert _max_err(getattr(got, name), getattr(want, name)) <= TOL_FP32 * scale, name


def test_hand_computed(device):
    # logits [0, 0, 2 ln 2] at T = 2 -> scaled [0, 0, ln 2]: Z = 1 + 1 + 2 = 4, p = (1/4, 1/4, 1/2).
    # lse = ln 4; log p(y=2) = ln 2 - ln 4 = -ln 2; H = -(2 * 1/4 * ln 1/4 + 1/2 * ln 1/2) = 1.5 ln 2.
    # Perturbed logits [0, 0, 0]: q = 1/3 each, lse' = ln 3, log q(2) = -ln 3,
    # KL(p || q) = 2 * 1/4 * ln(3/4) + 1/2 * ln(3/2) = 1/2 ln(9/8).
    x = torch.tensor([[0.0, 0.0, 2 * math.log(2.0)]], device=device)
    xp = torch.zeros(1, 3, device=device)
    ids = torch.tensor([2], device=device)
    for impl in ("torch", "triton"):
        s = vocab_stats(x, ids, temperature=2.0, impl=impl)
        d = dual_vocab_stats(x, xp, ids, temperature=2.0, impl=impl)
        for got, want in (
            (s.logprob, -math.log(2.0)),
            (s.lse, math.log(4.0)),
            (s.entropy, 1.5 * math.log(2.0)),
            (d.logprob_pert, -math.log(3.0)),
            (d.lse_pert, math.log(3.0)),
            (d.kl, 0.5 * math.log(9.0 / 8.0)),
            (d.entropy, 1.5 * math.log(2.0)),
        ):
            assert got.item() == pytest.approx(want, abs=2e-6), impl


def test_row_mask_strides_and_3d(device):
    """[B, L, V] slices of larger tensors are read in place; masked rows are zero and never read."""
    b, l_full = 3, 7
    big_a = torch.randn(b, l_full, V, device=device).bfloat16()
    big_b = torch.randn(l_full, b, V, device=device).bfloat16().transpose(0, 1)  # other row strides
    xa, xb = big_a[:, 1:-1], big_b[:, 1:-1]
    ids = torch.randint(0, V, (b, l_full - 2), device=device)
    row_mask = torch.rand(b, l_full - 2, device=device) > 0.3
    ids[~row_mask] = -100  # padding ids must not be dereferenced
    assert xa.stride(-1) == 1 and not xa.is_contiguous() and xa.stride() != xb.stride()
    want = dual_vocab_stats_reference(xa, xb, ids, row_mask=row_mask)
    got = dual_vocab_stats_triton(xa, xb, ids, row_mask=row_mask, block_v=BLOCK)
    for name in want._fields:
        g = getattr(got, name)
        assert g.shape == ids.shape
        assert torch.all(g[~row_mask] == 0), name
        assert _max_err(g, getattr(want, name)) <= 1e-5, name
    single = vocab_stats_triton(xa, ids, row_mask=row_mask, block_v=BLOCK)
    assert _max_err(single.logprob, want.logprob) <= 1e-5


def test_strided_vocab_falls_back_to_copy(device):
    x = torch.randn(V, N, device=device).t()  # stride(-1) != 1
    ids = torch.randint(0, V, (N,), device=device)
    got = vocab_stats_triton(x, ids, block_v=BLOCK)
    want = vocab_stats_reference(x.double(), ids)
    assert _max_err(got.entropy, want.entropy) <= TOL_FP32


def test_dual_kl_nonnegative_and_zero_for_identical(device):
    xa = _logits().to(device, torch.bfloat16)
    ids = torch.randint(0, V, (N,), device=device)
    same = dual_vocab_stats_triton(xa, xa.clone(), ids, block_v=BLOCK)
    assert torch.all(same.kl == 0.0)
    assert torch.equal(same.logprob, same.logprob_pert)
    xb = (xa.float() + 0.01 * torch.randn(N, V, device=device)).bfloat16()  # tiny KLs: sign matters
    near = dual_vocab_stats_triton(xa, xb, ids, block_v=BLOCK)
    assert torch.all(near.kl >= 0.0)
    assert near.kl.max() > 0.0


def test_dispatch_auto_uses_reference_on_cpu():
    x = torch.randn(4, 50)
    ids = torch.randint(0, 50, (4,))
    assert torch.equal(vocab_stats(x, ids).entropy, vocab_stats_reference(x, ids).entropy)
    with pytest.raises(ValueError, match="impl must be one of"):
        vocab_stats(x, ids, impl="cuda")
