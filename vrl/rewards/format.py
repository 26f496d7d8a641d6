"""``ThinkAnswerFormat``: the R1-style format reward (reason in one tag, answer in another, nothing else).

It checks structure only, never correctness, and is meant as a small shaping term next to
``Accuracy`` (e.g. 0.9 accuracy + 0.1 format in Perception-R1 / PEARL-style recipes).
"""

from __future__ import annotations

import re


class ThinkAnswerFormat:
    """1.0 if the whole response is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    The default pattern (``re.DOTALL``, matched against the entire response) is::

        \\s*<think>T</think>\\s*<answer>A</answer>\\s*

    where T and A contain no ``<think>``/``</think>``/``<answer>``/``</answer>``. So there is exactly one
    tag pair of each, in that order, with only whitespace before, between and after; any text after
    ``</answer>`` fails. A must hold a non-whitespace character (an empty answer is no answer); T may be
    empty, as the term rewards structure, not thinking. Surrounding whitespace is allowed because
    decoded responses often end with a newline.

    Args:
        weight: Multiplier applied by the reward set. 1.0 here; recipes usually down-weight it in the
            config (0.1 in ``conf/reward/think_format.yaml``) so format never outweighs correctness.
        think_tag: Name of the reasoning tag.
        answer_tag: Name of the answer tag; keep it equal to the accuracy extractor's ``answer_tag``.
        require_think: ``True``: the think block is mandatory. ``False``: it is optional, so a bare
            ``<answer>...</answer>`` also scores 1 (the "answer tag only" format).
        pattern: A regular expression that replaces the default; it must match the whole response
            (``re.fullmatch`` with ``re.DOTALL``), and the tag arguments are then ignored. If it has a
            named group ``answer``, that group must also hold a non-whitespace character. For other tag
            schemes, e.g. ``<look>...</look>`` between think and answer.
        name: Key under which the reward set logs this term.
    """

    def __init__(
        self,
        weight: float = 1.0,
        think_tag: str = "think",
        answer_tag: str = "answer",
        require_think: bool = True,
        pattern: str | None = None,
        name: str = "format",
    ):
        self.weight = float(weight)
        self.think_tag = think_tag
        self.answer_tag = answer_tag
        self.require_think = require_think
        self.name = name
        self.pattern = re.compile(pattern if pattern is not None else self._default_pattern(), re.DOTALL)

    def _default_pattern(self) -> str:
        tags = [f"<{t}>" for t in (self.think_tag, self.answer_tag)]
        tags += [f"</{t}>" for t in (self.think_tag, self.answer_tag)]
        # Any text that does not start one of the four tags: this is what enforces "exactly one of each".
        free = "(?:(?!" + "|".join(re.escape(t) for t in tags) + ").)"
        think, answer = re.escape(self.think_tag), re.escape(self.answer_tag)
        think_block = rf"<{think}>{free}*</{think}>\s*"
        if not self.require_think:
            think_block = f"(?:{think_block})?"
        return rf"\s*{think_block}<{answer}>(?P<answer>{free}*)</{answer}>\s*"

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        """One score in {0, 1} per response; ``samples`` is unused (format is sample-independent)."""
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(response) for response in responses]

    def score(self, response: str) -> float:
        """The format score of one response."""
        match = self.pattern.fullmatch(response)
        if match is None:
            return 0.0
        # The default pattern captures the answer body; an override may not have that group.
        if "answer" in self.pattern.groupindex and not (match.group("answer") or "").strip():
            return 0.0
        return 1.0
