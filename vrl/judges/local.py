"""``LocalJudge``: an LLM judge run in this process with transformers (batched greedy decoding).

For a judge that fits beside the policy (a small instruct model on the training GPU, or any model on a
CPU test box), without a server. Perception-R1 itself used a 32B judge on separate GPUs
(:class:`~vrl.judges.http.HTTPJudge`); this is the in-process variant of the same protocol.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    Chat,
    JudgeItem,
    JudgeStats,
    Reply,
    Verdict,
    VerdictCache,
    cached_call,
    chat_key,
    judge_cached,
    parse_verdict,
    warn_once,
)
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


def load_causal_lm(path: str, dtype: str = "auto", device: str | None = None) -> Any:
    """A text-generating model from a path or hub id: a causal LM, else a VLM (used text-only).

    ``AutoModelForCausalLM`` covers plain LLMs; Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints are only
    registered under ``AutoModelForImageTextToText``, whose ``generate`` takes text alone as well.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError:  # "Unrecognized configuration class ... for this kind of AutoModel"
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    return model.to(device or "cpu").eval()


class LocalJudge:
    """Judges items with a local transformers model: prompts batched with left padding, greedy decoding.

    The messages are those of :class:`~vrl.judges.prompt.JudgePrompt`. A tokenizer with a chat template
    renders them with it (generation prompt added); one without gets plain text: the system text, the
    user message and ``Judgement:``, the same cue the worked examples use. Only the new tokens are
    decoded (special tokens skipped) and read by :func:`~vrl.judges.base.parse_verdict`. A batch whose
    ``generate`` raises (out of memory, say) fails its items, counted in ``stats.request_failures`` and
    logged with the traceback the first time, instead of stopping the run.

    Besides verdicts it answers free chats (:meth:`complete`: a frozen reasoner, RACRO) and probability readouts
    (:meth:`probability`: P("Yes") from one forward over the full vocabulary, PaCo-Reward), the
    :class:`~vrl.judges.base.ModelJudge` calls, batched and cached the same way.

    Inside a training run the model is a registered, frozen submodule of the ``RLModule`` (:meth:`module`,
    ``vrl.lit.attach``): Lightning places it on the rank's device, DDP keeps one copy per rank, and checkpoints
    leave it out (it is rebuilt from ``model`` on resume).

    Args:
        model: a path or hub id (loaded on first use by :func:`load_causal_lm`, so building the config
            costs nothing), or a built model object (used as is: its device and dtype are kept).
        prompt: the judge prompt (a ``JudgePrompt`` or its keyword arguments, as from YAML); None for a judge
            asked only free chats and readouts (a reasoner, a consistency judge).
        tokenizer: a tokenizer object, or a path / hub id; None loads it from ``model`` (a path), and is an
            error with a model object. A tokenizer without a pad token pads with its EOS token.
        max_new_tokens: reply length cap (512 as published; a verdict for m items needs ~8m tokens).
        batch_size: prompts per ``generate`` call. Judge prompts are long (the worked examples), so memory
            grows quickly with it; 8 is a safe start for a 7B judge on one GPU.
        dtype: weights dtype when loading by path (``auto``: the checkpoint's).
        device: where a model loaded by path goes (None: CPU).
        chat_template: None (default) uses the tokenizer's chat template when it has one; True requires
            it; False always sends plain text.
        cache_size: verdicts kept in the LRU cache; 0 disables it.
    """

    def __init__(
        self,
        model: str | Any,
        prompt: JudgePrompt | Mapping[str, Any] | None = None,
        tokenizer: str | Any | None = None,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        dtype: str = "auto",
        device: str | None = None,
        chat_template: bool | None = None,
        cache_size: int = 100_000,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("LocalJudge: batch_size and max_new_tokens must be >= 1")
        if tokenizer is None and not isinstance(model, str):
            raise ValueError("LocalJudge: pass the tokenizer along with a model object")
        self.prompt = prompt if prompt is None or isinstance(prompt, JudgePrompt) else JudgePrompt(**prompt)
        self._model, self._tokenizer = model, tokenizer if tokenizer is not None else model
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.dtype, self.device, self.chat_template = dtype, device, chat_template
        self.cache = VerdictCache(cache_size)
        self.stats = JudgeStats()
        self._warned: set[str] = set()

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loading whichever was given as a path; idempotent."""
        if isinstance(self._model, str):
            self._model = load_causal_lm(self._model, self.dtype, self.device)
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        has_template = bool(getattr(self._tokenizer, "chat_template", None))
        if self.chat_template and not has_template:
            raise ValueError("LocalJudge: chat_template=True but the tokenizer has no chat template")
        self._use_template = has_template if self.chat_template is None else self.chat_template
        return self._model, self._tokenizer

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item; uncached items are decoded ``batch_size`` at a time."""
        if self.prompt is None:
            raise ValueError("LocalJudge.judge needs a prompt (judge@...: give it `prompt:`)")
        return judge_cached(items, self.cache, self.stats, self._judge_uncached)

    def module(self) -> Any:
        """The judge's model (loaded if given as a path), frozen: what the training module registers."""
        model, _ = self.load()
        return model.eval().requires_grad_(False)

    def complete(self, chats: Sequence[Chat]) -> list[Reply]:
        """The greedy reply to each chat (``max_new_tokens`` at most), ``batch_size`` chats per ``generate``."""
        keys = [chat_key("complete", c, max_new_tokens=self.max_new_tokens) for c in chats]
        return cached_call(chats, keys, self.cache, self.stats, self._complete_uncached)

    def probability(self, chats: Sequence[Chat], yes: str = "Yes", no: str = "No") -> list[Reply]:
        """``P(yes) / (P(yes) + P(no))`` of each chat's first reply token, from one forward per batch."""
        keys = [chat_key("probability", c, yes=yes, no=no) for c in chats]
        return cached_call(chats, keys, self.cache, self.stats, lambda todo: self._readout_uncached(todo, yes, no))

    def render_chat(self, chat: Chat) -> str:
        """The exact text the model is given for one free chat."""
        _, tokenizer = self.load()
        return render_chat(tokenizer, chat, self._use_template)

    def _complete_uncached(self, chats: list[Chat]) -> list[Reply]:
        prompts = [self.render_chat(c) for c in chats]
        return batched_replies(
            prompts, self.batch_size, lambda b: text_replies(self.generate(b)), self.stats, self._warned, "LocalJudge"
        )

    def _readout_uncached(self, chats: list[Chat], yes: str, no: str) -> list[Reply]:
        model, tokenizer = self.load()
        prompts = [self.render_chat(c) for c in chats]

        def run(batch: list[str]) -> list[Reply]:
            lp = yes_no_logprobs(model, tokenizer, batch, yes, no, add_special_tokens=not self._use_template)
            return prob_replies(readout_probability(lp))

        return batched_replies(prompts, self.batch_size, run, self.stats, self._warned, "LocalJudge readout")

    def render(self, item: JudgeItem) -> str:
        """The exact text the model is given for one item."""
        _, tokenizer = self.load()
        messages = self.prompt.messages(item.annotations, item.response)
        if self._use_template:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{messages[0]['content']}\n{messages[1]['content']}Judgement:"

    def _judge_uncached(self, items: list[JudgeItem]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            try:
                texts = self.generate([self.render(item) for item in batch])
            except Exception as exc:  # contained: one bad batch must not stop training
                self.stats.request_failures += len(batch)
                error = f"generate: {type(exc).__name__}: {exc}"
                warn_once(
                    self._warned, "generate", "LocalJudge: %s; the batch scores 0.\n%s", error, traceback.format_exc()
                )
                verdicts += [Verdict.failed(len(item.annotations), error, transient=True) for item in batch]
                continue
            self.stats.calls += len(batch)
            for item, text in zip(batch, texts):
                verdict = parse_verdict(text, len(item.annotations))
                if not verdict.ok:
                    self.stats.parse_failures += 1
                    warn_once(
                        self._warned,
                        "parse",
                        "LocalJudge: %s (scores 0; counted in stats.parse_failures)",
                        verdict.error,
                    )
                verdicts.append(verdict)
        return verdicts

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy continuations of ``prompts`` (one batch, left-padded), new tokens only, special tokens skipped."""
        model, tokenizer = self.load()
        return greedy_generate(model, tokenizer, prompts, self.max_new_tokens, not self._use_template)
