"""PaCo-RL's pairwise consistency reward (arXiv 2512.04784; github.com/X-GenGroup/PaCo-RL), for text answers.

PaCo-Reward asks a judge whether two sub-images of one generated set are consistent, "Yes"/"No" first, and scores
``P(Yes) / (P(Yes) + P(No))`` from the first token (0 when neither is seen); scores are averaged over pairs, then
criteria. vrl's policies write text, so the pairs here are answers: ``mode=group`` pairs each response with the
other responses to the same prompt (self-consistency within a group), ``mode=segments`` pairs the ``<tag>`` segments
inside one response (e.g. several ``<answer>`` parts, PaCo's sub-figures of one grid). The judge is any
:class:`~vrl.judges.base.ModelJudge` (``probability``). PaCo's log-tamed aggregation of the consistency reward with
the others is ``advantage=log_tame`` (:class:`vrl.methods.multi_reward.LogTame`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

#: One criterion (PaCo asks per criterion and dimension; ``{a}`` and ``{b}`` are the two answers).
DEFAULT_CRITERIA = (
    "Do the two answers below describe the same thing consistently (same objects, attributes and conclusion, "
    "nothing contradictory)? Reply Yes or No first.\nAnswer 1: {a}\nAnswer 2: {b}",
)
MODES = ("group", "segments")


def segments(text: str, tag: str) -> list[str]:
    """Every ``<tag>...</tag>`` content of ``text``, in order, stripped."""
    return [m.strip() for m in re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)]


class PairwiseConsistency:
    """Mean over criteria of the mean over pairs of the judge's P("Yes") that the two answers are consistent.

    A pair is asked once per criterion (unordered, the first answer in response order first). Responses with no
    pair (a group of one, fewer than two segments) score ``failure_value``; so does a pair whose readout failed
    (it is counted and left out of the mean; a response whose pairs all failed scores ``failure_value``).

    Args:
        judge: a model judge with ``probability(chats, yes, no)`` (``conf/judge/``; CPU default ``tiny_local``).
        weight: the reward set's weight (PaCo's text-to-image-set consistency weight: 0.2).
        mode: ``group`` (pair with the other responses to the same prompt) or ``segments`` (pair the ``tag``
            segments of one response).
        criteria: user-message templates with ``{a}`` and ``{b}``; the score averages over them.
        group_key: the row field that identifies a prompt (``mode=group``); rows without it group by ``prompt``.
        tag: the segment tag (``mode=segments``).
        readout: the (yes, no) words of the readout (a pair, not two keys: YAML reads a bare ``no:`` as false).
        failure_value: the score without a pair or without a readout.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        judge: Any,
        weight: float = 0.2,
        mode: str = "group",
        criteria: Sequence[str] = DEFAULT_CRITERIA,
        group_key: str = "uid",
        tag: str = "answer",
        readout: Sequence[str] = ("Yes", "No"),
        failure_value: float = 0.0,
        name: str = "consistency",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"reward.{name}.mode must be one of {MODES}, got {mode!r}")
        if not criteria or any("{a}" not in c or "{b}" not in c for c in criteria):
            raise ValueError(f"reward.{name}.criteria: each criterion must contain {{a}} and {{b}}")
        self.judge, self.weight, self.mode, self.criteria = judge, float(weight), mode, tuple(criteria)
        if len(readout) != 2:
            raise ValueError(f"reward.{name}.readout must be two words (yes, no), got {list(readout)}")
        self.group_key, self.tag, (self.yes, self.no) = group_key, tag, tuple(readout)
        self.failure_value, self.name = float(failure_value), name
        self._counts: Counter[str] = Counter()

    def pairs(self, responses: list[str], samples: list[dict]) -> list[list[tuple[str, str]]]:
        """For each response, the (a, b) text pairs its score averages over."""
        if self.mode == "segments":
            out = []
            for r in responses:
                seg = segments(r, self.tag)
                out.append([(seg[i], seg[j]) for i in range(len(seg)) for j in range(i + 1, len(seg))])
            return out
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            groups[s.get(self.group_key, s.get("prompt"))].append(i)
        out = [[] for _ in responses]
        for members in groups.values():
            for i in members:
                out[i] = [(responses[min(i, j)], responses[max(i, j)]) for j in members if j != i]
        return out

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        per_response = self.pairs(responses, samples)
        asks = {(a, b, c) for pairs in per_response for a, b in pairs for c in self.criteria}
        chats = {k: [{"role": "user", "content": k[2].format(a=k[0], b=k[1])}] for k in sorted(asks)}
        keys = list(chats)
        replies = dict(zip(keys, self.judge.probability([chats[k] for k in keys], self.yes, self.no))) if keys else {}
        self._counts["samples"] += len(responses)
        values = []
        for pairs in per_response:
            by_criterion = []
            for c in self.criteria:
                probs = [replies[(a, b, c)].prob for a, b in pairs if replies[(a, b, c)].ok]
                self._counts["failed"] += sum(not replies[(a, b, c)].ok for a, b in pairs)
                if probs:
                    by_criterion.append(sum(probs) / len(probs))
            self._counts["no_pairs"] += not pairs
            values.append(sum(by_criterion) / len(by_criterion) if by_criterion else self.failure_value)
        return values

    def pop_stats(self) -> dict[str, float]:
        """``reward/<name>/{samples,no_pairs,failed}`` and the judge's ``judge/<name>/...`` counters."""
        out = {f"reward/{self.name}/{k}": float(self._counts[k]) for k in ("samples", "no_pairs", "failed")}
        self._counts.clear()
        if (stats := getattr(self.judge, "stats", None)) is not None:
            out |= stats.pop(prefix=f"judge/{self.name}/")
        return out
