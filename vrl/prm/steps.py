"""Steps of a solution and how step scores become a choice (VL-PRM arXiv 2509.23250; GM-PRM arXiv 2508.04088).

Pure functions, so every selection rule is tested on scripted scores:

- :func:`split_steps`: a response -> its steps (non-empty lines by default; a regex for other layouts, e.g.
  ``Step \\d+:`` markers). VL-PRM's solutions are ``[Visual Elements]`` steps then ``[Reasoning]`` steps, one a
  line, which the default splits as written.
- :func:`aggregate`: step scores -> one solution score: ``min`` | ``mean`` (VL-PRM's step aggregation) |
  ``product`` | ``last``.
- :func:`best_index`: the argmax over solutions (first on ties): best-of-N with the PRM as outcome model (one score
  per solution) or with aggregated step scores.
- :func:`candidate_score` / :func:`pick_candidate`: VL-PRM's greedy step search
  (``vllm_bon_greedy_search_no_template.py``): score = P(+)^0.3 / L^0.6 when "+" is the argmax, else -1; the
  maximum wins, and when every candidate reads "-" the one with the lowest P(-) (the highest P(+)) wins.
  L is the PRM input's length in tokens; "argmax" is over the two readout tokens (P(+) >= 0.5) [ours: the
  published code's argmax is over its two-way softmax as well, as far as the spec says].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

AGGREGATES = ("min", "mean", "product", "last")


def split_steps(text: str, pattern: str | None = None) -> list[str]:
    """The steps of ``text``: its non-empty lines (stripped), or the pieces between matches of ``pattern``."""
    pieces = text.splitlines() if pattern is None else re.split(pattern, text)
    return [p.strip() for p in pieces if p and p.strip()]


def join_steps(steps: Sequence[str]) -> str:
    """The text of some steps, one a line (what :func:`split_steps` splits back)."""
    return "\n".join(steps)


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """One solution score from its step scores; an empty solution scores 0 (it states nothing checkable)."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    if not scores:
        return 0.0
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    if how == "product":
        return float(math.prod(scores))
    return float(scores[-1])


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score (the first on ties; NaN never wins)."""
    if not scores:
        raise ValueError("best_index: no candidates")
    clean = [-math.inf if math.isnan(s) else s for s in scores]
    return max(range(len(clean)), key=lambda i: (clean[i], -i))


def candidate_score(p_plus: float, length: int, alpha: float = 0.3, beta: float = 0.6) -> float:
    """VL-PRM's greedy-search score of one candidate step: P(+)^alpha / L^beta if "+" wins, else -1."""
    if p_plus < 0.5:
        return -1.0
    return p_plus**alpha / max(length, 1) ** beta


def pick_candidate(p_plus: Sequence[float], lengths: Sequence[int], alpha: float = 0.3, beta: float = 0.6) -> int:
    """The candidate greedy step search keeps: the best :func:`candidate_score`; if every candidate reads "-",
    the one with the lowest P(-) = 1 - P(+)."""
    if len(p_plus) != len(lengths):
        raise ValueError(f"{len(p_plus)} readouts but {len(lengths)} lengths")
    scores = [candidate_score(p, n, alpha, beta) for p, n in zip(p_plus, lengths)]
    if all(s == -1.0 for s in scores):
        return best_index(list(p_plus))
    return best_index(scores)
