"""Image-use diagnostics: does the policy look at the image? A Lightning callback, whatever the method.

Every ``every_n_steps`` optimizer steps, on a fixed slice of validation rows (the first ``num_rows`` rows that
hold an image), the callback compares the policy's normal behaviour with two counterfactual inputs:

- **blank**: every image replaced by a uniform image of the same size (``blank_fill``, mid-grey by default:
  the processor's mean, so the vision tower sees ~0 after normalisation);
- **shuffled**: images moved across rows by a cyclic shift among rows with the same number of images (row
  ``i`` gets row ``i+1``'s images), so each row sees a real image of the task, just not its own.

and logs, under ``diag/``:

- ``diag/reward``, ``diag/accuracy``: greedy responses to the normal rows, scored by the run's reward;
- ``diag/blank/reward|accuracy``, ``diag/shuffled/reward|accuracy``: greedy responses to the counterfactual rows,
  scored against each row's *own* answer (an image-blind policy scores the same as on normal rows);
- ``diag/blank/kl``, ``diag/shuffled/kl``: the per-token KL(normal || counterfactual) of the next-token
  distributions along the normal greedy responses (teacher-forced, mean over response tokens), at the
  sampler's temperature with its suppressed tokens masked: the distribution the policy samples from. A policy
  that ignores the image has KL 0 and equal accuracies; one that reads it has KL > 0 and a drop.

Steps: the metrics are logged at ``trainer.global_step``, the optimizer steps that ``trainer.max_steps`` counts, so two
runs are compared at equal updates. Lightning logs the loop's own metrics (and validation) at its batch count, which
runs ahead of the optimizer steps when some RL steps had every group filtered out (dynamic sampling): in such a run
``diag/*`` and ``val/*`` curves have different x axes (experiments/LOG.md, issue 20 smoke run).

Why a callback: it reads the module's policy, sampler and reward and writes only to the loggers, so the loop and
every method stay untouched. It draws no random numbers the run would see (greedy decoding, RNG state restored),
restores the reward set's degenerate-reward streak, and puts the policy back in its training mode, so a run's
numbers do not depend on whether it is on. Rank 0 only: under DDP the other ranks skip it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from vrl.lit.sft import build_sft_rollout
from vrl.models.scoring import response_logits
from vrl.rewards.context import RewardContext

log = logging.getLogger("vrl")

#: Mid-grey: the Qwen processors' image mean is 0.5, so this normalises to ~0 (no signal in any channel).
DEFAULT_BLANK = (128, 128, 128)


def blank_rows(rows: Sequence[dict], fill: Sequence[int] = DEFAULT_BLANK) -> list[dict]:
    """Copies of ``rows`` whose images are uniform ``fill`` images of the same sizes."""
    colour = tuple(int(c) for c in fill)
    return [{**r, "images": [Image.new("RGB", im.size, colour) for im in r.get("images") or []]} for r in rows]


def shuffled_rows(rows: Sequence[dict]) -> tuple[list[dict], list[bool]]:
    """Copies of ``rows`` with images moved by a cyclic shift among rows holding the same number of images.

    A cyclic shift is a derangement (no row keeps its own images) wherever two or more rows share an image
    count, and needs no random numbers. Returns the rows and, per row, whether it got another row's images.
    """
    by_count: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_count.setdefault(len(r.get("images") or []), []).append(i)
    out, moved = [dict(r) for r in rows], [False] * len(rows)
    for count, idx in by_count.items():
        if count == 0 or len(idx) < 2:
            continue
        for k, i in enumerate(idx):
            out[i]["images"] = list(rows[idx[(k + 1) % len(idx)]]["images"])
            moved[i] = True
    return out, moved


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) [n, L] between the next-token distributions of two passes, 0 where ``mask`` is 0.

    Args:
        logits_p: [n, L, V] logits of the reference (normal) pass.
        logits_q: [n, L, V] logits of the counterfactual pass.
        mask: [n, L] response-token mask.
    """
    logp, logq = torch.log_softmax(logits_p.float(), -1), torch.log_softmax(logits_q.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return kl.clamp_min(0.0) * mask  # clamp: float rounding can leave -1e-9 where p == q


def _scored(reward: Any, responses: list[str], rows: list[dict], step: int) -> tuple[float, float | None]:
    """(mean total reward, mean accuracy or None) of ``responses``, leaving the reward set's streak untouched."""
    streak = getattr(reward, "degenerate_streak", None)
    total, components = reward(responses, rows, context=RewardContext(step, None, training=False))
    if streak is not None:
        reward.degenerate_streak = streak
    acc = components.get("accuracy")
    return float(total.mean()), (float(acc.mean()) if acc is not None else None)


@torch.no_grad()
def image_use_metrics(
    vlm: Any,
    sampler: Any,
    reward: Any,
    rows: list[dict],
    temperature: float = 1.0,
    suppress_ids: list[int] | None = None,
    step: int = 0,
    blank_fill: Sequence[int] = DEFAULT_BLANK,
) -> dict[str, float]:
    """The ``diag/*`` metrics (module docstring) of ``vlm`` on ``rows`` (each holding at least one image).

    The policy is put in eval mode for the passes and its previous mode restored.
    """
    model = vlm.model
    was_training = model.training
    model.eval()
    try:
        normal = sampler.generate(vlm, rows, greedy=True)
        responses = list(normal.responses)
        out: dict[str, float] = {}
        _put(out, "diag", *_scored(reward, responses, rows, step))
        forced = build_sft_rollout(vlm, rows, responses, sampler.system_prompt, sampler.prompt_suffix)
        reference = response_logits(model, forced, temperature, suppress_ids)
        mask = forced.response_mask
        shuffled, moved = shuffled_rows(rows)
        for name, other, keep in (
            ("blank", blank_rows(rows, blank_fill), [True] * len(rows)),
            ("shuffled", shuffled, moved),
        ):
            picked = [i for i, k in enumerate(keep) if k]
            if not picked:
                continue
            sub = [other[i] for i in picked]
            sub_responses = list(sampler.generate(vlm, sub, greedy=True).responses)
            _put(out, f"diag/{name}", *_scored(reward, sub_responses, sub, step))
            # teacher-forced over every row (unmoved rows as they are), so both passes have the same L
            pass_q = build_sft_rollout(vlm, other, responses, sampler.system_prompt, sampler.prompt_suffix)
            counted = mask * torch.tensor(keep, dtype=mask.dtype, device=mask.device)[:, None]
            kl = token_kl(reference, response_logits(model, pass_q, temperature, suppress_ids), counted)
            out[f"diag/{name}/kl"] = float(kl.sum() / counted.sum().clamp_min(1.0))
        return out
    finally:
        model.train(was_training)


def _put(out: dict[str, float], prefix: str, reward: float, accuracy: float | None) -> None:
    out[f"{prefix}/reward"] = reward
    if accuracy is not None:
        out[f"{prefix}/accuracy"] = accuracy


def diagnostic_rows(dataset: Any, num_rows: int) -> list[dict]:
    """The first ``num_rows`` rows of ``dataset`` that hold at least one image (the fixed slice)."""
    rows = []
    for i in range(len(dataset)):
        row = dict(dataset[i])
        if row.get("images"):
            rows.append(row)
            if len(rows) == num_rows:
                break
    return rows


class ImageUseDiagnostics(Callback):
    """Logs the ``diag/*`` image-use metrics every N optimizer steps (``conf/callbacks``: ``image_use``).

    Args:
        every_n_steps: interval in optimizer steps; 0 switches it off (as does ``callbacks.image_use=null``).
        num_rows: size of the fixed slice (the first rows with an image of the validation data, else of the
            training data).
        blank_fill: RGB of the blank image.
        at_start: also measure before the first step (step 0), the untrained baseline.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        num_rows: int = 32,
        blank_fill: Sequence[int] = DEFAULT_BLANK,
        at_start: bool = True,
    ) -> None:
        if every_n_steps < 0 or num_rows < 1:
            raise ValueError("callbacks.image_use: every_n_steps must be >= 0 and num_rows >= 1")
        if len(blank_fill) != 3:
            raise ValueError(f"callbacks.image_use.blank_fill must be an RGB triple, got {list(blank_fill)}")
        self.every_n_steps, self.num_rows, self.blank_fill, self.at_start = (
            every_n_steps,
            num_rows,
            blank_fill,
            at_start,
        )
        self._rows: list[dict] | None = None
        self._last_step = -1

    def _active(self, trainer: Any) -> bool:
        return bool(self.every_n_steps) and trainer.is_global_zero and bool(trainer.loggers)

    def measure(self, trainer: Any, module: Any) -> dict[str, float]:
        """Compute and log the metrics at the trainer's current step; returns them (empty: no image rows)."""
        step = trainer.global_step
        if self._rows is None:
            data = module.val_data if module.val_data is not None else module.train_data
            self._rows = diagnostic_rows(data, self.num_rows)
            if not self._rows:
                log.info("callbacks.image_use: no row with an image in the data; image-use diagnostics are off")
        if not self._rows or step == self._last_step:
            return {}
        self._last_step = step
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            obj = module.objective
            metrics = image_use_metrics(
                module.vlm, module.sampler, module.reward, self._rows, obj.temperature, obj.suppress_ids, step,
                self.blank_fill,
            )  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        return metrics

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.at_start and self._active(trainer) and trainer.global_step == 0:
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._active(trainer) and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)
