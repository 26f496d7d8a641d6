"""Extension points a method fills without editing the loop (shared/methods/core.md §6).

A hook is a :class:`Hook`: an ``order`` and any of the stage methods below. The loop builds one
:class:`StepContext` per step and hands it to every hook: what a method may read, and nothing else. Hooks
*return* values (settings, samples, keep masks, extras, advantage factors, token weights, losses); only the
loop writes the rollout and its own state. A hook can therefore be unit-tested with a hand-made context.

Per step, in ascending ``order`` (ties by config name), which is how stacked presets compose: e.g. PEARL's
advantage factor (order 20) and VPPO's (30) multiply.

1. ``on_step_start(ctx) -> StageSettings | None``   H1  stage scheduling, curricula
   ``replace_step(ctx) -> Rollout | None``          H11 a non-RL step: teacher-forced pairs the loop fits with
                                                    SFT instead of the RL step (the first hook returning one),
                                                    or a ``vrl.lit.preference.PreferenceBatch`` fitted with DPO
2. ``on_prompts(samples, ctx) -> samples``          H5/H6 probe rollouts, pre-rollout gates
   ``on_rollout(rollout, ctx) -> rollout``          H5  after the main rewards: attach auxiliary branches
3. ``filter_groups(rollout, ctx) -> keep [N]``      H6  post-rollout group filters (dynamic sampling)
4. ``extra_pass(rollout, ctx) -> PassResult``       H7  extra teacher-forced passes -> ``rollout.extras``
5. ``advantage_factor(rollout, ctx) -> [N]``        H8  multiplies the group-normalised advantages
6. ``token_weights(rollout, ctx) -> TokenWeights``  H9  token weights on the PG term (multiplied together)
7. ``extra_loss(micro, out, normalizer, ctx) -> (scalar, stats)``  H10  added to each micro-batch loss

What the loop reads of a hook is declared on :class:`Hook`: ``order``, ``max_tries`` (prompt draws per step
the loop may make to refill filtered groups), ``needs_old_logprobs``, ``needs_reference``,
``resets_reference``, ``rank_dependent_forwards`` and ``check(cfg, path)`` (the method's own cross-group config
rules, run by ``vrl.validate`` before anything is built).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vrl.types import Rollout


@dataclass(frozen=True)
class Sampling:
    """The sampler's settings this step (a stage may change them). ``temperature`` is also the one the
    loss scores at."""

    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64


@dataclass(frozen=True)
class VisionLayout:
    """How the processor cut images into patch rows (what a pixel-space perturbation needs)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)


def _no_model(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this StepContext has no model: build it with score=/logits=/generate= to use them")


@dataclass(frozen=True)
class StepContext:
    """What a hook may read during one step. Built by the loop; in tests, by hand.

    Attributes:
        step: optimizer steps taken before this RL step (seeds per-step draws, so resume repeats them).
        seed: the run's seed.
        sampling: the sampler's settings this step.
        batch_size: B, prompts per step on this rank.
        micro_batch_size: sequences per forward/backward.
        mini_batch_size: sequences per optimizer step; None = the whole rollout.
        rank, world_size: data-parallel position; ``gather(t)`` stacks a tensor over ranks (None on one): the
            same shape on every rank, called as often on each (README, 'Hooks under DDP').
            ``gather_objects(obj)`` is every rank's picklable ``obj`` in rank order (None on one): a stage's
            pairs that each rank built from its shard, merged so that every rank holds the whole set.
        vision: the processor's patch layout; None for text-only models.
        pad_token_id: the tokenizer's pad id (to concatenate rollouts).
        kernel_impl: ``torch`` or a ``vrl_kernels`` implementation for vocabulary statistics.
        device: where the policy lives.
        train_data: the run's training dataset (a curriculum's stages fall back to it).
        reward: the run's reward set (a stage merges its own terms over it).
        metrics: the last value of every logged metric (a curriculum's switch rule reads it).
        score: ``score(rollout, pixel_values=None, micro_batch_size=None) -> [N, L]``: no-grad log-probs
            of the response tokens under the current policy, at ``sampling.temperature``, with the
            sampler's suppressed tokens masked; ``pixel_values`` replaces the images (a perturbed pass).
        logits: ``logits(rollout) -> [n, L, V]``: the same pass returning the logits (no grad).
        generate: ``generate(rows, group_size=None, greedy=False, **sampling) -> Rollout``: an auxiliary
            rollout with the policy (probes, SFT candidates); keyword sampling settings apply to that call.
        pairs: ``pairs(rows, responses) -> Rollout``: teacher-forced (prompt, response) pairs, encoded as the
            sampler encodes prompts (an SFT stage's batch).
        log: ``log(metrics)``: adds scalars to this step's metrics.
        print: a line for the console (rank 0).
        tag: ``tag(key, value)``: an MLflow tag on the run (no-op without a tracker).
    """

    step: int = 0
    seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int = 1
    micro_batch_size: int = 1
    mini_batch_size: int | None = None
    rank: int = 0
    world_size: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    gather_objects: Callable[[Any], list[Any]] | None = None
    vision: VisionLayout | None = None
    pad_token_id: int = 0
    kernel_impl: str = "torch"
    device: torch.device = torch.device("cpu")
    train_data: Any = None
    reward: Any = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    score: Callable[..., torch.Tensor] = _no_model
    logits: Callable[..., torch.Tensor] = _no_model
    generate: Callable[..., Rollout] = _no_model
    pairs: Callable[..., Rollout] = _no_model
    log: Callable[[Mapping[str, float]], None] = lambda metrics: None
    print: Callable[[str], None] = print
    tag: Callable[[str, Any], None] = lambda key, value: None


@dataclass(frozen=True)
class StageSettings:
    """What a stage hook (H1) asks the loop to use this step; None everywhere keeps the run's own value.

    Attributes:
        sampling: sampler settings to override (keys of :class:`Sampling`); None values keep the run's.
        batch_size: prompts per step.
        reward: the reward set to score with.
        prompts: the prompt stream to draw from (anything with ``next_batch()``).
        lr, lr_scale: the learning rate (absolute, or a multiple of the run's) while the stage lasts; the loop
            saves the run's and restores it once a stage sets neither.
        stop: end the run before this step (a finished curriculum).
        reset_reference: the frozen KL reference takes the policy's current weights before this step (an RL stage
            after a warm start: the anchor is the warmed policy, as when RL starts from an SFT checkpoint).
    """

    sampling: Mapping[str, Any] | None = None
    batch_size: int | None = None
    reward: Any = None
    prompts: Any = None
    lr: float | None = None
    lr_scale: float | None = None
    stop: bool = False
    reset_reference: bool = False


@dataclass(frozen=True)
class PassResult:
    """What an extra teacher-forced pass (H7) returns.

    Attributes:
        extras: side signals, each [N] or [N, L], written to ``rollout.extras`` by the loop.
        old_logprobs: [N, L] log-probs of the unperturbed rollout when the pass computed them anyway (the loop
            then skips its own old-policy pass); None otherwise.
    """

    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    old_logprobs: torch.Tensor | None = None


@dataclass(frozen=True)
class TokenWeights:
    """What a token hook (H9) returns: ``loss`` [N, L] weights on the policy-gradient term, and optionally
    ``norm`` [N, L], the tokens loss aggregation should average over (None: every valid token)."""

    loss: torch.Tensor
    norm: torch.Tensor | None = None


class Hook:
    """Base of every hook: the declarations the loop reads, and neutral stage methods a hook overrides.

    Attributes:
        order: position among hooks (ascending).
        max_tries: prompt draws per step the loop may make to refill dropped groups (the largest wins).
        needs_old_logprobs: the hook reads ``rollout.old_logprobs`` (the loop then scores them).
        needs_reference: the run needs the frozen reference policy even without a KL term (a DPO stage).
        resets_reference: the hook's stage settings may reset the reference to the policy (refused under LoRA).
        rank_dependent_forwards: the hook runs policy forwards whose number depends on its rank's rollout (a loop
            over ``ctx.logits`` per micro-batch). Under FSDP on several ranks each forward is a collective, so
            unequal counts hang: such a run is refused at start (``vrl.lit.fsdp.refuse_unsynced``).
    """

    order: int = 0
    max_tries: int = 1
    needs_old_logprobs: bool = False
    needs_reference: bool = False
    resets_reference: bool = False
    rank_dependent_forwards: bool = False

    @staticmethod
    def check(cfg: Any, path: str) -> None:
        """Cross-group config rules of the method (raise ``vrl.errors.ConfigError``); ``path`` is its key."""

    def on_step_start(self, ctx: StepContext) -> StageSettings | None:
        return None

    def replace_step(self, ctx: StepContext) -> Rollout | None:
        return None

    def on_prompts(self, samples: list[dict], ctx: StepContext) -> list[dict]:
        return samples

    def on_rollout(self, rollout: Rollout, ctx: StepContext) -> Rollout:
        return rollout

    def filter_groups(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor | None:
        return None

    def extra_pass(self, rollout: Rollout, ctx: StepContext) -> PassResult | None:
        return None

    def advantage_factor(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor | None:
        return None

    def token_weights(self, rollout: Rollout, ctx: StepContext) -> TokenWeights | None:
        return None

    def extra_loss(self, micro: Rollout, out: dict, normalizer: torch.Tensor, ctx: StepContext):
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class HookSet:
    """The run's hooks in order; each method is one stage of the step and combines the hooks' answers."""

    def __init__(self, hooks: Mapping[str, Hook] | None = None) -> None:
        items = [(name, h) for name, h in (hooks or {}).items() if h is not None]
        for name, h in items:
            if not isinstance(h, Hook):
                raise TypeError(f"hooks.{name}: {type(h).__name__} is not a vrl.hooks.Hook (subclass it)")
        items.sort(key=lambda kv: (kv[1].order, kv[0]))
        self.names = [name for name, _ in items]
        self.hooks = [h for _, h in items]

    @property
    def max_tries(self) -> int:
        return max([h.max_tries for h in self.hooks] + [1])

    @property
    def needs_old_logprobs(self) -> bool:
        return any(h.needs_old_logprobs for h in self.hooks)

    @property
    def needs_reference(self) -> bool:
        return any(h.needs_reference for h in self.hooks)

    @property
    def resets_reference(self) -> bool:
        return any(h.resets_reference for h in self.hooks)

    def on_step_start(self, ctx: StepContext) -> list[StageSettings]:
        return [s for h in self.hooks if (s := h.on_step_start(ctx)) is not None]

    def replace_step(self, ctx: StepContext) -> Rollout | None:
        for h in self.hooks:
            if (batch := h.replace_step(ctx)) is not None:
                return batch
        return None

    def on_prompts(self, samples: list[dict], ctx: StepContext) -> list[dict]:
        for h in self.hooks:
            samples = h.on_prompts(samples, ctx)
        return samples

    def on_rollout(self, rollout: Rollout, ctx: StepContext) -> Rollout:
        for h in self.hooks:
            rollout = h.on_rollout(rollout, ctx)
        return rollout

    def filter_groups(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor | None:
        """AND of every filter's keep mask [N], or None when no hook filters."""
        keep = None
        for h in self.hooks:
            if (k := h.filter_groups(rollout, ctx)) is not None:
                keep = k.to(torch.bool) if keep is None else keep & k.to(torch.bool)
        return keep

    def extra_pass(self, rollout: Rollout, ctx: StepContext) -> Iterator[PassResult]:
        """Each hook's result in turn: the loop writes one into the rollout before the next hook runs, so a
        later pass can read an earlier one's extras."""
        for h in self.hooks:
            if (result := h.extra_pass(rollout, ctx)) is not None:
                yield result

    def advantage_factor(self, rollout: Rollout, ctx: StepContext) -> torch.Tensor | None:
        """Product of every hook's factor [N], or None when no hook rescales advantages."""
        total = None
        for h in self.hooks:
            if (f := h.advantage_factor(rollout, ctx)) is not None:
                total = f if total is None else total * f.to(total.device)
        return total

    def token_weights(self, rollout: Rollout, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss weights [N, L], normalisation mask [N, L] or None): products over the hooks' answers."""
        loss, norm = rollout.response_mask.clone(), None
        for h in self.hooks:
            if (w := h.token_weights(rollout, ctx)) is not None:
                loss = loss * w.loss.to(loss.dtype)
                if w.norm is not None:
                    norm = w.norm.to(loss.dtype) if norm is None else norm * w.norm.to(loss.dtype)
        return loss, norm

    def extra_loss(self, micro: Rollout, out: dict, normalizer: torch.Tensor, ctx: StepContext):
        total, stats = None, {}
        for h in self.hooks:
            if (res := h.extra_loss(micro, out, normalizer, ctx)) is not None:
                loss, s = res
                total = loss if total is None else total + loss
                stats.update(s)
        return total, stats

    def state_dict(self) -> dict[str, Any]:
        """State of stateful hooks (schedulers, draw counters) for exact resume."""
        return {n: s for n, h in zip(self.names, self.hooks) if (s := h.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for n, h in zip(self.names, self.hooks):
            if n in state:
                h.load_state_dict(state[n])
