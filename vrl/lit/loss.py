"""The micro-batch objective: policy-gradient + KL + entropy terms, aggregated, plus hook losses (H10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vrl.methods.kl import KLPenalty
from vrl.methods.loss_agg import LossAgg, positive
from vrl.methods.policy_loss import PolicyLoss
from vrl.models.prefix import response_logits_shared
from vrl.models.scoring import response_targets, token_stats
from vrl.types import Rollout

#: Rollout branches the loss can average separately (main + auxiliary); a fixed size keeps the per-branch
#: denominators one tensor of equal shape on every rank for the DDP reduction.
MAX_BRANCHES = 4


@dataclass
class Objective:
    """Everything that turns a scored micro-batch into a scalar loss (the ``objective`` node of
    ``conf/train.yaml``, which interpolates the three groups, ``sampler.temperature`` and ``kernels.impl``).

    Args:
        policy_loss: per-token surrogate (``conf/policy_loss``; ``vrl.methods.policy_loss.PolicyLoss``).
        loss_agg: token/sequence averaging (``conf/loss_agg``; ``vrl.methods.loss_agg.LossAgg``).
        kl: KL-to-reference term (``conf/kl``; ``vrl.methods.kl.KLPenalty``), or None; an empty node
            (``kl=none``) becomes None.
        entropy_coef: > 0 adds an entropy bonus (loss -= c*H), < 0 a penalty; 0 skips computing H.
        nll_coef: adds c * (-log p(y_t)) of the sampled tokens: VPPO's "entropy penalty" (0.06 for 7B), a
            single-sample estimate of the entropy, which lowers it when c > 0.
        temperature: the sampling temperature (log-probs are scored at the distribution sampled from).
        kernel_impl: ``torch``, or ``auto``/``triton``: the fused ``vrl_kernels.masked_grpo_loss``, which computes
            the losses whose ``fused`` property is not None (PPO-clip, k3) with the loss_agg's ``token_weights``.
        suppress_ids: token ids the sampler cannot emit (set by the module from the tokenizer).
    """

    policy_loss: PolicyLoss
    loss_agg: LossAgg
    kl: KLPenalty | None = None
    entropy_coef: float = 0.0
    nll_coef: float = 0.0
    temperature: float = 1.0
    kernel_impl: str = "torch"
    suppress_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.kl:  # conf/kl/none.yaml composes to an empty node: no KL term, no reference model
            self.kl = None
        elif not callable(self.kl):
            raise ValueError(f"objective.kl: expected a KL estimator (conf/kl, a _target_ node) or null, got {self.kl}")
        if self.kernel_impl not in ("torch", "auto", "triton"):
            raise ValueError(f"kernels.impl={self.kernel_impl!r}; choose torch, auto or triton")
        if self.kernel_impl != "torch":
            unfused = [
                f"{key} is {type(obj).__name__}"
                for key, obj in (("policy_loss", self.policy_loss), ("kl", self.kl if self._use_kl else None))
                if obj is not None and obj.fused is None
            ]
            if unfused:
                raise ValueError(
                    f"kernels.impl={self.kernel_impl} fuses ppo_clip and k3 only; {' and '.join(unfused)}: "
                    "use kernels=torch"
                )

    @property
    def _use_kl(self) -> bool:
        return self.kl is not None and self.kl.coef > 0

    def normalizer(self, mini: Rollout, max_len: int | None = None) -> torch.Tensor:
        """The mini-batch loss denominator: a scalar, or [MAX_BRANCHES] (one per branch) when auxiliary
        branches are attached, so that each branch is averaged on its own: PEARL's
        L = L_main / T_main + lambda * L_probe / T_probe rather than one average over both branches' tokens.
        A token count is this rank's and may be 0; it is clamped only after the DDP reduction, at division
        (``vrl.methods.loss_agg.positive``).
        """
        norm_mask = mini.norm_mask if mini.norm_mask is not None else mini.response_mask
        if mini.branch is None:
            return self.loss_agg.normalizer(norm_mask, max_len)
        branch = mini.branch.to(norm_mask.device)
        if int(branch.max()) >= MAX_BRANCHES:
            raise ValueError(f"at most {MAX_BRANCHES} rollout branches are supported, got {int(branch.max()) + 1}")
        return torch.stack([self.loss_agg.normalizer(norm_mask[branch == b], max_len) for b in range(MAX_BRANCHES)])

    def __call__(self, model, micro: Rollout, normalizer: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        """Loss of one micro-batch (already divided by the mini-batch ``normalizer``: a scalar, or [n] per
        sequence when branches are attached).

        Returns:
            the loss; detached stats as sums over tokens (``*_sum``) so the caller can average over any
            number of micro-batches exactly; and the forward outputs (``logits``, ``logprobs``,
            ``entropy``) for hooks that add loss terms.
        """
        logits = response_logits_shared(model, micro, self.temperature, self.suppress_ids)
        if self.kernel_impl != "torch":
            return self._fused(logits, micro, normalizer)
        logprobs, entropy = token_stats(logits, response_targets(micro), with_entropy=self.entropy_coef != 0)
        mask = micro.norm_mask if micro.norm_mask is not None else micro.response_mask
        old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        pg, info = self.policy_loss(logprobs, old, micro.advantages, mask)
        loss_mask = micro.loss_mask if micro.loss_mask is not None else mask
        per_token = pg * loss_mask
        stats = {
            "pg_sum": (pg * loss_mask).detach().sum(),
            "clipped_sum": (info["clipped"].float() * loss_mask).sum(),
            "kept_tokens": loss_mask.detach().sum(),
            "tokens": mask.sum(),
        }
        # auxiliary branches (PEARL's probes) carry their policy-gradient term only, as published
        main = mask if micro.branch is None else mask * (micro.branch == 0).to(mask.dtype)[:, None]
        if self._use_kl:
            kl = self.kl(logprobs, micro.ref_logprobs) * main
            per_token = per_token + self.kl.coef * kl
            stats["kl_sum"] = (kl.detach() * mask).sum()
        if self.nll_coef != 0:
            per_token = per_token - self.nll_coef * logprobs * main
            stats["nll_sum"] = (-logprobs.detach() * mask).sum()
        if entropy is not None:
            per_token = per_token - self.entropy_coef * entropy * main
            stats["entropy_sum"] = (entropy.detach() * mask).sum()
        loss = self.loss_agg(per_token, mask, normalizer)
        return loss, stats, {"logits": logits, "logprobs": logprobs, "entropy": entropy}

    def _fused(self, logits: torch.Tensor, micro: Rollout, normalizer: torch.Tensor):
        """The same objective through ``vrl_kernels.masked_grpo_loss`` (K3): one fused pass, forward and
        backward, with every aggregation mode expressed as token weights over the mini-batch normaliser."""
        from vrl_kernels import masked_grpo_loss, vocab_stats

        targets = response_targets(micro)
        mask = micro.norm_mask if micro.norm_mask is not None else micro.response_mask
        weights = self.loss_agg.token_weights(mask)
        use_kl = self._use_kl
        if micro.branch is not None and (use_kl or self.entropy_coef or self.nll_coef):
            raise ValueError(
                "kernels.impl: the fused loss applies KL/entropy/nll terms to every row, but auxiliary rollout "
                "branches (PEARL probes) carry the policy-gradient term only: use kernels=torch with this stack"
            )
        normalizer = positive(normalizer)  # the guard of LossAgg.__call__: 0 tokens anywhere -> loss 0
        if normalizer.dim():  # per-sequence denominators (rollout branches) folded into the token weights
            weights, normalizer = weights / normalizer[:, None], torch.ones((), device=normalizer.device)
        old = micro.old_logprobs
        if old is None:  # strictly on-policy: old = current log-probs (ratio 1), read without a graph
            old = vocab_stats(logits.detach(), targets, impl=self.kernel_impl).logprob * mask
        loss_mask = micro.loss_mask if micro.loss_mask is not None else mask
        loss, st = masked_grpo_loss(
            logits, targets, old, micro.advantages, loss_mask, weights, normalizer,
            ref_logprobs=micro.ref_logprobs if use_kl else None, beta=self.kl.coef if use_kl else 0.0,
            entropy_coef=self.entropy_coef, nll_coef=self.nll_coef, **self.policy_loss.fused,
            **(self.kl.fused if use_kl else {"kl_clamp": None}), impl=self.kernel_impl,
        )  # fmt: skip
        tokens, kept = mask.sum(), (loss_mask * mask).sum()
        stats = {"clipped_sum": st["clip_frac"] * kept, "kept_tokens": kept, "tokens": tokens}
        if use_kl:
            stats["kl_sum"] = st["kl"] * tokens
        if self.entropy_coef != 0:
            stats["entropy_sum"] = st["entropy"] * tokens
        return loss, stats, {"logits": logits, "logprobs": None, "entropy": None}
