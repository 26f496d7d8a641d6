import torch

from vrl.types import Rollout, slice_vision


def _rollout():
    # 3 sequences; seq 0 has 1 image (2x2 grid = 4 patches), seq 1 none, seq 2 two images (1x2 = 2, 1x1 = 1)
    grid = torch.tensor([[1, 2, 2], [1, 1, 2], [1, 1, 1]])
    pixels = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 3)  # row k holds value k
    return Rollout(
        input_ids=torch.arange(15).view(3, 5),
        attention_mask=torch.ones(3, 5, dtype=torch.long),
        response_mask=torch.ones(3, 2),
        pixel_values=pixels,
        image_grid_thw=grid,
        images_per_seq=torch.tensor([1, 0, 2]),
        group_ids=torch.tensor([0, 0, 1]),
        samples=[{"uid": "a"}, {"uid": "b"}, {"uid": "c"}],
        responses=["x", "y", "z"],
        rewards=torch.tensor([1.0, 2.0, 3.0]),
        reward_components={"accuracy": torch.tensor([1.0, 0.0, 1.0])},
    )


def test_slice_vision_picks_each_sequences_patches():
    r = _rollout()
    pixels, grid = slice_vision(r.pixel_values, r.image_grid_thw, r.images_per_seq, torch.tensor([2, 0]))
    # seq 2 owns patch rows 4,5 (image 1) and 6 (image 2); seq 0 owns rows 0..3
    assert pixels[:, 0].tolist() == [4.0, 5.0, 6.0, 0.0, 1.0, 2.0, 3.0]
    assert grid.tolist() == [[1, 1, 2], [1, 1, 1], [1, 2, 2]]


def test_select_slices_every_per_sequence_field():
    r = _rollout().select(torch.tensor([2, 1]))
    assert r.input_ids[:, 0].tolist() == [10, 5]
    assert r.samples == [{"uid": "c"}, {"uid": "b"}]
    assert r.responses == ["z", "y"]
    assert r.rewards.tolist() == [3.0, 2.0]
    assert r.reward_components["accuracy"].tolist() == [1.0, 0.0]
    assert r.images_per_seq.tolist() == [2, 0]
    assert r.pixel_values.shape[0] == 3  # only seq 2's three patch rows
    assert r.prompt_width == 3


def test_cat_rollouts_repads_prompts_left_and_responses_right():
    from vrl.types import cat_rollouts

    a = Rollout(
        input_ids=torch.tensor([[7, 8, 9]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
        response_mask=torch.ones(1, 1), pixel_values=None, image_grid_thw=None,
        images_per_seq=torch.tensor([0]), group_ids=torch.tensor([0]), samples=[{}], responses=["a"],
        rewards=torch.tensor([1.0]), old_logprobs=torch.tensor([[-1.0]]),
    )  # fmt: skip  # P=2, L=1
    b = Rollout(
        input_ids=torch.tensor([[5, 6, 1, 2]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
        response_mask=torch.ones(1, 3), pixel_values=None, image_grid_thw=None,
        images_per_seq=torch.tensor([0]), group_ids=torch.tensor([0]), samples=[{}], responses=["b"],
        rewards=torch.tensor([0.0]), old_logprobs=torch.tensor([[-1.0, -2.0, -3.0]]),
    )  # fmt: skip  # P=1, L=3
    c = cat_rollouts([a, b], pad_id=0)
    # P = max(2, 1) = 2, L = max(1, 3) = 3
    assert c.input_ids.tolist() == [[7, 8, 9, 0, 0], [0, 5, 6, 1, 2]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert c.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert c.old_logprobs.tolist() == [[-1.0, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    assert c.group_ids.tolist() == [0, 1]  # second call's group 0 becomes 1
    assert c.prompt_width == 2
