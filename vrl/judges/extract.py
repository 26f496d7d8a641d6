"""Judge-based answer extraction for evaluation (``vrl eval --extract-judge``).

Rule-based extraction (:class:`vrl.rewards.extract.AnswerExtractor`: the last ``<answer>`` tag, else ``\\boxed{}``,
else a fallback) misreads free-form answers from models that were not trained on the expected format ("The
shape is most likely red, though it could be orange"). Benchmarks such as MathVista and MMMU therefore let an LLM
read the response and copy out the answer first. :class:`JudgeExtractor` does that with any model judge of
``vrl.judges`` (a local model, an OpenAI-compatible server, or the evaluated policy itself): it asks for the final
answer only, wraps the reply in ``<answer>`` tags so the reward's own extractor and parser grade it unchanged, and
keeps the raw response when the judge call fails (counted), so a judge outage degrades to rule extraction
instead of scoring zeros. A reply of ``NONE`` means the response gave no answer: it is graded as empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SYSTEM = "You read a model's response to a question and copy out its final answer. You never solve the question."
USER = (
    "Question:\n{question}\n\nResponse:\n{response}\n\n"
    "Reply with the response's final answer only, as the response states it, or NONE if it gives no answer."
)


class JudgeExtractor:
    """Replaces each response by ``<answer>{what the judge extracted}</answer>`` for grading.

    Args:
        judge: a model judge (``complete(chats) -> list[Reply]``); a ``PolicyJudge`` must be bound first.
        question_key: the row field holding the question text.
        answer_tag: the tag the reward's extractor reads first (``conf/reward``: ``answer``).
    """

    def __init__(self, judge: Any, question_key: str = "prompt", answer_tag: str = "answer") -> None:
        if not hasattr(judge, "complete"):
            raise ValueError(f"--extract-judge needs a model judge with complete(); {type(judge).__name__} has none")
        self.judge, self.question_key, self.answer_tag = judge, question_key, answer_tag
        self.counts = {"calls": 0, "failed": 0, "none": 0}

    def chats(self, rows: Sequence[dict], responses: Sequence[str]) -> list[list[dict[str, str]]]:
        """One two-message chat per response."""
        return [
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": USER.format(question=row.get(self.question_key, ""), response=response)},
            ]
            for row, response in zip(rows, responses)
        ]

    def __call__(self, rows: Sequence[dict], responses: Sequence[str]) -> list[str]:
        """The responses to grade, in order (raw where the judge failed)."""
        replies = self.judge.complete(self.chats(rows, responses))
        out = []
        for reply, response in zip(replies, responses):
            self.counts["calls"] += 1
            text = (reply.text or "").strip() if reply.ok else None
            if text is None:
                self.counts["failed"] += 1
                out.append(response)
            elif not text or text.upper().strip(" .") == "NONE":
                self.counts["none"] += 1
                out.append(f"<{self.answer_tag}></{self.answer_tag}>")
            else:
                out.append(f"<{self.answer_tag}>{text}</{self.answer_tag}>")
        return out

    def metrics(self) -> dict[str, float]:
        """``eval/extract/{calls,failed,none}``: how many responses the judge read, failed on, found no answer in."""
        return {f"eval/extract/{k}": float(v) for k, v in self.counts.items()}
