"""Judge-based answer extraction: what the grader sees, what a failed call falls back to, and the CLI wiring."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vrl.evaluate import main, score_items
from vrl.judges.base import Reply
from vrl.judges.extract import JudgeExtractor
from vrl.rewards import Accuracy, AnswerExtractor
from vrl.rewards.combine import RewardSet


class ScriptedJudge:
    """Stands in for a judge model (the outside world here): fixed replies, and the chats it was asked."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies, self.asked = replies, []

    def complete(self, chats):
        self.asked.extend(chats)
        return self.replies[: len(chats)]


ROWS = [{"prompt": "What colour is the shape?", "answer": "red", "answer_type": "text"} for _ in range(3)]
RESPONSES = ["It looks red to me, maybe orange.", "I cannot tell.", "red"]


def test_replies_become_tagged_answers_and_a_failed_call_keeps_the_response():
    judge = ScriptedJudge([Reply("red"), Reply("NONE."), Reply.failed("timeout", readout=False)])
    extract = JudgeExtractor(judge)
    graded = extract(ROWS, RESPONSES)
    assert graded == ["<answer>red</answer>", "<answer></answer>", "red"]
    assert extract.metrics() == {"eval/extract/calls": 3.0, "eval/extract/failed": 1.0, "eval/extract/none": 1.0}
    user = judge.asked[0][1]["content"]
    assert "What colour is the shape?" in user and "It looks red to me, maybe orange." in user


def test_accuracy_grades_the_extraction_and_the_reward_the_raw_response():
    reward = RewardSet({"accuracy": Accuracy(extract=AnswerExtractor(fallback="whole"))})
    rollout = SimpleNamespace(responses=RESPONSES, samples=ROWS)

    def generate(part, group_size=None, greedy=False):
        return rollout

    judge = ScriptedJudge([Reply("red"), Reply("NONE"), Reply("blue")])
    rule = score_items(generate, reward, ROWS, batch_size=3)
    read = score_items(generate, reward, ROWS, batch_size=3, extract=JudgeExtractor(judge))
    # rules: the whole response is the answer, so only the bare "red" matches; the judge reads "red" out of the
    # first, nothing out of the second, and (wrongly) "blue" out of the third: accuracies 1, 0, 0
    assert [i.greedy for i in rule] == [0.0, 0.0, 1.0]
    assert [i.greedy for i in read] == [1.0, 0.0, 0.0]
    assert [i.greedy_reward for i in read] == [0.0, 0.0, 1.0]  # the total reward still grades the raw response
    reward.close()


def test_a_judge_without_free_text_is_refused():
    with pytest.raises(ValueError, match="complete"):
        JudgeExtractor(object())


def test_vrl_eval_reads_answers_with_the_policy_as_extractor(tmp_path, capsys):
    small = [f"output_dir={tmp_path}", "logger=none", "data.val.num_samples=3", "sampler.max_new_tokens=4"]
    assert main([*small, "--extract-judge", "policy", "extract_judge.max_new_tokens=4"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    # 3 items, greedy only: the policy read 3 responses, none failed
    assert cells["count"] == "3" and float(cells["extract/calls"]) == 3.0 and float(cells["extract/failed"]) == 0.0
