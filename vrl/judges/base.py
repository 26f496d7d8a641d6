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
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from vrl.data.checklist import tag_contents

logger = logging.getLogger("vrl")

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
#: Words a judge may write instead of 1 / 0 (compared lowercased, surrounding punctuation stripped).
_YES = frozenset({"yes", "true", "present"})
_NO = frozenset({"no", "false", "absent"})
#: Decoration around a tag's value that carries no meaning: markdown bold, quotes, a trailing full stop.
_DECORATION = " \t\r\n*_`'\".,;:"


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
        if self.maxsize == 0 or verdict.transient:
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
    stats.items += len(items)
    keys = [item.key() for item in items]
    found: dict[str, Verdict] = {}
    todo: dict[str, JudgeItem] = {}
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
        verdicts = judge_uncached(list(todo.values()))
        if len(verdicts) != len(todo):
            raise RuntimeError(f"judge backend returned {len(verdicts)} verdicts for {len(todo)} items")
        for key, verdict in zip(todo, verdicts):
            cache.put(key, verdict)
            found[key] = verdict
    return [found[key] for key in keys]


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
