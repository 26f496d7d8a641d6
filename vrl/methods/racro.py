"""RACRO (arXiv 2506.04559; github.com/gyhdog99/RACRO2): the VLM captions, a frozen text reasoner answers.

Caption Reward Optimisation: the policy writes a query-conditioned caption (it is told to describe what the
question needs and *not* to answer); a frozen text-only reasoner gets the caption and the question and answers
in ``\\boxed{}``; the caption's reward is whether the reasoner's answer is right. GRPO then normalises over the n
captions of a question. The reasoner is any :class:`~vrl.judges.base.ModelJudge` (``judge@reward.caption.reasoner=
tiny_local | local | http | policy``); its tokens are never trained.

Inference (:func:`answer_with_reasoner`): the VLM gives a caption and a tentative answer; the reasoner gets both
with the question and keeps the tentative answer unless the caption shows it is wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from vrl.methods.vision_sr1 import grade_replies, question_of
from vrl.rewards.accuracy import Accuracy
from vrl.rewards.extract import AnswerExtractor, last_boxed

#: The reasoner's prompt in training (caption + question; reasoning, then a boxed answer).
REASONER_TEMPLATE = (
    "Image description: {caption}\nQuestion: {question}\n"
    "Reason step by step from the description, then put the final answer in \\boxed{{}}."
)
#: The reasoner's prompt at inference: the VLM's tentative answer is kept unless the caption contradicts it.
INFERENCE_TEMPLATE = (
    "Image description: {caption}\nQuestion: {question}\nA vision model's tentative answer: {tentative}\n"
    "Reason step by step. Keep the tentative answer unless the description gives evidence that it is wrong; "
    "put the final answer in \\boxed{{}}."
)


def _boxed_grader() -> Accuracy:
    return Accuracy(extract=AnswerExtractor(answer_tag=None, boxed=True, fallback="none"))


class ReasonerReward:
    """The caption's reward: 1 when the frozen reasoner, given only the caption and the question, answers right.

    Args:
        reasoner: a model judge with ``complete(chats)`` (``conf/judge/``; the CPU default is ``tiny_local``).
        weight: the reward set's weight.
        template: the reasoner's user message; ``{caption}`` and ``{question}`` are filled in.
        system: an optional system message for the reasoner.
        grade: the accuracy term the reasoner's reply is graded with (a mapping: ``Accuracy`` keyword arguments;
            default: the boxed answer, nothing without a box).
        failure_value: the reward of an empty caption or a failed reasoner call.
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        reasoner: Any,
        weight: float = 1.0,
        template: str = REASONER_TEMPLATE,
        system: str | None = None,
        grade: Accuracy | Mapping[str, Any] | None = None,
        failure_value: float = 0.0,
        name: str = "caption",
    ) -> None:
        if "{caption}" not in template or "{question}" not in template:
            raise ValueError("reward.caption.template must contain {caption} and {question}")
        self.reasoner, self.weight, self.template, self.system = reasoner, float(weight), template, system
        self.grade = grade if isinstance(grade, Accuracy) else Accuracy(**grade) if grade else _boxed_grader()
        self.failure_value, self.name = float(failure_value), name
        self._counts: Counter[str] = Counter()

    def chat(self, caption: str, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The reasoner's messages for one caption (the image never reaches it)."""
        messages = [
            {"role": "user", "content": self.template.format(caption=caption.strip(), question=question_of(sample))}
        ]
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        asked = [i for i, r in enumerate(responses) if r.strip()]
        self._counts["samples"] += len(responses)
        self._counts["empty"] += len(responses) - len(asked)
        chats = {i: self.chat(responses[i], samples[i]) for i in asked}
        return grade_replies(self.reasoner, chats, samples, self.grade, self.failure_value, self._counts)

    def pop_stats(self) -> dict[str, float]:
        """``reward/<name>/{samples,empty,failed}`` and the reasoner's ``judge/<name>/...`` counters."""
        out = {f"reward/{self.name}/{k}": float(self._counts[k]) for k in ("samples", "empty", "failed")}
        self._counts.clear()
        if (stats := getattr(self.reasoner, "stats", None)) is not None:
            out |= stats.pop(prefix=f"judge/{self.name}/")
        return out


def answer_with_reasoner(
    reasoner: Any, captions: list[str], samples: list[dict], tentative: list[str], template: str = INFERENCE_TEMPLATE
) -> list[str | None]:
    """RACRO's inference: each (caption, question, tentative answer) to the reasoner; its boxed answer, or None
    when it gave none or the call failed."""
    chats = [
        [{"role": "user", "content": template.format(caption=c, question=question_of(s), tentative=t)}]
        for c, s, t in zip(captions, samples, tentative)
    ]
    return [last_boxed(r.text) if r.ok and r.text else None for r in reasoner.complete(chats)]
