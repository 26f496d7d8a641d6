"""High-entropy token focus (Wang et al., "Beyond the 80/20 Rule", arXiv 2506.01939): the policy gradient only
on the top rho (20%) highest-entropy response tokens, the "forking" tokens where a reasoning path branches.

Pure functions first (N sequences, L response tokens), the hook last. The published code ranks entropies over
the whole batch (``scope="batch"``: one top-k over every valid token, k = max(1, ceil(rho * tokens))); VPPO's
released variant (``use_vppo_on_entropy``) reuses the same mask and ORs it with its perception mask
(``hooks.vppo.entropy_rho``). Deliberate difference: entropies come from the no-grad pass of the policy that
sampled (the loop's old policy), once per step, not from each training micro-batch's forward; with one PPO
epoch and one mini-batch the two are the same numbers. Under DDP ``batch`` ranks this rank's tokens.
"""

from __future__ import annotations

import math

import torch

from vrl.hooks import Hook, PassResult, StepContext, TokenWeights
from vrl.models.scoring import response_targets, token_stats
from vrl.types import Rollout

SCOPES = ("batch", "response")


@torch.no_grad()
def token_entropy(rollout: Rollout, ctx: StepContext) -> torch.Tensor:
    """Full-vocabulary entropy [N, L] of the current policy at each response position (0 on padding), at the
    sampling temperature, in micro-batches of ``ctx.micro_batch_size``."""
    chunks = []
    for idx in torch.arange(rollout.num_sequences).split(max(1, ctx.micro_batch_size)):
        micro = rollout.select(idx)
        _, entropy = token_stats(ctx.logits(micro), response_targets(micro), with_entropy=True)
        chunks.append(entropy)
    return torch.cat(chunks) * rollout.response_mask


def top_fraction_mask(scores: torch.Tensor, mask: torch.Tensor, rho: float, scope: str = "batch") -> torch.Tensor:
    """1.0 on the top ``rho`` of valid tokens by score, else 0 [N, L]; ties go to the earlier position.

    Args:
        scores: [N, L] per-token scores (entropy).
        mask: [N, L] valid response tokens.
        rho: fraction kept, k = max(1, ceil(rho * valid tokens)) of the scope (none when it has no tokens).
        scope: ``batch`` (one ranking over every valid token, as published) or ``response`` (per sequence).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "response":
        return torch.stack([top_fraction_mask(s[None], m[None], rho)[0] for s, m in zip(scores, mask)])
    valid = mask.flatten() > 0
    n = int(valid.sum())
    out = torch.zeros(mask.numel(), dtype=mask.dtype, device=mask.device)
    if n == 0:
        return out.view_as(mask)
    k = max(1, math.ceil(rho * n - 1e-9))
    positions = torch.nonzero(valid).squeeze(-1)
    order = torch.sort(scores.flatten()[positions].float(), descending=True, stable=True).indices
    out[positions[order[:k]]] = 1.0
    return out.view_as(mask)


class EntropyFocus(Hook):
    """Keep the policy gradient on the highest-entropy tokens (``+method=entropy_focus``).

    Args:
        rho: fraction of tokens kept (0.2 as published).
        scope: ``batch`` (published) or ``response``.
        order: hook order; its token weights multiply with other hooks' (an AND of masks).
    """

    rank_dependent_forwards = True  # token_entropy loops over ctx.logits (refused on several FSDP ranks)

    def __init__(self, rho: float = 0.2, scope: str = "batch", order: int = 35) -> None:
        if not 0 < rho <= 1:
            raise ValueError(f"hooks.entropy_focus.rho must be in (0, 1], got {rho}")
        if scope not in SCOPES:
            raise ValueError(f"hooks.entropy_focus.scope={scope!r}; choose one of {SCOPES}")
        self.rho, self.scope, self.order = rho, scope, order

    def extra_pass(self, rollout: Rollout, ctx: StepContext) -> PassResult:
        entropy = token_entropy(rollout, ctx)
        keep = top_fraction_mask(entropy, rollout.response_mask, self.rho, self.scope)
        valid = rollout.response_mask.sum().clamp(min=1)
        ctx.log({"entropy_focus/kept_token_frac": float(keep.sum() / valid)})
        ctx.log({"entropy_focus/entropy_mean": float(entropy.sum() / valid)})
        return PassResult(extras={"token_entropy": entropy, "entropy_mask": keep})

    def token_weights(self, rollout: Rollout, ctx: StepContext) -> TokenWeights:
        return TokenWeights(loss=rollout.extras["entropy_mask"])
