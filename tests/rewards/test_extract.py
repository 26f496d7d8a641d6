"""Answer-span extraction and the typed parsers behind every answer check."""

import pytest

from vrl.rewards import AnswerExtractor
from vrl.rewards.extract import (
    last_boxed,
    normalize_text,
    parse_box,
    parse_choices,
    parse_number,
    parse_yesno,
)


def test_last_answer_tag_wins_over_boxed_and_earlier_tags():
    response = "<answer>draft</answer> \\boxed{7} <think>hmm</think><answer> final </answer>"
    assert AnswerExtractor()(response) == "final"


def test_boxed_inside_answer_tag_is_unwrapped():
    assert AnswerExtractor()("<answer>so \\boxed{2}</answer>") == "2"
    assert AnswerExtractor(boxed=False)("<answer>\\boxed{2}</answer>") == "\\boxed{2}"


def test_nested_and_truncated_boxed():
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("x \\boxed{a} then \\boxed{{b}c}") == "{b}c"
    # The last \boxed{ never closes (truncated response): the earlier complete one is used.
    assert last_boxed("\\boxed{3} and finally \\boxed{\\frac{1}{") == "3"
    assert last_boxed("no box") is None


def test_unclosed_answer_tag_is_not_a_tag():
    assert AnswerExtractor()("<answer>red") == "<answer>red"
    assert AnswerExtractor(fallback="none")("<answer>red") is None


def test_fallback_modes():
    response = "  The cube is red.\n\nred  \n"
    assert AnswerExtractor()(response) == "The cube is red.\n\nred"
    assert AnswerExtractor(fallback="last_line")(response) == "red"
    assert AnswerExtractor(fallback="none")(response) is None
    assert AnswerExtractor(answer_tag=None)("<answer>a</answer>") == "<answer>a</answer>"
    with pytest.raises(ValueError, match="fallback"):
        AnswerExtractor(fallback="first_line")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("No, it is not.", "no"),
        ("**Yes**", "yes"),
        ("True", "yes"),
        ("false", "no"),
        ("Answer: no", "no"),
        ("I don't know", None),  # "no" appears, but not as the first word
        ("nope", None),
        ("know", None),
        ("", None),
    ],
)
def test_parse_yesno(text, expected):
    assert parse_yesno(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", {"B"}),
        ("(B)", {"B"}),
        ("B.", {"B"}),
        ("answer: b", {"B"}),
        ("A, C", {"A", "C"}),
        ("C,A", {"A", "C"}),
        ("(a) and (c)", {"A", "C"}),
        ("B. a red cube", {"B"}),
        ("(D) blue", {"D"}),
        ("a red cube", None),  # the article is not option A
        ("I think B", None),
        ("", None),
    ],
)
def test_parse_choices(text, expected):
    assert parse_choices(text) == (frozenset(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("3", "last", 3.0),
        ("3.0", "last", 3.0),
        ("-2.5", "last", -2.5),
        ("\u22124 degrees", "last", -4.0),
        ("1,234.5", "last", 1234.5),
        (".5", "last", 0.5),
        ("1e-3", "last", 0.001),
        ("I see 2 cubes and 5 spheres", "last", 5.0),
        ("I see 2 cubes and 5 spheres", "first", 2.0),
        ("Qwen2 counts 7", "last", 7.0),  # digits glued to a word are not a number
        ("none", "last", None),
    ],
)
def test_parse_number(text, position, expected):
    assert parse_number(text, position) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[10, 20, 30, 40]", [10, 20, 30, 40]),
        ("[100,200,300,400]", [100, 200, 300, 400]),  # no thousands separators in boxes
        ('{"bbox_2d": [1.5, 2, 3, 4]}', [1.5, 2, 3, 4]),
        ("(10,20),(30,40)", [10, 20, 30, 40]),
        ("<|box_start|>(1,2),(3,4)<|box_end|>", [1, 2, 3, 4]),
        ("x1=10, y1=20, x2=30, y2=40", [10, 20, 30, 40]),
        ("-5 0 .5 7", [-5, 0, 0.5, 7]),
        ("1 2 3", None),
        ("left", None),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


def test_normalize_text():
    assert normalize_text("  The Red, cube!  ") == "red cube"
    assert normalize_text("an apple") == "apple"
    assert normalize_text("Dark-grey") == "dark grey"
    assert normalize_text("Dark-grey", {"grey": "gray"}) == "dark gray"
    assert normalize_text("Light Blue", {"light blue": "cyan"}) == "cyan"


def test_first_word_fallback_takes_the_leading_word_without_punctuation():
    from vrl.rewards.extract import AnswerExtractor

    ex = AnswerExtractor(fallback="first_word")
    assert ex("red. The shape is round") == "red"
    assert ex("  Blue xyz") == "Blue"
    assert ex("") == ""
    assert ex("<answer>green</answer> red") == "green"  # a tag still wins over the fallback
