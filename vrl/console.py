"""What a run prints: its parameter count at start, a periodic line of the main metrics, a summary at the end.

Lines are written on rank zero through ``tqdm.write``, above the progress bar when there is one (Lightning's
``LightningModule.print`` drops text while no bar is active, e.g. when fitting starts), so they read the same in a
terminal and in a batch job's log file, where the bar is usually switched off
(``trainer.enable_progress_bar=false``)::

    [vrl] parameters: 213 K trainable of 213 K total (100%)
    [vrl] step 210/250 | reward 0.812 | acc 0.812 | grad ... | len 1 | 1.32 s/step | val/acc 0.656 | 5:40 elapsed

The summary (:func:`run_summary`) says how many steps ran and how long they took, the last validation, where
the run directory, the policy and the MLflow run went, and how to look at them. A run that stopped before
``trainer.max_steps`` without a signal (``trainer.max_time``, a callback) is reported as such, and
``python -m vrl`` then exits with :data:`EXIT_STOPPED` (a stop signal exits earlier, with 128 + its number).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, Timer

#: Exit status of ``python -m vrl`` when the run stopped before its last step (0: done, 1: crashed with a
#: traceback, 2: bad config or data, see ``vrl.errors``).
EXIT_STOPPED = 3

#: metric key -> label of the periodic line, in print order (keys not logged yet are left out).
DEFAULT_METRICS = {
    "rollout/reward_mean": "reward",
    "rollout/accuracy": "acc",
    "policy/kl_ref": "kl",
    "train/grad_norm": "grad",
    "rollout/response_len_mean": "len",
    "rollout/kept_group_frac": "kept",
    "perf/step_time_s": "s/step",
    "val/accuracy": "val/acc",
}


class ConsoleLog(Callback):
    """Prints the parameter count when fitting starts and one line of metrics every ``every_n_steps`` steps.

    Args:
        every_n_steps: optimizer steps between two metrics lines (``trainer.global_step``); 0 = never.
        metrics: ``metric key -> label``, printed in this order with their last logged values; None uses
            :data:`DEFAULT_METRICS` (reward, accuracy, KL, gradient norm, response length, kept groups, step
            time, validation accuracy; not the loss, which on-policy GRPO keeps near 0 by construction).
    """

    def __init__(self, every_n_steps: int = 10, metrics: Mapping[str, str] | None = None) -> None:
        if every_n_steps < 0:
            raise ValueError(f"console.every_n_steps must be >= 0 (0 = never), got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
        self.started: float | None = None
        self._next = every_n_steps

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from vrl.models.loading import count_parameters

        self.started = time.monotonic()
        self._next = (trainer.global_step // self.every_n_steps + 1) * self.every_n_steps if self.every_n_steps else 0
        lora = getattr(pl_module.policy, "peft_config", None)
        rank = next(iter(lora.values())).r if lora else None
        _say(trainer, parameter_line(*count_parameters(pl_module.policy), lora_rank=rank))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step < self._next:
            return
        self._next = (step // self.every_n_steps + 1) * self.every_n_steps
        elapsed = time.monotonic() - self.started if self.started is not None else None
        _say(trainer, metrics_line(step, trainer.max_steps, trainer.callback_metrics, self.metrics, elapsed))

    def elapsed(self) -> float | None:
        """Seconds since fitting started, or None before."""
        return None if self.started is None else time.monotonic() - self.started


def parameter_line(trainable: int, total: int, lora_rank: int | None = None) -> str:
    """``[vrl] parameters: 1.84 M trainable of 3.75 B total (0.049%, LoRA r=8)``."""
    share = 100.0 * trainable / max(total, 1)
    extra = f", LoRA r={lora_rank}" if lora_rank else ""
    return f"[vrl] parameters: {_count(trainable)} trainable of {_count(total)} total ({share:.3g}%{extra})"


def metrics_line(
    step: int, max_steps: int | None, logged: Mapping[str, Any], metrics: Mapping[str, str], elapsed: float | None
) -> str:
    """One line: ``[vrl] step 50/250 | reward 0.62 | ... | 0:18 elapsed``; unlogged metrics are left out."""
    parts = [f"[vrl] step {step}/{max_steps}" if max_steps and max_steps > 0 else f"[vrl] step {step}"]
    for key, label in metrics.items():
        if key in logged:
            value = float(logged[key])
            parts.append(f"{value:.3g} {label}" if label.startswith("s/") else f"{label} {value:.3g}")
    if elapsed is not None:
        parts.append(f"{_duration(elapsed)} elapsed")
    return " | ".join(parts)


@dataclass
class RunSummary:
    """What :func:`run_summary` found: the lines to print and whether the run reached its end.

    Attributes:
        lines: the summary, one ``[vrl] ...`` line per item.
        stopped: None when the run finished (``trainer.max_steps`` reached, or a hook such as a curriculum
            ended it by design); otherwise why it stopped early.
    """

    lines: list[str]
    stopped: str | None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def stop_reason(trainer: Any, hooks: list[Any]) -> str | None:
    """None when the run did all it was asked to; otherwise a few words on why it stopped early.

    Finished means ``trainer.global_step >= trainer.max_steps`` (or no step limit at all), or a hook that says
    it is ``done`` (a curriculum whose last stage ended the run).
    """
    if trainer.interrupted:
        return "interrupted"
    max_steps = trainer.max_steps
    if max_steps is None or max_steps < 0 or trainer.global_step >= max_steps:
        return None
    if any(getattr(h, "done", False) is True for h in hooks):
        return None
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    if any(t.time_remaining() is not None and t.time_remaining() <= 0 for t in timers):
        return "trainer.max_time reached"
    return "stopped before trainer.max_steps"


def run_summary(
    trainer: Any,
    hooks: list[Any],
    output_dir: str | Path,
    policy_dir: str | Path | None,
    logger: Any = None,
    elapsed: float | None = None,
) -> RunSummary:
    """The end-of-run report: steps and time, last validation, where everything went, how to view it.

    Args:
        trainer: the Lightning trainer after ``fit``.
        hooks: the module's hooks (``RLModule.hooks.hooks``), asked whether one ended the run by design.
        output_dir: the run directory (Hydra's; config under ``.hydra/``, checkpoints under ``checkpoints/``).
        policy_dir: where the policy was saved, or None when it was not (``save_policy=false``).
        logger: the run's logger (MLflow, or Lightning's CSV/TensorBoard/W&B logger), or None (``logger=none``).
        elapsed: seconds spent fitting, when known.
    """
    stopped = stop_reason(trainer, hooks)
    steps, max_steps = trainer.global_step, trainer.max_steps
    of = f"/{max_steps}" if max_steps and max_steps > 0 else ""
    took = ""
    if elapsed is not None:
        took = f" in {_duration(elapsed)}" + (f" ({elapsed / steps:.2f} s/step)" if steps else "")
    if stopped is None:
        lines = [f"[vrl] done: {steps}{of} steps{took}"]
    else:
        lines = [
            f"[vrl] stopped early ({stopped}): {steps}{of} steps{took}; continue it with "
            f"hydra.run.dir={Path(output_dir)} ckpt_path=last (exit status {EXIT_STOPPED})"
        ]
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if val:
        lines.append("[vrl] last validation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(val.items())))
    else:
        lines.append("[vrl] last validation: none ran (data.val=null, or fewer steps than trainer.val_check_interval)")
    lines.append(f"[vrl] run directory: {Path(output_dir).resolve()} (config: .hydra/config.yaml)")
    if policy_dir is not None:
        lines.append(f"[vrl] policy: {Path(policy_dir).resolve()} ({policy_hint(policy_dir)})")
    if logger is not None and getattr(logger, "run_id", None):
        uri = str(logger._tracking_uri)
        view = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
        lines.append(f"[vrl] MLflow run {logger.run_id} in {uri}")
        lines.append(f"[vrl] view it with: {view}")
    elif logger is not None and getattr(logger, "log_dir", None):  # logger=csv|tensorboard (Lightning's own)
        lines.append(f"[vrl] metrics: {Path(logger.log_dir).resolve()} ({type(logger).__name__})")
    return RunSummary(lines, stopped)


def policy_hint(policy_dir: str | Path) -> str:
    """How to load what ``save_vlm`` wrote: a whole model, or a LoRA adapter that names its base."""
    if (Path(policy_dir) / "adapter_config.json").is_file():
        return "a LoRA adapter: peft.PeftModel.from_pretrained(base, dir); README: 'LoRA'"
    return "AutoModelForImageTextToText.from_pretrained(dir); README: 'Using the trained policy'"


def _say(trainer: Any, text: str) -> None:
    """Print on rank zero, above any active tqdm progress bar."""
    if trainer.is_global_zero:
        from tqdm import tqdm

        tqdm.write(text)


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(n)


def _duration(seconds: float) -> str:
    """``0:18``, ``12:05``, ``1:02:03``."""
    s = round(seconds)
    hours, minutes, secs = s // 3600, s % 3600 // 60, s % 60
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
