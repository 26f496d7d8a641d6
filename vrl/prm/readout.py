"""Two-token probability readouts from a local VLM: VL-PRM's "+"/"-" step scores, GM-PRM's verdict P("yes").

VL-PRM (arXiv 2509.23250, github.com/Tej-Deep/mmr-eval ``VisualPRMv2.py``) scores a solution as a multi-turn chat:
turn 1 is the problem (its images and question) with step 1, every later user turn adds one step, and the PRM's
reply to turn t, "+" or "-", says whether the solution is still correct after step t. The score of step t is the
softmax over the two reply tokens' logits at turn t's reply position, P(+). Earlier replies are filled with "+"
[ours: the spec does not say what the earlier assistant turns hold at inference].

One forward per (solution, step) prefix, batched; the readout is at each prompt's last real token (padding on
either side works). The model is a vrl VLM (``vrl.models.loading.load_vlm``: a tiny model, a saved policy folder
or a hub id), loaded on first use, so building the config costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vrl.sampler.prompts import to_messages


@dataclass(frozen=True)
class Readout:
    """One readout: P(first token) over the two (``p``) and the PRM input's length in tokens (``length``)."""

    p: float
    length: int


def token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` as one token; a clear error when the tokenizer splits it."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"prm: {text!r} is {len(ids)} tokens for this tokenizer ({ids}); readouts need one token")
    return ids[0]


def step_chat(row: dict, steps: Sequence[str], reply: str = "+", system_prompt: str | None = None) -> list[dict]:
    """VL-PRM's chat for the last of ``steps``: turn 1 = the row's prompt (with its images) + step 1, one user turn
    per later step, earlier replies ``reply``; ends with a user turn (the generation prompt follows)."""
    if not steps:
        raise ValueError("prm: a solution without steps has nothing to score")
    first = {**row, "prompt": f"{row['prompt']}\n{steps[0]}"}
    messages = to_messages(first, system_prompt)
    for step in steps[1:]:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": step}]})
    return messages


class VLMReadout:
    """P(a) / (P(a) + P(b)) of the next token after rendered prompts, with a local VLM.

    Args:
        model: a ``vrl.models.loading.VLM`` or what ``load_vlm`` takes (``tiny:qwen2_5_vl``, a folder, a hub id).
        batch_size: prompts per forward.
        dtype: weights' dtype when loading.
        seed: the tiny model's seed when loading.
    """

    def __init__(self, model: Any = "tiny:qwen2_5_vl", batch_size: int = 8, dtype: str = "float32", seed: int = 0):
        self.model, self.batch_size, self.dtype, self.seed = model, batch_size, dtype, seed
        self._vlm = None
        self.prompts_run = 0  # prompts this PRM has run (readouts, written reviews): its cost in vrl eval

    @property
    def vlm(self) -> Any:
        if self._vlm is None:
            if isinstance(self.model, str):
                from vrl.models.loading import load_vlm

                self._vlm = load_vlm(self.model, dtype=self.dtype, seed=self.seed)
                self._vlm.model.requires_grad_(False).eval()
            else:
                self._vlm = self.model
        return self._vlm

    def render(self, messages: list[dict], tail: str = "") -> str:
        """The chat as text with the generation prompt, followed by ``tail`` (the reply written so far)."""
        text = self.vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + tail

    @torch.no_grad()
    def readout(self, texts: Sequence[str], images: Sequence[Sequence[Any]], a: str, b: str) -> list[Readout]:
        """Per rendered text (with its images): the two-way softmax P(a) at the next token, and its length."""
        vlm = self.vlm
        proc, model = vlm.processor, vlm.model
        ids = torch.tensor([token_id(proc.tokenizer, a), token_id(proc.tokenizer, b)])
        device = next(model.parameters()).device
        self.prompts_run += len(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            part, imgs = list(texts[start : start + self.batch_size]), images[start : start + self.batch_size]
            flat = [im.convert("RGB") for group in imgs for im in group]
            enc = proc(text=part, images=flat or None, return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            logits = model(**enc, use_cache=False).logits  # [n, T, V]
            mask = enc["attention_mask"]
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real position, either padding side
            pair = logits[torch.arange(len(part), device=device), last][:, ids.to(device)].float()
            probs = pair.softmax(-1)[:, 0]
            out += [Readout(float(p), int(n)) for p, n in zip(probs.cpu(), mask.sum(1).cpu())]
        return out


class PlusMinusPRM(VLMReadout):
    """VL-PRM's process reward model: P(+) of each step of a solution (see the module docstring).

    Args:
        plus, minus: the two reply tokens.
        system_prompt: prepended as a system turn (None: the chat template's default).
        (others as :class:`VLMReadout`.)
    """

    def __init__(
        self,
        model: Any = "tiny:qwen2_5_vl",
        plus: str = "+",
        minus: str = "-",
        batch_size: int = 8,
        system_prompt: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size, dtype, seed)
        self.plus, self.minus, self.system_prompt = plus, minus, system_prompt

    def score_prefixes(self, rows: Sequence[dict], prefixes: Sequence[Sequence[str]]) -> list[Readout]:
        """The readout of the last step of each (row, steps) prefix."""
        texts = [self.render(step_chat(r, s, self.plus, self.system_prompt)) for r, s in zip(rows, prefixes)]
        return self.readout(texts, [r.get("images") or [] for r in rows], self.plus, self.minus)

    def step_scores(self, row: dict, steps: Sequence[str]) -> list[float]:
        """P(+) after each step of one solution."""
        if not steps:
            return []
        return [r.p for r in self.score_prefixes([row] * len(steps), [steps[: t + 1] for t in range(len(steps))])]

    def outcome_score(self, row: dict, response: str) -> float:
        """The PRM as outcome model (VL-PRM's best-of-N "non-greedy" mode): the whole response as one step."""
        return self.score_prefixes([row], [[response.strip() or "(empty)"]])[0].p
