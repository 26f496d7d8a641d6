"""VPPO (Huang et al., "Spotlight on Token Perception for Multimodal RL", arXiv 2510.09285).

Per step: score the sampled responses once more with the image perturbed (no grad, old policy), turn the
per-token change into a visual-dependency score, keep only the top rho tokens of each response in the
policy-gradient term (TGF) and rescale each response's advantage by its mean dependency (TAS).

Pure functions first (shapes: N sequences, L response tokens); the hook that wires them into the loop last.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from vrl.hooks import Hook, PassResult, StepContext, TokenWeights
from vrl.methods.entropy_focus import token_entropy, top_fraction_mask
from vrl.models.scoring import response_targets
from vrl.types import Rollout, cat_rollouts

SCOPES = ("step", "rank", "mini", "micro", "published", "released")


def token_dependency_k3(logprobs: torch.Tensor, perturbed_logprobs: torch.Tensor) -> torch.Tensor:
    """s_t = clamp(exp(d) - d - 1, 0, 10), d = clamp(lp' - lp, -20, 20), exactly as the published code.

    This is the k3 single-sample estimate, at the sampled token, of KL(pi(.|I) || pi(.|I')): unbiased for
    the full-vocabulary KL that ``dependency="exact_kl"`` computes, at one log-prob per token. [N, L].
    """
    d = (perturbed_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(0.0, 10.0)


def tas_alpha(
    seq_score: torch.Tensor,
    has_tokens: torch.Tensor,
    beta_min: float,
    score_min: torch.Tensor | None = None,
    score_max: torch.Tensor | None = None,
    gather=None,
) -> torch.Tensor:
    """Trajectory-level advantage shaping (TAS): alpha [N] from the mean dependency per response [N].

    S_hat = clip((S - S_min) / (S_max - S_min), 0, 1), mu = mean(S_hat), alpha = beta_min + S_hat (1 - beta_min)
    / (mu + 1e-8): responses that lean on the image more get a larger factor, the mean factor is 1. alpha = 1
    when S_max - S_min <= 1e-6 (no spread to rank by) and on rows without tokens (left out of min, max and
    mean). ``score_min`` / ``score_max`` given: the scope's extrema (taken elsewhere, e.g. over ranks); ``gather``
    given (callable stacking a scalar over ranks): mu is the mean over every rank's responses, so the mean factor is
    1 over the step, as one process over the same batch computes it.
    ``vrl_kernels`` fuses this formula into its top-k kernel and checks itself against it.
    """
    s = seq_score.float()
    inf = torch.tensor(float("inf"), device=s.device)
    s_min = torch.where(has_tokens, s, inf).amin() if score_min is None else score_min.to(s)
    s_max = torch.where(has_tokens, s, -inf).amax() if score_max is None else score_max.to(s)
    span = s_max - s_min
    ok = span > 1e-6
    s_hat = ((s - s_min) / torch.where(ok, span, torch.ones_like(span))).clamp(0.0, 1.0)
    s_hat = torch.where(has_tokens, s_hat, torch.zeros_like(s_hat))
    total, count = s_hat.sum(), has_tokens.sum().to(s_hat)
    if gather is not None:
        total, count = gather(total).sum(), gather(count).sum()
    mu = total / count.clamp_min(1)
    alpha = beta_min + s_hat * (1.0 - beta_min) / (mu + 1e-8)
    return torch.where(ok & has_tokens, alpha, torch.ones_like(alpha))


def scoped_alpha(
    seq_score: torch.Tensor,
    has_tokens: torch.Tensor,
    beta_min: float,
    scope: str,
    chunk: int,
    gather=None,
    mini_chunk: int | None = None,
) -> torch.Tensor:
    """TAS factors alpha [N] with min/max and mean taken over the chosen scope (mean alpha = 1 per scope).

    Args:
        seq_score: [N] mean dependency per response.
        has_tokens: [N] responses with at least one valid token.
        beta_min: alpha's floor (0.9 in the paper); 1 disables shaping.
        scope: ``step`` (all ranks' sequences of the step), ``rank`` (this rank's), ``mini`` / ``micro``
            (min, max and mean per chunk of ``chunk`` sequences), ``published`` (min/max over the rank's
            batch, mean per micro-batch chunk; equal to ``released`` when the rank's batch is one mini-batch),
            ``released`` (min/max per mini-batch chunk of ``mini_chunk`` sequences, mean per micro-batch chunk
            of ``chunk`` sequences inside it: what the released code computes in ``dp_actor.update_policy``,
            whose alphas average to 1 per micro-batch; the released 7B run has 3 mini-batches per step).
        chunk: mini- or micro-batch size in sequences for the chunked scopes.
        gather: callable(tensor) -> tensor stacking a scalar over ranks (``LightningModule.all_gather``).
        mini_chunk: the rank's mini-batch size in sequences for ``released``; None = the whole batch.
    """
    if scope not in SCOPES:
        raise ValueError(f"hooks.vppo.scale_scope={scope!r}; choose one of {SCOPES}")
    inf = torch.tensor(float("inf"), device=seq_score.device)
    local_min = torch.where(has_tokens, seq_score, inf).amin()
    local_max = torch.where(has_tokens, seq_score, -inf).amax()
    if scope in ("step", "rank"):
        lo, hi = local_min, local_max
        if scope == "step" and gather is not None:  # min, max and mean over every rank's responses
            lo, hi = gather(local_min).amin(), gather(local_max).amax()
            return tas_alpha(seq_score, has_tokens, beta_min, lo, hi, gather)
        return tas_alpha(seq_score, has_tokens, beta_min, lo, hi)
    alpha = torch.ones_like(seq_score, dtype=torch.float32)
    if scope == "released":  # [mini-batch [micro-batch ...] ...], both contiguous as the loop slices them
        for mini in torch.arange(seq_score.shape[0], device=seq_score.device).split(mini_chunk or len(seq_score)):
            valid = has_tokens[mini]
            lo = torch.where(valid, seq_score[mini], inf).amin()
            hi = torch.where(valid, seq_score[mini], -inf).amax()
            for idx in mini.split(chunk):
                alpha[idx] = tas_alpha(seq_score[idx], has_tokens[idx], beta_min, lo, hi)
        return alpha
    for idx in torch.arange(seq_score.shape[0], device=seq_score.device).split(chunk):
        lo, hi = (local_min, local_max) if scope == "published" else (None, None)
        alpha[idx] = tas_alpha(seq_score[idx], has_tokens[idx], beta_min, lo, hi)
    return alpha


class VPPO(Hook):
    """VPPO's perturbed-image pass, token filter and trajectory shaping, as one hook (``+method=vppo``).

    Args:
        perturbation: pixel-tensor perturbation (``conf/perturb``; patch blackening p = 0.5 by default).
        rho: fraction of each response's tokens kept in the policy-gradient term (0.4); 1 keeps all.
        beta_min: TAS floor (0.9); 1 switches trajectory shaping off.
        dependency: ``k3_sampled`` (the published estimator) or ``exact_kl`` (full-vocabulary
            KL(P_img || P_pert) through ``vrl_kernels.dual_vocab_stats``; one more pass over the logits).
        mask_scope: draw the perturbation per ``response`` (published) or share it per ``group``.
        scale_scope: where TAS takes min/max and mean (see ``scoped_alpha``); ``step`` by default,
            ``released`` reproduces the released code (min/max per mini-batch, mean per micro-batch, on each
            rank; exact when the loop's mini-batches are contiguous slices, i.e. ``ppo_epochs`` = 1 as
            released: more epochs shuffle them); ``published`` is the same with one mini-batch per step.
        normalize_by_kept: divide the loss by kept tokens instead of all valid tokens (published: all).
        paired_pass: when the loop has no other use for old log-probs (one PPO epoch, one mini-batch), score
            the old and the perturbed log-probs in one no-grad pass over [rollout; perturbed rollout] with
            twice the micro-batch, instead of two passes; ``false`` always takes two passes.
        entropy_rho: the released ``use_vppo_on_entropy`` variant (off in the released runs): also keep the top
            ``entropy_rho`` highest-entropy tokens of the step (0.2), OR-combined with the perception mask
            (:mod:`vrl.methods.entropy_focus`; one more no-grad pass over the logits); None = off.
        seed: perturbation seed; the draw also depends on the step, so resumed runs repeat it.
        order: hook order; VPPO's factor applies after PEARL's (core.md §6).
    """

    def __init__(
        self,
        perturbation,
        rho: float = 0.4,
        beta_min: float = 0.9,
        dependency: str = "k3_sampled",
        mask_scope: str = "response",
        scale_scope: str = "step",
        normalize_by_kept: bool = False,
        paired_pass: bool = True,
        entropy_rho: float | None = None,
        seed: int = 0,
        order: int = 30,
    ) -> None:
        if not 0 < rho <= 1:
            raise ValueError(f"hooks.vppo.rho must be in (0, 1], got {rho}")
        if not 0 <= beta_min <= 1:
            raise ValueError(f"hooks.vppo.beta_min must be in [0, 1], got {beta_min}")
        if dependency not in ("k3_sampled", "exact_kl"):
            raise ValueError(f"hooks.vppo.dependency={dependency!r}; choose k3_sampled or exact_kl")
        if mask_scope not in ("response", "group"):
            raise ValueError(f"hooks.vppo.mask_scope={mask_scope!r}; choose response or group")
        if scale_scope not in SCOPES:
            raise ValueError(f"hooks.vppo.scale_scope={scale_scope!r}; choose one of {SCOPES}")
        self.perturbation, self.rho, self.beta_min = perturbation, rho, beta_min
        self.dependency, self.mask_scope, self.scale_scope = dependency, mask_scope, scale_scope
        self.normalize_by_kept, self.seed, self.order = normalize_by_kept, seed, order
        self.paired_pass = paired_pass
        if entropy_rho is not None and not 0 < entropy_rho <= 1:
            raise ValueError(f"hooks.vppo.entropy_rho must be in (0, 1] or null, got {entropy_rho}")
        self.entropy_rho = entropy_rho
        # with the paired pass, old log-probs come from extra_pass itself (the loop skips its own pass)
        self.needs_old_logprobs = not paired_pass or dependency == "exact_kl"
        # both loop over ctx.logits per micro-batch of this rank's rollout (refused on several FSDP ranks)
        self.rank_dependent_forwards = dependency == "exact_kl" or entropy_rho is not None

    # H7: the perturbed teacher-forced pass -------------------------------------------------------------
    def extra_pass(self, rollout: Rollout, ctx: StepContext) -> PassResult:
        """Dependency, mask and TAS factors of the main-branch sequences (auxiliary branches, e.g. PEARL's
        probes, keep every token and alpha = 1, as in core.md §6)."""
        t0 = time.perf_counter()
        main = None if rollout.branch is None else torch.nonzero(rollout.branch.cpu() == 0).squeeze(-1)
        sub = rollout if main is None else rollout.select(main)
        pixels = self._perturb(sub, ctx)
        old = None
        if self.dependency == "exact_kl":
            score = self._exact_kl(sub, pixels, ctx)
        elif rollout.old_logprobs is None:  # paired: one pass over [rollout; perturbed], twice the chunk
            both = cat_rollouts([rollout, replace(sub, pixel_values=pixels)], ctx.pad_token_id)
            lp = ctx.score(both, micro_batch_size=2 * ctx.micro_batch_size)
            n = rollout.num_sequences
            old = lp[:n]
            score = token_dependency_k3(old if main is None else old[main.to(lp.device)], lp[n:])
        else:
            score = token_dependency_k3(sub.old_logprobs, ctx.score(sub, pixel_values=pixels))
        extras = self._shape(score * sub.response_mask, sub.response_mask, ctx)
        if self.entropy_rho is not None:  # OR with the top entropy_rho highest-entropy tokens of the step
            entropy = top_fraction_mask(token_entropy(sub, ctx), sub.response_mask, self.entropy_rho)
            extras["vppo_token_mask"] = torch.maximum(extras["vppo_token_mask"], entropy)
        if main is not None:
            extras = _scatter_main(rollout.response_mask, extras, main)
        ctx.log(self._metrics(rollout.response_mask if main is None else sub.response_mask, extras, main, t0))
        return PassResult(extras=extras, old_logprobs=old)

    def _perturb(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor:
        if rollout.pixel_values is None or ctx.vision is None:
            raise ValueError("hooks.vppo: the rollout has no images to perturb (text-only data?)")
        from vrl.methods.perturb import per_image_keys

        keys = rollout.group_ids if self.mask_scope == "group" else torch.arange(rollout.num_sequences)
        # distinct keys per image slot, so two images of one response get independent masks
        image_keys = per_image_keys(rollout.images_per_seq.cpu(), keys.cpu())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.step)
        v = ctx.vision
        return self.perturbation(
            rollout.pixel_values, rollout.image_grid_thw, image_keys, gen, v.image_mean, v.image_std,
            v.patch_size, v.temporal_patch_size, v.merge_size,
        )  # fmt: skip

    @torch.no_grad()
    def _exact_kl(self, rollout: Rollout, pixels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        from vrl_kernels import dual_vocab_stats

        perturbed, chunks = replace(rollout, pixel_values=pixels), []
        for idx in torch.arange(rollout.num_sequences).split(ctx.micro_batch_size):
            a, b = rollout.select(idx), perturbed.select(idx)
            kl = dual_vocab_stats(ctx.logits(a), ctx.logits(b), response_targets(a), impl=ctx.kernel_impl).kl
            chunks.append(kl)
        return torch.cat(chunks).clamp(min=0.0)

    # TGF mask and TAS factors, computed once per step ---------------------------------------------------
    def _shape(self, dependency: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        from vrl_kernels import segmented_topk_mask_and_shape

        out = segmented_topk_mask_and_shape(dependency, mask, rho=self.rho, impl=ctx.kernel_impl)
        mini = ctx.mini_batch_size
        chunk = mini if self.scale_scope == "mini" and mini else ctx.micro_batch_size
        has_tokens = mask.sum(-1) > 0
        alpha = scoped_alpha(out.seq_score, has_tokens, self.beta_min, self.scale_scope, chunk, ctx.gather, mini)
        return {
            "visual_dependency": dependency,
            "vppo_token_mask": out.token_mask.to(mask.dtype),
            "vppo_alpha": alpha.to(mask.dtype),
            "vppo_seq_score": out.seq_score,
        }

    # H8: after group normalisation ------------------------------------------------------------------
    def advantage_factor(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor:
        return rollout.extras["vppo_alpha"]

    # H9: top-k tokens carry the policy gradient --------------------------------------------------------
    def token_weights(self, rollout: Rollout, ctx: StepContext) -> TokenWeights:
        kept = rollout.extras["vppo_token_mask"]
        return TokenWeights(loss=kept, norm=kept * rollout.response_mask if self.normalize_by_kept else None)

    @staticmethod
    def _metrics(mask: torch.Tensor, extras: dict, main: torch.Tensor | None, t0: float) -> dict[str, float]:
        """Over the main-branch sequences (``main`` indexes them in ``extras`` when branches are attached)."""
        pick = (lambda t: t) if main is None else (lambda t: t[main.to(t.device)])
        dep, kept, alpha = (pick(extras[k]) for k in ("visual_dependency", "vppo_token_mask", "vppo_alpha"))
        return {
            "vppo/dependency_mean": float(dep.sum() / mask.sum().clamp(min=1)),
            "vppo/kept_token_frac": float(kept.sum() / mask.sum().clamp(min=1)),
            "vppo/alpha_min": float(alpha.min()),
            "vppo/alpha_max": float(alpha.max()),
            "vppo/alpha_std": float(alpha.std()) if alpha.numel() > 1 else 0.0,
            "perf/vppo_pass_s": time.perf_counter() - t0,
        }


def _scatter_main(mask: torch.Tensor, sub: dict[str, torch.Tensor], main: torch.Tensor) -> dict[str, torch.Tensor]:
    """The main-branch results ``sub`` spread over all N rows (``mask`` [N, L]); auxiliary rows keep every valid
    token (mask = response mask), alpha = 1 and dependency 0."""
    n = mask.shape[0]
    full = {
        "visual_dependency": torch.zeros_like(mask),
        "vppo_token_mask": mask.clone(),
        "vppo_alpha": torch.ones(n, dtype=mask.dtype, device=mask.device),
        "vppo_seq_score": torch.zeros(n, dtype=mask.dtype, device=mask.device),
    }
    for key, value in full.items():
        value[main.to(value.device)] = sub[key].to(value.dtype)
    return full
