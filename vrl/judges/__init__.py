"""Judges for reward terms that need one: does a response state each of a sample's annotations?

One interface, ``judge(items: list[JudgeItem]) -> list[Verdict]`` (:class:`~vrl.judges.base.Judge`), three
implementations chosen by ``conf/judge/``: :class:`RuleJudge` (word containment, the CPU default),
:class:`HTTPJudge` (an OpenAI-compatible server such as vLLM, as Perception-R1 does) and :class:`LocalJudge`
(a transformers model in this process), and :class:`PolicyJudge` (the policy being trained, text only). Judges
with a model also answer free chats and probability readouts (:class:`~vrl.judges.base.ModelJudge`:
``complete``, ``probability``). Used by :class:`vrl.rewards.VisualPerception` and the judge-in-the-rollout
methods (Vision-SR1, RACRO, PaCo-RL).
"""

from .base import (
    Chat,
    Judge,
    JudgeItem,
    JudgeStats,
    ModelJudge,
    Reply,
    Verdict,
    VerdictCache,
    parse_score,
    parse_verdict,
    yes_probability,
)
from .http import HTTPJudge
from .local import LocalJudge
from .policy import PolicyJudge
from .prompt import JudgeExample, JudgePrompt
from .rule import RuleJudge, normalize_tokens

__all__ = [
    "Chat",
    "HTTPJudge",
    "Judge",
    "JudgeExample",
    "JudgeItem",
    "JudgePrompt",
    "JudgeStats",
    "LocalJudge",
    "ModelJudge",
    "PolicyJudge",
    "Reply",
    "RuleJudge",
    "Verdict",
    "VerdictCache",
    "normalize_tokens",
    "parse_score",
    "parse_verdict",
    "yes_probability",
]
