"""Per-sample verifier routing, the reward context, per-source metrics and per-row weights (V-Triune's three
layers), and V-Triune's detection verifier with its dynamic IoU threshold, hand-computed."""

from __future__ import annotations

import json

import pytest

from vrl.rewards.combine import RewardSet
from vrl.rewards.context import RewardContext, context_of
from vrl.rewards.routing import RoutedReward, row_value, source_sums
from vrl.rewards.v_triune import DetectionFormat, DetectionVerifier, TagCountFormat, dynamic_iou_threshold


class Length:
    weight = 1.0

    def __call__(self, responses, samples):
        return [float(len(r)) for r in responses]


class Const:
    def __init__(self, value, weight=1.0):
        self.value, self.weight = value, weight

    def __call__(self, responses, samples):
        return [self.value] * len(responses)


class Step:
    """The step of the reward context each row carries (-1 without one)."""

    weight = 1.0

    def __call__(self, responses, samples):
        return [float(c.step) if (c := context_of(s)) else -1.0 for s in samples]


# ----------------------------------------------------------------- routing


def test_rows_are_scored_by_the_verifier_they_name():
    term = RoutedReward({"length": Length(), "ten": Const(10.0), "off": None}, key="reward_spec", default="ten")
    rows = [
        {"reward_spec": {"verifier": "length"}},  # a spec mapping: its verifier
        {"reward_spec": "ten"},  # a bare name
        {},  # none: the default
        {"reward_spec": {"verifier": "length"}},
    ]
    assert term(["abc", "abc", "abc", "a"], rows) == [3.0, 10.0, 10.0, 1.0]
    assert row_value({"reward_model": {"verifier": "x"}}, "reward_model.verifier") == "x"
    assert row_value({"reward_model": None}, "reward_model.verifier") is None


def test_a_row_naming_an_unknown_verifier_costs_only_that_row():
    rewards = RewardSet({"acc": RoutedReward({"length": Length()}, key="verifier")})
    rows = [{"uid": "0", "verifier": "length"}, {"uid": "1", "verifier": "ocr"}, {"uid": "2"}]
    total, _ = rewards(["ab", "abc", "abcd"], rows)
    assert total.tolist() == [2.0, 0.0, 0.0]  # "ocr" is not configured, row 2 names none and there is no default
    assert rewards.pop_stats()["reward/errors/acc"] == 2.0
    with pytest.raises(ValueError, match=r"names verifier 'ocr'; configured: \['length'\]"):
        RoutedReward({"length": Length()}, key="verifier")(["x"], [rows[1]])


# ----------------------------------------------------------------- the reward context


def test_the_context_reaches_every_term_in_its_rows_and_the_callers_rows_stay_clean():
    rows = [{"uid": "0"}, {"uid": "1"}]
    rewards = RewardSet({"step": Step()})
    assert rewards(["a", "b"], rows, context=RewardContext(step=7, total_steps=70))[0].tolist() == [7.0, 7.0]
    assert rewards(["a", "b"], rows)[0].tolist() == [-1.0, -1.0]  # no context passed
    assert rows == [{"uid": "0"}, {"uid": "1"}]
    assert RewardContext(step=7, total_steps=70).progress == pytest.approx(0.1)
    assert RewardContext(step=7, total_steps=-1).progress is None  # trainer.max_steps=-1: unknown


def test_the_context_reaches_a_worker_process(tmp_path, monkeypatch):
    from vrl.rewards.file import FileReward

    path = tmp_path / "stepper.py"
    path.write_text("def step(response, sample):\n    return float(sample['reward_context'].step)\n")
    monkeypatch.setenv("VRL_ALLOWED_TARGETS", str(path))
    rewards = RewardSet({"s": FileReward(str(path), "step")}, isolate="process", timeout_s=30)
    try:
        assert rewards(["a"], [{"uid": "0"}], context=RewardContext(step=3))[0].tolist() == [3.0]
    finally:
        rewards.close()


# ----------------------------------------------------------------- per-source metrics and per-row weights


def test_per_source_metrics_group_rows_by_their_fields():
    rewards = RewardSet(
        {"accuracy": Length(), "format": Const(1.0, weight=0.5)}, source_keys=["data_source", "reward_spec.verifier"]
    )
    rows = [
        {"data_source": "geo", "reward_spec": {"verifier": "math"}},
        {"data_source": "geo", "reward_spec": {"verifier": "math"}},
        {"data_source": "coco", "reward_spec": {"verifier": "detection"}},
        {"reward_spec": {"verifier": "detection"}},  # no data_source: counted by verifier only
    ]
    # accuracy = lengths [1, 3, 2, 4]; total = accuracy + 0.5
    rewards(["a", "abc", "ab", "abcd"], rows)
    rewards(["abcdef"], rows[:1], context=RewardContext(training=False))  # validation: left out
    stats = rewards.pop_stats()
    assert stats["by_data_source/geo/count"] == 2 and stats["by_data_source/geo/accuracy"] == 2.0  # (1 + 3) / 2
    assert stats["by_data_source/geo/reward"] == 2.5 and stats["by_data_source/geo/format"] == 1.0
    assert stats["by_data_source/coco/accuracy"] == 2.0
    assert stats["by_verifier/detection/count"] == 2 and stats["by_verifier/detection/reward"] == 3.5  # (2.5 + 4.5)/2
    assert not any(k.startswith("by_") for k in rewards.pop_stats())  # reset
    assert list(source_sums([{"data_source": "a/b c?"}], *rewards(["x"], [{}]), ["data_source"])) == [
        "by_data_source/a_b c_"
    ]


def test_validation_gets_per_source_means_with_their_counts():
    from vrl.rewards.routing import source_means

    rows = [{"data_source": "geo"}, {"data_source": "geo"}, {"data_source": "coco"}, {}]
    total, parts = RewardSet({"accuracy": Length()})(["a", "abc", "ab", "x"], rows)
    means = source_means(rows, total, parts, ["data_source"])
    assert means["val/by_data_source/geo/accuracy"] == (2.0, 2) and means["val/by_data_source/coco/reward"] == (2.0, 1)
    assert len(means) == 4  # geo and coco, reward and accuracy each; the row without a source is left out


def test_rows_may_carry_their_own_term_weights():
    rewards = RewardSet(
        {"accuracy": Const(1.0), "format": Const(1.0, weight=0.1)}, row_weights_key="reward_spec.weights"
    )
    rows = [{"reward_spec": {"weights": {"accuracy": 0.5, "format": 0.5}}}, {"reward_spec": {"weights": {}}}, {}]
    total, parts = rewards(["a"] * 3, rows)
    # row 0: 0.5 + 0.5; rows 1 and 2 keep the configured 1 + 0.1
    assert total.tolist() == pytest.approx([1.0, 1.1, 1.1])
    assert parts["format"].tolist() == [1.0, 1.0, 1.0]  # components stay unweighted


# ----------------------------------------------------------------- V-Triune's verifiers


@pytest.mark.parametrize(
    ("progress", "threshold"), [(0.0, 0.85), (0.1, 0.85), (0.1001, 0.95), (0.25, 0.95), (0.26, 0.99), (None, 0.85)]
)
def test_dynamic_iou_threshold_schedule(progress, threshold):
    assert dynamic_iou_threshold(progress) == threshold


GOLD = [{"bbox_2d": [0, 0, 10, 10], "label": "red circle"}, {"bbox_2d": [20, 0, 30, 10], "label": "blue square"}]


def det(answer_boxes, **context) -> tuple[str, dict]:
    row = {"answer": json.dumps(GOLD), "uid": "d0"}
    if context:
        row["reward_context"] = RewardContext(**context)
    return f"<think>\nx\n</think>\n<answer>\n{json.dumps(answer_boxes)}\n</answer>", row


def test_detection_verifier_exact_answer_scores_one():
    response, row = det(list(reversed(GOLD)), step=0, total_steps=10)  # order does not matter; t = 0.85
    assert DetectionVerifier()([response], [row]) == [1.0]


def test_detection_verifier_one_box_at_each_threshold():
    # one prediction [0,0,10,12] "red circle": IoU with the red circle = 100 / 120 = 0.8333
    response, row = det([{"bbox_2d": [0, 0, 10, 12], "label": "red circle"}])
    # t = 0.5: one match -> mean IoU 0.8333 / 2, miss 1/2, false alarm 0 -> completeness 1 - 0.25 = 0.75
    #   score = 0.5 * 0.41667 + 0.5 * 0.75 = 0.58333 (both strategies); size penalty 0.6^|1 - 2| = 0.6 -> 0.35
    assert DetectionVerifier(iou_threshold=0.5).score(response, row) == pytest.approx(0.35)
    # dynamic at progress 0.05 -> t = 0.85 > 0.8333: no match -> mean 0, miss 1, false alarm 1 -> 0
    early = {**row, "reward_context": RewardContext(step=1, total_steps=20)}
    assert DetectionVerifier(iou_threshold="dynamic").score(response, early) == 0.0
    # average over the 11 thresholds: matched at 0.5 ... 0.8 (7 of them) -> 7 * 0.58333 / 11 * 0.6 = 0.22273
    assert DetectionVerifier(iou_threshold="average").score(response, row) == pytest.approx(7 * 0.58333333 / 11 * 0.6)


def test_detection_verifier_labels():
    # the boxes are right, the labels swapped
    response, row = det(
        [{"bbox_2d": [0, 0, 10, 10], "label": "blue square"}, {"bbox_2d": [20, 0, 30, 10], "label": "red circle"}]
    )
    # max_iou_first: both pairs match with IoU 0 (labels differ) -> mean 0, completeness 1 -> 0.5 * 0 + 0.5 * 1 = 0.5
    # label_first: each ground truth's same-label prediction has IoU 0 < t -> no match -> completeness 0 -> 0
    assert DetectionVerifier(iou_threshold=0.5).score(response, row) == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert DetectionVerifier(iou_threshold=0.5, ratios={"max_iou_first": 1.0}).score(response, row) == 0.5


def test_v_triune_formats():
    good = "<think>\nx\n</think>\n<answer>\n3\n</answer>"
    assert TagCountFormat()([good, "<think>x</think><answer>3</answer>", "<think>\n"], [{}] * 3) == [1.0, 0.0, 0.25]
    response, _ = det(GOLD)
    assert DetectionFormat()([response, good], [{}] * 2) == [1.0, 0.0]  # "3" is no box list
