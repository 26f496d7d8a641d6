"""Teacher-forced scoring of rollouts: per-token log-probs (and entropy) of the response tokens."""

from __future__ import annotations

import torch

from vrl.types import Rollout


def response_logits(
    model, rollout: Rollout, temperature: float = 1.0, suppress_ids: list[int] | None = None
) -> torch.Tensor:
    """Logits [n, L, V] that predict the L response tokens, divided by the sampling temperature.

    Only the last L+1 positions go through the LM head (``logits_to_keep``): prompt positions with image
    tokens are long and their logits are never used. ``suppress_ids`` (tokens the sampler could not
    emit) get a large negative logit, matching the sampling distribution.
    """
    length = rollout.response_mask.shape[1]
    out = model(**rollout.model_inputs(), logits_to_keep=length + 1, use_cache=False)
    logits = out.logits[:, :-1, :]
    if temperature != 1.0:
        logits = logits / temperature
    if suppress_ids:
        logits = logits.index_fill(-1, torch.tensor(suppress_ids, device=logits.device), -1e9)
    return logits


def token_stats(
    logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False, impl: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) [n, L] and optionally the full-vocabulary entropy [n, L], accumulated in fp32.

    ``impl`` (``conf/kernels``): ``torch`` is the plain path below; ``auto``/``triton`` use ``vrl_kernels``
    (Triton on CUDA tensors, its reference otherwise).
    """
    if impl != "torch":  # K1: one pass over the vocabulary, forward only (no-grad scoring)
        from vrl_kernels import vocab_stats

        if logits.requires_grad:
            raise ValueError("vrl_kernels.vocab_stats is forward-only; the training loss goes through K3")
        stats = vocab_stats(logits, targets, impl=impl)
        return stats.logprob, (stats.entropy if with_entropy else None)
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def response_targets(rollout: Rollout) -> torch.Tensor:
    """The sampled response token ids [n, L]."""
    return rollout.input_ids[:, rollout.prompt_width :]


@torch.no_grad()
def score_logprobs(
    model,
    rollout: Rollout,
    temperature: float,
    micro_batch_size: int,
    impl: str = "torch",
    suppress_ids=None,
    forwards: int | None = None,
) -> torch.Tensor:
    """No-grad log-probs [N, L] of a rollout in micro-batches (old policy or reference).

    ``forwards``: run this many forwards in all (at least one per micro-batch); the ones past this rollout's
    micro-batches score its first sequence again and are discarded. A sharded model's forwards are collectives,
    so every rank runs the count the rank with the most micro-batches needs (``vrl.lit.dist.agreed_count``).
    """
    from vrl.models.prefix import score_shared

    shared = score_shared(model, rollout, temperature, micro_batch_size, impl, suppress_ids)
    if shared is not None:  # never on a sharded model (vrl.models.prefix.can_share), so no forwards to count
        return shared
    chunks = []
    parts = list(torch.arange(rollout.num_sequences).split(micro_batch_size))
    for idx in parts:
        micro = rollout.select(idx)
        logits = response_logits(model, micro, temperature, suppress_ids)
        chunks.append(token_stats(logits, response_targets(micro), impl=impl)[0])
    for _ in range((forwards or 0) - len(parts)):  # only other ranks have these: the same collectives, no output
        response_logits(model, rollout.select(torch.arange(min(1, rollout.num_sequences))), temperature, suppress_ids)
    return torch.cat(chunks) * rollout.response_mask
