"""``RewardContext``: what a reward term may know about the run besides the response and its row.

The loop hands one to the reward set per call (``reward(responses, samples, context=...)``); the set gives every
term's rows a ``reward_context`` entry holding it (a shallow copy of each row: the rollout's rows are untouched).
Rows are what travels to every kind of term, in-process or in a reward worker process, and to a user's function
(:class:`vrl.rewards.file.FileReward`), so a step-aware term needs no special signature: it reads
``sample["reward_context"]`` (None when the loop passed no context). V-Triune's trainer does the same: it writes
``step`` and ``total_steps`` into every row's verifier parameters.

Terms that score a response against the other responses to the same prompt (a group-aware reward) get the whole
batch in one call already: the rows of one prompt share their ``uid``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The row key under which the reward set passes the context to terms.
CONTEXT_KEY = "reward_context"


@dataclass(frozen=True)
class RewardContext:
    """The run's position when the responses were scored.

    Attributes:
        step: optimizer steps taken before this RL step (``StepContext.step``; the global step in validation).
        total_steps: the run's planned optimizer steps (``trainer.max_steps``), None when unknown (-1, unset).
        training: False for validation calls: per-source training metrics skip them, and a term may score
            differently (V-Triune passes ``is_training``).
    """

    step: int = 0
    total_steps: int | None = None
    training: bool = True

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.total_steps <= 0:
            object.__setattr__(self, "total_steps", None)

    @property
    def progress(self) -> float | None:
        """``step / total_steps`` (the fraction of the run done), or None when the total is unknown."""
        return None if self.total_steps is None else self.step / self.total_steps


def context_of(sample: dict) -> RewardContext | None:
    """The context the reward set attached to ``sample``, or None (no context passed, or a bare row)."""
    value = sample.get(CONTEXT_KEY)
    return value if isinstance(value, RewardContext) else None
