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

from vrl.models.scoring import response_logits, response_targets, score_logprobs
from vrl.types import Rollout, cat_rollouts

SCOPES = ("step", "rank", "mini", "micro", "published", "released")


def token_dependency_k3(logprobs: torch.Tensor, perturbed_logprobs: torch.Tensor) -> torch.Tensor:
    """s_t = clamp(exp(d) - d - 1, 0, 10), d = clamp(lp' - lp, -20, 20), exactly as the published code.

    This is the k3 single-sample estimate, at the sampled token, of KL(pi(.|I) || pi(.|I')): unbiased for
    the full-vocabulary KL that ``dependency="exact_kl"`` computes, at one log-prob per token. [N, L].
    """
    d = (perturbed_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(0.0, 10.0)


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
    from vrl_kernels import vppo_alpha_reference

    if scope not in SCOPES:
        raise ValueError(f"hooks.vppo.scale_scope={scope!r}; choose one of {SCOPES}")
    inf = torch.tensor(float("inf"), device=seq_score.device)
    local_min = torch.where(has_tokens, seq_score, inf).amin()
    local_max = torch.where(has_tokens, seq_score, -inf).amax()
    if scope in ("step", "rank"):
        lo, hi = local_min, local_max
        if scope == "step" and gather is not None:
            lo, hi = gather(local_min).amin(), gather(local_max).amax()
        return vppo_alpha_reference(seq_score, has_tokens, beta_min, lo, hi)
    alpha = torch.ones_like(seq_score, dtype=torch.float32)
    if scope == "released":  # [mini-batch [micro-batch ...] ...], both contiguous as the loop slices them
        for mini in torch.arange(seq_score.shape[0], device=seq_score.device).split(mini_chunk or len(seq_score)):
            valid = has_tokens[mini]
            lo = torch.where(valid, seq_score[mini], inf).amin()
            hi = torch.where(valid, seq_score[mini], -inf).amax()
            for idx in mini.split(chunk):
                alpha[idx] = vppo_alpha_reference(seq_score[idx], has_tokens[idx], beta_min, lo, hi)
        return alpha
    for idx in torch.arange(seq_score.shape[0], device=seq_score.device).split(chunk):
        lo, hi = (local_min, local_max) if scope == "published" else (None, None)
        alpha[idx] = vppo_alpha_reference(seq_score[idx], has_tokens[idx], beta_min, lo, hi)
    return alpha


class VPPO:
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
        # with the paired pass, old log-probs come from extra_pass itself (the loop skips its own pass)
        self.needs_old_logprobs = not paired_pass or dependency == "exact_kl"

    # H7: the perturbed teacher-forced pass -------------------------------------------------------------
    def extra_pass(self, rollout: Rollout, module) -> None:
        """Dependency, mask and TAS factors of the main-branch sequences (auxiliary branches, e.g. PEARL's
        probes, keep every token and alpha = 1, as in core.md §6)."""
        t0 = time.perf_counter()
        main = None if rollout.branch is None else torch.nonzero(rollout.branch.cpu() == 0).squeeze(-1)
        sub = rollout if main is None else rollout.select(main)
        perturbed = replace(sub, pixel_values=self._perturb(sub, module))
        obj = module.objective
        score_args = (obj.temperature, module.micro_batch_size, obj.kernel_impl, obj.suppress_ids)
        if self.dependency == "exact_kl":
            score = self._exact_kl(sub, perturbed, module)
        elif rollout.old_logprobs is None:  # paired: one pass over [rollout; perturbed], twice the chunk
            both = cat_rollouts([rollout, perturbed], module.vlm.processor.tokenizer.pad_token_id)
            lp = score_logprobs(module.policy, both, score_args[0], 2 * score_args[1], *score_args[2:])
            n = rollout.num_sequences
            rollout.old_logprobs = lp[:n]
            score = token_dependency_k3(lp[:n] if main is None else lp[:n][main.to(lp.device)], lp[n:])
        else:
            lp_pert = score_logprobs(module.policy, perturbed, *score_args)
            score = token_dependency_k3(sub.old_logprobs, lp_pert)
        sub.extras["visual_dependency"] = score * sub.response_mask
        self._shape(sub, module)
        if main is not None:
            _scatter_main(rollout, sub, main)
        module.log_dict(self._metrics(sub, time.perf_counter() - t0), on_step=True)

    def _perturb(self, rollout: Rollout, module) -> torch.Tensor:
        if rollout.pixel_values is None:
            raise ValueError("hooks.vppo: the rollout has no images to perturb (text-only data?)")
        from vrl.methods.perturb import per_image_keys

        keys = rollout.group_ids if self.mask_scope == "group" else torch.arange(rollout.num_sequences)
        # distinct keys per image slot, so two images of one response get independent masks
        image_keys = per_image_keys(rollout.images_per_seq.cpu(), keys.cpu())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + module.global_step)
        ip = module.vlm.processor.image_processor
        return self.perturbation(
            rollout.pixel_values, rollout.image_grid_thw, image_keys, gen, ip.image_mean, ip.image_std,
            module.vlm.patch_size, getattr(ip, "temporal_patch_size", 2), module.vlm.merge_size,
        )  # fmt: skip

    @torch.no_grad()
    def _exact_kl(self, rollout: Rollout, perturbed: Rollout, module) -> torch.Tensor:
        from vrl_kernels import dual_vocab_stats

        obj, chunks = module.objective, []
        for idx in torch.arange(rollout.num_sequences).split(module.micro_batch_size):
            a, b = rollout.select(idx), perturbed.select(idx)
            logits = response_logits(module.policy, a, obj.temperature, obj.suppress_ids)
            logits_pert = response_logits(module.policy, b, obj.temperature, obj.suppress_ids)
            chunks.append(dual_vocab_stats(logits, logits_pert, response_targets(a), impl=obj.kernel_impl).kl)
        return torch.cat(chunks).clamp(min=0.0)

    # TGF mask and TAS factors, computed once per step ---------------------------------------------------
    def _shape(self, rollout: Rollout, module) -> None:
        from vrl_kernels import segmented_topk_mask_and_shape

        mask = rollout.response_mask
        impl = module.objective.kernel_impl
        out = segmented_topk_mask_and_shape(rollout.extras["visual_dependency"], mask, rho=self.rho, impl=impl)
        chunk = (
            module.mini_batch_size if self.scale_scope == "mini" and module.mini_batch_size else module.micro_batch_size
        )
        gather = module.all_gather if _world_size(module) > 1 else None
        has_tokens = mask.sum(-1) > 0
        alpha = scoped_alpha(
            out.seq_score, has_tokens, self.beta_min, self.scale_scope, chunk, gather, module.mini_batch_size
        )
        rollout.extras["vppo_token_mask"] = out.token_mask.to(mask.dtype)
        rollout.extras["vppo_alpha"] = alpha.to(mask.dtype)
        rollout.extras["vppo_seq_score"] = out.seq_score

    # H8: after group normalisation ------------------------------------------------------------------
    def transform_advantages(self, rollout: Rollout, module) -> torch.Tensor:
        return rollout.advantages * rollout.extras["vppo_alpha"].to(rollout.advantages.device)

    # H9: top-k tokens carry the policy gradient --------------------------------------------------------
    def token_mask(self, rollout: Rollout, module) -> torch.Tensor:
        kept = rollout.extras["vppo_token_mask"]
        if self.normalize_by_kept:
            rollout.norm_mask = kept * rollout.response_mask
        return kept

    def _metrics(self, rollout: Rollout, seconds: float) -> dict[str, float]:
        mask = rollout.response_mask
        dep = rollout.extras["visual_dependency"]
        alpha = rollout.extras["vppo_alpha"]
        return {
            "vppo/dependency_mean": float(dep.sum() / mask.sum().clamp(min=1)),
            "vppo/kept_token_frac": float(rollout.extras["vppo_token_mask"].sum() / mask.sum().clamp(min=1)),
            "vppo/alpha_min": float(alpha.min()),
            "vppo/alpha_max": float(alpha.max()),
            "vppo/alpha_std": float(alpha.std()) if alpha.numel() > 1 else 0.0,
            "perf/vppo_pass_s": seconds,
        }


def _scatter_main(rollout: Rollout, sub: Rollout, main: torch.Tensor) -> None:
    """Write the main-branch results of ``sub`` into the full rollout; auxiliary rows keep every valid token
    (mask = response mask), alpha = 1 and dependency 0."""
    mask = rollout.response_mask
    full = {
        "visual_dependency": torch.zeros_like(mask),
        "vppo_token_mask": mask.clone(),
        "vppo_alpha": torch.ones(rollout.num_sequences, dtype=mask.dtype, device=mask.device),
        "vppo_seq_score": torch.zeros(rollout.num_sequences, dtype=mask.dtype, device=mask.device),
    }
    for key, value in full.items():
        value[main.to(value.device)] = sub.extras[key].to(value.dtype)
        rollout.extras[key] = value


def _world_size(module) -> int:
    """Data-parallel ranks; 1 when the module is driven without a Trainer (tests, notebooks)."""
    try:
        return module.trainer.world_size
    except RuntimeError:
        return 1
