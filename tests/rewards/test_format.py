"""ThinkAnswerFormat: structure only, exactly one think and one answer block, nothing after."""

import pytest

from vrl.rewards import ThinkAnswerFormat


@pytest.mark.parametrize(
    "response",
    [
        "<think>The cube is red.</think><answer>red</answer>",
        "<think>\nline 1\nline 2\n</think>\n\n<answer> red </answer>\n",
        "  <think></think> <answer>B</answer>",  # empty reasoning is still the format
    ],
)
def test_well_formed(response):
    assert ThinkAnswerFormat()([response], [{}]) == [1.0]


@pytest.mark.parametrize(
    "response",
    [
        "red",
        "<answer>red</answer>",  # think required by default
        "<think>x</think>",
        "<answer>red</answer><think>x</think>",  # wrong order
        "<think>x</think><answer>red</answer> because",  # text after the answer
        "preamble <think>x</think><answer>red</answer>",  # text before
        "<think>x</think><answer>red</answer><answer>blue</answer>",  # two answers
        "<think>a<think>b</think><answer>red</answer>",  # nested think
        "<think>a</think><think>b</think><answer>red</answer>",  # two thinks
        "<think>x</think><answer>   </answer>",  # empty answer
        "<think>x</think><answer></answer>x</answer>",
        "<think>x</think><answer>red",  # truncated
        "<think>x</think> y <answer>red</answer>",  # text between the blocks
    ],
)
def test_malformed(response):
    assert ThinkAnswerFormat()([response], [{}]) == [0.0]


def test_answer_only_when_think_not_required():
    fmt = ThinkAnswerFormat(require_think=False)
    responses = ["<answer>red</answer>", "<think>x</think><answer>red</answer>", "red", "<think>x</think>"]
    assert fmt(responses, [{}] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_custom_tags_and_pattern():
    fmt = ThinkAnswerFormat(think_tag="reason", answer_tag="final")
    assert fmt(["<reason>r</reason><final>1</final>", "<think>r</think><answer>1</answer>"], [{}, {}]) == [
        1.0,
        0.0,
    ]
    look = ThinkAnswerFormat(pattern=r"<think>.*?</think><look>.*?</look><answer>.+?</answer>")
    assert look(
        ["<think>a</think><look>b</look><answer>c</answer>", "<think>a</think><answer>c</answer>"], [{}, {}]
    ) == [
        1.0,
        0.0,
    ]


def test_one_float_per_response():
    fmt = ThinkAnswerFormat(weight=0.1)
    assert fmt.name == "format"
    assert fmt.weight == 0.1
    scores = fmt(["<think>a</think><answer>b</answer>"] * 3 + ["x"], [{}] * 4)
    assert scores == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="samples"):
        fmt(["x"], [{}, {}])
