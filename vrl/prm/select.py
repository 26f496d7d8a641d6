"""PRM-guided selection on a benchmark (``vrl eval --select``): per item a response chosen by best-of-N, greedy step
search or Refined-BoN, its accuracy, and what it cost (policy sequences and tokens, PRM prompts scored).

- ``bon``: N samples from the run's sampler (its temperature), each scored by the PRM: ``aggregate=orm`` scores the
  whole response as one step (VL-PRM's best-of-N "non-greedy" mode, its best), else step scores aggregated.
- ``step_search``: VL-PRM's greedy step search, N candidate steps per step at ``step_temperature`` (0.7 as
  published), up to ``max_steps`` steps, each candidate continuation capped at the sampler's ``max_new_tokens``.
- ``refined_bon``: GM-PRM's Refined-BoN with a :class:`vrl.prm.generative.GenerativePRM`: N/2 samples plus one
  continuation from each corrected prefix, ranked by aggregated step scores (``min`` when ``orm`` is asked).
- ``greedy`` (for the N = 1 baseline): the sampler's greedy response, no PRM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vrl.prm.search import PolicyStepper, best_of_n, greedy_step_search, refined_bon, step_aggregate_score

SELECTIONS = ("greedy", "bon", "step_search", "refined_bon")


def select_item(
    how: str,
    row: dict,
    sampler: Any,
    vlm: Any,
    prm: Any,
    n: int,
    aggregate: str = "orm",
    step_temperature: float = 0.7,
    max_steps: int = 8,
) -> tuple[str, dict[str, float]]:
    """The response ``how`` picks for ``row`` and its cost (``policy_sequences``, ``policy_tokens``,
    ``prm_prompts``)."""
    if how not in SELECTIONS:
        raise ValueError(f"--select must be one of {SELECTIONS}, got {how!r}")
    before = getattr(prm, "prompts_run", 0)
    cost = {"policy_sequences": 0.0, "policy_tokens": 0.0, "prm_prompts": 0.0}
    try:
        choice = _select(how, row, sampler, vlm, prm, n, aggregate, step_temperature, max_steps, cost)
    finally:  # the PRM counts the prompts it ran (readouts and written reviews)
        cost["prm_prompts"] = float(getattr(prm, "prompts_run", 0) - before) if prm is not None else 0.0
    return choice, cost


def _select(how, row, sampler, vlm, prm, n, aggregate, step_temperature, max_steps, cost) -> str:
    """The chosen response; policy calls add their sequences and tokens to ``cost``."""

    def sample(m: int, greedy: bool = False) -> list[str]:
        rollout = sampler.generate(vlm, [row], group_size=m, greedy=greedy)
        cost["policy_sequences"] += rollout.num_sequences
        cost["policy_tokens"] += float(rollout.response_mask.sum())
        return list(rollout.responses)

    stepper = PolicyStepper(vlm, sampler.max_new_tokens, step_temperature, sampler.system_prompt, sampler.prompt_suffix)

    def propose(prefix: str, k: int) -> list[str]:
        out = stepper.continue_from(row, prefix, k)
        cost["policy_sequences"] += k
        cost["policy_tokens"] += sum(len(vlm.processor.tokenizer.encode(o, add_special_tokens=False)) for o in out)
        return out

    if how == "greedy":
        return sample(1, greedy=True)[0]
    if prm is None:
        raise ValueError(f"--select {how} needs a PRM (--prm, or reward.prm in the config)")
    if how == "bon":
        score: Callable[[str], float] = (
            (lambda r: prm.outcome_score(row, r))
            if aggregate == "orm"
            else step_aggregate_score(lambda steps: prm.step_scores(row, steps), aggregate)
        )
        return best_of_n(sample(n), score).response
    if how == "step_search":

        def score_last(prefixes):
            return [(r.p, r.length) for r in prm.score_prefixes([row] * len(prefixes), prefixes)]

        return greedy_step_search(propose, score_last, n, max_steps).response
    how_steps = "min" if aggregate == "orm" else aggregate
    review = lambda steps: prm.review(row, steps)  # noqa: E731
    return refined_bon(sample, review, lambda prefix: propose(prefix, 1)[0], n, how_steps).response
