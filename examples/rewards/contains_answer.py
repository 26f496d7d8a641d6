"""An example reward file for ``vrl.rewards.file.FileReward`` (README, 'Adding a reward').

Plain Python: no vrl import needed. ``sample`` is the data row (``answer`` is the ground truth; every other column
too). Opt the file in, then add it as a term:

    export VRL_ALLOWED_TARGETS=$PWD/examples/rewards/contains_answer.py
    python -m vrl '+reward.contains={_target_:vrl.rewards.file.FileReward,
        path:examples/rewards/contains_answer.py,function:contains_answer,weight:0.5}'   # (one line)
"""


def contains_answer(response: str, sample: dict) -> float:
    """1.0 when the ground-truth answer appears in the response (case-insensitive), else 0.0."""
    return 1.0 if str(sample["answer"]).strip().lower() in response.lower() else 0.0


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """The same check with verl's signature (``style: verl``), returning verl's dict form."""
    hit = str(ground_truth).strip().lower() in solution_str.lower()
    return {"score": 1.0 if hit else 0.0, "hit": hit}
