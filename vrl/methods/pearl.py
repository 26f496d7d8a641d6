"""PEARL (Zhang et al., "Perceptual-Evidence Anchored Reinforced Learning", arXiv 2511.18437) as one hook.

Per step (core.md §3, §6):

1. ``on_prompts`` (H5/H6): for each drawn prompt, G_p probe rollouts answer its perception checklist
   (:mod:`vrl.data.checklist`); the perceptual reward p is the fraction of sub-answers right. Prompts whose
   mean probe score P̄ is <= ``gate_threshold`` are dropped before any reasoning rollout (the fidelity gate),
   except when a draw bypasses the gate (probability ``bypass_prob`` per draw). The loop refills the batch.
2. ``on_rollout`` (H5): the kept prompts' probes join the rollout as branch 1 of the same prompt group, so
   the post-rollout filter (``hooks.dynamic_sampling`` with keys ``[accuracy, probe_accuracy]``,
   ``combine: any``: PEARL's OR filter) keeps or drops a prompt's reasoning and probe sequences together.
3. Advantages are normalised per (group, branch) by the loop; ``advantage_factor`` (H8) then scales the
   reasoning advantages by max(P̄, tau) and the probe advantages by lambda, so the PPO loss over both
   branches, each averaged over its own tokens, is L_main + lambda * L_probe.

Pure functions first (shapes: B prompts, G_p probes each); the hook last.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from vrl.data.checklist import (
    ProbeItem,
    checklist_from_columns,
    checklist_from_scene,
    parse_probe_answers,
    probe_prompt,
)
from vrl.hooks import Hook, StepContext
from vrl.rewards.checklist import score_probe
from vrl.rewards.extract import last_boxed
from vrl.types import Rollout, attach_branch

SOURCES = ("auto", "scene", "columns")
#: How lambda is applied per step: ``constant`` (published) or ``main_active`` (ours, see :func:`main_active_share`).
PROBE_COEF_SCALES = ("constant", "main_active")
FALLBACKS = ("boxed", "whole", "first_word")


def probe_means(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """P̄ [B]: the mean perceptual reward of each prompt's G_p probes; ``scores`` is [B * G_p], grouped."""
    return scores.view(-1, group_size).mean(-1)


def fidelity_gate(means: torch.Tensor, threshold: float, bypass: bool) -> torch.Tensor:
    """Keep mask [B]: P̄ > threshold (strictly, as published), or every prompt when the draw bypasses."""
    return torch.ones_like(means, dtype=torch.bool) if bypass else means > threshold


def reweight(advantages: torch.Tensor, branch: torch.Tensor, means: torch.Tensor, tau: float, coef: float):
    """A [N] -> A * max(P̄, tau) on reasoning rows (branch 0) and A * coef on probe rows (branch 1).

    ``means`` [N] is each row's prompt P̄. Both factors are positive, so signs never flip; with tau = 1
    the reweighting is off, with coef = 0 the probe branch carries no gradient.
    """
    factor = torch.where(branch == 0, means.clamp(min=tau), torch.full_like(means, coef))
    return advantages * factor.to(advantages.dtype)


def main_active_share(rewards: torch.Tensor, group_ids: torch.Tensor, branch: torch.Tensor) -> float:
    """Fraction of prompt groups whose reasoning (branch 0) rewards are not all equal: the groups with a
    non-zero group-normalised advantage, i.e. where the main task is giving a learning signal this step.

    ``probe_coef_scale: main_active`` multiplies lambda by this share. At a cold start on a sparse main task every
    reasoning group is all-zero, so the share is 0 and the probe branch cannot move the shared policy on its own
    (issue-5 runs: under Adam even lambda = 0.1 made the probe loss the whole update, and the policy learned to
    answer probe questions instead of the task); once the main task has signal in every group it is lambda as
    published. 0 when no reasoning group is left.
    """
    main = branch == 0
    groups = group_ids[main].unique()
    if groups.numel() == 0:
        return 0.0
    r, g = rewards[main].float(), group_ids[main]
    active = sum(int(r[g == k].max() > r[g == k].min()) for k in groups.tolist())
    return active / groups.numel()


def score_probe_response(response: str, items: list[ProbeItem], denominator: str, fallback: str) -> float:
    """:func:`checklist.score_probe` plus a bare-answer fallback for one-item checklists.

    ``boxed`` is the published single-question fallback (``\\boxed{}``); ``whole`` / ``first_word`` also
    accept an untagged, unboxed answer (the whole response or its first word), which tiny one-word models
    need: they cannot learn the tag format within a CPU-sized run.
    """
    if fallback != "boxed" and len(items) == 1 and not parse_probe_answers(response) and last_boxed(response) is None:
        words = response.split()
        span = response.strip() if fallback == "whole" else (words[0] if words else "")
        response = f"<a1>{span}</a1>"
    return score_probe(response, items, denominator)


class PEARL(Hook):
    """Perception probes, fidelity gate, advantage reweighting and probe loss (``+method=pearl``).

    Args:
        group_size: G_p, probe rollouts per prompt (5 as published).
        max_items: checklist length cap for checklists derived from a scene graph.
        source: where checklists come from: ``scene`` (synthetic rows' ``meta``), ``columns`` (the
            published ``probe_problem`` / ``probe_answer``), ``auto`` (columns when the row has them).
        denominator: ``checklist`` (default: p = correct / checklist length, cannot be gamed by answering
            one easy item) or ``answered`` (published: correct / answers emitted).
        fallback: one-item probes without ``<a1>``: ``boxed`` (published), ``whole``, ``first_word``.
        plain_single: ask a one-item checklist as the bare question (no ``<q1>`` / answer-tag line).
        gate: drop prompts with P̄ <= gate_threshold before the reasoning rollouts.
        gate_threshold: 0.01 as published (so one right sub-answer among G_p probes passes).
        bypass_prob: probability that a draw skips the gate (0.3: exploration).
        tau: reweighting floor, A <- A * max(P̄, tau) (0.5); 1 switches reweighting off.
        probe_coef: lambda, the probe branch's loss weight (0.1); 0 switches the probe loss off.
        probe_coef_scale: ``constant`` (published: lambda every step) or ``main_active`` (ours: lambda times the
            share of this step's prompt groups whose reasoning rewards differ, :func:`main_active_share`, so the
            probe branch cannot take the policy over while the main task has no signal; logged as
            ``pearl/probe_coef``).
        max_tries: prompt draws per step (the first included) the loop may make to refill gated prompts.
        seed: seeds the bypass draws (with a draw counter kept in checkpoints, so resume repeats them).
        order: hook order; PEARL's factor is applied before VPPO's (core.md §6).
    """

    needs_old_logprobs = False
    provides = ("probe_accuracy",)  # the reward component of the probe branch (group filters may test it)

    @staticmethod
    def check(cfg: Any, path: str) -> None:
        """Stacks whose presets overwrite PEARL's OR filter (core.md §6): the filter must test probe_accuracy."""
        from vrl.errors import ConfigError

        flt = (cfg.get("hooks") or {}).get("dynamic_sampling")
        keys = list(flt.get("keys") or []) if flt else []
        if flt and "probe_accuracy" not in keys:
            raise ConfigError(
                f"hooks.dynamic_sampling.keys={keys}: with PEARL ({path}) the filter must test probe_accuracy too "
                "(PEARL's OR filter); a later preset overwrote it: put pearl last, e.g. +method=[vppo,pearl]"
            )

    def __init__(
        self,
        group_size: int = 5,
        max_items: int = 4,
        source: str = "auto",
        denominator: str = "checklist",
        fallback: str = "boxed",
        plain_single: bool = False,
        gate: bool = True,
        gate_threshold: float = 0.01,
        bypass_prob: float = 0.3,
        tau: float = 0.5,
        probe_coef: float = 0.1,
        probe_coef_scale: str = "constant",
        max_tries: int = 3,
        seed: int = 0,
        order: int = 20,
    ) -> None:
        checks = {
            "group_size": group_size >= 2,
            "max_items": max_items >= 1,
            "source": source in SOURCES,
            "denominator": denominator in ("checklist", "answered"),
            "fallback": fallback in FALLBACKS,
            "bypass_prob": 0 <= bypass_prob <= 1,
            "tau": 0 <= tau <= 1,
            "probe_coef": probe_coef >= 0,
            "probe_coef_scale": probe_coef_scale in PROBE_COEF_SCALES,
            "max_tries": max_tries >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"hooks.pearl.{key}={locals()[key]!r} is out of range (see vrl/methods/pearl.py)")
        self.group_size, self.max_items, self.source = group_size, max_items, source
        self.denominator, self.fallback, self.plain_single = denominator, fallback, plain_single
        self.gate, self.gate_threshold, self.bypass_prob = gate, gate_threshold, bypass_prob
        self.tau, self.probe_coef, self.max_tries, self.seed, self.order = tau, probe_coef, max_tries, seed, order
        self.probe_coef_scale = probe_coef_scale
        self.draws = 0  # on_prompts calls so far: seeds each bypass draw
        self._pending: tuple[Rollout, torch.Tensor] | None = None
        self._stats: dict[str, list[float]] = {}

    # ----------------------------------------------------------------- checklists
    def checklist(self, row: dict) -> list[ProbeItem]:
        """The row's checklist; a clear error naming the row when it has none."""
        use_columns = self.source == "columns" or (self.source == "auto" and row.get("probe_problem"))
        try:
            if use_columns:
                items = checklist_from_columns(row["probe_problem"], row["probe_answer"])
            else:
                items = checklist_from_scene(row["meta"], max_items=self.max_items)
        except (KeyError, ValueError) as err:
            raise ValueError(f"hooks.pearl: row uid={row.get('uid')!r} has no usable checklist: {err}") from err
        if not items:
            raise ValueError(f"hooks.pearl: row uid={row.get('uid')!r}: its scene yields no checklist item")
        return items

    def _probe_row(self, row: dict, items: list[ProbeItem]) -> dict:
        if self.plain_single and len(items) == 1:
            text = "<image>\n" * row["prompt"].count("<image>") + items[0].question
        else:
            text = "<image>\n" * (row["prompt"].count("<image>") - 1) + probe_prompt(items)
        return {**row, "prompt": text, "probe_items": items}

    # ----------------------------------------------------------------- H5/H6: probes and the gate
    def on_prompts(self, samples: list[dict], ctx: StepContext) -> list[dict]:
        t0 = time.perf_counter()
        probes = ctx.generate([self._probe_row(s, self.checklist(s)) for s in samples], group_size=self.group_size)
        scores = torch.tensor(
            [score_probe_response(r, s["probe_items"], self.denominator, self.fallback)
             for r, s in zip(probes.responses, probes.samples)]
        )  # fmt: skip
        means = probe_means(scores, self.group_size)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        bypass = bool(torch.rand((), generator=gen) < self.bypass_prob)
        self.draws += 1
        keep = fidelity_gate(means, self.gate_threshold, bypass) if self.gate else torch.ones_like(means, dtype=bool)
        kept = torch.nonzero(keep).squeeze(-1)
        rows = torch.nonzero(torch.isin(probes.group_ids.cpu(), kept)).squeeze(-1)
        probes = probes.select(rows)
        probes.group_ids = torch.searchsorted(kept, probes.group_ids.cpu()).to(probes.group_ids.device)
        probes.rewards = scores[rows].to(ctx.device)
        probes.reward_components = {"probe_accuracy": scores[rows].to(ctx.device)}
        self._pending = (probes, means[kept])
        self._record(probe_score=scores.mean(), gate_pass=keep.float().mean(), bypassed=float(bypass))
        self._record(probe_time_s=time.perf_counter() - t0)
        return [samples[i] for i in kept.tolist()]

    def on_rollout(self, rollout: Rollout, ctx: StepContext) -> Rollout:
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("hooks.pearl: on_rollout without probes (on_prompts must run first)")
        probes, means = pending  # means [B kept prompts]; the rollout's group ids index them
        main = replace(rollout, extras={**rollout.extras, "pearl_probe_mean": means[rollout.group_ids.cpu()]})
        probes = replace(probes, extras={**probes.extras, "pearl_probe_mean": means[probes.group_ids.cpu()]})
        return attach_branch(main, probes, ctx.pad_token_id)

    # ----------------------------------------------------------------- H8: reweighting
    def advantage_factor(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor:
        """max(P̄, tau) on reasoning rows, lambda on probe rows (:func:`reweight` with A = 1); lambda is
        ``probe_coef``, times :func:`main_active_share` with ``probe_coef_scale: main_active``."""
        means = rollout.extras["pearl_probe_mean"].to(rollout.rewards.device)  # probe rows: factor = probe_coef
        branch = rollout.branch_ids().to(means.device)
        coef = self.probe_coef
        if self.probe_coef_scale == "main_active":
            coef *= main_active_share(rollout.rewards, rollout.group_ids.to(means.device), branch)
        out = reweight(torch.ones_like(means), branch, means, self.tau, coef)
        main = branch == 0
        stats = {f"pearl/{k}": sum(v) / len(v) for k, v in self._stats.items()}
        stats["pearl/probe_coef"] = coef
        stats["pearl/reweight_mean"] = float(means[main].clamp(min=self.tau).mean())
        stats["pearl/probe_seq_frac"] = float((~main).float().mean())
        stats["pearl/probe_accuracy_kept"] = float(rollout.rewards[~main].float().mean()) if (~main).any() else 0.0
        ctx.log(stats)
        self._stats = {}
        return out

    def _record(self, **values: float) -> None:
        for k, v in values.items():
            self._stats.setdefault(k, []).append(float(v))

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, int]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.draws = int(state["draws"])
