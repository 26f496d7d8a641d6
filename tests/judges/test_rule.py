"""RuleJudge: normalised word containment, case by case."""

from __future__ import annotations

import pytest

from vrl.judges import JudgeItem, RuleJudge, normalize_tokens
from vrl.judges.rule import content_words


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The Triangle is RED.", ["the", "triangle", "is", "red"]),
        ("There are three objects", ["there", "are", "3", "object"]),
        ("1,200 and 3.50 and 07 and 3.0", ["1200", "and", "3.5", "and", "7", "and", "3"]),
        ("$m\\angle ABC = (2x+5)^\\circ$", ["m", "angle", "abc", "2", "x", "5", "circ"]),
        ("colour grey centre", ["color", "gray", "center"]),
        ("this class has bars", ["this", "class", "has", "bar"]),  # no plural folding of stopwords or "ss"
    ],
)
def test_normalize_tokens(text, tokens):
    assert normalize_tokens(text) == tokens


def test_content_words_drop_stopwords_unless_nothing_else_is_left():
    assert content_words("there are 3 objects") == {"3", "object"}
    assert content_words("the triangle is red") == {"triangle", "red"}
    assert content_words("it is there") == {"it", "is", "there"}


@pytest.mark.parametrize(
    ("annotation", "response", "score"),
    [
        ("the triangle is red", "I see a red triangle.", 1.0),
        ("the triangle is red", "The triangle is blue.", 0.0),  # "red" missing
        ("there are 3 objects", "There are three objects in the image.", 1.0),  # number word -> digit
        ("there are 3 objects", "3 object", 1.0),  # plural folded on both sides
        ("there are 3 objects", "There are 4 objects.", 0.0),
        ("the cat bar is 5", "the value of the cat bar is 5.0", 1.0),
        ("AB = 12", "so ab=12", 1.0),
        ("the triangle is red", "the red square and the blue triangle", 1.0),  # documented: no binding
        ("...", "...", 0.0),  # no tokens at all
    ],
)
def test_rule_judge_cases(annotation, response, score):
    (verdict,) = RuleJudge().judge([JudgeItem((annotation,), response)])
    assert verdict.ok and verdict.scores == (score,) and verdict.judged == 1


def test_min_overlap_pays_near_misses():
    item = JudgeItem(("there are 3 red objects",), "3 objects")  # content words {3, red, object}: 2 of 3 found
    assert RuleJudge(min_overlap=1.0).judge([item])[0].scores == (0.0,)
    assert RuleJudge(min_overlap=0.6).judge([item])[0].scores == (1.0,)  # 2/3 = 0.67 >= 0.6
    assert RuleJudge(min_overlap=0.7).judge([item])[0].scores == (0.0,)  # 0.67 < 0.7


def test_several_annotations_several_items():
    judge = RuleJudge(cache_size=8)
    items = [
        JudgeItem(("the circle is red", "there are 2 objects"), "a red circle and 2 objects"),
        JudgeItem(("x",), "y"),
    ]
    verdicts = judge.judge(items + items[:1])
    assert [v.scores for v in verdicts] == [(1.0, 1.0), (0.0,), (1.0, 1.0)]
    assert judge.stats.cache_hits == 1 and judge.stats.items == 3 and judge.stats.calls == 0
    with pytest.raises(ValueError, match="min_overlap"):
        RuleJudge(min_overlap=0.0)
