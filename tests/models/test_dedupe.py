"""Per-image work shared across a group's copies: same outputs and gradients, less vision-tower work."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from vrl.models.dedupe import distinct_images
from vrl.models.loading import load_vlm
from vrl.sampler.prompts import encode_prompts


def _rows():
    red, blue = Image.new("RGB", (112, 112), "red"), Image.new("RGB", (56, 112), "blue")
    # two prompts of different lengths (left padding differs) and image sizes; three copies each, as a group
    rows = [{"prompt": "What colour is the shape?", "images": [red]}, {"prompt": "Colour?", "images": [blue]}]
    return [r for r in rows for _ in range(3)]


def _inputs(vlm, rows):
    enc, _ = encode_prompts(vlm.processor, rows)
    return {k: v for k, v in enc.items() if k != "images_per_prompt"}


def _count_patches(model) -> list[int]:
    seen: list[int] = []
    visual = next(m for n, m in model.named_modules() if n.endswith("visual"))
    visual.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].shape[0]), with_kwargs=True)
    return seen


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_shared_work_gives_the_same_logits_and_gradients(family):
    shared = load_vlm(f"tiny:{family}", seed=3)
    plain = load_vlm(f"tiny:{family}", seed=3, share_repeated_work=False)
    inputs = _inputs(shared, _rows())
    patches = inputs["image_grid_thw"].prod(-1).tolist()  # red 112x112 -> 8x8 = 64 patches, blue 56x112 -> 4x8 = 32
    assert patches == [64] * 3 + [32] * 3
    seen_shared, seen_plain = _count_patches(shared.model), _count_patches(plain.model)
    outs = []
    for vlm in (shared, plain):
        vlm.model.zero_grad()
        logits = vlm.model(**inputs).logits
        (logits.float().pow(2).mean()).backward()
        grads = {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}
        outs.append((logits.detach(), grads))
    # the vision tower saw each distinct image once: 64 + 32 patches instead of 3 * 64 + 3 * 32 = 288
    assert seen_shared == [96] and seen_plain == [288]
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    assert outs[0][1].keys() == outs[1][1].keys() and any("visual" in n for n in outs[0][1])
    for name, g in outs[0][1].items():  # vision grads: the three copies' sum, added in another order
        torch.testing.assert_close(g, outs[1][1][name], rtol=1e-4, atol=1e-7, msg=name)


def test_rope_positions_equal_the_per_row_computation():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=0)
    inner = vlm.model.model
    inputs = _inputs(vlm, _rows())
    args = dict(
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    assert "get_rope_index" in vars(inner)  # the instance's wrapper, not the class's method
    pos, delta = inner.get_rope_index(inputs["input_ids"], **args)
    ref_pos, ref_delta = type(inner).get_rope_index(inner, inputs["input_ids"], **args)
    assert torch.equal(pos, ref_pos) and torch.equal(delta, ref_delta)
    assert pos.shape[1] == 6 and not torch.equal(pos[:, 0], pos[:, 3])  # two distinct layouts, not one copied


def test_distinct_images_merges_runs_of_equal_images_only():
    grid = torch.tensor([[1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]])  # four images of 4 patches each
    a, b = torch.zeros(4, 3), torch.ones(4, 3)
    unique, which = distinct_images(torch.cat([a, a, b, a]), grid)
    # a a -> one encoding; b differs; the last a is not adjacent to the first run, so it is encoded again
    assert unique == [0, 2, 3] and which == [0, 0, 1, 2]


def test_a_deep_copy_shares_work_on_its_own_weights():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=1)
    reference = copy.deepcopy(vlm.model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01)
    seen_ref, seen_policy = _count_patches(reference), _count_patches(vlm.model)
    inputs = _inputs(vlm, _rows())
    with torch.no_grad():
        a, b = reference(**inputs).logits, vlm.model(**inputs).logits
    assert seen_ref == [96] and seen_policy == [96]  # the copy's wrapper runs the copy's tower, not the original's
    assert not torch.allclose(a, b)


def test_off_for_families_it_does_not_know():
    from vrl.models.dedupe import share_repeated_work

    assert share_repeated_work(torch.nn.Linear(2, 2)) is False
