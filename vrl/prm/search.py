"""Test-time selection with a PRM: best-of-N, greedy step search (VL-PRM) and Refined-BoN (GM-PRM).

The policy side is :class:`PolicyStepper`: it samples continuations of a row's prompt *from a prefix* of the
assistant's reply (the chat template's generation prompt followed by the prefix text), which step search and
GM-PRM's "continue from the corrected prefix" both need. The selection loops take callables, so they run on
scripted scores in tests and on real models in ``vrl eval``:

- :func:`best_of_n`: score each of N solutions (the PRM as outcome model, or aggregated step scores) -> argmax.
- :func:`greedy_step_search`: at each step sample k candidate next steps, keep the one
  :func:`vrl.prm.steps.pick_candidate` picks (VL-PRM: k = 16 at T = 0.7), until a candidate ends the solution.
- :func:`refined_bon`: GM-PRM's Refined-BoN: N/2 solutions; each one the PRM finds a first error in is rebuilt
  from steps 1..k-1 + the PRM's corrected step k and continued by the policy (one continuation); the pool of up
  to N is ranked by aggregated step scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vrl.prm.steps import aggregate, best_index, join_steps, pick_candidate, split_steps
from vrl.sampler.prompts import to_messages


class PolicyStepper:
    """Samples continuations of a row's prompt from an assistant-reply prefix with a local VLM policy.

    Args:
        vlm: the policy (``vrl.models.loading.VLM``).
        max_new_tokens: cap per continuation.
        temperature: sampling temperature (VL-PRM's step search: 0.7); 0 = greedy.
        system_prompt, prompt_suffix: as the run's sampler encodes prompts.
    """

    def __init__(
        self,
        vlm: Any,
        max_new_tokens: int = 64,
        temperature: float = 0.7,
        system_prompt: str | None = None,
        prompt_suffix: str = "",
    ) -> None:
        self.vlm, self.max_new_tokens, self.temperature = vlm, max_new_tokens, temperature
        self.system_prompt, self.prompt_suffix = system_prompt, prompt_suffix

    @torch.no_grad()
    def continue_from(self, row: dict, prefix: str, n: int) -> list[str]:
        """``n`` continuations (text after ``prefix``) of the reply to ``row`` that begins with ``prefix``."""
        proc, model = self.vlm.processor, self.vlm.model
        messages = to_messages(row, self.system_prompt, self.prompt_suffix)
        text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
        images = [im.convert("RGB") for im in row.get("images") or []]
        enc = proc(text=[text], images=images or None, return_tensors="pt")
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        tok = proc.tokenizer
        sampling = (
            {"do_sample": False} if self.temperature == 0 else {"do_sample": True, "temperature": self.temperature}
        )
        was_training = model.training
        model.eval()
        out = model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **sampling,
        )
        model.train(was_training)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def first_step(continuation: str) -> tuple[str, bool]:
    """(the continuation's first step, whether it ends the solution: no further step follows it in the text)."""
    steps = split_steps(continuation)
    return (steps[0] if steps else ""), len(steps) <= 1


@dataclass
class Choice:
    """A selection's outcome: the response, its index in the pool, every candidate's score and the pool."""

    response: str
    index: int
    scores: list[float]
    pool: list[str] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)


def best_of_n(responses: Sequence[str], score: Callable[[str], float]) -> Choice:
    """The response with the highest ``score`` (first on ties)."""
    scores = [float(score(r)) for r in responses]
    i = best_index(scores)
    return Choice(responses[i], i, scores, list(responses))


def step_aggregate_score(step_scores: Callable[[list[str]], list[float]], how: str) -> Callable[[str], float]:
    """A solution score from a PRM's step scores (VL-PRM's step aggregation: ``mean``; GM-PRM: ``min``)."""
    return lambda response: aggregate(step_scores(split_steps(response)), how)


def greedy_step_search(
    propose: Callable[[str, int], list[str]],
    score_last: Callable[[list[list[str]]], list[tuple[float, int]]],
    candidates: int = 16,
    max_steps: int = 8,
    alpha: float = 0.3,
    beta: float = 0.6,
) -> Choice:
    """VL-PRM's greedy step search.

    Args:
        propose: ``propose(prefix_text, k)`` -> k continuations of the reply from the prefix (the policy).
        score_last: prefixes (lists of steps) -> (P(+), PRM input length) of each prefix's last step.
        candidates: k per step (VL-PRM: 16).
        max_steps: steps before the search stops.
    """
    steps: list[str] = []
    trace = []
    for _ in range(max_steps):
        prefix = join_steps(steps) + ("\n" if steps else "")
        heads = [first_step(c) for c in propose(prefix, candidates)]
        heads = [(h, done) for h, done in heads if h] or [("", True)]
        readouts = score_last([steps + [h] for h, _ in heads]) if heads[0][0] else [(0.0, 1)]
        pick = pick_candidate([p for p, _ in readouts], [n for _, n in readouts], alpha, beta)
        trace.append({"candidates": [h for h, _ in heads], "p_plus": [p for p, _ in readouts], "pick": pick})
        head, done = heads[pick]
        if head:
            steps.append(head)
        if done:
            break
    response = join_steps(steps)
    return Choice(response, 0, [], [response], trace)


def refined_bon(
    sample: Callable[[int], list[str]],
    review: Callable[[list[str]], Any],
    continue_from: Callable[[str], str],
    n: int,
    how: str = "min",
) -> Choice:
    """GM-PRM's Refined-BoN over a pool of up to ``n`` solutions.

    Args:
        sample: ``sample(m)`` -> m policy solutions.
        review: steps -> an object with ``scores`` (per step), ``first_error`` (1-based step or None) and
            ``correction`` (text for that step), e.g. :meth:`vrl.prm.generative.GenerativePRM.review`.
        continue_from: prefix text -> the policy's continuation (one).
        n: the pool's size bound (N/2 sampled + up to N/2 refined).
        how: step-score aggregation (GM-PRM [ours]: ``min``).
    """
    pool, scores = [], []
    for response in sample(max(n // 2, 1)):
        steps = split_steps(response)
        verdict = review(steps)
        pool.append(response)
        scores.append(aggregate(verdict.scores, how))
        k = verdict.first_error
        if k is not None and verdict.correction and 1 <= k <= len(steps):
            prefix = join_steps([*steps[: k - 1], verdict.correction.strip()]) + "\n"
            refined = prefix + continue_from(prefix)
            pool.append(refined)
            scores.append(aggregate(review(split_steps(refined)).scores, how))
    i = best_index(scores)
    return Choice(pool[i], i, scores, pool)
