"""Box IoU / GIoU arithmetic, coordinate frames, and the BoxIoU reward."""

import pytest
import torch
from PIL import Image

from vrl.rewards import BoxIoU, box_giou, box_iou
from vrl.rewards.iou import to_pixel_box


def bbox_sample(answer: str, uid: str = "g0", size: tuple[int, int] = (200, 100), **extra) -> dict:
    return {"answer": answer, "answer_type": "bbox", "uid": uid, "images": [Image.new("RGB", size)], **extra}


def test_partial_overlap_iou_and_giou():
    # [0,0,2,2] vs [1,1,3,3]: intersection [1,1,2,2] = 1, union 4 + 4 - 1 = 7 -> IoU 1/7.
    # Hull [0,0,3,3] = 9 -> GIoU = 1/7 - (9 - 7)/9.
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_giou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7 - 2 / 9)


def test_identical_boxes():
    assert box_iou([1, 2, 5, 7], [1, 2, 5, 7]) == pytest.approx(1.0)
    assert box_giou([1, 2, 5, 7], [1, 2, 5, 7]) == pytest.approx(1.0)


def test_disjoint_boxes_giou_ranks_by_distance():
    # [0,0,1,1] vs [2,0,3,1]: no overlap -> IoU 0; union 2, hull [0,0,3,1] = 3 -> GIoU = 0 - 1/3.
    assert box_iou([0, 0, 1, 1], [2, 0, 3, 1]) == 0.0
    assert box_giou([0, 0, 1, 1], [2, 0, 3, 1]) == pytest.approx(-1 / 3)
    # Farther away, [5,0,6,1]: union 2, hull 6 -> GIoU = -4/6, worse than the nearer box.
    assert box_giou([0, 0, 1, 1], [5, 0, 6, 1]) == pytest.approx(-4 / 6)


def test_touching_boxes():
    # Shared edge x = 1: intersection 0, union 2, hull [0,0,2,1] = 2 = union -> GIoU 0.
    assert box_iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0
    assert box_giou([0, 0, 1, 1], [1, 0, 2, 1]) == pytest.approx(0.0)


def test_contained_box():
    # [1,1,3,3] inside [0,0,4,4]: intersection 4, union 16 -> 0.25; hull = union -> GIoU = IoU.
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(0.25)
    assert box_giou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(0.25)


def test_swapped_corners_are_normalised():
    assert box_iou([2, 2, 0, 0], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([2, 0, 0, 2], [0, 0, 2, 2]) == pytest.approx(1.0)


def test_zero_area_boxes_get_each_metrics_minimum():
    # A point inside [0,0,2,2]: plain GIoU would be 0 - (4 - 4)/4 = 0 (hull = target); we give -1.
    assert box_iou([1, 1, 1, 1], [0, 0, 2, 2]) == 0.0
    assert box_giou([1, 1, 1, 1], [0, 0, 2, 2]) == -1.0
    # A line, on either side of the call.
    assert box_iou([0, 0, 2, 2], [1, 0, 1, 3]) == 0.0
    assert box_giou([0, 0, 2, 2], [1, 0, 1, 3]) == -1.0
    # A point against itself: empty union, still no NaN.
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0
    assert box_giou([1, 1, 1, 1], [1, 1, 1, 1]) == -1.0


def test_tensor_inputs_broadcast_and_keep_dtype():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([1.0, 1.0, 3.0, 3.0])
    iou = box_iou(a, b)
    assert isinstance(iou, torch.Tensor)
    assert iou.dtype == torch.float32
    # Second box only touches [1,1,3,3] at a corner -> 0; third is a point -> 0.
    torch.testing.assert_close(iou, torch.tensor([1 / 7, 0.0, 0.0]))
    giou = box_giou(a, b)
    # Row 2: union 1 + 4 = 5, hull [0,0,3,3] = 9 -> 0 - 4/9. Row 3: a point -> -1.
    torch.testing.assert_close(giou, torch.tensor([1 / 7 - 2 / 9, -4 / 9, -1.0]))
    assert box_iou(torch.tensor([0, 0, 2, 2]), [1, 1, 3, 3]).is_floating_point()  # int tensors promoted


def test_wrong_number_of_coordinates_raises():
    with pytest.raises(ValueError, match="4 coordinates"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


def test_model_frame_box_scales_back_to_the_pixel_box():
    # Original 200x100 image resized by the processor to 100x50: every coordinate doubles.
    sample = bbox_sample("[20, 10, 100, 50]", model_image_sizes=[[100, 50]])
    assert to_pixel_box([10, 5, 50, 25], sample, "model") == pytest.approx([20, 10, 100, 50])
    assert BoxIoU(frame="model")(["[10, 5, 50, 25]"], [sample]) == [pytest.approx(1.0)]
    # Read as original pixels instead, the same box overlaps [20,10,100,50] by [20,10,50,25] = 450
    # over a union of 800 + 3200 - 450 = 3550.
    assert BoxIoU(frame="pixel")(["[10, 5, 50, 25]"], [sample]) == [pytest.approx(450 / 3550)]


def test_non_uniform_model_frame():
    # 200x100 original, 112x28 model frame: x scales by 200/112, y by 100/28.
    sample = bbox_sample("[0, 0, 1, 1]", model_image_sizes=[[112, 28]])
    assert to_pixel_box([56, 14, 112, 28], sample, "model") == pytest.approx([100, 50, 200, 100])


def test_norm1000_frame():
    # 0..1000 per axis on a 200x100 image: x * 0.2, y * 0.1.
    sample = bbox_sample("[20, 10, 100, 50]")
    assert to_pixel_box([100, 100, 500, 500], sample, "norm1000") == pytest.approx([20, 10, 100, 50])
    assert BoxIoU(frame="norm1000")(["(100,100),(500,500)"], [sample]) == [pytest.approx(1.0)]


def test_frame_needs_what_the_sample_lacks():
    with pytest.raises(ValueError, match="model_image_sizes.*uid='g0'"):
        BoxIoU(frame="model")(["[1, 1, 2, 2]"], [bbox_sample("[0, 0, 1, 1]")])
    with pytest.raises(ValueError, match="no images"):
        to_pixel_box([1, 1, 2, 2], {"uid": "x", "images": []}, "norm1000")


def test_continuous_iou_and_giou_rewards():
    sample = bbox_sample("[0, 0, 2, 2]")
    response = "<answer>[1, 1, 3, 3]</answer>"
    assert BoxIoU()([response], [sample]) == [pytest.approx(1 / 7)]
    # GIoU 1/7 - 2/9 mapped to [0, 1] by (g + 1)/2.
    assert BoxIoU(kind="giou")([response], [sample]) == [pytest.approx((1 / 7 - 2 / 9 + 1) / 2)]


def test_thresholded_reward():
    sample = bbox_sample("[0, 0, 2, 2]")
    assert BoxIoU(threshold=0.5)(["[1, 1, 3, 3]", "[0, 0, 2, 2]"], [sample, sample]) == [0.0, 1.0]
    # GIoU thresholds compare the raw value: 1/7 - 2/9 ~ -0.079 >= -0.1.
    assert BoxIoU(kind="giou", threshold=-0.1)(["[1, 1, 3, 3]"], [sample]) == [1.0]
    assert BoxIoU(kind="giou", threshold=0.0)(["[1, 1, 3, 3]"], [sample]) == [0.0]


def test_qwen_box_tokens_and_unparsable_prediction():
    sample = bbox_sample("[0, 0, 2, 2]")
    responses = ["<|box_start|>(0,0),(2,2)<|box_end|>", "a red cube", ""]
    assert BoxIoU()(responses, [sample] * 3) == [pytest.approx(1.0), 0.0, 0.0]


def test_non_bbox_samples_score_zero_and_bad_gold_raises():
    other = {"answer": "red", "answer_type": "text", "uid": "t1"}
    assert BoxIoU()(["[0, 0, 2, 2]"], [other]) == [0.0]
    with pytest.raises(ValueError, match="uid='bad'"):
        BoxIoU()(["[0, 0, 2, 2]"], [bbox_sample("left", uid="bad")])


def test_one_float_per_response_and_knob_validation():
    sample = bbox_sample("[0, 0, 2, 2]")
    scores = BoxIoU()(["[0,0,2,2]"] * 5, [sample] * 5)
    assert len(scores) == 5
    assert all(isinstance(s, float) for s in scores)
    with pytest.raises(ValueError, match="responses"):
        BoxIoU()(["[0,0,2,2]"], [])
    with pytest.raises(ValueError, match="kind"):
        BoxIoU(kind="diou")
    with pytest.raises(ValueError, match="frame"):
        BoxIoU(frame="norm1")
