"""Pixel-tensor perturbations for VPPO (vrl/methods/perturb.py): layout round trips against the real Qwen-VL
processor, and the statistics each perturbation promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vrl.methods.perturb import (
    FullMask,
    GaussianBlur,
    GaussianNoise,
    NoPerturbation,
    PatchBlackening,
    normalised_value,
    patchify,
    per_image_keys,
    unpatchify,
)
from vrl.models.tiny import build_processor, build_tiny_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def image_processor(tokenizer, family: str = "qwen2_5_vl", **kwargs):
    return build_processor(family, tokenizer, **kwargs).image_processor


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def synthetic(grids: list[list[int]], patch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised rows of random pixels in [0, 1] for the given grids (C=3, T=2, P=patch); T frames equal."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for t, h, w in grids:
        pixels = torch.rand(3, t, 1, h * patch, w * patch, generator=gen).expand(-1, -1, 2, -1, -1)
        pixels = pixels.reshape(3, 2 * t, h * patch, w * patch)
        images.append((pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1, 1))
    return patchify(images, patch, 2, 2)


def call(perturbation, pv, grid, keys=None, seed=0, patch=2, mean=CLIP_MEAN, std=CLIP_STD):
    keys = torch.arange(grid.shape[0]) if keys is None else torch.as_tensor(keys)
    return perturbation(pv, grid, keys, torch.Generator().manual_seed(seed), mean, std, patch, 2, 2)


# Layout -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_round_trip_is_bit_exact_on_processor_output(tokenizer, family):
    ip = image_processor(tokenizer, family)
    # 56x56 is one 2x2 block of merged patches at P=14 (no resize); 56x84 (H x W) is non-square; 70x100 is
    # resized by the processor; several sizes in one call exercise the concatenation.
    images = [random_image(56, 56, 0), random_image(56, 84, 1), random_image(70, 100, 2)]
    enc = ip(images=images, return_tensors="pt")
    pv, grid = enc["pixel_values"], enc["image_grid_thw"]
    p = ip.patch_size
    unpatched = unpatchify(pv, grid, p, 2, 2)
    assert [tuple(u.shape) for u in unpatched] == [(3, 2, h * p, w * p) for _, h, w in grid.tolist()]
    pv2, grid2 = patchify(unpatched, p, 2, 2)
    assert torch.equal(pv2, pv)  # bit-exact: both directions are pure reshapes/permutes
    assert torch.equal(grid2, grid)


def test_unpatchify_recovers_the_normalised_image_pixel_for_pixel(tokenizer):
    ip = image_processor(tokenizer)
    # Sizes the processor keeps (multiples of 28, >= min_pixels 3136), so no resampling gets in between and
    # the only arithmetic is (x/255 - mean)/std: unpatchify must put every value back where it came from.
    images = [random_image(56, 56, 3), random_image(56, 84, 4)]
    enc = ip(images=images, return_tensors="pt")
    for image, un in zip(images, unpatchify(enc["pixel_values"], enc["image_grid_thw"], 14, 2, 2)):
        pixels = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
        expected = (pixels - torch.tensor(ip.image_mean).view(3, 1, 1)) / torch.tensor(ip.image_std).view(3, 1, 1)
        torch.testing.assert_close(un[:, 0], expected)  # frame 0 is the image (H=56, W=84 checks orientation)
        assert torch.equal(un[:, 0], un[:, 1])  # a still image is duplicated over the T=2 frames


def test_per_image_keys_separate_slots_and_share_groups():
    # 3 sequences with 2, 1, 2 images; S = 2 slots: key = seq_key * 2 + slot.
    keys = per_image_keys(torch.tensor([2, 1, 2]), torch.tensor([0, 0, 1]))
    assert keys.tolist() == [0, 1, 0, 2, 3]


# Patch blackening --------------------------------------------------------------------------------------------


def test_patch_blackening_fraction_and_values():
    pv, grid = synthetic([[1, 20, 20]] * 20)  # 20 * 400 = 8000 rows
    out = call(PatchBlackening(0.5), pv, grid)
    black = normalised_value(0.0, CLIP_MEAN, CLIP_STD).repeat_interleave(2 * 2 * 2)
    changed = (out != pv).any(-1)
    # Binomial(8000, 0.5): sd of the fraction = 0.5 / sqrt(8000) = 0.0056; |f - 0.5| < 0.03 is 5.4 sd
    # (two-sided chance of a false failure ~ 7e-8 for a random seed).
    assert abs(changed.float().mean().item() - 0.5) < 0.03
    assert torch.equal(out[changed], black.expand(int(changed.sum()), -1))  # exactly pixel 0 in every channel
    assert torch.equal(out[~changed], pv[~changed])  # kept rows are bit-identical
    assert out.shape == pv.shape and out.dtype == pv.dtype


def test_patch_blackening_black_is_the_processors_black(tokenizer):
    ip = image_processor(tokenizer)
    pv = ip(images=[random_image(56, 84, 5)], return_tensors="pt")
    black = ip(images=[Image.new("RGB", (84, 56))], return_tensors="pt")["pixel_values"]
    out = PatchBlackening(1.0)(
        pv["pixel_values"], pv["image_grid_thw"], torch.zeros(1, dtype=torch.long), torch.Generator(),
        ip.image_mean, ip.image_std, 14, 2, 2,
    )  # fmt: skip
    torch.testing.assert_close(out, black)


def test_equal_keys_share_masks_and_different_keys_do_not():
    pv, grid = synthetic([[1, 8, 8]] * 4, seed=1)
    out = call(PatchBlackening(0.5), pv, grid, keys=[3, 3, 7, 7])
    masks = (out != pv).any(-1).view(4, 64)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[2], masks[3])
    assert not torch.equal(masks[0], masks[2])  # equal by chance with probability 2**-64


def test_equal_keys_share_noise_too():
    pv, grid = synthetic([[1, 8, 8]] * 3, seed=1)
    noise = (call(GaussianNoise(50.0, clip=False), pv, grid, keys=[2, 2, 4]) - pv).view(3, 64, -1)
    torch.testing.assert_close(noise[0], noise[1])  # same draw; only float rounding of x + n - x differs
    assert (noise[0] - noise[2]).abs().mean() > 0.1  # independent draws differ by ~1.1 * 50/255/0.27 = 0.8


def test_draw_depends_on_key_not_on_batch_company():
    pv, grid = synthetic([[1, 4, 6], [1, 8, 8], [1, 6, 4]], seed=2)
    together = call(PatchBlackening(0.5), pv, grid, keys=[0, 5, 9], seed=11)
    alone = call(PatchBlackening(0.5), pv[24:88], grid[1:2], keys=[5], seed=11)
    assert torch.equal(together[24:88], alone)


def test_same_generator_state_repeats_and_next_call_differs():
    pv, grid = synthetic([[1, 8, 8]] * 3, seed=3)
    a = call(PatchBlackening(0.5), pv, grid, seed=4)
    assert torch.equal(a, call(PatchBlackening(0.5), pv, grid, seed=4))
    gen = torch.Generator().manual_seed(4)
    keys = torch.arange(3)
    first = PatchBlackening(0.5)(pv, grid, keys, gen, CLIP_MEAN, CLIP_STD, 2, 2, 2)
    second = PatchBlackening(0.5)(pv, grid, keys, gen, CLIP_MEAN, CLIP_STD, 2, 2, 2)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advanced


# Gaussian noise ----------------------------------------------------------------------------------------------


def test_noise_std_in_pixel_units():
    pv, grid = synthetic([[1, 32, 32]] * 8, seed=5)  # 8192 rows * 3 channels * 2*2 pixels = 98304 draws
    out = call(GaussianNoise(189.0, clip=False), pv, grid)
    frames = ((out - pv).view(-1, 3, 2, 2, 2) * torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1)) * 255
    assert torch.equal(frames[:, :, 0], frames[:, :, 1])  # both frames of a still image get the same noise
    noise = frames[:, :, 0]  # [rows, C, P, P] in 0-255 pixel units
    # Per channel n = 32768: sd(sample std) = 189 / sqrt(2n) = 0.74, so +-4 is 5.4 sd;
    # sd(sample mean) = 189 / sqrt(n) = 1.04, so +-6 is 5.8 sd.
    for c in range(3):
        assert abs(noise[:, c].std().item() - 189.0) < 4.0
        assert abs(noise[:, c].mean().item()) < 6.0


def test_noise_is_clipped_to_valid_pixels():
    pv, grid = synthetic([[1, 16, 16]] * 2, seed=6)
    out = call(GaussianNoise(189.0), pv, grid)
    lo = normalised_value(0.0, CLIP_MEAN, CLIP_STD).view(1, 3, 1)
    hi = normalised_value(1.0, CLIP_MEAN, CLIP_STD).view(1, 3, 1)
    x = out.view(-1, 3, 8)
    assert bool(((x >= lo) & (x <= hi)).all())
    # A pixel v in [0, 255] leaves the range with probability P(Z < -v/189) + P(Z > (255-v)/189), smallest at
    # v = 127.5: 2 * P(Z > 0.675) = 0.50. So >= ~50% of values must sit exactly on a bound; with 6144 independent
    # draws (sd of the share <= 0.0064) a share below 0.45 would be an 8-sd event.
    assert ((x == lo) | (x == hi)).float().mean() > 0.45


# Gaussian blur -----------------------------------------------------------------------------------------------


def test_blur_keeps_a_constant_image_constant():
    level = torch.tensor([0.2, 0.5, 0.9])  # a different pixel level per channel
    value = (level - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    pv, grid = patchify([value.view(3, 1, 1, 1).expand(3, 2, 28, 44).contiguous()], 2, 2, 2)
    out = call(GaussianBlur(6.0), pv, grid)
    torch.testing.assert_close(out, pv)  # taps sum to 1 and replicate padding adds no other value


def test_blur_flattens_a_checkerboard():
    y, x = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    board = ((y // 2 + x // 2) % 2).float().view(1, 1, 32, 48).expand(3, 2, -1, -1).contiguous()
    pv, grid = patchify([board], 2, 2, 2)
    out = call(GaussianBlur(6.0), pv, grid)
    # The board's fundamental has period 4 px; a Gaussian with sigma 6 passes exp(-2 pi^2 6^2 / 4^2) ~ 1e-19 of
    # it. Only the replicate-padded borders leave a little structure (measured: 0.0006), so the variance must drop
    # by more than 100x from its start of 0.25.
    assert out.var().item() < 0.25 / 100
    torch.testing.assert_close(out.mean(), pv.mean(), rtol=0, atol=0.02)


def test_blur_radius_is_the_standard_deviation():
    impulse = torch.zeros(3, 2, 64, 64)
    impulse[:, :, 32, 32] = 1.0
    pv, grid = patchify([impulse], 2, 2, 2)
    out = unpatchify(call(GaussianBlur(6.0), pv, grid), grid, 2, 2, 2)[0][0, 0]
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))  # the whole kernel (+-18 px) fits inside
    offsets = torch.arange(64.0) - 32
    # A Gaussian truncated at 3 sigma keeps 97.3% of sigma^2 = 36, i.e. 35.0 (35.2 for the integer taps); both
    # passes (rows, then columns) must apply it.
    for marginal in (out.sum(0), out.sum(1)):
        assert 34.5 < (marginal * offsets**2).sum().item() < 36.0


def test_blur_does_not_mix_images():
    pv, grid = synthetic([[1, 8, 8], [1, 4, 6]], seed=7)
    both = call(GaussianBlur(3.0), pv, grid)
    torch.testing.assert_close(both[:64], call(GaussianBlur(3.0), pv[:64], grid[:1]))
    torch.testing.assert_close(both[64:], call(GaussianBlur(3.0), pv[64:], grid[1:]))


# Full mask and identity --------------------------------------------------------------------------------------


def test_full_mask_values():
    pv, grid = synthetic([[1, 4, 4], [1, 4, 6]], seed=8)
    assert torch.equal(call(FullMask("mean"), pv, grid), torch.zeros_like(pv))
    black = call(FullMask("black"), pv, grid)
    assert torch.equal(black, call(PatchBlackening(1.0), pv, grid))
    grey = call(FullMask("grey"), pv, grid).view(-1, 3, 8)
    expected = ((0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1).expand_as(grey)
    torch.testing.assert_close(grey, expected)


def test_identity_returns_a_copy():
    pv, grid = synthetic([[1, 4, 4]], seed=9)
    out = call(NoPerturbation(), pv, grid)
    assert torch.equal(out, pv) and out.data_ptr() != pv.data_ptr()


@pytest.mark.parametrize(
    "perturbation",
    [PatchBlackening(), GaussianNoise(), GaussianBlur(), FullMask(), FullMask("grey"), NoPerturbation()],
    ids=lambda p: type(p).__name__,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_dtype_device_preserved(perturbation, dtype):
    pv, grid = synthetic([[1, 4, 4], [1, 6, 4]], seed=10)
    out = call(perturbation, pv.to(dtype), grid)
    assert out.shape == pv.shape and out.dtype == dtype and out.device == pv.device


def test_bad_arguments_are_rejected():
    pv, grid = synthetic([[1, 4, 4]])
    with pytest.raises(ValueError, match="p must be in"):
        PatchBlackening(1.5)
    with pytest.raises(ValueError, match="image_keys"):
        call(PatchBlackening(), pv, grid, keys=[0, 1])
    with pytest.raises(ValueError, match="C\\*T\\*P\\*P"):
        call(PatchBlackening(), pv, grid, patch=3)
    with pytest.raises(ValueError, match="value"):
        FullMask("white")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "perturbation",
    [PatchBlackening(), GaussianNoise(), GaussianBlur(), FullMask("grey"), NoPerturbation()],
    ids=lambda p: type(p).__name__,
)
def test_cuda_tensors_with_cpu_keys_and_generator(perturbation):
    # As the VPPO hook calls it: pixels on the GPU, keys and generator on the CPU.
    pv, grid = synthetic([[1, 8, 8], [1, 4, 6]], seed=12)
    out = call(perturbation, pv.cuda(), grid.cuda())
    assert out.device.type == "cuda" and out.shape == pv.shape
    if not isinstance(perturbation, GaussianNoise):  # noise is drawn on the pixels' device; the rest match CPU
        torch.testing.assert_close(out.cpu(), call(perturbation, pv, grid))
