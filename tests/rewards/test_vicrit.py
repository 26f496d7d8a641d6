"""ViCrit's rewards: score.py's extraction, the exact-span reward's normalisation, the bench's relaxed correctness."""

from __future__ import annotations

import json

import pytest

from vrl.rewards.vicrit import RelaxedCorrectness, SpanMatch, extract_answer, normalise_span, relaxed_correctness


def test_extract_answer_as_score_py():
    assert extract_answer("<think>the star</think> so \\boxed{blue}") == "blue"
    assert extract_answer("\\boxed{a{b}c} \\boxed{d}") == "a{b}c"  # the first box, braces balanced
    assert extract_answer("\\boxed{abc") == "ab"  # unclosed: released drops the last character
    assert extract_answer("reasoning\nblue") == "blue"  # no box: the last line
    assert extract_answer("boxed{blue}") is None  # "boxed{" without the backslash: released crashes, here None


def test_normalise_span():
    assert normalise_span('["Blue."]') == "blue"  # the list the released prompt asks for
    assert normalise_span("  Left   OF\n the star ") == "left of the star"


def test_span_match_is_exact_after_normalisation():
    row = {"answer": "blue", "task": "vicrit", "uid": "u"}
    responses = ["\\boxed{Blue}", "\\boxed{small blue circle}", "I think\nblue.", "\\boxed{red}", "boxed{blue}"]
    # 1: normalised equal; 0: more than the span; 1: last line "blue." -> "blue"; 0: wrong; 0: no extraction
    assert SpanMatch()(responses, [row] * 5) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert SpanMatch()(["\\boxed{blue}"], [{**row, "task": "count"}]) == [0.0]  # another task's row
    with pytest.raises(ValueError, match="uid='u'"):
        SpanMatch()(["x"], [{**row, "answer": "?!"}])  # normalises to nothing


def test_relaxed_correctness_checks_the_first_changed_word():
    # "left of the star" -> "right of the star": the changed segment is ["right"]
    assert relaxed_correctness("Right of", "left of the star", "right of the star")
    assert relaxed_correctness("brightly", "left of the star", "right of the star")  # a substring: lenient
    assert not relaxed_correctness("left", "left of the star", "right of the star")
    # "one shape" -> "two shapes": no common word, the first changed word is "two"
    assert relaxed_correctness("two", "one shape", "two shapes")
    with pytest.raises(ValueError, match="no changed word"):
        relaxed_correctness("x", "a star", "A star")  # lower-cased equal


def test_relaxed_correctness_term_reads_the_noun_phrases_from_meta():
    meta = json.dumps({"original_noun_phrases": "small red circle", "changed_noun_phrases": "small blue circle"})
    row = {"answer": "blue", "task": "vicrit", "meta": meta, "uid": "u"}
    # "the blue one" holds "blue": 1 (SpanMatch would give 0); "\boxed{red}": 0
    assert RelaxedCorrectness()(["\\boxed{the blue one}", "\\boxed{red}"], [row, row]) == [1.0, 0.0]
    assert RelaxedCorrectness().weight == 0.0  # a metric by default
    with pytest.raises(ValueError, match="noun_phrases"):
        RelaxedCorrectness()(["x"], [{**row, "meta": "{}"}])
