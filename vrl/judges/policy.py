"""``PolicyJudge``: the policy being trained, used as a text-only judge (Vision-SR1's self-reward).

Vision-SR1 (arXiv 2508.19652) re-prompts *the same weights* with only the policy's own description and the
question; other methods may ask the policy to grade or to answer text-only. This backend is that: no extra copy
of the model, no gradient, eval mode for the pass (the train flag restored after), and the pass runs inside
``torch.random.fork_rng`` so that, greedy or not, the main rollout's random stream is exactly what it would have
been without it (tests/judges/test_policy.py proves both).

The training module binds it to the policy at setup (``bind_policy``, called by ``vrl.lit.attach`` for every
judge it finds in the reward terms, hooks and advantage estimator); a judge that was never bound fails every
chat with a clear error instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Chat, JudgeItem, JudgeStats, Reply, Verdict, VerdictCache, cached_call, chat_key, judge_cached
from .base import parse_verdict as _parse_verdict
from .prompt import JudgePrompt
from .textgen import (
    batched_replies,
    greedy_generate,
    prob_replies,
    readout_probability,
    render_chat,
    text_replies,
    yes_no_logprobs,
)


class PolicyJudge:
    """The current policy as a :class:`~vrl.judges.base.ModelJudge`: greedy, text only, no gradient.

    Args:
        max_new_tokens: reply length cap of :meth:`complete`.
        batch_size: chats per ``generate`` / forward call.
        prompt: a judge prompt for :meth:`judge` (annotation verdicts); None when only free chats are asked.
        cache_size: replies kept across calls. 0 (default): the policy changes every step, so a reply is only
            valid for the weights that gave it; identical chats within one call are still asked once.
        seed: the seed of the pass's own random stream (only used by a model that samples; greedy draws none).
    """

    def __init__(
        self,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        prompt: JudgePrompt | dict | None = None,
        cache_size: int = 0,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("PolicyJudge: batch_size and max_new_tokens must be >= 1")
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
        self.prompt = prompt if prompt is None or isinstance(prompt, JudgePrompt) else JudgePrompt(**prompt)
        self.cache = VerdictCache(cache_size)
        self.stats = JudgeStats()
        self._warned: set[str] = set()
        self._vlm: Any = None

    def bind_policy(self, vlm: Any) -> None:
        """Use ``vlm.model`` with ``vlm.processor.tokenizer`` (the policy bundle, ``vrl.models.loading.VLM``)."""
        self._vlm = vlm

    @property
    def vlm(self) -> Any:
        if self._vlm is None:
            raise RuntimeError("PolicyJudge is not bound to a policy (the training module binds it at setup)")
        return self._vlm

    @property
    def model(self) -> Any:
        return self.vlm.model

    @property
    def tokenizer(self) -> Any:
        return self.vlm.processor.tokenizer

    def render_chat(self, chat: Chat) -> str:
        """The exact text the policy is given for one chat (its tokenizer's chat template)."""
        return render_chat(self.tokenizer, chat, bool(getattr(self.tokenizer, "chat_template", None)))

    def complete(self, chats: Sequence[Chat]) -> list[Reply]:
        """The policy's greedy reply to each chat (no image), ``batch_size`` chats per ``generate``."""
        keys = [chat_key("complete", c, max_new_tokens=self.max_new_tokens) for c in chats]
        return cached_call(chats, keys, self.cache, self.stats, self._complete_uncached)

    def probability(self, chats: Sequence[Chat], yes: str = "Yes", no: str = "No") -> list[Reply]:
        """``P(yes) / (P(yes) + P(no))`` of each chat's first reply token under the policy."""
        keys = [chat_key("probability", c, yes=yes, no=no) for c in chats]
        return cached_call(chats, keys, self.cache, self.stats, lambda todo: self._readout_uncached(todo, yes, no))

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Annotation verdicts (needs ``prompt``): the policy's reply to each item's judge chat, parsed."""
        if self.prompt is None:
            raise ValueError("PolicyJudge.judge needs a prompt (judge@...: give it `prompt:`)")
        return judge_cached(items, self.cache, self.stats, self._judge_uncached)

    def _judge_uncached(self, items: list[JudgeItem]) -> list[Verdict]:
        chats = [self.prompt.messages(item.annotations, item.response) for item in items]
        replies = self._complete_uncached(chats)
        out = []
        for item, reply in zip(items, replies):
            m = len(item.annotations)
            verdict = _parse_verdict(reply.text, m) if reply.ok else Verdict.failed(m, reply.error, transient=True)
            self.stats.parse_failures += int(reply.ok and not verdict.ok)
            out.append(verdict)
        return out

    def _isolated(self, run: Any) -> Any:
        """``run()`` inside a forked random stream (CPU and the policy's accelerator), seeded by ``seed``."""
        device = self.model.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(self.seed)
            return run()

    def _complete_uncached(self, chats: list[Chat]) -> list[Reply]:
        try:
            prompts = [self.render_chat(c) for c in chats]
        except RuntimeError as exc:  # unbound
            self.stats.request_failures += len(chats)
            return [Reply.failed(str(exc), readout=False, transient=False) for _ in chats]

        def run(batch: list[str]) -> list[Reply]:
            texts = self._isolated(lambda: greedy_generate(self.model, self.tokenizer, batch, self.max_new_tokens))
            return text_replies(texts)

        return batched_replies(prompts, self.batch_size, run, self.stats, self._warned, "PolicyJudge")

    def _readout_uncached(self, chats: list[Chat], yes: str, no: str) -> list[Reply]:
        try:
            prompts = [self.render_chat(c) for c in chats]
        except RuntimeError as exc:
            self.stats.request_failures += len(chats)
            return [Reply.failed(str(exc), readout=True, transient=False) for _ in chats]

        def run(batch: list[str]) -> list[Reply]:
            lp = self._isolated(lambda: yes_no_logprobs(self.model, self.tokenizer, batch, yes, no))
            return prob_replies(readout_probability(lp))

        return batched_replies(prompts, self.batch_size, run, self.stats, self._warned, "PolicyJudge readout")
