"""PEARL's perceptual reward (arXiv 2511.18437): the fraction of a probe's checklist answered correctly.

The checklist itself (questions, the ``<aK>`` answer tags) is data: :mod:`vrl.data.checklist`. Answers are
checked by :class:`vrl.rewards.accuracy.Accuracy`, so a probe answer is right exactly when the same text would
be right as a main answer of that ``answer_type``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vrl.data.checklist import DENOMINATORS, ProbeItem, parse_probe_answers
from vrl.rewards.accuracy import Accuracy
from vrl.rewards.extract import AnswerExtractor, last_boxed

# The span inside a probe tag may itself be wrapped in \boxed{}; nothing else is unwrapped.
_ACCURACY = Accuracy(extract=AnswerExtractor(answer_tag=None, boxed=True, fallback="whole"))


def score_probe(response: str, items: list[ProbeItem], denominator: str = "checklist") -> float:
    """The perceptual reward of one probe response: the fraction of sub-answers that are correct.

    Each ``<aK>`` is checked against ``items[K-1]`` by vrl's own accuracy check for its ``answer_type``.
    Answers whose K is outside the checklist are ignored. For a one-item checklist with no ``<a1>``, the
    last ``\\boxed{}`` is the answer (PEARL's single-question fallback).

    Args:
        response: the probe rollout's text.
        items: the checklist the probe asked.
        denominator: ``checklist`` (default) divides by ``len(items)``, so skipping hard items never pays.
            ``answered`` divides by the number of answers emitted, as published: answering one easy item
            scores 1.0 (core.md §6); 0 answers score 0.0.

    Returns:
        A reward in [0, 1].
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if not items:
        raise ValueError("cannot score a probe against an empty checklist")
    answers = parse_probe_answers(response)
    if len(items) == 1 and 1 not in answers:
        boxed = last_boxed(response)
        if boxed is not None:
            answers = {1: boxed}
    answered = {k: v for k, v in answers.items() if 1 <= k <= len(items)}
    correct = math.fsum(_is_correct(span, items[k - 1]) for k, span in answered.items())
    total = len(items) if denominator == "checklist" else len(answered)
    return correct / total if total else 0.0


def _is_correct(span: str, item: ProbeItem) -> float:
    return _ACCURACY.score(span, {"answer": item.answer, "answer_type": item.answer_type})


def score_probes(
    responses: Sequence[str], items_per_response: Sequence[list[ProbeItem]], denominator: str = "checklist"
) -> list[float]:
    """:func:`score_probe` over a batch: ``responses[i]`` is scored against ``items_per_response[i]``.

    Args:
        responses: N probe responses.
        items_per_response: N checklists (a row's checklist repeated for its G probe rollouts).
        denominator: see :func:`score_probe`.
    """
    if len(responses) != len(items_per_response):
        raise ValueError(f"{len(responses)} responses but {len(items_per_response)} checklists")
    return [score_probe(r, items, denominator) for r, items in zip(responses, items_per_response)]
