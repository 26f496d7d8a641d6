"""The judge prompt and the judge config group: rendering, and every option composing and building."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from vrl.judges import HTTPJudge, JudgeExample, JudgePrompt, LocalJudge, RuleJudge


def test_messages_render_the_published_layout():
    prompt = JudgePrompt(
        system="Judge.",
        examples=[JudgeExample(("A is 1.", "B is 2."), "A = 1", (1, 0))],
        examples_header="Examples:\n",
    )
    system, user = prompt.messages(["x is red"], "it is red")
    assert system == {
        "role": "system",
        "content": "Judge.\nExamples:\nVisual Key Information: <info1>A is 1.</info1>\n<info2>B is 2.</info2>\n"
        "Response: A = 1\nJudgement: <info1>1</info1>\n<info2>0</info2>\n",
    }
    assert user == {"role": "user", "content": "Visual Key Information: <info1>x is red</info1>\nResponse: it is red\n"}


def test_prompt_validation():
    with pytest.raises(ValueError, match="one judgement per annotation"):
        JudgeExample(("a", "b"), "r", (1,))
    with pytest.raises(ValueError, match="user_template"):
        JudgePrompt(system="s", user_template="Response: {response}")
    # braces in a response are text, not template fields
    assert JudgePrompt(system="s").user(["a"], "\\boxed{3}").endswith("Response: \\boxed{3}\n")


@pytest.mark.parametrize(
    ("overrides", "cls"),
    [
        ([], RuleJudge),
        (["judge@reward.visual.judge=http", "reward.visual.judge.max_workers=3"], HTTPJudge),
        (["judge@reward.visual.judge=local", "reward.visual.judge.model=/nowhere"], LocalJudge),
    ],
)
def test_judge_is_swappable_from_the_command_line(compose, overrides, cls):
    cfg = compose(["+method=perception_r1", *overrides])
    term = instantiate(cfg.reward.visual)
    assert type(term.judge) is cls and term.weight == 0.7
    if cls is HTTPJudge:
        assert term.judge.max_workers == 3 and term.judge.url == "http://127.0.0.1:8000/v1/chat/completions"
    if cls is not RuleJudge:  # the shipped prompt: three worked examples, parsed back by the judge's own rules
        assert len(term.judge.prompt.examples) == 3
        assert "<info1>" in term.judge.prompt.system and term.judge.prompt.system_text().count("Judgement:") == 3
