"""A PRM as a reward term during RL (``reward.prm``): each response's aggregated step scores.

``PRMReward`` is a plain reward term (``(responses, samples) -> list[float]``), so it weights, sandboxes and logs
like any other (``reward/prm_mean``). Its model is loaded in the process that scores (on first use) and is frozen;
with ``isolate=process`` every worker loads its own copy. Scores are probabilities in [0, 1]; an empty response
scores 0.

Args:
    prm: a :class:`vrl.prm.readout.PlusMinusPRM` (or anything with ``step_scores(row, steps)`` and
        ``outcome_score(row, response)``).
    aggregate: ``orm`` (the PRM as outcome model: the whole response as one step, VL-PRM's best-of-N finding) or a
        step aggregate of :data:`vrl.prm.steps.AGGREGATES`.
    pattern: the step splitter's regex; None = one step a line.
    weight: weight in the reward sum.
"""

from __future__ import annotations

from typing import Any

from vrl.prm.steps import AGGREGATES, aggregate, split_steps


class PRMReward:
    def __init__(self, prm: Any, aggregate: str = "orm", pattern: str | None = None, weight: float = 1.0) -> None:
        if aggregate != "orm" and aggregate not in AGGREGATES:
            raise ValueError(f"reward.prm.aggregate must be orm or one of {AGGREGATES}, got {aggregate!r}")
        self.prm, self.aggregate, self.pattern, self.weight = prm, aggregate, pattern, weight

    def score(self, response: str, sample: dict) -> float:
        steps = split_steps(response, self.pattern)
        if not steps:
            return 0.0
        if self.aggregate == "orm":
            return float(self.prm.outcome_score(sample, response))
        return aggregate(self.prm.step_scores(sample, steps), self.aggregate)

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [self.score(r, s) for r, s in zip(responses, samples)]
