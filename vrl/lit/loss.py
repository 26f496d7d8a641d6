"""The micro-batch objective: policy-gradient + KL + entropy terms, aggregated, plus hook losses (H10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vrl.lit.logprobs import response_logits, response_targets, token_stats
from vrl.methods.kl import KLPenalty
from vrl.methods.loss_agg import LossAgg
from vrl.methods.policy_loss import PolicyLoss
from vrl.types import Rollout


@dataclass
class Objective:
    """Everything that turns a scored micro-batch into a scalar loss.

    Args:
        policy_loss: clipped surrogate (``conf/policy_loss``).
        loss_agg: token/sequence averaging (``conf/loss_agg``).
        kl: KL-to-reference term, or None.
        entropy_coef: > 0 adds an entropy bonus (loss -= c*H), < 0 a penalty; 0 skips computing H.
        temperature: the sampling temperature (log-probs are scored at the distribution sampled from).
        kernel_impl: ``torch`` or a ``vrl_kernels`` implementation for the vocabulary statistics.
        suppress_ids: token ids the sampler cannot emit (set by the module from the tokenizer).
    """

    policy_loss: PolicyLoss
    loss_agg: LossAgg
    kl: KLPenalty | None = None
    entropy_coef: float = 0.0
    temperature: float = 1.0
    kernel_impl: str = "torch"
    suppress_ids: list[int] | None = None

    def __call__(self, model, micro: Rollout, normalizer: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        """Loss of one micro-batch (already divided by the mini-batch ``normalizer``).

        Returns:
            the loss; detached stats as sums over tokens (``*_sum``) so the caller can average over any
            number of micro-batches exactly; and the forward outputs (``logits``, ``logprobs``,
            ``entropy``) for hooks that add loss terms.
        """
        logits = response_logits(model, micro, self.temperature, self.suppress_ids)
        logprobs, entropy = token_stats(
            logits, response_targets(micro), with_entropy=self.entropy_coef != 0, impl=self.kernel_impl
        )
        mask = micro.response_mask
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
        if self.kl is not None and self.kl.coef > 0:
            kl = self.kl(logprobs, micro.ref_logprobs)
            per_token = per_token + self.kl.coef * kl
            stats["kl_sum"] = (kl.detach() * mask).sum()
        if entropy is not None:
            per_token = per_token - self.entropy_coef * entropy
            stats["entropy_sum"] = (entropy.detach() * mask).sum()
        loss = self.loss_agg(per_token, mask, normalizer)
        return loss, stats, {"logits": logits, "logprobs": logprobs, "entropy": entropy}
