"""``HTTPJudge``: an LLM judge behind an OpenAI-compatible ``/v1/chat/completions`` server (e.g. vLLM).

Perception-R1 serves Qwen2.5-32B-Instruct-AWQ with vLLM on 8 GPUs beside the 8 training GPUs and sends
one chat request per rollout (temperature 0, up to 512 tokens, up to 512 in flight). This client does the
same with the standard library only (``urllib`` in a thread pool): no ``openai`` or ``requests`` dependency,
one connection per request, which a local vLLM server handles without trouble.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
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
    yes_probability,
)
from .prompt import JudgePrompt


class _Retryable(Exception):
    """A failure worth another try: a timeout, a refused or dropped connection, a 5xx or 429 answer."""


class HTTPJudge:
    """Judges items by chat requests to an OpenAI-compatible server, several at a time.

    Each item is one request (the annotations and the response in the user message, the instruction
    and worked examples in the system message, :class:`~vrl.judges.prompt.JudgePrompt`); the reply is read
    by :func:`~vrl.judges.base.parse_verdict`. A request that times out, cannot connect, or gets a 5xx or
    429 answer is retried after ``backoff_s * 2**(attempt - 1)`` seconds (at most ``backoff_max_s``), up
    to ``retries`` times. Any other HTTP error (4xx: wrong model name, bad request) is not retried. An item
    whose request finally fails gets a failed verdict (its reward is 0), is counted in
    ``stats.request_failures``, is logged (a warning the first time per kind of error) and is *not*
    cached, so it is asked again the next time it comes up. Verdicts the server did answer are cached.

    Args:
        base_url: the server's OpenAI base URL, ``/v1`` included, e.g. ``http://127.0.0.1:8000/v1`` (what
            ``vllm serve`` prints); requests go to ``{base_url}/chat/completions``.
        model: the served model name (``--served-model-name``), e.g. ``Qwen2.5-32B-Instruct-AWQ``.
        prompt: the judge prompt (a ``JudgePrompt`` or its keyword arguments, as from YAML).
        api_key_env: name of the environment variable holding the API key, sent as a Bearer token when it
            is set and non-empty. The key itself never goes in a config file or a log. None sends none
            (a local vLLM started without ``--api-key`` needs none).
        temperature: 0.0 (greedy) as published: a reward must not be a coin flip, and the cache assumes a
            verdict is a function of its item.
        max_tokens: reply length cap; 512 as published (a verdict for m items needs ~8m tokens, the rest
            is headroom for judges that explain first).
        max_workers: requests in flight at once (a thread each). 64 keeps a single vLLM server busy without
            queueing thousands of requests; the published client allows 512.
        timeout_s: socket timeout of one request in seconds (connect, and each wait for data), so a hung
            server costs at most about ``(retries + 1) * timeout_s`` plus back-off per item.
        retries: extra attempts after a retryable failure; 3 rides out a server restart of a few seconds.
        backoff_s: first back-off in seconds, doubled per attempt.
        backoff_max_s: longest back-off in seconds.
        cache_size: verdicts kept in the LRU cache (~1 KB each with the judge's text); 0 disables it.
        extra_body: more JSON fields for the request, e.g. ``{"chat_template_kwargs": {"enable_thinking":
            false}}`` for Qwen3 judges, or ``{"seed": 0}``.
        top_logprobs: alternatives asked for in a probability readout (:meth:`probability`); 20 as PaCo-Reward
            (and OpenAI's cap; vLLM allows more with ``--max-logprobs``). A token outside them counts as unseen.

    Free chats (:meth:`complete`) and probability readouts (:meth:`probability`) go through the same client:
    the same retries, timeouts, cache and counters. A readout is one token at temperature 0 with
    ``logprobs: true`` and ``top_logprobs``; the reply's first token alternatives give
    :func:`~vrl.judges.base.yes_probability`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        prompt: JudgePrompt | Mapping[str, Any],
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 512,
        max_workers: int = 64,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        cache_size: int = 100_000,
        extra_body: Mapping[str, Any] | None = None,
        top_logprobs: int = 20,
    ) -> None:
        if max_workers < 1 or retries < 0 or timeout_s <= 0 or max_tokens < 1:
            raise ValueError("HTTPJudge: need max_workers >= 1, retries >= 0, timeout_s > 0 and max_tokens >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.prompt = prompt if isinstance(prompt, JudgePrompt) else JudgePrompt(**prompt)
        self.api_key_env = api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_workers, self.timeout_s = max_workers, timeout_s
        self.retries, self.backoff_s, self.backoff_max_s = retries, backoff_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.top_logprobs = top_logprobs
        self.cache = VerdictCache(cache_size)
        self.stats = JudgeStats()
        self._warned: set[str] = set()

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item; items not in the cache are requested concurrently (``max_workers``)."""
        return judge_cached(items, self.cache, self.stats, self._judge_uncached)

    def complete(self, chats: Sequence[Chat]) -> list[Reply]:
        """The reply text of each chat (``temperature``, ``max_tokens``), requested concurrently."""
        params = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}
        keys = [chat_key("complete", c, **params, extra=self.extra_body) for c in chats]
        return cached_call(chats, keys, self.cache, self.stats, lambda todo: self._replies(todo, self._complete_one))

    def probability(self, chats: Sequence[Chat], yes: str = "Yes", no: str = "No") -> list[Reply]:
        """``P(yes) / (P(yes) + P(no))`` of each chat's first reply token, from the server's ``top_logprobs``."""
        params = {"model": self.model, "yes": yes, "no": no, "top_logprobs": self.top_logprobs}
        keys = [chat_key("probability", c, **params, extra=self.extra_body) for c in chats]
        one = lambda chat: self._readout_one(chat, yes, no)  # noqa: E731
        return cached_call(chats, keys, self.cache, self.stats, lambda todo: self._replies(todo, one))

    def _replies(self, chats: list[Chat], one: Any) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(chats)), thread_name_prefix="vrl-judge") as pool:
            results = list(pool.map(one, chats))
        replies = []
        for reply, retries in results:  # counted here, in one thread
            self.stats.retries += retries
            if reply.ok:
                self.stats.calls += 1
            else:
                self.stats.request_failures += 1
                kind = reply.error.split(":", 1)[0]
                warn_once(self._warned, kind, "HTTPJudge %s: a request failed (%s)", self.url, reply.error)
            replies.append(reply)
        return replies

    def _body(self, chat: Chat, **fields: Any) -> bytes:
        messages = [{"role": m["role"], "content": m["content"]} for m in chat]
        body = {"model": self.model, "messages": messages, "n": 1, **fields, **self.extra_body}
        return json.dumps(body).encode("utf-8")

    def _complete_one(self, chat: Chat) -> tuple[Reply, int]:
        data = self._body(chat, temperature=self.temperature, max_tokens=self.max_tokens)
        return self._retrying(data, lambda payload: Reply(text=_content(payload)), readout=False)

    def _readout_one(self, chat: Chat, yes: str, no: str) -> tuple[Reply, int]:
        data = self._body(chat, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)

        def parse(payload: dict) -> Reply:
            first = payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return Reply(prob=yes_probability([(t["token"], t["logprob"]) for t in first], yes, no))

        return self._retrying(data, parse, readout=True)

    def _retrying(self, data: bytes, parse: Any, readout: bool) -> tuple[Reply, int]:
        """(reply, retries used) for one request body; never raises (the retry rules of :meth:`_request`)."""
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                return parse(self._post_json(data)), attempt
            except _Retryable as exc:
                error = f"request: {exc} (after {attempt + 1} attempts)"
            except Exception as exc:  # 4xx, a malformed answer: asking again would get the same
                return Reply.failed(f"request: {type(exc).__name__}: {exc}", readout), attempt
        return Reply.failed(error, readout), self.retries

    def _judge_uncached(self, items: list[JudgeItem]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items)), thread_name_prefix="vrl-judge") as pool:
            results = list(pool.map(self._request, items))
        verdicts = []
        for verdict, retries in results:  # counted here, in one thread, so the counters need no lock
            self.stats.retries += retries
            if verdict.raw is not None:
                self.stats.calls += 1
            if not verdict.ok:
                kind = "request_failures" if verdict.raw is None else "parse_failures"
                setattr(self.stats, kind, getattr(self.stats, kind) + 1)
                warn_once(
                    self._warned,
                    verdict.error.split(":", 1)[0],
                    "HTTPJudge %s: a judgement failed (%s); it scores 0 and is counted in stats.%s.",
                    self.url,
                    verdict.error,
                    kind,
                )
            verdicts.append(verdict)
        return verdicts

    def _request(self, item: JudgeItem) -> tuple[Verdict, int]:
        """(verdict, retries used) for one item; never raises."""
        body = {
            "model": self.model,
            "messages": self.prompt.messages(item.annotations, item.response),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
            **self.extra_body,
        }
        data = json.dumps(body).encode("utf-8")
        m, error = len(item.annotations), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                return parse_verdict(self._post(data), m), attempt
            except _Retryable as exc:
                error = f"request: {exc} (after {attempt + 1} attempts)"
            except Exception as exc:  # 4xx, a malformed answer: asking again would get the same
                return Verdict.failed(m, f"request: {type(exc).__name__}: {exc}", transient=True), attempt
        return Verdict.failed(m, error, transient=True), self.retries

    def _post(self, data: bytes) -> str:
        """POST one request; the reply's ``choices[0].message.content``. Raises ``_Retryable`` where sensible."""
        return _content(self._post_json(data))

    def _post_json(self, data: bytes) -> dict:
        """POST one request; the decoded JSON answer. Raises ``_Retryable`` where sensible."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _Retryable(f"HTTP {exc.code}") from exc
            raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:200]!r}") from exc
        except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
            raise _Retryable(f"timed out after {self.timeout_s} s") from exc
        except urllib.error.URLError as exc:  # connection refused, DNS, a timeout while connecting
            raise _Retryable(f"cannot reach the server ({exc.reason})") from exc
        except (ConnectionError, HTTPException) as exc:  # reset or dropped mid-answer
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        return json.loads(payload)


def _content(payload: dict) -> str:
    """``choices[0].message.content`` of a chat-completions answer (TypeError when it is not a string)."""
    content = payload["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError(f"choices[0].message.content is {type(content).__name__}, not a string")
    return content
