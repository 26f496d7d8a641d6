"""Text generation and probability readouts over an in-process transformers (model, tokenizer) pair.

Shared by :class:`~vrl.judges.local.LocalJudge` (a frozen model of its own) and
:class:`~vrl.judges.policy.PolicyJudge` (the policy being trained, text only), so both backends render, pad,
decode and read probabilities the same way. Every pass here is greedy or a single forward, under
``torch.inference_mode`` with the model in eval mode (its train flag restored after): no gradient, no random
numbers drawn, no weight touched.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .base import Chat, JudgeStats, Reply, warn_once


def render_chat(tokenizer: Any, chat: Chat, use_template: bool, cue: str = "") -> str:
    """The exact text the model is given for one chat: its chat template with the generation prompt, or (no
    template) the messages' contents one per line followed by ``cue``."""
    messages = [{"role": m["role"], "content": m["content"]} for m in chat]
    if use_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"].rstrip("\n") for m in messages) + ("\n" + cue if cue else "\n")


@contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the train flag is restored after."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _encode(tokenizer: Any, prompts: list[str], add_special_tokens: bool, device: Any) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special_tokens
    )
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def greedy_generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, add_special_tokens: bool = False
) -> list[str]:
    """Greedy continuations of ``prompts`` (one left-padded batch): new tokens only, special tokens skipped."""
    encoded = _encode(tokenizer, prompts, add_special_tokens, model.device)
    with evaluating(model):
        out = model.generate(
            **encoded, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def first_token_id(tokenizer: Any, word: str) -> int:
    """The id of the first token of ``word`` as the model would write it first (no special tokens added)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise ValueError(f"judge readout: {word!r} encodes to no token")
    return int(ids[0])


def yes_no_logprobs(
    model: Any, tokenizer: Any, prompts: list[str], yes: str, no: str, add_special_tokens: bool = False
) -> torch.Tensor:
    """[n, 2] log-probabilities of the first tokens of ``yes`` and ``no`` as the next token after each prompt
    (one left-padded forward; the last position is the next-token distribution), float32 on the CPU."""
    encoded = _encode(tokenizer, prompts, add_special_tokens, model.device)
    ids = torch.tensor([first_token_id(tokenizer, yes), first_token_id(tokenizer, no)])
    with evaluating(model):
        logits = model(**encoded).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu()


def readout_probability(lp: torch.Tensor) -> list[float]:
    """``P(yes) / (P(yes) + P(no)) = sigmoid(lp_yes - lp_no)`` per row of an [n, 2] log-probability tensor."""
    return torch.sigmoid(lp[:, 0] - lp[:, 1]).tolist()


def batched_replies(
    prompts: list[str],
    batch_size: int,
    run: Callable[[list[str]], list[Reply]],
    stats: JudgeStats,
    warned: set[str],
    owner: str,
) -> list[Reply]:
    """``run`` on ``batch_size`` prompts at a time; a batch that raises fails its chats (transient, counted,
    logged with the traceback the first time) instead of stopping the run. Answered chats count as calls."""
    readout = "readout" in owner
    replies: list[Reply] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        try:
            out = run(batch)
        except Exception as exc:  # contained: one bad batch must not stop training
            error = f"generate: {type(exc).__name__}: {exc}"
            warn_once(warned, owner, "%s: %s; the batch fails.\n%s", owner, error, traceback.format_exc())
            stats.request_failures += len(batch)
            replies += [Reply.failed(error, readout) for _ in batch]
            continue
        stats.calls += len(batch)
        replies += out
    return replies


def text_replies(texts: Sequence[str]) -> list[Reply]:
    return [Reply(text=t) for t in texts]


def prob_replies(probs: Sequence[float]) -> list[Reply]:
    return [Reply(prob=float(p)) for p in probs]
