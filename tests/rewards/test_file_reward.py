"""Reward terms from a user's Python file: opt-in, loading errors that name the file and function, the three call
styles, and the reward set's containment (errors counted per sample, process isolation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vrl.errors import ConfigError
from vrl.rewards.combine import RewardSet
from vrl.rewards.file import FileReward, RewardFileError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rewards" / "contains_answer.py"
USER_FILE = """
def score(response, sample, bonus=0.0):
    if response == "boom":
        raise KeyError("no such thing")
    if response == "text":
        return "high"
    return float(len(response)) + bonus

def batch(responses, samples):
    return [1.0 if s["answer"] in r else 0.0 for r, s in zip(responses, samples)]

LIMIT = 3
"""


@pytest.fixture
def user_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "my_reward.py"
    path.write_text(USER_FILE)
    monkeypatch.setenv("VRL_ALLOWED_TARGETS", f"mypkg,{tmp_path}")  # the folder opts its files in
    return path


def test_a_file_runs_only_when_opted_in(tmp_path, monkeypatch):
    path = tmp_path / "r.py"
    path.write_text("def score(response, sample):\n    return 1.0\n")
    monkeypatch.delenv("VRL_ALLOWED_TARGETS", raising=False)
    with pytest.raises(ConfigError, match=f"{path} is not opted in: .*export VRL_ALLOWED_TARGETS={path}"):
        FileReward(str(path), "score")
    monkeypatch.setenv("VRL_ALLOWED_TARGETS", str(path))  # the file itself
    assert FileReward(str(path), "score")(["a"], [{}]) == [1.0]


def test_loading_errors_name_the_file_and_the_function(user_file, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FileReward(str(tmp_path / "nope.py"))
    with pytest.raises(ConfigError, match=r"my_reward.py: 'scroe' is not defined; functions there: batch, score"):
        FileReward(str(user_file), "scroe")
    with pytest.raises(ConfigError, match=r"'LIMIT' is not a function \(type int\)"):
        FileReward(str(user_file), "LIMIT")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_xyz\n")
    with pytest.raises(ConfigError, match="broken.py fails to import: ModuleNotFoundError"):
        FileReward(str(broken), "score")


def test_validation_check_reports_the_config_key(user_file):
    cfg = OmegaConf.create({"reward": {"mine": {"path": str(user_file), "function": "scroe"}}})
    with pytest.raises(ConfigError, match=r"^reward.mine: reward file .*'scroe'"):
        FileReward.check(cfg, "reward.mine")
    cfg.reward.mine.function = "score"
    FileReward.check(cfg, "reward.mine")


def test_call_styles(user_file, monkeypatch):
    samples = [{"answer": "red", "data_source": "shapes"}, {"answer": "blue"}]
    assert FileReward(str(user_file), "score")(["ab", "abc"], samples) == [2.0, 3.0]
    assert FileReward(str(user_file), "score", kwargs={"bonus": 0.5})(["ab"], samples[:1]) == [2.5]
    assert FileReward(str(user_file), "batch", style="batch")(["a red one", "red"], samples) == [1.0, 0.0]
    monkeypatch.setenv("VRL_ALLOWED_TARGETS", str(EXAMPLE))
    verl = FileReward(str(EXAMPLE), "compute_score", style="verl")  # returns {"score": ..., "hit": ...}
    assert verl(["It is RED.", "red"], samples) == [1.0, 0.0]
    assert FileReward(str(EXAMPLE), "contains_answer")(["blue!"], samples[1:]) == [1.0]


def test_failures_are_contained_and_counted_like_built_in_terms(user_file):
    rewards = RewardSet({"mine": FileReward(str(user_file), "score")})
    total, parts = rewards(["ab", "boom", "text", "abcd"], [{"uid": str(i)} for i in range(4)])
    # "boom" raises, "text" returns a string: both get the default 0; the others keep their values
    assert total.tolist() == [2.0, 0.0, 0.0, 4.0]
    stats = rewards.pop_stats()
    assert stats["reward/errors/mine"] == 2.0 and stats["reward/fallbacks/mine"] == 1.0
    with pytest.raises(RewardFileError, match=r"my_reward.py:score raised KeyError"):
        FileReward(str(user_file), "score")(["boom"], [{}])
    with pytest.raises(RewardFileError, match=r"returned 'high' \(str\); expected a number"):
        FileReward(str(user_file), "score")(["text"], [{}])


def test_runs_in_a_worker_process(user_file):
    rewards = RewardSet({"mine": FileReward(str(user_file), "score")}, isolate="process", timeout_s=30)
    try:
        total, _ = rewards(["abc", "boom"], [{"uid": "0"}, {"uid": "1"}])
    finally:
        rewards.close()
    assert total.tolist() == [3.0, 0.0]  # the worker re-imported the file by path; "boom" contained there
