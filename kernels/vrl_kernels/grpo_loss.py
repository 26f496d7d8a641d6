"""K3: masked GRPO/PPO policy loss from logits, forward and backward.

Shapes: logits [N, L, V] (N sequences, L response tokens) or [T, V] (T flattened tokens); every
per-token input (target ids, old/ref log-probs, loss_mask, token_weights) is shaped like logits[..., 0]
([N, L] or [T]). Advantages and their scale are per token, or per sequence [N] with 3-D logits.

Loss (w = token_weights, m = loss_mask, Z = normalizer, p = softmax(logits / T), y = target id):

    r_t   = exp(clamp(log p_t(y) - old_t, -20, 20))
    pg_t  = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high));  for A_t < 0 and dual_clip c:
            pg_t = min(pg_t, -c A_t)                           (A_t = advantage_t * advantage_scale_t)
    d_t   = clamp(ref_t - log p_t(y), -20, 20)
    kl_t  = clamp(exp(d_t) - d_t - 1, -kl_clamp, kl_clamp)       (k3 estimator; kl_clamp None = no clamp)
    loss  = (1 / Z) sum_t w_t (m_t pg_t + beta kl_t - entropy_coef H_t - nll_coef log p_t(y))

The clamps are verl's / EasyR1's (`vrl.methods.policy_loss`, `vrl.methods.kl`): a clamped quantity is
constant beyond its bound, so its gradient there is zero (torch.clamp's rule: the bounds themselves pass it).

`loss_mask` says which tokens carry the policy-gradient term (e.g. VPPO's top-k mask); `token_weights`
and `Z` carry the aggregation, so the mask never changes the normalisation (VPPO normalises its masked
loss by all response tokens). Every aggregation mode is weights + a precomputed scalar:

* token-mean (global batch): w = response_mask, Z = number of response tokens (all-reduced if needed);
* seq-mean-token-mean: w = response_mask / L_valid[:, None], Z = number of sequences;
* seq-mean-token-sum (Dr. GRPO): w = response_mask, Z = N * L_max (or a constant).

Sign conventions: entropy_coef > 0 is a **bonus** (the loss decreases with entropy, exact H over the
vocabulary); nll_coef > 0 adds nll_coef * (-log p(y)), a sampled-token entropy **penalty**, which is
VPPO's "entropy penalty" (0.06 for the 7B model). Tie rules (a measure-zero set) follow `torch.where`:
the clipped branch is taken only when strictly larger, and the dual clip only when strictly exceeded.
"""

from __future__ import annotations

import torch

from ._dispatch import flat_rows, load_kernels, resolve_impl, row_layout, vocab_block

Stats = dict[str, torch.Tensor]
#: |log-ratio| bound of the PPO ratio and of k3's log-ratio (verl / EasyR1; kept equal to
#: `vrl.methods.policy_loss.LOG_RATIO_CLAMP`, which vrl_kernels does not import).
LOG_RATIO_CLAMP = 20.0


def _token_values(t: torch.Tensor | None, logits: torch.Tensor, name: str) -> torch.Tensor | None:
    """Broadcast a per-sequence [N] tensor to the per-token shape; per-token tensors pass through."""
    if t is None:
        return None
    tok_shape = logits.shape[:-1]
    if tuple(t.shape) == tuple(tok_shape):
        return t
    if logits.dim() == 3 and tuple(t.shape) == (logits.shape[0],):
        return t.unsqueeze(-1).expand(tok_shape)
    raise ValueError(f"{name} must be per token {tuple(tok_shape)} or per sequence (N,), got {tuple(t.shape)}")


def _token_advantages(logits, advantages, advantage_scale) -> torch.Tensor:
    adv = _token_values(advantages, logits, "advantages").float()
    if advantage_scale is not None:
        adv = adv * _token_values(advantage_scale, logits, "advantage_scale").float()
    return adv


def loss_stats(weights, loss_mask, clipped, dual_clipped, kl, entropy) -> Stats:
    """Weighted token means (weights = token_weights) of the per-token diagnostics, detached.

    clip_frac / dual_clip_frac average over tokens with loss_mask != 0 (weights w), kl and entropy over
    all weighted tokens. With w = response_mask these are plain token means.
    """
    w = weights.detach().double()
    wm = w * (loss_mask != 0)

    def mean(x: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        return ((ww * x.detach().double()).sum() / ww.sum().clamp_min(1e-30)).float()

    return {
        "clip_frac": mean(clipped, wm),
        "dual_clip_frac": mean(dual_clipped, wm),
        "kl": mean(kl, w),
        "entropy": mean(entropy, w),
    }


def _check_args(beta, ref_logprobs, dual_clip, temperature, eps_low, eps_high, kl_clamp=None) -> None:
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if kl_clamp is not None and kl_clamp <= 0:
        raise ValueError(f"kl_clamp must be > 0 (or None), got {kl_clamp}")
    if temperature <= 0 or eps_low < 0 or eps_high < 0:
        raise ValueError("temperature must be > 0 and eps_low, eps_high >= 0")


def masked_grpo_loss_reference(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor,
    normalizer: float | torch.Tensor,
    *,
    advantage_scale: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    nll_coef: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    kl_clamp: float | None = 10.0,
    temperature: float = 1.0,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Pure-PyTorch spec of `masked_grpo_loss` (autograd provides the backward; materialises [T, V]).

    `compute_dtype` defaults to fp32 (fp64 for fp64 logits); tests pass bf16 to measure plain bf16's error.
    """
    _check_args(beta, ref_logprobs, dual_clip, temperature, eps_low, eps_high, kl_clamp)
    cd = compute_dtype or (torch.float64 if logits.dtype == torch.float64 else torch.float32)
    w = token_weights.to(cd)
    m = loss_mask.to(cd)
    ids = torch.where(w != 0, target_ids.long(), torch.zeros_like(target_ids.long()))  # unused rows
    logp_all = torch.log_softmax(logits.to(cd) / temperature, dim=-1)
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    adv = _token_advantages(logits, advantages, advantage_scale).to(cd)
    ratio = torch.exp((logp - old_logprobs.to(cd)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    clipped = pg2 > pg1
    pg = torch.where(clipped, pg2, pg1)
    dual = torch.zeros_like(clipped)
    if dual_clip is not None:
        pg3 = -dual_clip * adv
        dual = (adv < 0) & (pg > pg3)
        pg = torch.where(dual, pg3, pg)
    kl = torch.zeros_like(logp)
    if ref_logprobs is not None:
        delta = (ref_logprobs.to(cd) - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = torch.exp(delta) - delta - 1.0
        if kl_clamp is not None:
            kl = kl.clamp(-kl_clamp, kl_clamp)
    per_token = w * (m * pg + beta * kl - entropy_coef * entropy - nll_coef * logp)
    loss = per_token.sum() / normalizer
    return loss, loss_stats(w, m, clipped, dual, kl, entropy)


class _GrpoLossFunction(torch.autograd.Function):
    """Autograd wrapper: the forward kernel saves O(T) floats, the backward kernel writes dlogits."""

    @staticmethod
    def forward(ctx, logits, ids, old, adv, lmask, weight, ref, normalizer, params):
        kern = load_kernels("_grpo_loss_kernels", logits)
        x, l_inner, s_outer, s_inner = row_layout(logits)
        n_rows, n_cols = ids.numel(), x.shape[-1]
        outs = [torch.empty(n_rows, device=x.device, dtype=torch.float32) for _ in range(8)]  # all rows written
        loss_tok, g, c, lse, ent, kl, clip, dual = outs
        block, warps = vocab_block(n_cols, kern.INTERPRETED, params["block_v"])
        if n_rows:
            kern.grpo_fwd_kernel[(n_rows,)](
                x, ids, old, adv, lmask, weight, ref, *outs,
                n_cols, l_inner, s_outer, s_inner, kern.LOG2E / params["temperature"],
                params["eps_low"], params["eps_high"], params["dual_clip"] or 0.0, LOG_RATIO_CLAMP,
                params["kl_clamp"], params["beta"], params["entropy_coef"], params["nll_coef"],
                HAS_REF=ref is not None, HAS_DUAL=params["dual_clip"] is not None,
                BLOCK_V=block, num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(x, ids, g, c, lse, ent)
        ctx.normalizer, ctx.params, ctx.out_shape = normalizer, params, logits.shape
        ctx.mark_non_differentiable(kl, ent, clip, dual)
        return loss_tok.sum() / normalizer, kl, ent, clip, dual

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        x, ids, g, c, lse, ent = ctx.saved_tensors
        kern = load_kernels("_grpo_loss_kernels", x)
        _, l_inner, s_outer, s_inner = row_layout(x)
        n_rows, n_cols = ids.numel(), x.shape[-1]
        dx = torch.empty(ctx.out_shape, device=x.device, dtype=x.dtype)
        scale = (grad_loss.float() / ctx.normalizer).reshape(1).contiguous()
        block, warps = vocab_block(n_cols, kern.INTERPRETED, ctx.params["block_v"])
        temperature = ctx.params["temperature"]
        if n_rows:
            kern.grpo_bwd_kernel[(n_rows,)](
                x, ids, g, c, lse, ent, scale, dx,
                n_cols, l_inner, s_outer, s_inner, n_cols, kern.LOG2E / temperature, 1.0 / temperature,
                BLOCK_V=block, num_warps=warps,
            )  # fmt: skip
        return dx, None, None, None, None, None, None, None, None


def masked_grpo_loss_triton(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor,
    normalizer: float | torch.Tensor,
    *,
    advantage_scale: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    nll_coef: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    kl_clamp: float | None = 10.0,
    temperature: float = 1.0,
    block_v: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Triton `masked_grpo_loss`: 2 reads + 1 write of the logits for forward + backward, fp32 math.

    Rows with token_weights == 0 (padding) are neither read nor given gradient work (their dlogits
    rows are written as zeros). `block_v` overrides the vocabulary tile (tests).
    """
    _check_args(beta, ref_logprobs, dual_clip, temperature, eps_low, eps_high, kl_clamp)
    n = target_ids.numel()
    if tuple(target_ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"target_ids {tuple(target_ids.shape)} must equal logits.shape[:-1]")
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.detach().float()
    adv = _token_advantages(logits, advantages, advantage_scale)
    per_token = [flat_rows(t, n, name).float() for t, name in ((old_logprobs, "old_logprobs"), (adv, "adv"))]
    lmask = flat_rows(loss_mask, n, "loss_mask")
    weight = flat_rows(token_weights, n, "token_weights")
    ref = flat_rows(ref_logprobs, n, "ref_logprobs")
    params = dict(
        temperature=float(temperature), eps_low=float(eps_low), eps_high=float(eps_high),
        dual_clip=None if dual_clip is None else float(dual_clip), beta=float(beta),
        kl_clamp=float("inf") if kl_clamp is None else float(kl_clamp),
        entropy_coef=float(entropy_coef), nll_coef=float(nll_coef), block_v=block_v,
    )  # fmt: skip
    ids = flat_rows(target_ids, n, "target_ids")
    loss, kl, ent, clip, dual = _GrpoLossFunction.apply(logits, ids, *per_token, lmask, weight, ref, normalizer, params)
    return loss, loss_stats(weight.float(), lmask, clip, dual, kl, ent)


def masked_grpo_loss(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor,
    normalizer: float | torch.Tensor,
    *,
    advantage_scale: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    nll_coef: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    kl_clamp: float | None = 10.0,
    temperature: float = 1.0,
    impl: str = "auto",
) -> tuple[torch.Tensor, Stats]:
    """Masked clipped-ratio policy loss with optional k3-KL, entropy and NLL terms (module docstring).

    Args:
        logits: [N, L, V] or [T, V] current-policy logits (requires grad); row strides arbitrary.
        target_ids: sampled ids, [N, L] / [T]; ids of rows with token_weights == 0 are ignored.
        old_logprobs: log-probs under the behaviour policy (same temperature), [N, L] / [T].
        advantages: per token, or per sequence [N] with 3-D logits.
        loss_mask: tokens carrying the policy-gradient term (0/1, any dtype), [N, L] / [T].
        token_weights: normalisation weights w_t >= 0, [N, L] / [T]; 0 marks padding.
        normalizer: Z > 0, a float or a 0-dim tensor (a tensor avoids a host sync when it is computed
            on the device, e.g. an all-reduced token count).
        advantage_scale: optional per-sequence [N] (e.g. VPPO's alpha) or per-token multiplier of A.
        ref_logprobs: reference-policy log-probs for the k3 KL term; required when beta != 0.
        beta, entropy_coef, nll_coef: coefficients (signs in the module docstring).
        eps_low, eps_high: ratio clip range [1 - eps_low, 1 + eps_high].
        dual_clip: c > 1 for the dual clip on negative advantages, or None.
        kl_clamp: bound of the k3 estimate (10, as verl / EasyR1 ``low_var_kl``), or None for no clamp.
        temperature: logits are divided by T.
        impl: "auto" (Triton on CUDA, else reference), "triton" or "torch".

    Returns:
        (loss, stats): the scalar loss (differentiable w.r.t. logits only) and detached 0-dim tensors
        clip_frac, dual_clip_frac, kl, entropy (see `loss_stats`).
    """
    kwargs = dict(
        advantage_scale=advantage_scale, ref_logprobs=ref_logprobs, beta=beta, entropy_coef=entropy_coef,
        nll_coef=nll_coef, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, kl_clamp=kl_clamp,
        temperature=temperature,
    )  # fmt: skip
    args = (logits, target_ids, old_logprobs, advantages, loss_mask, token_weights, normalizer)
    if resolve_impl(impl, logits) == "triton":
        return masked_grpo_loss_triton(*args, **kwargs)
    return masked_grpo_loss_reference(*args, **kwargs)
