"""GM-PRM (arXiv 2508.04088): a generative PRM that analyses each step, names the first wrong one and corrects it.

GM-PRM's code and output schema are unreleased; this is the spec's implementable version, marked [ours]
(shared/methods/others.md §6). The PRM writes one JSON object::

    {"steps": [{"intent": "...", "visual_alignment": {"ok": "yes", "why": "..."},
                "logic": {"ok": "yes", "why": "..."}, "verdict": "yes"}, ...],
     "first_error": 2, "correction": "the corrected text of step 2"}

(``first_error`` is 1-based, or null). Step score s_t = P("yes") over {"yes", "no"} at step t's verdict value,
read by a teacher-forced pass over the PRM's own reply up to that point (``scores="probability"``), or the hard
verdict 1/0 (``scores="verdict"``). A reply that does not parse scores every step ``unparsable_score`` and has no
correction (counted in ``stats``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vrl.prm.readout import VLMReadout
from vrl.sampler.prompts import to_messages

INSTRUCTION = (
    "You check a step-by-step solution to the question above, one step at a time. For every step give its intent, "
    "whether it agrees with the image (visual_alignment) and whether its logic is sound, then a verdict. Then give "
    "the number of the first wrong step (first_error, or null) and a corrected version of that step. Answer with "
    'one JSON object: {"steps": [{"intent": str, "visual_alignment": {"ok": "yes"|"no", "why": str}, '
    '"logic": {"ok": "yes"|"no", "why": str}, "verdict": "yes"|"no"}], "first_error": int|null, "correction": str}'
)
VERDICT = re.compile(r'"verdict"\s*:\s*"')


@dataclass
class Review:
    """GM-PRM's judgement of one solution: per-step verdicts and scores, the first error (1-based) and its fix."""

    verdicts: list[bool]
    scores: list[float]
    first_error: int | None = None
    correction: str | None = None
    parsed: bool = True
    raw: str = ""
    offsets: list[int] = field(default_factory=list)


def parse_review(text: str, num_steps: int, unparsable_score: float = 0.0) -> Review:
    """The :class:`Review` in a reply (the first ``{...}`` span that parses); unparsable -> ``parsed=False``.

    A reply with fewer verdicts than steps, or a ``first_error`` outside 1..num_steps, is unparsable: its scores
    would not line up with the steps.
    """
    failed = Review([False] * num_steps, [unparsable_score] * num_steps, parsed=False, raw=text)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return failed
    try:
        obj = json.loads(text[start : end + 1])
        steps = obj["steps"]
        verdicts = [str(s["verdict"]).strip().lower() == "yes" for s in steps]
    except (ValueError, KeyError, TypeError):
        return failed
    first = obj.get("first_error")
    if len(verdicts) != num_steps or (first is not None and not (isinstance(first, int) and 1 <= first <= num_steps)):
        return failed
    if first is None and not all(verdicts):  # the first "no" verdict is the first error when not named
        first = verdicts.index(False) + 1
    offsets = [start + m.end() for m in VERDICT.finditer(text[start : end + 1])][:num_steps]
    correction = obj.get("correction") if isinstance(obj.get("correction"), str) else None
    return Review(verdicts, [float(v) for v in verdicts], first, correction, True, text, offsets)


class GenerativePRM(VLMReadout):
    """GM-PRM with a local VLM: writes the review (greedy), then reads P("yes") at each verdict.

    Args:
        scores: ``probability`` (P("yes") at each verdict) or ``verdict`` (1/0).
        max_new_tokens: the review's length cap (about 60 tokens a step).
        unparsable_score: every step's score when the review does not parse.
        (others as :class:`vrl.prm.readout.VLMReadout`.)
    """

    def __init__(
        self,
        model: Any = "tiny:qwen2_5_vl",
        scores: str = "probability",
        max_new_tokens: int = 512,
        unparsable_score: float = 0.0,
        batch_size: int = 8,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        if scores not in ("probability", "verdict"):
            raise ValueError(f"gm_prm.scores must be probability or verdict, got {scores!r}")
        super().__init__(model, batch_size, dtype, seed)
        self.scores, self.max_new_tokens, self.unparsable_score = scores, max_new_tokens, unparsable_score
        self.stats = {"prm/reviews": 0.0, "prm/unparsable": 0.0}

    def messages(self, row: dict, steps: Sequence[str]) -> list[dict]:
        listed = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))
        return to_messages({**row, "prompt": f"{row['prompt']}\n\nSolution:\n{listed}\n\n{INSTRUCTION}"})

    def write(self, prompt: str, images: list) -> str:
        import torch

        proc, model = self.vlm.processor, self.vlm.model
        self.prompts_run += 1
        enc = proc(text=[prompt], images=[im.convert("RGB") for im in images] or None, return_tensors="pt")
        enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id
            )
        return proc.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def review(self, row: dict, steps: Sequence[str]) -> Review:
        """Write and parse the review of ``steps``; with ``scores=probability`` each parsed verdict's P("yes")."""
        prompt, images = self.render(self.messages(row, steps)), list(row.get("images") or [])
        result = parse_review(self.write(prompt, images), len(steps), self.unparsable_score)
        self.stats["prm/reviews"] += 1
        self.stats["prm/unparsable"] += float(not result.parsed)
        if result.parsed and self.scores == "probability" and result.offsets:
            texts = [prompt + result.raw[:offset] for offset in result.offsets]
            result.scores = [r.p for r in self.readout(texts, [images] * len(texts), "yes", "no")]
        return result

    def step_scores(self, row: dict, steps: Sequence[str]) -> list[float]:
        """Each step's score (what :class:`vrl.prm.reward.PRMReward` aggregates)."""
        return self.review(row, steps).scores if steps else []

    def outcome_score(self, row: dict, response: str) -> float:
        """GM-PRM has no outcome readout: the minimum step score of the response's steps."""
        from vrl.prm.steps import split_steps

        return min(self.step_scores(row, split_steps(response)), default=0.0)
