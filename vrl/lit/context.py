"""What the loop hands to hooks and takes back from them: the step context, and stage settings applied.

The loop (``vrl.lit.rl_module``) owns every piece of state here; hooks see a frozen
:class:`vrl.hooks.StepContext` and return :class:`vrl.hooks.StageSettings`, which :class:`RunSettings` applies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any

import torch

from vrl.hooks import Sampling, StageSettings, StepContext, VisionLayout
from vrl.lit.dist import agreed_count, gather_objects
from vrl.lit.sft import build_sft_rollout
from vrl.models.scoring import response_logits, score_logprobs
from vrl.types import Rollout

#: Sampler attributes a stage may set (the fields of ``vrl.hooks.Sampling``).
SAMPLING = tuple(f.name for f in fields(Sampling))


def sampling_of(sampler: Any) -> Sampling:
    return Sampling(**{k: getattr(sampler, k) for k in SAMPLING})


def vision_layout(vlm: Any) -> VisionLayout | None:
    """The processor's patch layout, or None for a model without an image processor."""
    ip = getattr(vlm.processor, "image_processor", None)
    if ip is None:
        return None
    return VisionLayout(
        patch_size=vlm.patch_size,
        merge_size=vlm.merge_size,
        temporal_patch_size=getattr(ip, "temporal_patch_size", 2),
        image_mean=tuple(ip.image_mean),
        image_std=tuple(ip.image_std),
    )


class Scorer:
    """The context's ``score`` and ``logits``: no-grad teacher-forced passes of the current policy."""

    def __init__(
        self, policy: Any, objective: Any, micro_batch_size: int, agree: Callable[[int], int] = lambda n: n
    ) -> None:
        self.policy, self.objective, self.micro_batch_size = policy, objective, micro_batch_size
        self.agree = agree  # micro-batches -> forwards every rank runs (sharded policy: the most any rank needs)

    def score(
        self, rollout: Rollout, pixel_values: torch.Tensor | None = None, micro_batch_size: int | None = None
    ) -> torch.Tensor:
        if pixel_values is not None:
            rollout = _with_pixels(rollout, pixel_values)
        obj = self.objective
        mb = micro_batch_size or self.micro_batch_size
        forwards = self.agree(math.ceil(rollout.num_sequences / mb))
        return score_logprobs(self.policy, rollout, obj.temperature, mb, obj.kernel_impl, obj.suppress_ids, forwards)

    @torch.no_grad()
    def logits(self, rollout: Rollout, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_values is not None:
            rollout = _with_pixels(rollout, pixel_values)
        return response_logits(self.policy, rollout, self.objective.temperature, self.objective.suppress_ids)


def _with_pixels(rollout: Rollout, pixel_values: torch.Tensor) -> Rollout:
    return replace(rollout, pixel_values=pixel_values)


class RunSettings:
    """The run's own sampler settings, batch size, reward and prompt stream, and the stage applied over them.

    Every step starts from the run's values; each :class:`StageSettings` a hook returned overrides the knobs it
    sets (later hooks win). Learning rates a stage replaced are saved here and restored when no stage sets one.
    """

    def __init__(self, sampler: Any, batch_size: int, reward: Any, prompts: Any) -> None:
        self.base = {"sampling": sampling_of(sampler), "batch_size": batch_size, "reward": reward, "prompts": prompts}
        self.saved_lrs: list[float] | None = None

    def apply(self, stages: list[StageSettings], module: Any) -> bool:
        """Set the module's sampler, objective temperature, batch size, reward, prompts and lr for this step (and
        reset its KL reference to the policy when a stage asks).

        Returns:
            True when a stage asked the run to stop.
        """
        base, sampling = self.base, dict(self.base["sampling"].__dict__)
        chosen: dict[str, Any] = {"batch_size": None, "reward": None, "prompts": None}
        lr, lr_scale = None, None
        for s in stages:
            sampling |= {k: v for k, v in (s.sampling or {}).items() if v is not None}
            chosen |= {k: getattr(s, k) for k in chosen if getattr(s, k) is not None}
            lr, lr_scale = (s.lr, s.lr_scale) if s.lr is not None or s.lr_scale is not None else (lr, lr_scale)
        for key in SAMPLING:
            setattr(module.sampler, key, sampling[key])
        module.objective.temperature = module.sampler.temperature  # scored at the temperature sampled at
        module.batch_size = chosen["batch_size"] or base["batch_size"]
        module.reward = chosen["reward"] or base["reward"]
        module.prompts = chosen["prompts"] or base["prompts"]
        self._apply_lr(module.optimizers().param_groups, lr, lr_scale)
        if any(s.reset_reference for s in stages):
            module.reset_reference()
        return any(s.stop for s in stages)

    def _apply_lr(self, groups: list[dict], lr: float | None, lr_scale: float | None) -> None:
        if lr is None and lr_scale is None:
            if self.saved_lrs is not None:
                for group, saved in zip(groups, self.saved_lrs):
                    group["lr"] = saved
                self.saved_lrs = None
            return
        if self.saved_lrs is None:
            self.saved_lrs = [float(g["lr"]) for g in groups]
        for group, saved in zip(groups, self.saved_lrs):
            group["lr"] = lr if lr is not None else saved * lr_scale

    def state_dict(self) -> dict[str, Any]:
        return {"saved_lrs": self.saved_lrs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saved_lrs = state.get("saved_lrs")


def float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Logged metrics as plain floats (tensors from Lightning's ``callback_metrics`` included)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            out[key] = float(value)
    return out


def step_context(module: Any) -> StepContext:
    """The ``StepContext`` of an ``RLModule``'s current step (also without a Trainer: tests, notebooks)."""
    attached = module._trainer is not None
    world = max(1, module.trainer.world_size) if attached else 1
    agree = functools.partial(agreed_count, module) if attached else (lambda n: n)
    scorer = Scorer(module.policy, module.objective, module.micro_batch_size, agree)
    sampler = module.sampler
    return StepContext(
        step=module.global_step,
        seed=module.data_seed,
        sampling=sampling_of(sampler),
        batch_size=module.batch_size,
        micro_batch_size=module.micro_batch_size,
        mini_batch_size=module.mini_batch_size,
        rank=module.global_rank,
        world_size=world,
        gather=module.all_gather if world > 1 else None,
        gather_objects=functools.partial(gather_objects, module) if world > 1 else None,
        vision=vision_layout(module.vlm),
        pad_token_id=module.vlm.processor.tokenizer.pad_token_id,
        kernel_impl=module.objective.kernel_impl,
        device=module.device,
        train_data=module.train_data,
        reward=module.settings.base["reward"] if module.settings is not None else module.reward,
        metrics=metrics_seen(module),
        score=scorer.score,
        logits=scorer.logits,
        generate=functools.partial(generate_with, sampler, module.vlm),
        pairs=functools.partial(
            build_sft_rollout, module.vlm, system_prompt=sampler.system_prompt, prompt_suffix=sampler.prompt_suffix
        ),
        log=module._step_metrics.update,
        print=module.print,
        tag=functools.partial(tag_run, module.logger if attached else None),
    )


def generate_with(
    sampler: Any, vlm: Any, rows: list[dict], group_size: int | None = None, greedy: bool = False, **sampling: Any
) -> Rollout:
    """The context's ``generate``: an auxiliary rollout, with sampler settings for this call only."""
    saved = {k: getattr(sampler, k) for k in sampling}
    try:
        for key, value in sampling.items():
            if value is not None:
                setattr(sampler, key, value)
        return sampler.generate(vlm, rows, group_size=group_size, greedy=greedy)
    finally:
        for key, value in saved.items():
            setattr(sampler, key, value)


def metrics_seen(module: Any) -> dict[str, float]:
    """Every metric's last value: this process's, over what a resumed run restored from its checkpoint."""
    live = float_metrics(module.trainer.callback_metrics) if module._trainer is not None else {}
    return {**module._restored_metrics, **live}


def tag_run(logger: Any, key: str, value: Any) -> None:
    """An MLflow tag on the run; nothing without an MLflow logger."""
    if logger is not None and hasattr(logger, "run_id") and hasattr(logger.experiment, "set_tag"):
        logger.experiment.set_tag(logger.run_id, key, value)
