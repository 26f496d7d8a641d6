"""Preference steps inside a run (hook H11): sigmoid DPO over multi-segment pairs, with an optional NLL term.

A stage of kind ``dpo`` (:mod:`vrl.lit.stages`) hands the loop a :class:`PreferenceBatch` instead of an RL
step, as an SFT stage hands it teacher-forced pairs; the loop fits it with :func:`preference_update`, on the
run's policy, frozen reference (``RLModule.reference``, or the adapter-off policy under LoRA), micro-batch
size, optimizer, guard, checkpoints and metrics.

The loss (shared/methods/others.md note 6; STIC arXiv 2405.19716 ``stic/dpo_trainer.py``; VisRL arXiv
2503.07523 ``src/visrl_stage2/train/dpo/trainer.py``), for P pairs, pair p made of segments s (one for STIC;
VisRL's stage 2: the box step and the answer step, each weighted 0.5), with ``logp`` the summed log-probability
of a segment's response tokens (temperature 1)::

    margin_s = beta * [(logp_pi(y_w,s) - logp_ref(y_w,s)) - (logp_pi(y_l,s) - logp_ref(y_l,s))]
    L = 1/P * sum_p sum_s w_s * -log sigmoid(margin_s)  +  nll_coef * 1/P * sum_p sum_s -logp_pi(y_w,s)

STIC: beta 0.1 (TRL's default; the repo's value is [NF]), ``nll_coef`` 1/1024 on the summed log-probability.
``nll_average: token_mean`` divides each chosen segment's NLL by its token count instead (LLaMA-Factory's
``ftx`` term, which VisRL inherits). Reference log-probs are scored once per pair and step, before the policy's
micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from vrl.data.source import dataset_row
from vrl.errors import DataError
from vrl.lit.dist import reduce_value, world_size, zero_loss
from vrl.models.scoring import response_logits, response_targets, score_logprobs, token_stats
from vrl.types import Rollout

NLL_AVERAGES = ("sum", "token_mean")


@dataclass(frozen=True)
class DPOLoss:
    """Settings of the preference loss (``stages.<name>.preference.loss``).

    Args:
        beta: the DPO temperature (sigmoid loss). STIC/VisRL: 0.1.
        nll_coef: scale of the NLL-on-chosen term; 0 switches it off. STIC: 1/1024 = 0.0009765625.
        nll_average: ``sum`` (STIC: the summed log-probability) or ``token_mean`` (per chosen token).
    """

    beta: float = 0.1
    nll_coef: float = 0.0
    nll_average: str = "sum"

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"preference.loss.beta must be > 0, got {self.beta}")
        if self.nll_coef < 0:
            raise ValueError(f"preference.loss.nll_coef must be >= 0, got {self.nll_coef}")
        if self.nll_average not in NLL_AVERAGES:
            raise ValueError(f"preference.loss.nll_average must be one of {NLL_AVERAGES}, got {self.nll_average!r}")


@dataclass
class PreferenceBatch:
    """P preference pairs as S >= P teacher-forced segments (what a ``dpo`` stage's ``replace_step`` returns).

    Attributes:
        chosen: the S preferred segments (prompt + response), laid out as ``build_sft_rollout`` builds them.
        rejected: the S dispreferred segments, row s pairs with ``chosen`` row s.
        weights: [S] each segment's weight in its pair's loss.
        num_pairs: P (the loss is a mean over pairs).
        loss: the loss settings.
    """

    chosen: Rollout
    rejected: Rollout
    weights: torch.Tensor
    num_pairs: int
    loss: DPOLoss

    @property
    def num_segments(self) -> int:
        return self.chosen.num_sequences


class FilePairs:
    """Pairs the stage's data rows already hold (a preference file, ``vrl.data.preference.load_preference``).

    A row holds ``chosen`` and ``rejected`` response texts for its ``prompt`` and images (one segment, weight 1),
    or ``segments``: a list of ``{chosen, rejected, weight, prompt?}`` (a multi-segment pair; ``prompt``
    replaces the row's for that segment).
    """

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[dict], dict[str, float]]:
        records = [file_record(dataset_row(data, i), i) for i in indices]
        return records, {"dpo/pairs_built": float(len(records))}


def file_record(row: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The pair record of a data row (see :class:`FilePairs`); a clear error names the row and the field."""
    where = f"preference row {index} (uid={row.get('uid')!r})"
    segments = row.get("segments") or [{"chosen": row.get("chosen"), "rejected": row.get("rejected"), "weight": 1.0}]
    out = []
    for k, seg in enumerate(segments):
        for key in ("chosen", "rejected"):
            if not isinstance(seg.get(key), str):
                name = key if not row.get("segments") else f"segments[{k}].{key}"
                raise DataError(f"{where}: field {name!r} must be a response text, got {type(seg.get(key)).__name__}")
        weight = 1.0 if seg.get("weight") is None else float(seg["weight"])
        item = {"chosen": seg["chosen"], "rejected": seg["rejected"], "weight": weight}
        if seg.get("prompt"):
            item["prompt"] = str(seg["prompt"])
        out.append(item)
    return {"index": int(index), "segments": out}


@dataclass
class PreferenceSettings:
    """What a ``dpo`` stage trains on and how (``stages.<name>.preference``).

    Args:
        pairs: builds the stage's pair records at its start, ``build(ctx, data, indices) -> (records, stats)``;
            a record is ``{"index": row of the stage's data, "segments": [{chosen, rejected, weight, prompt?}]}``
            (plain text, so a checkpoint holds it). Default: :class:`FilePairs`. STIC's online pipeline:
            ``vrl.methods.stic.STICPairs``.
        loss: beta, the NLL scale and its average (:class:`DPOLoss`).
        batch_size: pairs per optimizer step; None = the run's prompts per step.
        max_prompts: only the first N rows of the stage's data make pairs; None = all.
    """

    pairs: Any = field(default_factory=FilePairs)
    loss: DPOLoss | Mapping[str, Any] = field(default_factory=DPOLoss)
    batch_size: int | None = None
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.loss, Mapping):
            self.loss = DPOLoss(**self.loss)
        if not callable(getattr(self.pairs, "build", None)):
            raise ValueError(f"preference.pairs: {type(self.pairs).__name__} has no build(ctx, data, indices)")
        for knob in ("batch_size", "max_prompts"):
            if (value := getattr(self, knob)) is not None and value < 1:
                raise ValueError(f"preference.{knob} must be >= 1 or null, got {value}")


def side_row(row: dict, seg: Mapping[str, Any], side: str) -> dict:
    """The row one side of a segment is conditioned on: ``<side>_prompt`` or ``prompt`` replaces the row's prompt,
    and ``<side>_turns`` (token ids per policy turn of a multi-turn trajectory) become its given turns, replayed by
    the multi-turn sampler (VisRL's box -> crop -> answer trajectories)."""
    prompt = seg.get(f"{side}_prompt") or seg.get("prompt")
    out = {**row, "prompt": prompt} if prompt else row
    if f"{side}_turns" in seg:
        out = {**out, "forced_turns": seg[f"{side}_turns"]}
    return out


def pair_batch(ctx: Any, data: Any, records: Sequence[Mapping[str, Any]], loss: DPOLoss) -> PreferenceBatch:
    """Teacher-forced chosen and rejected segments of ``records``, each side on its :func:`side_row`: single-turn
    segments via ``ctx.pairs`` (prompts encoded as the sampler encodes them), multi-turn ones (``<side>_turns``,
    scoring turn ``turn``) replayed by the sampler (:func:`replayed_turns`)."""
    rows = {"chosen": [], "rejected": []}
    texts = {"chosen": [], "rejected": []}
    weights, turns = [], []
    for record in records:
        row = dataset_row(data, int(record["index"]))
        for seg in record["segments"]:
            for side in rows:
                rows[side].append(side_row(row, seg, side))
                texts[side].append(seg.get(side))
            weights.append(float(seg.get("weight", 1.0)))
            turns.append(seg.get("turn"))
    multi = {t is not None for t in turns}
    if len(multi) > 1:
        raise ValueError("preference: a batch mixes multi-turn segments (with 'turn') and single-turn ones")
    if multi == {True}:
        chosen, rejected = (replayed_turns(ctx, rows[s], turns) for s in ("chosen", "rejected"))
    else:
        chosen, rejected = (ctx.pairs(rows[s], texts[s]) for s in ("chosen", "rejected"))
    return PreferenceBatch(chosen, rejected, torch.tensor(weights), len(records), loss)


def replayed_turns(ctx: Any, rows: list[dict], turns: list[int]) -> Rollout:
    """The trajectories given as ``forced_turns``, replayed by the run's (multi-turn) sampler with no model call,
    their response masks cut to policy turn ``turns[i]`` of row i (the segment a DPO term scores; every earlier
    token, observations and their images included, is context)."""
    out = ctx.generate(rows, group_size=1, greedy=True)
    mask = torch.zeros_like(out.response_mask)
    for i, (row, sample, k) in enumerate(zip(rows, out.samples, turns)):
        got = [t["ids"] for t in sample.get("turns") or []]
        given = [list(t) for t in row["forced_turns"]]
        if "turns" not in sample or got[: len(given)] != given or k >= len(given):
            raise ValueError(
                f"preference: row uid={row.get('uid')!r} did not replay its {len(given)} given turns (or has no "
                f"turn {k}): multi-turn pairs need the sampler they were built with (sampler=multi_turn, same "
                "tools and budgets)"
            )
        start, end = sample["turns"][k]["span"]
        mask[i, start:end] = 1
    return replace(out, response_mask=mask, old_logprobs=None)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    weights: torch.Tensor,
    num_pairs: float,
    loss: DPOLoss,
    chosen_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of some segments (all of a batch's, or one micro-batch's) and its summed statistics.

    Args:
        policy_chosen, policy_rejected: [S] summed response log-probs under the policy (with gradient).
        ref_chosen, ref_rejected: [S] the same under the frozen reference.
        weights: [S] segment weights.
        num_pairs: P of the whole batch: every micro-batch divides by it, so micro-batch losses add up to the
            batch's mean over pairs (under DDP: the count averaged over ranks).
        loss: beta, the NLL scale and its average.
        chosen_tokens: [S] response tokens of each chosen segment (for ``nll_average=token_mean``).

    Returns:
        The scalar loss and sums over these segments (``dpo/loss``, ``dpo/nll``, ``dpo/margin``, ``dpo/correct``,
        ``dpo/chosen_reward``, ``dpo/rejected_reward``), which the caller divides by its counts.
    """
    chosen_reward = loss.beta * (policy_chosen - ref_chosen)
    rejected_reward = loss.beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    dpo = (weights * -F.logsigmoid(margin)).sum() / num_pairs
    nll_per = -policy_chosen
    if loss.nll_average == "token_mean":
        if chosen_tokens is None:
            raise ValueError("dpo_loss: nll_average=token_mean needs chosen_tokens")
        nll_per = nll_per / chosen_tokens.clamp(min=1)
    nll = nll_per.sum() / num_pairs
    total = dpo + loss.nll_coef * nll if loss.nll_coef else dpo
    stats = {
        "dpo/loss": float(dpo.detach()),
        "dpo/nll": float(nll.detach()),
        "dpo/margin": float(margin.detach().sum()),
        "dpo/correct": float((margin.detach() > 0).sum()),
        "dpo/chosen_reward": float(chosen_reward.detach().sum()),
        "dpo/rejected_reward": float(rejected_reward.detach().sum()),
    }
    return total, stats


def segment_logps(model: Any, rollout: Rollout, suppress_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Summed log-probs [n] of each row's response tokens at temperature 1, with gradient."""
    logits = response_logits(model, rollout, 1.0, list(suppress_ids or []))
    logprobs, _ = token_stats(logits, response_targets(rollout))
    return (logprobs * rollout.response_mask).sum(-1)


def reference_logps(module: Any, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """[S] summed reference log-probs of the chosen and rejected segments, no gradient, once per pair."""
    if module.reference is not None:
        ref, scope = module.reference.eval(), nullcontext()
    elif getattr(module.vlm, "is_lora", False):
        ref, scope = module.policy, module.policy.disable_adapter()  # the adapter-off policy
    else:
        raise RuntimeError("a preference step needs the frozen reference; no hook declared needs_reference")
    mb, sup, impl = module.micro_batch_size, module.objective.suppress_ids, module.objective.kernel_impl
    with scope:
        return tuple(score_logprobs(ref, r, 1.0, mb, impl, sup).sum(-1) for r in (batch.chosen, batch.rejected))


def preference_update(module: Any, batch: PreferenceBatch) -> dict[str, float]:
    """One optimizer step on a :class:`PreferenceBatch`, accumulated over micro-batches of segments.

    Each micro-batch divides by the whole batch's pair count, so the accumulated gradient is the full-batch
    mean's, whatever the split; under DDP the count is averaged over ranks and every rank runs as many
    backward passes (as :func:`vrl.lit.optimize.sft_update` does).
    """
    lr = module.optimizers().param_groups[0]["lr"]
    pairs = reduce_value(module, float(batch.num_pairs), "mean")
    ref_chosen, ref_rejected = reference_logps(module, batch)
    local = math.ceil(batch.num_segments / module.micro_batch_size)
    for _ in range(int(reduce_value(module, local, "max")) - local):
        module.manual_backward(zero_loss(module.policy))
    totals: dict[str, float] = {}
    sup = module.objective.suppress_ids
    for idx in torch.arange(batch.num_segments).split(module.micro_batch_size):
        chosen, rejected = batch.chosen.select(idx), batch.rejected.select(idx)
        dev = idx.to(ref_chosen.device)
        loss, stats = dpo_loss(
            segment_logps(module.policy, chosen, sup),
            segment_logps(module.policy, rejected, sup),
            ref_chosen[dev],
            ref_rejected[dev],
            batch.weights[idx].to(ref_chosen),
            pairs,
            batch.loss,
            chosen.response_mask.sum(-1),
        )
        module.manual_backward(loss)
        stats["dpo/total"] = float(loss.detach())
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
    loss = reduce_value(module, totals.get("dpo/total", 0.0), "mean")
    grad_norm = module.guard.step(module, loss)
    segments = max(reduce_value(module, float(batch.num_segments), "sum"), 1.0)
    out = {k: reduce_value(module, totals.get(k, 0.0), "mean") for k in ("dpo/loss", "dpo/nll")}
    for key in ("dpo/margin", "dpo/correct", "dpo/chosen_reward", "dpo/rejected_reward"):
        out[key] = reduce_value(module, totals.get(key, 0.0), "sum") / segments
    out["dpo/accuracy"] = out.pop("dpo/correct")
    out |= {"train/loss": loss, "dpo/pairs": pairs * world_size(module), "train/lr": lr}
    out["train/grad_norm"] = math.nan if grad_norm is None else grad_norm
    return out
