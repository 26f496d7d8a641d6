"""The judge prompt: a system prompt with worked examples, then one user message per item.

Perception-R1 (arXiv 2506.07218, ``verl/utils/reward_score/math_with_visual.py``) sends a text-only chat:
the system prompt states the task and the ``<infoK>`` answer format and carries three worked examples;
the user message is ``"Visual Key Information: {annotations}\\nResponse: {response}\\n"`` with the
annotations as ``<info1>..</info1>\\n<info2>..</info2>``. The texts themselves live in
``conf/judge/prompt/*.yaml``, so a prompt change is a config diff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vrl.data.annotations import format_visual_key_info

#: The published user message (``{annotations}`` is the tagged list, ``{response}`` the rollout).
USER_TEMPLATE = "Visual Key Information: {annotations}\nResponse: {response}\n"


@dataclass(frozen=True)
class JudgeExample:
    """A worked example shown to the judge in the system prompt.

    Attributes:
        annotations: the example's facts.
        response: the example's response.
        judgement: one 0/1 per annotation: the answer the judge should have given.
    """

    annotations: tuple[str, ...]
    response: str
    judgement: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", tuple(self.annotations))
        object.__setattr__(self, "judgement", tuple(float(j) for j in self.judgement))
        if not self.annotations or len(self.annotations) != len(self.judgement):
            raise ValueError(f"a judge example needs one judgement per annotation, got {self!r}")


class JudgePrompt:
    """Turns a (annotations, response) pair into chat messages for an LLM judge.

    Args:
        system: the instruction; it must ask for ``<infoK>`` tags, since that is what is parsed back.
        examples: worked examples appended to the system prompt after ``examples_header``, each rendered
            as the user message followed by ``Judgement: <info1>..</info1>...``. Mappings (from YAML) with
            keys ``annotations``, ``response``, ``judgement`` are accepted.
        user_template: the user message; ``{annotations}`` and ``{response}`` are filled in.
        examples_header: the line between the instruction and the examples.
    """

    def __init__(
        self,
        system: str,
        examples: Sequence[JudgeExample | Mapping[str, Any]] = (),
        user_template: str = USER_TEMPLATE,
        examples_header: str = "Here are some examples:\n",
    ) -> None:
        if "{annotations}" not in user_template or "{response}" not in user_template:
            raise ValueError("user_template must contain {annotations} and {response}")
        self.system = system
        self.examples = tuple(e if isinstance(e, JudgeExample) else JudgeExample(**e) for e in examples)
        self.user_template = user_template
        self.examples_header = examples_header

    def user(self, annotations: Sequence[str], response: str) -> str:
        """The user message for one item."""
        return self.user_template.format(annotations=format_visual_key_info(annotations), response=response)

    def system_text(self) -> str:
        """The system prompt with its examples (the same for every item, so a server can cache its prefix)."""
        text = self.system if self.system.endswith("\n") else self.system + "\n"
        if not self.examples:
            return text
        shots = []
        for e in self.examples:
            verdict = "\n".join(f"<info{k}>{j:g}</info{k}>" for k, j in enumerate(e.judgement, 1))
            shots.append(f"{self.user(e.annotations, e.response)}Judgement: {verdict}\n")
        return text + self.examples_header + "".join(shots)

    def messages(self, annotations: Sequence[str], response: str) -> list[dict[str, str]]:
        """OpenAI-style ``[{"role": "system", ...}, {"role": "user", ...}]`` for one item."""
        return [
            {"role": "system", "content": self.system_text()},
            {"role": "user", "content": self.user(annotations, response)},
        ]
