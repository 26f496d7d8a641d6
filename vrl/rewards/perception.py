"""Perception-R1 reward terms (arXiv 2506.07218): the visual perception reward and the n-gram repetition penalty.

The published total is ``0.9 acc + 0.1 format + 0.7 r_vis + r_rep`` (``conf/reward/perception_r1.yaml``):

- ``r_vis = sum_j o_j / (m + 1e-6)``, where o_j in [0, 1] is a judge's verdict on whether the response states
  annotation j of the sample (:mod:`vrl.judges`, :mod:`vrl.data.annotations`). It applies to every
  rollout, right or wrong; it is 0 for samples without annotations and for failed judgements.
- ``r_rep = -2 (1 - #unique 20-word n-grams / #20-word n-grams)``: 0 for text without repeats, -2 at the
  limit of one phrase looped forever, 0 below 20 words. It stops a judge-rewarded policy from restating
  facts over and over (a response that repeats every annotation ten times would otherwise be safe).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vrl.judges.base import Judge

#: The published guard against m = 0 in ``sum / (m + eps)`` (kept, so values match the paper's to 1e-6).
EPS = 1e-6
DENOMINATORS = ("annotations", "judged")


class VisualPerception:
    """r_vis: the fraction of a sample's visual annotations that the judge finds in the response.

    All samples of a call are judged in one ``judge.judge`` call, so a remote judge sees the whole batch at
    once (and its cache, the G repeats of a response). Counters (:meth:`pop_stats`): samples that had no
    annotations, and samples whose judgement failed; the judge's own counters ride along.

    Args:
        judge: any object with ``judge(items) -> verdicts`` (``conf/judge/``: rule, http, local).
        weight: multiplier applied by the reward set; 0.7 is the published ``visual_reward_factor``.
        denominator: ``annotations`` (default) divides by m, so an annotation the judge skipped counts as
            not stated; ``judged`` divides by the number of ``<infoK>`` tags the judge returned, as the
            published code does (``len(visual_scores)``), which pays a judge that stops early.
        failure_value: r_vis of a sample whose judgement failed (a timeout, an unreadable reply). 0.0 as
            published: no credit, never a penalty, so a flaky judge cannot push the policy anywhere.
        annotation_key: the column holding ``<infoK>`` annotations on real rows (the published
            ``visual_key_info``); rows without it fall back to their scene graph.
        max_scene_annotations: at most this many facts from a scene graph (target facts first); None: all.
        drop_constant_facts: leave out scene-graph facts that every row of the row's task states ("there is 1
            object" on a single-object task): they are reward for nothing visual (``vrl.data.annotations.
            constant_facts``). Published annotations (the ``annotation_key`` column) are never filtered.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        judge: Judge,
        weight: float = 0.7,
        denominator: str = "annotations",
        failure_value: float = 0.0,
        annotation_key: str = "visual_key_info",
        max_scene_annotations: int | None = 8,
        drop_constant_facts: bool = True,
        name: str = "visual",
    ) -> None:
        if denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
        self.judge = judge
        self.weight = float(weight)
        self.denominator = denominator
        self.failure_value = float(failure_value)
        self.annotation_key = annotation_key
        self.max_scene_annotations = max_scene_annotations
        self.drop_constant_facts = drop_constant_facts
        self.name = name
        self._counts: Counter[str] = Counter()

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One r_vis in [0, 1) per response (``failure_value`` for failed judgements)."""
        # Imported here, not at the top: vrl.methods and vrl.judges import vrl.rewards (Accuracy), and this
        # module is imported by vrl.rewards itself, so a top-level import would be circular.
        from vrl.data.annotations import sample_annotations
        from vrl.judges.base import JudgeItem

        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        annotations = [
            sample_annotations(s, self.annotation_key, self.max_scene_annotations, self.drop_constant_facts)
            for s in samples
        ]
        judged = [i for i, a in enumerate(annotations) if a]
        self._counts["samples"] += len(samples)
        self._counts["no_annotations"] += len(samples) - len(judged)
        verdicts = self.judge.judge([JudgeItem(annotations[i], responses[i]) for i in judged]) if judged else []
        if len(verdicts) != len(judged):
            raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(judged)} items")
        values = [0.0] * len(samples)
        for i, verdict in zip(judged, verdicts):
            if not verdict.ok:
                self._counts["failed"] += 1
                values[i] = self.failure_value
                continue
            count = len(annotations[i]) if self.denominator == "annotations" else verdict.judged
            values[i] = sum(verdict.scores) / (count + EPS)
        return values

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, then reset.

        Returns:
            ``reward/<name>/{samples,no_annotations,failed}`` and the judge's ``judge/<name>/...`` counters
            (items, cache_hits, calls, retries, request_failures, parse_failures) when it keeps them.
        """
        out = {f"reward/{self.name}/{k}": float(self._counts[k]) for k in ("samples", "no_annotations", "failed")}
        self._counts.clear()
        stats = getattr(self.judge, "stats", None)
        if stats is not None:
            out |= stats.pop(prefix=f"judge/{self.name}/")
        return out


class RepetitionPenalty:
    """r_rep = -max_penalty * (1 - unique n-grams / n-grams) over the response's words (0 below n words).

    Words are the lowercased response split on whitespace, as published; n-grams overlap (a text of w
    words has w - n + 1). Example: 21 words whose two 20-grams are equal -> 1 unique of 2 ->
    ``-2 * (1 - 1/2) = -1``.

    Args:
        weight: multiplier applied by the reward set; 1.0 as published (the scale is in ``max_penalty``).
        n: n-gram length in words; 20 as published, long enough that ordinary prose ("the length of side")
            never repeats a whole n-gram, short enough to catch a looped sentence.
        max_penalty: the penalty's magnitude at the limit; 2.0 as published, more than the 1.6 that
            accuracy, format and visual rewards can add, so a degenerate loop never pays.
        lowercase: compare words lowercased (published).
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 1.0,
        n: int = 20,
        max_penalty: float = 2.0,
        lowercase: bool = True,
        name: str = "repetition",
    ) -> None:
        if n < 1 or max_penalty < 0:
            raise ValueError(f"need n >= 1 and max_penalty >= 0, got n={n}, max_penalty={max_penalty}")
        self.weight = float(weight)
        self.n = n
        self.max_penalty = float(max_penalty)
        self.lowercase = lowercase
        self.name = name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One penalty in [-max_penalty, 0] per response; ``samples`` is unused."""
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(r) for r in responses]

    def score(self, response: str) -> float:
        """The penalty of one response."""
        words = (response.lower() if self.lowercase else response).split()
        if len(words) < self.n:
            return 0.0
        grams = [tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1)]
        return 0.0 - self.max_penalty * (1.0 - len(set(grams)) / len(grams))
