"""What every judge shares: the item and verdict types, verdict parsing, the verdict cache and the counters.

A judge decides, for each *annotation* (an atomic fact about the image, e.g. "the triangle is red"),
whether a policy *response* states it. Perception-R1 (arXiv 2506.07218) asks a text-only LLM to answer
``<info1>1</info1>\\n<info2>0</info2>...``; :func:`parse_verdict` reads that back. The three judges in this
package (:class:`~vrl.judges.rule.RuleJudge`, :class:`~vrl.judges.http.HTTPJudge`,
:class:`~vrl.judges.local.LocalJudge`) differ only in how they produce the text (or, for the rule judge,
the scores directly); they share everything here by composition (:func:`judge_cached`), not inheritance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from vrl.data.checklist import tag_contents

logger = logging.getLogger("vrl")

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
#: Words a judge may write instead of 1 / 0 (compared lowercased, surrounding punctuation stripped).
_YES = frozenset({"yes", "true", "present"})
_NO = frozenset({"no", "false", "absent"})
#: Decoration around a tag's value that carries no meaning: markdown bold, quotes, a trailing full stop.
_DECORATION = " \t\r\n*_`'\".,;:"
#: A chat: OpenAI-style messages ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
Chat = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class JudgeItem:
    """One thing to judge: does ``response`` state each of ``annotations``?

    Attributes:
        annotations: m >= 1 atomic facts, in the order the verdict scores them.
        response: the policy's decoded response.
    """

    annotations: tuple[str, ...]
    response: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", tuple(self.annotations))  # a list from a caller stays hashable
        if not self.annotations:
            raise ValueError("a judge item needs at least one annotation (a sample without any is not judged)")

    def key(self) -> str:
        """sha256 of (annotations, response): the cache key, stable across processes (unlike ``hash``)."""
        blob = json.dumps([list(self.annotations), self.response], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """The judgement of one item.

    Attributes:
        scores: m values in [0, 1], one per annotation. Annotations the judge gave no score for are 0.
        judged: how many annotations the judge did score (``<info1>``..``<infoK>`` before the first missing
            K, at most m). Perception-R1's published reward divides by this, not by m.
        ok: False when the judgement failed (unreadable judge output, or no answer at all); a failed
            verdict's scores are all 0 and a reward should treat it as "no judgement", not as "nothing seen".
        error: why it failed, ``""`` when ok.
        raw: the judge's text, None when there is none (the rule judge, a request that failed).
        transient: the failure may not recur (timeout, server error): such verdicts are never cached.
    """

    scores: tuple[float, ...]
    judged: int
    ok: bool
    error: str = ""
    raw: str | None = None
    transient: bool = False

    @classmethod
    def failed(cls, m: int, error: str, raw: str | None = None, transient: bool = False) -> Verdict:
        """A failed verdict for m annotations: all scores 0, nothing judged."""
        return cls((0.0,) * m, 0, False, error, raw, transient)


class Judge(Protocol):
    """Structural type of a judge: one batched call, one verdict per item, in order; never raises for one item."""

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


class ModelJudge(Judge, Protocol):
    """A judge backed by a language model (HTTP, local, the policy itself) also answers free chats, batched:

    - ``complete(chats) -> list[Reply]``: the greedy reply text of each chat (a reasoner's answer, a re-prompt);
    - ``probability(chats, yes="Yes", no="No") -> list[Reply]``: the first reply token's
      ``P(yes) / (P(yes) + P(no))`` (PaCo-Reward's P("Yes"), a PRM's P("+")).

    Both are cached by content (:func:`chat_key`), counted in ``stats`` and never raise for one chat: a failed
    chat gets a failed :class:`Reply`. The rule judge has no model and answers neither.
    """

    def complete(self, chats: Sequence[Chat]) -> list[Reply]: ...

    def probability(self, chats: Sequence[Chat], yes: str = "Yes", no: str = "No") -> list[Reply]: ...


@dataclass
class JudgeStats:
    """Counters since the last :meth:`pop`; a failure is always counted, never silent.

    Attributes:
        items: items asked for (cache hits included).
        cache_hits: items answered from the cache, or by an identical item earlier in the same batch.
        calls: model or server calls that answered (one per judged item; the rule judge counts none).
        retries: repeated requests after a timeout, a connection error or a 5xx / 429 answer.
        request_failures: items whose request failed after every retry (score 0, not cached).
        parse_failures: items whose judge text could not be read as a verdict (score 0).
    """

    items: int = 0
    cache_hits: int = 0
    calls: int = 0
    retries: int = 0
    request_failures: int = 0
    parse_failures: int = 0

    def pop(self, prefix: str = "judge/") -> dict[str, float]:
        """The counters as ``{prefix + name: value}``, then reset to 0."""
        out = {f"{prefix}{f.name}": float(getattr(self, f.name)) for f in fields(self)}
        for f in fields(self):
            setattr(self, f.name, 0)
        return out


class VerdictCache:
    """A bounded LRU map from :meth:`JudgeItem.key` to a verdict; thread-safe, picklable (the lock is not kept).

    G rollouts of one prompt often repeat a response word for word (always, for a collapsed policy), and a
    verdict at temperature 0 is a function of its item, so repeats cost nothing. Transient failures are
    not stored, so a timed-out item is asked again next time.

    Args:
        maxsize: entries kept; the least recently used goes first. 0 disables the cache.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 0:
            raise ValueError(f"cache maxsize must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[str, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Verdict | None:
        """The cached verdict (now the most recently used), or None."""
        with self._lock:
            verdict = self._data.get(key)
            if verdict is not None:
                self._data.move_to_end(key)
            return verdict

    def put(self, key: str, verdict: Verdict) -> None:
        """Store a verdict unless it is transient or the cache is off; evicts the least recently used."""
        if self.maxsize == 0 or getattr(verdict, "transient", False):
            return
        with self._lock:
            self._data[key] = verdict
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __getstate__(self) -> dict:
        return {"maxsize": self.maxsize, "_data": self._data}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def judge_cached(
    items: Sequence[JudgeItem],
    cache: VerdictCache,
    stats: JudgeStats,
    judge_uncached: Callable[[list[JudgeItem]], list[Verdict]],
) -> list[Verdict]:
    """Answer ``items`` from ``cache`` where possible and call ``judge_uncached`` once on the distinct rest.

    Args:
        items: N items.
        cache: where verdicts are looked up and stored.
        stats: ``items`` and ``cache_hits`` are counted here (the backend counts the rest).
        judge_uncached: the backend: distinct, uncached items -> one verdict each, in order.

    Returns:
        N verdicts, in item order.
    """
    return cached_call(items, [item.key() for item in items], cache, stats, judge_uncached)


def cached_call(
    items: Sequence[Any], keys: Sequence[str], cache: VerdictCache, stats: JudgeStats, backend: Callable[[list], list]
) -> list:
    """The cache protocol of every judge call (verdicts, replies, readouts): look each key up, call ``backend``
    once on the distinct misses, store what it answered (transient failures are not stored).

    Args:
        items: N things to answer; keys: their N cache keys (equal keys are asked once).
        cache: where answers are looked up and stored.
        stats: ``items`` and ``cache_hits`` are counted here (the backend counts the rest).
        backend: distinct, uncached items -> one answer each, in order.

    Returns:
        N answers, in item order.
    """
    stats.items += len(items)
    found: dict[str, Any] = {}
    todo: dict[str, Any] = {}
    for key, item in zip(keys, items):
        if key in found or key in todo:
            continue
        hit = cache.get(key)
        if hit is not None:
            found[key] = hit
        else:
            todo[key] = item
    stats.cache_hits += len(items) - len(todo)
    if todo:
        answers = backend(list(todo.values()))
        if len(answers) != len(todo):
            raise RuntimeError(f"judge backend returned {len(answers)} answers for {len(todo)} items")
        for key, answer in zip(todo, answers):
            cache.put(key, answer)
            found[key] = answer
    return [found[key] for key in keys]


# ----------------------------------------------------------------- free text and probability readouts
@dataclass(frozen=True)
class Reply:
    """A judge's answer to one chat: free text (:meth:`complete`) or a probability readout (:meth:`probability`).

    Attributes:
        text: the reply (new tokens only), None for a readout or a failed request.
        prob: ``P(yes) / (P(yes) + P(no))`` for a readout (0.0 when neither token was seen), None for text.
        ok: False when the call failed; a failed reply's ``text`` is None and its ``prob`` 0.0 (for readouts).
        error: why it failed, ``""`` when ok.
        transient: the failure may not recur (a timeout, a server error, out of memory): never cached.
    """

    text: str | None = None
    prob: float | None = None
    ok: bool = True
    error: str = ""
    transient: bool = False

    @classmethod
    def failed(cls, error: str, readout: bool, transient: bool = True) -> Reply:
        return cls(None, 0.0 if readout else None, False, error, transient)


def chat_key(kind: str, chat: Chat, **params: Any) -> str:
    """sha256 of (kind, messages, params): the cache key of a text or readout request (stable across processes)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in chat]
    blob = json.dumps([kind, messages, sorted(params.items())], ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def yes_probability(
    logprobs: Mapping[str, float] | Sequence[tuple[str, float]], yes: str = "Yes", no: str = "No"
) -> float:
    """PaCo-Reward's readout from a first token's log-probabilities: ``P(yes) / (P(yes) + P(no))``
    ``= sigmoid(lp_yes - lp_no)``; 1.0 when only ``yes`` was seen, 0.0 when only ``no`` or neither was.

    Args:
        logprobs: (token text, log-probability) pairs, most likely first (an OpenAI ``top_logprobs`` list), or
            a mapping. Tokens are compared exactly (``" Yes"`` is another token than ``"Yes"``), as the local
            backends read the first token of ``yes``, so the HTTP and local readouts of one model agree.
    """
    pairs = logprobs.items() if isinstance(logprobs, Mapping) else logprobs
    seen: dict[str, float] = {}
    for token, lp in pairs:
        seen.setdefault(token, float(lp))
    lp_yes, lp_no = seen.get(yes), seen.get(no)
    if lp_yes is None:
        return 0.0
    if lp_no is None:
        return 1.0
    return 1.0 / (1.0 + math.exp(lp_no - lp_yes))


def parse_score(text: str) -> float | None:
    """One ``<infoK>`` value as a score in [0, 1], or None when it is not a number or a yes/no word.

    ``" 1 "``, ``"**1**"``, ``"1."``, ``"0.5"`` and ``"Yes"`` are read; numbers are clamped to [0, 1] (so
    ``"2"`` is 1.0, as in the published parser); ``"1 or 0"`` and ``"maybe"`` are not.
    """
    value = text.strip(_DECORATION).lower()
    if value in _YES:
        return 1.0
    if value in _NO:
        return 0.0
    if not _NUMBER.fullmatch(value):
        return None
    return min(1.0, max(0.0, float(value)))


def parse_verdict(text: str, m: int) -> Verdict:
    """Read a judge's ``<info1>..</info1><info2>..</info2>...`` answer for m annotations.

    Tags are found case- and whitespace-tolerantly (``< INFO1 >``), the last occurrence of each K wins (a
    judge that restates its answer is taken at its final word; the published regex also takes the last),
    and K runs 1, 2, ... until the first K with no tag, at most m. Missing K <= m score 0.

    Stricter than the published parser, which scores an unreadable value 0 and keeps the rest: here an
    unreadable value among the read K fails the whole verdict, as does an answer without ``<info1>``,
    because a judge that wrote garbage once is not trusted for the other items of the same answer.

    Args:
        text: the judge's reply.
        m: number of annotations judged (>= 1).

    Returns:
        A verdict with ``raw=text``; ``ok`` False (and all scores 0) when unreadable.
    """
    tags = dict(tag_contents(text, "info"))
    scores: list[float] = []
    for k in range(1, m + 1):
        if k not in tags:
            break
        score = parse_score(tags[k])
        if score is None:
            return Verdict.failed(m, f"parse: <info{k}> holds {tags[k][:40]!r}, not a score", raw=text)
        scores.append(score)
    if not scores:
        return Verdict.failed(m, "parse: no <info1> tag in the judge's reply", raw=text)
    judged = len(scores)
    return Verdict(tuple(scores) + (0.0,) * (m - judged), judged, True, raw=text)


def warn_once(seen: set[str], kind: str, message: str, *args: object) -> None:
    """WARNING the first time a judge sees this kind of failure, DEBUG after; the counters have the totals."""
    level = logging.DEBUG if kind in seen else logging.WARNING
    seen.add(kind)
    logger.log(level, message, *args)
