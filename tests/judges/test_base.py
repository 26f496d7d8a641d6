"""Verdict parsing, the item key, the LRU cache and the cached runner every judge shares."""

from __future__ import annotations

import pickle

import pytest

from vrl.judges import JudgeItem, JudgeStats, Verdict, VerdictCache, parse_score, parse_verdict
from vrl.judges.base import judge_cached


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" 0 ", 0.0),
        ("0.5", 0.5),
        ("**1**", 1.0),  # markdown bold around the value
        ("1.", 1.0),  # a trailing full stop
        ("Yes", 1.0),
        ("no", 0.0),
        ("2", 1.0),  # clamped to [0, 1], as published
        ("-3", 0.0),
        ("1 or 0", None),  # the instruction echoed back is not a score
        ("maybe", None),
        ("", None),
        ("nan", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_parse_verdict_reads_tags_tolerantly_and_last_occurrence_wins():
    text = "Judgement: < INFO1 > yes </info1>\n<info2>0</info2> <info2> 1 </info2>\n<info3>0.25</info3>"
    verdict = parse_verdict(text, 3)
    # info1 "yes" -> 1; info2 said 0 then 1: the last one counts; info3 0.25
    assert verdict.ok and verdict.scores == (1.0, 1.0, 0.25) and verdict.judged == 3 and verdict.raw == text


def test_parse_verdict_stops_at_the_first_missing_k_and_pads_with_zeros():
    # info1, info2 present, info3 missing, info4 present: K runs 1..2 only; m = 4 -> two padded zeros
    verdict = parse_verdict("<info1>1</info1><info2>1</info2><info4>1</info4>", 4)
    assert verdict.ok and verdict.scores == (1.0, 1.0, 0.0, 0.0) and verdict.judged == 2


def test_parse_verdict_ignores_tags_beyond_m():
    verdict = parse_verdict("<info1>0</info1><info2>1</info2><info3>1</info3>", 2)
    assert verdict.scores == (0.0, 1.0) and verdict.judged == 2


@pytest.mark.parametrize("text", ["I think both are present.", "<info1>1 or 0</info1><info2>1</info2>", ""])
def test_unreadable_reply_is_a_failed_verdict_with_zero_scores(text):
    verdict = parse_verdict(text, 2)
    assert not verdict.ok and verdict.scores == (0.0, 0.0) and verdict.judged == 0
    assert verdict.error.startswith("parse:") and not verdict.transient  # a reply was received: cacheable


def test_item_key_is_sha256_of_annotations_and_response():
    a = JudgeItem(["the circle is red"], "red")  # a list is stored as a tuple
    assert a.annotations == ("the circle is red",)
    assert a.key() == JudgeItem(("the circle is red",), "red").key()
    assert len(a.key()) == 64
    # moving text between the annotation and the response must change the key (no naive concatenation)
    assert JudgeItem(("ab",), "c").key() != JudgeItem(("a",), "bc").key()
    assert JudgeItem(("a", "b"), "c").key() != JudgeItem(("b", "a"), "c").key()
    with pytest.raises(ValueError, match="at least one annotation"):
        JudgeItem((), "x")


def _ok(item: JudgeItem) -> Verdict:
    return Verdict((1.0,) * len(item.annotations), len(item.annotations), True, raw="<info1>1</info1>")


class CountingBackend:
    def __init__(self, verdict=_ok):
        self.seen: list[list[JudgeItem]] = []
        self.verdict = verdict

    def __call__(self, items):
        self.seen.append(list(items))
        return [self.verdict(item) for item in items]


def test_cache_hits_and_in_batch_duplicates_are_not_judged_again():
    cache, stats, backend = VerdictCache(10), JudgeStats(), CountingBackend()
    a, b = JudgeItem(("x",), "r1"), JudgeItem(("x",), "r2")
    first = judge_cached([a, b, a, a], cache, stats, backend)
    assert backend.seen == [[a, b]]  # the two repeats of `a` ride on its one judgement
    assert [v.ok for v in first] == [True] * 4
    second = judge_cached([b, a], cache, stats, backend)
    assert len(backend.seen) == 1  # all from the cache
    assert second == [first[1], first[0]]
    # 6 items asked; hits: 2 in-batch repeats + 2 cached = 4
    assert stats.pop() == {
        "judge/items": 6.0,
        "judge/cache_hits": 4.0,
        "judge/calls": 0.0,
        "judge/retries": 0.0,
        "judge/request_failures": 0.0,
        "judge/parse_failures": 0.0,
    }
    assert stats.items == 0  # pop resets


def test_transient_failures_are_not_cached():
    cache, stats = VerdictCache(10), JudgeStats()
    backend = CountingBackend(lambda item: Verdict.failed(1, "request: timed out", transient=True))
    item = JudgeItem(("x",), "r")
    judge_cached([item], cache, stats, backend)
    judge_cached([item], cache, stats, backend)
    assert len(backend.seen) == 2 and len(cache) == 0


def test_cache_is_lru_and_bounded():
    cache = VerdictCache(2)
    v = Verdict((1.0,), 1, True)
    cache.put("a", v)
    cache.put("b", v)
    assert cache.get("a") is v  # touch "a": "b" is now the least recently used
    cache.put("c", v)
    assert cache.get("b") is None and cache.get("a") is v and cache.get("c") is v and len(cache) == 2
    off = VerdictCache(0)
    off.put("a", v)
    assert len(off) == 0


def test_cache_pickles_without_its_lock():
    cache = VerdictCache(2)
    cache.put("a", Verdict((1.0,), 1, True))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get("a") == Verdict((1.0,), 1, True)
    copy.put("b", Verdict((0.0,), 1, True))  # the lock was recreated
