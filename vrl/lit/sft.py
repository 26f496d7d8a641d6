"""Supervised steps inside an RL run (hook H11): rejection-sampled self-improvement, Curr-ReFT's last stage.

Curr-ReFT (arXiv 2503.07065, github.com/ding523/Curr_REFT) ends its curriculum with a short, low-lr SFT
pass on responses that a judge (GPT-4o, score > 85 of 100) accepted. Here the judge is a reward set:

1. at the stage's start the current policy samples k candidates per prompt of the stage's data;
2. a reward set scores them and candidates at or above a threshold are kept, each distinct
   (prompt, response) pair once (:func:`select_kept`);
3. each step trains the token-mean cross-entropy of a batch of kept pairs, teacher-forced on a
   :class:`~vrl.types.Rollout` built from them (:func:`build_sft_rollout`, :func:`sft_backward`).

:class:`TemplateTargets` builds an SFT stage's set without sampling: targets written from each row's fields (a
format warm start before RL).

Kept responses are strings, re-tokenised with an EOS appended: that is what an SFT data file holds, and it
lets a checkpoint store the kept set as plain text for exact resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vrl.data.row_template import check_template, fill
from vrl.data.source import dataset_row
from vrl.models.scoring import response_logits, response_targets, token_stats
from vrl.sampler.prompts import encode_prompts
from vrl.types import Rollout


@dataclass
class RejectionSampling:
    """How an SFT stage builds its training set from the policy's own samples.

    Args:
        candidates: k, responses sampled per prompt (at the stage's sampling temperature).
        threshold: a candidate is kept when its total judge reward is >= this. With the default
            accuracy reward in {0, 1}, 1.0 keeps correct answers only.
        judge: name -> reward term that scores candidates (run with the run's sandbox settings); None uses
            the stage's reward (else the run's). Curr-ReFT's GPT-4o rubric would be an async judge term here.
        batch_size: kept pairs per SFT step; None = the run's prompts per step. Curr-ReFT: 32 (1 x 4 x 8 GPUs).
        max_prompts: only the first N prompts of the stage's data are sampled from; None = all of them.
        prompts_per_call: prompts per generate call; None = the run's prompts per step.
    """

    candidates: int = 4
    threshold: float = 1.0
    judge: Mapping[str, Any] | None = None
    batch_size: int | None = None
    max_prompts: int | None = None
    prompts_per_call: int | None = None

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"rejection.candidates must be >= 1, got {self.candidates}")
        for knob in ("batch_size", "max_prompts", "prompts_per_call"):
            value = getattr(self, knob)
            if value is not None and value < 1:
                raise ValueError(f"rejection.{knob} must be >= 1 or null, got {value}")


class TemplateTargets:
    """An SFT stage's set written from the rows themselves: each row's target is ``template`` filled from its fields.

    A *format warm start*: before RL, teach the policy the output layout a reward expects (Vision-SR1's
    ``<description>..</description><think>..</think>\\boxed{..}``, a ``<think>``/``<answer>`` layout, ...) from ground
    truth, so RL starts from a policy that writes it (a tiny random policy never writes it by itself). Use it as an
    ``sft`` stage's ``rejection`` (any object with ``build`` goes there, see :class:`vrl.lit.stages.Stage`).

    The template is :meth:`str.format` with the row's fields as keywords (:func:`vrl.data.row_template.fill`).
    Fields named in ``json_fields`` that hold JSON text (the rows' ``meta``) are parsed first, so nested values are
    reachable with format's indexing: ``{meta[target][0][color]}``. Literal braces are doubled:
    ``\\boxed{{{answer}}}``.

    Args:
        template: the target text.
        json_fields: row fields parsed from JSON text before formatting.
        batch_size: pairs per SFT step; None = the run's prompts per step.
        max_prompts: only the first N rows of the stage's data; None = all of them.
    """

    def __init__(
        self,
        template: str,
        json_fields: Sequence[str] = ("meta",),
        batch_size: int | None = None,
        max_prompts: int | None = None,
    ) -> None:
        check_template(template, "rejection.template")
        for knob, value in (("batch_size", batch_size), ("max_prompts", max_prompts)):
            if value is not None and value < 1:
                raise ValueError(f"rejection.{knob} must be >= 1 or null, got {value}")
        self.template, self.json_fields = template, tuple(json_fields)
        self.batch_size, self.max_prompts = batch_size, max_prompts

    def target(self, row: Mapping[str, Any]) -> str:
        """The filled template of one row; a field the row lacks is a ValueError naming it and the row."""
        return fill(self.template, row, self.json_fields, "rejection.template")

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[tuple[int, str]], dict[str, float]]:
        """``(index, target)`` for each row of ``indices`` (the stage's shard, ``max_prompts`` applied)."""
        kept = [(int(i), self.target(dataset_row(data, i))) for i in indices]
        return kept, {"sft/templated": float(len(kept))}


def select_kept(
    indices: Sequence[int], responses: Sequence[str], scores: Sequence[float], threshold: float
) -> list[tuple[int, str]]:
    """The (prompt index, response) pairs scoring >= ``threshold``, each distinct pair once, in sampling order.

    Empty responses (after stripping whitespace) are dropped: they teach nothing but stopping at once.
    Duplicates are dropped because a policy that repeats itself would otherwise weight its most frequent
    answer by its sampling frequency, which is the opposite of "a few good examples".
    """
    if not len(indices) == len(responses) == len(scores):
        raise ValueError(f"{len(indices)} indices, {len(responses)} responses and {len(scores)} scores")
    kept, seen = [], set()
    for index, response, score in zip(indices, responses, scores):
        key = (int(index), response.strip())
        if score >= threshold and key[1] and key not in seen:
            seen.add(key)
            kept.append((int(index), response))
    return kept


@torch.no_grad()
def rejection_sample(
    generate: Callable[..., Any],
    dataset: Any,
    indices: Sequence[int],
    candidates: int,
    reward: Callable[[list[str], list[dict]], tuple[torch.Tensor, dict]],
    threshold: float,
    prompts_per_call: int,
) -> tuple[list[tuple[int, str]], dict[str, float]]:
    """Sample ``candidates`` responses for each prompt ``indices`` of ``dataset``, keep those ``reward`` passes.

    Args:
        generate: ``generate(rows, group_size=k) -> Rollout`` with the policy (sequences of a row adjacent).
        dataset: map-style rows.
        indices: which rows to prompt with.
        candidates: k per prompt.
        reward: a ``RewardSet``-like callable returning (total [N], components).
        threshold: keep totals >= this.
        prompts_per_call: rows per generate call (memory bound).

    Returns:
        The kept (index, response) pairs and stats (``sft/candidates``, ``sft/kept``, ``sft/judge_mean``).
    """
    all_indices, all_responses, all_scores = [], [], []
    for start in range(0, len(indices), prompts_per_call):
        part = [int(i) for i in indices[start : start + prompts_per_call]]
        rollout = generate([dataset_row(dataset, i) for i in part], group_size=candidates)
        totals, _ = reward(rollout.responses, rollout.samples)
        all_indices += [part[g] for g in rollout.group_ids.tolist()]
        all_responses += list(rollout.responses)
        all_scores += [float(t) for t in totals]
    kept = select_kept(all_indices, all_responses, all_scores, threshold)
    stats = {
        "sft/candidates": float(len(all_responses)),
        "sft/kept": float(len(kept)),
        "sft/judge_mean": float(sum(all_scores) / max(len(all_scores), 1)),
    }
    return kept, stats


def build_sft_rollout(
    vlm: Any, rows: list[dict], responses: list[str], system_prompt: str | None = None, prompt_suffix: str = ""
) -> Rollout:
    """Teacher-forcing batch: each row's prompt (encoded exactly as for sampling) followed by its response.

    Responses are tokenised without special tokens and end with EOS, so the model also learns to stop.
    Prompts are left-padded and responses right-padded, the layout ``HFSampler.generate`` produces, so the
    same scoring code (:func:`vrl.models.scoring.response_logits`) applies.
    """
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    tok = vlm.processor.tokenizer
    device = next(vlm.model.parameters()).device
    enc, images_per_prompt = encode_prompts(vlm.processor, rows, system_prompt, prompt_suffix)
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    response = torch.full((len(ids), max(map(len, ids))), tok.pad_token_id, dtype=enc["input_ids"].dtype)
    mask = torch.zeros_like(response)
    for i, seq in enumerate(ids):
        response[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    mm_types = None
    if "mm_token_type_ids" in enc:  # response tokens are text (type 0)
        mm_types = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], dim=1).to(device)
    pixel_values, grid = enc.get("pixel_values"), enc.get("image_grid_thw")
    return Rollout(
        input_ids=torch.cat([enc["input_ids"], response], dim=1).to(device),
        attention_mask=torch.cat([enc["attention_mask"], mask.to(enc["attention_mask"].dtype)], dim=1).to(device),
        response_mask=mask.float().to(device),
        pixel_values=pixel_values.to(device) if pixel_values is not None else None,
        image_grid_thw=grid.to(device) if grid is not None else None,
        images_per_seq=images_per_prompt,
        group_ids=torch.arange(len(rows), device=device),
        samples=rows,
        responses=list(responses),
        mm_token_type_ids=mm_types,
    )


def response_nll(model: Any, rollout: Rollout, suppress_ids: list[int] | None = None) -> torch.Tensor:
    """Per-token negative log-likelihood [n, L] of the response tokens (0 on padding), with gradient.

    Temperature 1: SFT fits the model's own distribution. ``suppress_ids`` (tokens the sampler never emits)
    are masked as in RL scoring, so the trained distribution is the one that is sampled.
    """
    logits = response_logits(model, rollout, 1.0, suppress_ids)
    logprobs, _ = token_stats(logits, response_targets(rollout))
    return -logprobs * rollout.response_mask


def sft_backward(
    model: Any,
    rollout: Rollout,
    micro_batch_size: int,
    suppress_ids: list[int] | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    tokens: float | None = None,
) -> tuple[float, float]:
    """Token-mean cross-entropy over every response token of ``rollout``, back-propagated in micro-batches.

    Each micro-batch's loss is its NLL sum divided by the *whole batch's* token count (``tokens``, when given:
    under DDP the count averaged over ranks), so the accumulated gradient equals that of one full-batch token
    mean (ms-swift's default SFT loss), whatever the split.

    Returns:
        The loss (mean NLL per response token) and the number of response tokens.
    """
    tokens = max(float(rollout.response_mask.sum()) if tokens is None else tokens, 1.0)
    total = 0.0
    for idx in torch.arange(rollout.num_sequences).split(micro_batch_size):
        loss = response_nll(model, rollout.select(idx), suppress_ids).sum() / tokens
        backward(loss)
        total += float(loss.detach())
    return total, float(rollout.response_mask.sum())
