"""Judges for reward terms that need one: does a response state each of a sample's annotations?

One interface, ``judge(items: list[JudgeItem]) -> list[Verdict]`` (:class:`~vrl.judges.base.Judge`), three
implementations chosen by ``conf/judge/``: :class:`RuleJudge` (word containment, the CPU default),
:class:`HTTPJudge` (an OpenAI-compatible server such as vLLM, as Perception-R1 does) and :class:`LocalJudge`
(a transformers model in this process). Used by :class:`vrl.rewards.VisualPerception`.
"""

from .base import Judge, JudgeItem, JudgeStats, Verdict, VerdictCache, parse_score, parse_verdict
from .http import HTTPJudge
from .local import LocalJudge
from .prompt import JudgeExample, JudgePrompt
from .rule import RuleJudge, normalize_tokens

__all__ = [
    "HTTPJudge",
    "Judge",
    "JudgeExample",
    "JudgeItem",
    "JudgePrompt",
    "JudgeStats",
    "LocalJudge",
    "RuleJudge",
    "Verdict",
    "VerdictCache",
    "normalize_tokens",
    "parse_score",
    "parse_verdict",
]
