"""Q-Insight's rewards (Li et al., arXiv 2503.22679; spec others.md §9): score hit, distortion class + severity,
pairwise comparison, and the strict format.

As the released code computes them (github.com/bytedance/Q-Insight @08308fd,
``src/open-r1-multimodal/src/open_r1/qinsight_multi_task.py`` and ``qinsight_comparison.py``):

- the answer is the first ``<answer>...</answer>`` (DOTALL), stripped; none: 0;
- **score** (:class:`ScoreHit`): the first ``"rating": <digits and dots>`` in it, ``float``-ed (a malformed number
  such as ``4.5.2``: 0); 1 when ``|rating - gt| < threshold`` (0.35), else 0;
- **dist** (:class:`DistortionMatch`): ``"distortion_class": "<c>" ... "severity": "<s>"`` in that order; 0.25 when
  the class equals the ground truth's (case-sensitive, stripped), plus 0.75 when the severity does too;
- **comparison** (:class:`ComparisonMatch`): 1 when the answer is exactly the solution (``Image A`` ...);
- **format** (:class:`QInsightFormat`): the released ``format_reward`` regexes: think block and answer block each
  on their own lines, and for score / dist the answer a single flat JSON object (no nested braces).

The task of a row is its ``task`` field; ``conf/reward/q_insight.yaml`` routes each row to its term with
:class:`vrl.rewards.routing.RoutedReward`, as Q-Insight's reward function switches on ``task``.

:class:`ScoreHit` also keeps the (prediction, ground truth) pairs of validation calls (the reward context says
``training=False``) for :class:`vrl.methods.q_insight.QualityCorrelation`, which logs PLCC / SRCC. The pairs stay
in the process that scored them (``reward_sandbox.isolate=process`` keeps them in its worker: no correlations).
"""

from __future__ import annotations

import json
import re

from .context import context_of

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_RATING = re.compile(r"\"rating\"\s*:\s*([\d\.]+)")
_DIST = re.compile(r"\"distortion_class\"\s*:\s*\"([^\"]+)\".*?\"severity\"\s*:\s*\"([^\"]+)\"", re.DOTALL)
#: ``format_reward`` of qinsight_multi_task.py (JSON answers) and of qinsight_comparison.py (free answers).
JSON_FORMAT = re.compile(
    r"^<think>\s*\n.*?\n\s*</think>\s*\n<answer>\s*\n\{[^\{\}]*\}\s*\n\s*</answer>\s*$", re.DOTALL | re.MULTILINE
)
FREE_FORMAT = re.compile(
    r"^<think>\s*\n[\s\S]*?\n\s*</think>\s*\n<answer>\s*\n[\s\S]*?\n\s*</answer>\s*$", re.DOTALL | re.MULTILINE
)


def answer_text(response: str) -> str | None:
    """The stripped content of the first ``<answer>`` tag, or None."""
    match = _ANSWER.search(response)
    return match.group(1).strip() if match else None


def parse_rating(response: str) -> float | None:
    """The rating of a score answer, or None (no answer tag, no ``"rating"``, a malformed number)."""
    answer = answer_text(response)
    match = _RATING.search(answer) if answer is not None else None
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


class _Term:
    def __init__(self, weight: float, name: str) -> None:
        self.weight, self.name = float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(r, s) for r, s in zip(responses, samples)]

    def score(self, response: str, sample: dict) -> float:
        raise NotImplementedError


class ScoreHit(_Term):
    """1 when the answered rating is within ``threshold`` of the row's score (strictly), else 0.

    Args:
        threshold: Q-Insight's ``score_reward_threshold`` (0.35).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.
    """

    def __init__(self, threshold: float = 0.35, weight: float = 1.0, name: str = "score") -> None:
        super().__init__(weight, name)
        if threshold <= 0:
            raise ValueError(f"ScoreHit: threshold must be > 0, got {threshold}")
        self.threshold = float(threshold)
        self.val_pairs: list[tuple[float | None, float]] = []

    def score(self, response: str, sample: dict) -> float:
        try:
            gold = float(sample["answer"])
        except ValueError as err:
            raise ValueError(f"score answer {sample['answer']!r} of sample uid={sample.get('uid')!r}: {err}") from err
        rating = parse_rating(response)
        context = context_of(sample)
        if context is not None and not context.training:
            self.val_pairs.append((rating, gold))
        return float(rating is not None and abs(rating - gold) < self.threshold)

    def pop_val_pairs(self) -> list[tuple[float | None, float]]:
        """The (rating or None, ground truth) pairs of validation calls since the last call, then reset."""
        pairs, self.val_pairs = self.val_pairs, []
        return pairs


class DistortionMatch(_Term):
    """``class_weight`` for the right distortion class, plus ``severity_weight`` when the severity is right too.

    Args:
        class_weight: paid for the class alone (0.25).
        severity_weight: added for class and severity (0.75).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self, class_weight: float = 0.25, severity_weight: float = 0.75, weight: float = 1.0, name: str = "dist"
    ) -> None:
        super().__init__(weight, name)
        self.class_weight, self.severity_weight = float(class_weight), float(severity_weight)

    def score(self, response: str, sample: dict) -> float:
        try:
            gold = json.loads(sample["answer"])
            gold_class, gold_severity = gold["distortion_class"], gold["severity"]
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"dist answer {sample['answer']!r} of sample uid={sample.get('uid')!r} is not "
                '{"distortion_class": ..., "severity": ...}'
            ) from err
        answer = answer_text(response)
        match = _DIST.search(answer) if answer is not None else None
        if match is None or match.group(1).strip() != gold_class:
            return 0.0
        return self.class_weight + (self.severity_weight if match.group(2).strip() == gold_severity else 0.0)


class ComparisonMatch(_Term):
    """1 when the stripped answer is exactly the row's answer (``Image A``, ``Image B`` or ``Similar``)."""

    def __init__(self, weight: float = 1.0, name: str = "comparison") -> None:
        super().__init__(weight, name)

    def score(self, response: str, sample: dict) -> float:
        return float(answer_text(response) == str(sample["answer"]))


class QInsightFormat(_Term):
    """Q-Insight's strict format: 1 when the whole response matches the released regex, else 0.

    Args:
        json_answer: True (score / dist): the answer is one flat JSON object; False (comparison): any text.
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.
    """

    def __init__(self, json_answer: bool = True, weight: float = 1.0, name: str = "format") -> None:
        super().__init__(weight, name)
        self.pattern = JSON_FORMAT if json_answer else FREE_FORMAT

    def score(self, response: str, sample: dict) -> float:
        return float(self.pattern.fullmatch(response) is not None)
