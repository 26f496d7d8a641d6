"""K1: per-token vocabulary statistics in one pass over the logits (no [N, V] temporaries).

Shapes: logits are [N, V] (N tokens) or [B, L, V] (B sequences of L response tokens); ids and every
output have the leading shape ([N] or [B, L]); V is the vocabulary. Outputs are fp32 (fp64 when the
reference runs on fp64 input).

Both forms are **forward-only** (no autograd graph): they serve no-grad passes such as VPPO's
old/perturbed log-prob scoring. The gradient of a sampled-token log-prob lives in K3
(`masked_grpo_loss`), whose backward kernel recomputes the softmax.

Logits must be finite. Padding rows are skipped with `row_mask` (their outputs are 0), which also saves
their bandwidth in the kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import flat_rows, load_kernels, resolve_impl, row_layout, vocab_block


class VocabStats(NamedTuple):
    """Single-form outputs, each shaped like `ids`."""

    logprob: torch.Tensor  # log softmax(x / T)[y]
    entropy: torch.Tensor  # -sum_v p_v log p_v
    lse: torch.Tensor  # logsumexp_v(x_v / T)


class DualVocabStats(NamedTuple):
    """Dual-form outputs (P = softmax(logits / T), P' = softmax(logits_pert / T)), each shaped like `ids`."""

    logprob: torch.Tensor  # log P[y]
    logprob_pert: torch.Tensor  # log P'[y]
    kl: torch.Tensor  # KL(P || P') = sum_v P_v (log P_v - log P'_v), exact over V, clamped at >= 0
    entropy: torch.Tensor  # H(P)
    lse: torch.Tensor
    lse_pert: torch.Tensor


def _compute_dtype(logits: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
    if compute_dtype is not None:
        return compute_dtype
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _masked(t: torch.Tensor, row_mask: torch.Tensor | None) -> torch.Tensor:
    return t if row_mask is None else torch.where(row_mask.bool(), t, torch.zeros_like(t))


def _log_softmax_stats(x: torch.Tensor, ids: torch.Tensor, row_mask: torch.Tensor | None):
    """(log-probs over V, sampled log-prob, entropy, lse) of already temperature-scaled logits x.

    Ids of masked rows are replaced by 0 first: like the kernel, the reference never uses them.
    """
    ids = ids.long() if row_mask is None else torch.where(row_mask.bool(), ids.long(), 0)
    lse = torch.logsumexp(x, dim=-1)
    logp_all = x - lse.unsqueeze(-1)
    logprob = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all, logprob, entropy, lse


def vocab_stats_reference(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> VocabStats:
    """Pure-PyTorch spec of `vocab_stats` (materialises [N, V]; for tests and CPU runs).

    Args:
        logits: [N, V] or [B, L, V].
        ids: sampled token ids, [N] or [B, L].
        temperature: logits are divided by T before the softmax.
        row_mask: optional [N] / [B, L]; rows where it is 0 get outputs 0.
        compute_dtype: arithmetic dtype; default fp32 (fp64 for fp64 input). Tests pass bf16 to measure
            plain-bf16's own error budget.
    """
    x = logits.to(_compute_dtype(logits, compute_dtype)) / temperature
    _, logprob, entropy, lse = _log_softmax_stats(x, ids, row_mask)
    return VocabStats(*(_masked(t, row_mask) for t in (logprob, entropy, lse)))


def dual_vocab_stats_reference(
    logits: torch.Tensor,
    logits_pert: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> DualVocabStats:
    """Pure-PyTorch spec of `dual_vocab_stats` (see there); `compute_dtype` as in `vocab_stats_reference`."""
    cd = _compute_dtype(logits, compute_dtype)
    la, lpa, ent, lse_a = _log_softmax_stats(logits.to(cd) / temperature, ids, row_mask)
    lb, lpb, _, lse_b = _log_softmax_stats(logits_pert.to(cd) / temperature, ids, row_mask)
    kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0)
    out = (lpa, lpb, kl, ent, lse_a, lse_b)
    return DualVocabStats(*(_masked(t, row_mask) for t in out))


def _check_pair(logits: torch.Tensor, ids: torch.Tensor) -> int:
    if logits.dim() not in (2, 3) or tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"ids shape {tuple(ids.shape)} must equal logits shape[:-1] {tuple(logits.shape[:-1])}")
    return ids.numel()


def vocab_stats_triton(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    block_v: int | None = None,
) -> VocabStats:
    """Triton `vocab_stats`: one program per row, one read of the row, fp32 accumulation.

    Args:
        logits, ids, temperature, row_mask: as in `vocab_stats_reference`.
        block_v: vocabulary tile (power of two); default picked by `vocab_block`.
    """
    n_rows = _check_pair(logits, ids)
    kern = load_kernels("_vocab_stats_kernels", logits)
    x, l_inner, s_outer, s_inner = row_layout(logits)
    outs = [torch.empty(n_rows, device=logits.device, dtype=torch.float32) for _ in range(3)]
    mask = flat_rows(row_mask, n_rows, "row_mask")
    if n_rows:
        block, warps = vocab_block(x.shape[-1], kern.INTERPRETED, block_v)
        kern.vocab_stats_kernel[(n_rows,)](
            x, flat_rows(ids, n_rows, "ids"), mask, *outs,
            x.shape[-1], l_inner, s_outer, s_inner, kern.LOG2E / temperature,
            HAS_ROW_MASK=mask is not None, BLOCK_V=block, num_warps=warps,
        )  # fmt: skip
    return VocabStats(*(t.view(ids.shape) for t in outs))


def dual_vocab_stats_triton(
    logits: torch.Tensor,
    logits_pert: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    block_v: int | None = None,
) -> DualVocabStats:
    """Triton `dual_vocab_stats`: both rows streamed together once (4*N*V bytes for bf16), fp32 state."""
    n_rows = _check_pair(logits, ids)
    if logits_pert.shape != logits.shape:
        raise ValueError(f"logits_pert shape {tuple(logits_pert.shape)} != logits {tuple(logits.shape)}")
    kern = load_kernels("_vocab_stats_kernels", logits)
    xa, l_inner, sa_o, sa_i = row_layout(logits)
    xb, _, sb_o, sb_i = row_layout(logits_pert)
    outs = [torch.empty(n_rows, device=logits.device, dtype=torch.float32) for _ in range(6)]
    mask = flat_rows(row_mask, n_rows, "row_mask")
    if n_rows:
        block, warps = vocab_block(xa.shape[-1], kern.INTERPRETED, block_v)
        kern.dual_vocab_stats_kernel[(n_rows,)](
            xa, xb, flat_rows(ids, n_rows, "ids"), mask, *outs,
            xa.shape[-1], l_inner, sa_o, sa_i, sb_o, sb_i, kern.LOG2E / temperature,
            HAS_ROW_MASK=mask is not None, BLOCK_V=block, num_warps=warps,
        )  # fmt: skip
    return DualVocabStats(*(t.view(ids.shape) for t in outs))


def vocab_stats(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> VocabStats:
    """Sampled-token log-prob, entropy and log-sum-exp of softmax(logits / T), forward only.

    One read of the logits replaces the eager chain (fp32 upcast, log_softmax, gather, exp, sum),
    which writes several fp32 [N, V] temporaries.

    Args:
        logits: [N, V] or [B, L, V], bf16/fp16/fp32 (fp64 runs the reference); row strides arbitrary.
        ids: [N] or [B, L] int token ids in [0, V) (not range-checked: that would need a host sync).
        temperature: T > 0.
        row_mask: optional, shaped like ids; 0 marks padding rows (outputs 0, not read).
        impl: "auto" (Triton on CUDA, else reference), "triton" or "torch".

    Returns:
        VocabStats of fp32 tensors shaped like ids.
    """
    if resolve_impl(impl, logits) == "triton":
        return vocab_stats_triton(logits, ids, temperature=temperature, row_mask=row_mask)
    return vocab_stats_reference(logits, ids, temperature=temperature, row_mask=row_mask)


def dual_vocab_stats(
    logits: torch.Tensor,
    logits_pert: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> DualVocabStats:
    """Both sampled-token log-probs, exact KL(P_img || P_pert) over V and H(P_img), forward only.

    This is the zero-variance version of VPPO's token visual-dependency score: VPPO's k3 estimate
    exp(d) - d - 1 with d = logprob_pert - logprob is the single-sample estimate of the same KL, and
    both are available from one call (the caller forms k3 from the two log-probs).

    Args:
        logits: [N, V] or [B, L, V] logits under the original image.
        logits_pert: same shape, under the perturbed image (strides may differ from `logits`).
        ids, temperature, row_mask, impl: as in `vocab_stats`.

    Returns:
        DualVocabStats of fp32 tensors shaped like ids.
    """
    if resolve_impl(impl, logits, logits_pert) == "triton":
        return dual_vocab_stats_triton(logits, logits_pert, ids, temperature=temperature, row_mask=row_mask)
    return dual_vocab_stats_reference(logits, logits_pert, ids, temperature=temperature, row_mask=row_mask)
