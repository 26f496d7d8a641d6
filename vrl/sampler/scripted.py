"""A scripted policy: forces given texts, turn by turn, through the real model's ``generate`` (tests and demos).

``ScriptedTurns`` is a logits processor: at every step it leaves only the script's next token allowed. The
logits ``generate`` returns (``output_logits``) are taken *before* processors, so a multi-turn sampler with
``logprobs=true`` still records the model's own log-probabilities of the forced tokens; that is what makes a
scripted trajectory usable for the re-scoring consistency checks and for showing what a tool makes recoverable
without any learning.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class ScriptedTurns(LogitsProcessor):
    """Forces ``scripts[prompt][turn]`` (text) in each turn; the last turn of a script ends with EOS.

    Args:
        tokenizer: the policy's tokenizer (the script is tokenised with it, no special tokens added).
        scripts: per prompt row, the texts of its turns; a call turn should end with the call's closing tag.
    """

    def __init__(self, tokenizer, scripts: list[list[str]]) -> None:
        eos = tokenizer.eos_token_id
        self.scripts = [
            [
                tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if k == len(turns) - 1 else [])
                for k, text in enumerate(turns)
            ]
            for turns in scripts
        ]
        self.eos = eos
        self.targets: list[list[int]] = []
        self.width = 0

    def begin(self, prompts: list[int], turns: list[int], width: int) -> None:
        """Called by the sampler before each ``generate``: which prompt and turn each batch row is at."""
        self.targets = [self.scripts[p][k] if k < len(self.scripts[p]) else [self.eos] for p, k in zip(prompts, turns)]
        self.width = width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.width
        forced = torch.full_like(scores, -float("inf"))
        for i, target in enumerate(self.targets):
            forced[i, target[step] if step < len(target) else self.eos] = 0.0
        return forced
