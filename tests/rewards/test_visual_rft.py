"""Visual-RFT's rewards, hand-computed: parsing repairs, de-duplication, greedy vs Hungarian matching, R_IoU over
max(N_gt, N_pred), the confidence reward, classification's substring rule and LISA's GIoU + 1."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vrl.rewards.visual_rft import (
    DetectionReward,
    GroundingGIoU,
    SubstringAccuracy,
    parse_detections,
    parse_gold_boxes,
    repaired_answer,
)

A, B = [0, 0, 10, 10], [0, 20, 10, 30]


def det_row(boxes, **extra) -> dict:
    answer = json.dumps([{"Position": b, "Confidence": 1} for b in boxes]) if boxes else "No Objects"
    return {"answer": answer, "answer_type": "detection", "uid": "d0", **extra}


def answer(*preds) -> str:
    body = json.dumps([{"Position": p, "Confidence": c} for p, c in preds])
    return f"<think>look</think><answer>{body}</answer>"


def both(response: str, row: dict, **kw) -> tuple[float, float]:
    iou, conf = DetectionReward("iou", **kw), DetectionReward("confidence", **kw)
    return iou([response], [row])[0], conf([response], [row])[0]


# ----------------------------------------------------------------- parsing


def test_repairs_double_brackets_newlines_quotes_and_truncation():
    # [[ -> [, ]] -> ], ' -> "
    assert repaired_answer("<answer>[[{'Position': [0,0,10,10], 'Confidence': 0.8}]]</answer>") == (
        '[{"Position": [0,0,10,10], "Confidence": 0.8}]'
    )
    # newlines are dropped, which helps an answer without tags (a tag spanning lines is not found: next test)
    assert repaired_answer("[{'Position': [0,0,10,10],\n'Confidence': 0.8}]") == (
        '[{"Position": [0,0,10,10],"Confidence": 0.8}]'
    )
    # a list cut inside its second entry: cut after the last "}," and closed
    cut = '[{"Position": [0, 0, 10, 10], "Confidence": 0.9}, {"Position": [20, 2'
    assert parse_detections(cut) == [([0.0, 0.0, 10.0, 10.0], 0.9)]
    assert parse_detections(f"<think>a</think><answer>{cut}</answer>") == [([0.0, 0.0, 10.0, 10.0], 0.9)]
    # a response cut before its closing tag: no one-line tag, so the whole response is wrapped and keeps its
    # "<answer>": not JSON (released)
    assert parse_detections(f"<think>a</think><answer>{cut}") is None


def test_answer_tag_is_one_line_as_released_else_the_whole_response():
    good = json.dumps([{"Position": A, "Confidence": 0.5}])
    assert parse_detections(good) == [([0.0, 0.0, 10.0, 10.0], 0.5)]  # no tags: the whole response is the answer
    # an answer tag spanning lines does not match the one-line pattern, so the whole response (with <think>) is
    # wrapped and cut at the first </answer>: "<think>a</think><answer>[...]" is not JSON
    assert parse_detections(f"<think>a</think><answer>\n{good}\n</answer>") is None


@pytest.mark.parametrize(
    "bad",
    [
        "<answer>No Objects</answer>",
        "<answer>[]</answer>",  # empty list
        '<answer>[{"Position": [0, 0, 10, 10]}]</answer>',  # no Confidence
        '<answer>[{"Position": [0, 0, 10], "Confidence": 1}]</answer>',  # three coordinates
        '<answer>[{"Position": [0, 0, 10, 10], "Confidence": "high"}]</answer>',
        "<answer>[[0, 0, 10, 10]]</answer>",  # boxes without dicts (after [[ -> [: four numbers, not dicts)
        '<answer>{"Position": [0, 0, 10, 10], "Confidence": 1}</answer>',  # an object, not a list
    ],
)
def test_malformed_answers_score_zero_on_both_parts(bad):
    assert parse_detections(bad) is None
    assert both(bad, det_row([A])) == (0.0, 0.0)


def test_exact_duplicates_are_kept_once():
    preds = parse_detections(answer((A, 0.9), (A, 0.3), (B, 0.8)))
    assert preds == [([0.0, 0.0, 10.0, 10.0], 0.9), ([0.0, 20.0, 10.0, 30.0], 0.8)]
    # so two copies of a hit do not count twice: R_IoU = (1 + 1) / max(2, 2) = 1
    assert both(answer((A, 0.9), (A, 0.3), (B, 0.8)), det_row([A, B]))[0] == 1.0


def test_gold_formats():
    assert parse_gold_boxes("<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 1}]</answer>") == [[1, 2, 3, 4]]
    assert parse_gold_boxes("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_gold_boxes("No Objects") == [] and parse_gold_boxes("<answer>No Objects</answer>") == []
    assert parse_gold_boxes("a red square") is None
    with pytest.raises(ValueError, match="uid='d0'"):
        DetectionReward()(["x"], [{"answer": "a red square", "answer_type": "detection", "uid": "d0"}])


# ----------------------------------------------------------------- matching and the two rewards


def test_greedy_matching_follows_confidence_and_hungarian_maximises_total_iou():
    # Ground truth A = [0,0,10,10], B = [0,20,10,30].
    # p1 = [0,2,10,12], c 0.9: IoU(A) = 8*10 / (100 + 100 - 80) = 80/120 = 2/3; IoU(B) = 0.
    # p2 = [0,1,10,11], c 0.5: IoU(A) = 9*10 / (200 - 90) = 90/110 = 9/11; IoU(B) = 0.
    response, row = answer(([0, 2, 10, 12], 0.9), ([0, 1, 10, 11], 0.5)), det_row([A, B])
    # greedy: p1 (higher confidence) takes A at 2/3; p2 finds only B (IoU 0) -> unmatched.
    # R_IoU = (2/3 + 0) / max(2, 2) = 1/3; R_conf = (0.9 + (1 - 0.5)) / 2 = 0.7
    iou, conf = both(response, row)
    assert iou == pytest.approx(1 / 3) and conf == pytest.approx(0.7)
    # hungarian: p2 - A at 9/11 is the best total; p1 unmatched.
    # R_IoU = (9/11) / 2 = 9/22; R_conf = ((1 - 0.9) + 0.5) / 2 = 0.3
    iou, conf = both(response, row, matching="hungarian")
    assert iou == pytest.approx(9 / 22) and conf == pytest.approx(0.3)


def test_iou_must_exceed_the_threshold():
    # [0,0,10,10] vs [0,0,10,20]: IoU = 100 / 200 = 0.5, not > 0.5 -> unmatched.
    # R_IoU = 0; R_conf = 1 - 0.8 = 0.2 (an unmatched box pays for low confidence)
    iou, conf = both(answer((A, 0.8)), det_row([[0, 0, 10, 20]]))
    assert iou == 0.0 and conf == pytest.approx(0.2)
    # lowered threshold: matched at 0.5 -> R_IoU = 0.5 / 1, R_conf = 0.8
    assert both(answer((A, 0.8)), det_row([[0, 0, 10, 20]]), iou_threshold=0.4) == pytest.approx((0.5, 0.8))


def test_iou_reward_divides_by_the_larger_count():
    # one exact hit of two boxes: 1 / max(2, 1) = 0.5; conf = 0.7
    assert both(answer((A, 0.7)), det_row([A, B])) == pytest.approx((0.5, 0.7))
    # one exact hit and two far boxes for one box: 1 / max(1, 3) = 1/3;
    # conf = (0.9 + (1 - 0.2) + (1 - 0.4)) / 3 = 2.3 / 3
    far1, far2 = [50, 50, 60, 60], [70, 70, 80, 80]
    assert both(answer((A, 0.9), (far1, 0.2), (far2, 0.4)), det_row([A])) == pytest.approx((1 / 3, 2.3 / 3))


def test_confidence_reward_is_clipped_and_swapped_corners_miss():
    # confidence 1.5 on a hit: 1.5 -> clipped to 1
    assert both(answer((A, 1.5)), det_row([A])) == pytest.approx((1.0, 1.0))
    # [10,10,0,0] is A with swapped corners: the released IoU is 0 for it -> miss; conf = 1 - 0.3
    assert both(answer(([10, 10, 0, 0], 0.3)), det_row([A])) == pytest.approx((0.0, 0.7))


def test_no_objects_rows_pay_nothing_unless_credited():
    row = det_row([])
    assert both("<answer>No Objects</answer>", row) == (0.0, 0.0)  # released: the parser fails on the gold
    assert both("<answer>No Objects</answer>", row, no_objects_credit=True) == (1.0, 1.0)
    # boxes where there are none: R_IoU 0, R_conf = mean(1 - c) = ((1 - 0.2) + (1 - 0.6)) / 2 = 0.6
    far = [50, 50, 60, 60]
    assert both(answer((A, 0.2), (far, 0.6)), row, no_objects_credit=True) == pytest.approx((0.0, 0.6))


def test_frames_and_answer_types():
    row = det_row([[0, 0, 100, 100]], images=[Image.new("RGB", (200, 100))])
    # norm1000 on a 200 x 100 image: [0, 0, 500, 1000] -> [0, 0, 100, 100] pixels, an exact hit
    assert both(answer(([0, 0, 500, 1000], 1.0)), row, frame="norm1000") == (1.0, 1.0)
    # a row of another answer type scores 0 unless answer_types=None
    other = {**det_row([A]), "answer_type": "bbox"}
    assert both(answer((A, 1.0)), other) == (0.0, 0.0)
    assert both(answer((A, 1.0)), other, answer_types=None) == (1.0, 1.0)


# ----------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("<think>..</think><answer>Golden_Retriever</answer>", "retriever", 1.0),  # gold inside the answer
        ("<answer>rose</answer>", "<answer>Desert Rose</answer>", 1.0),  # answer inside "desertrose"
        ("<answer>tulip</answer>", "rose", 0.0),
        ("<answer></answer>", "rose", 1.0),  # "" is a substring of every label (released)
        ("<think>rose or tulip?</think><answer>\ntulip\n</answer>", "rose", 1.0),  # multi-line: whole response
    ],
)
def test_substring_accuracy(response, gold, expected):
    assert SubstringAccuracy()([response], [{"answer": gold}]) == [expected]


def test_substring_accuracy_can_refuse_empty_answers():
    assert SubstringAccuracy(allow_empty=False)(["<answer> </answer>"], [{"answer": "rose"}]) == [0.0]


# ----------------------------------------------------------------- grounding (LISA)


def lisa(answer: str) -> dict:
    return {"answer": answer, "answer_type": "bbox", "uid": "g0"}


def test_grounding_giou_plus_one_and_exact_text():
    gold = lisa("(100,200),(300,400)")
    term = GroundingGIoU()
    # exact text: 2
    assert term(["<think>x</think><answer>(100,200),(300,400)</answer>"], [gold]) == [2.0]
    # [100,200,300,300] inside the gold: IoU = 200*100 / (200*200) = 0.5, hull = gold -> GIoU 0.5 -> 1.5
    assert term(["<answer>(100, 200), (300, 300)</answer>"], [gold]) == [pytest.approx(1.5)]
    # disjoint [400,200,500,400]: union 40000 + 20000, hull 400*200 = 80000 -> GIoU -20000/80000 -> 0.75
    assert term(["<answer>(400,200),(500,400)</answer>"], [gold]) == [pytest.approx(0.75)]
    # the answer tag may span lines (DOTALL, as released for the response); no box -> 0
    assert term(["<answer>\n(100,200),(300,300)\n</answer>"], [gold]) == [pytest.approx(1.5)]
    assert term(["<answer>[100, 200, 300, 300]</answer>"], [gold]) == [0.0]  # lisa reads only (x,y),(x,y)


def test_grounding_on_vrl_box_rows():
    row = lisa("[10, 20, 50, 60]")
    with pytest.raises(ValueError, match="parse=any"):
        GroundingGIoU()(["[10, 20, 30, 60]"], [row])
    # parse=any: [10,20,30,60] vs [10,20,50,60]: IoU 800/1600 = 0.5, hull = gold -> 1.5
    assert GroundingGIoU(parse="any")(["<answer>[10, 20, 30, 60]</answer>"], [row]) == [pytest.approx(1.5)]
