"""Image perturbations applied to Qwen-VL pixel tensors, for VPPO's perturbed-image pass.

VPPO (Huang et al., "Spotlight on Token Perception for Multimodal Reinforcement Learning", arXiv 2510.09285)
re-scores each sampled response with a perturbed copy of its image I' and measures how much every token's
log-prob moves. The released code perturbs PIL images and re-runs the processor; here the perturbation works on
the processor's output directly, on the training device, so no image is decoded or re-encoded.

The pixel layout (rows of P x P patches, per image) and its helpers are in :mod:`vrl.models.pixels`.

Every perturbation has the call signature of :class:`Perturbation` and returns a new tensor of the same shape,
dtype and device. Randomness: ``image_keys`` decides which images share a draw. One base seed is taken from
``generator`` per call (so consecutive calls differ, and the same generator state repeats a call exactly); image
i is then drawn from a fresh stream seeded with ``base + image_keys[i]``. Images with equal keys and equal grids
therefore get identical perturbations, and an image's draw does not depend on which other images are in the
batch. Pass the sequence index as key for one draw per response (VPPO's released behaviour) or the group id for
one draw per prompt group; :func:`per_image_keys` builds keys that also keep different images of one sequence
apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from vrl.models.pixels import channels_of, normalised_value, patchify, per_image_keys, unpatchify

__all__ = ["normalised_value", "patchify", "per_image_keys", "unpatchify"]  # re-exported: the layout travels with them

#: Exclusive upper bound of the per-call base seed; leaves room for ``base + key`` below 2**63.
_BASE_SEED_HIGH = 2**62


class Perturbation(Protocol):
    """What the VPPO hook calls; every class in this module satisfies it."""

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor: ...


def _row_pattern(per_channel: Tensor, temporal_patch_size: int, patch_size: int, device: torch.device | str) -> Tensor:
    """[C] per-channel values spread over a row's [C*T*P*P] layout (channel-major)."""
    return per_channel.repeat_interleave(temporal_patch_size * patch_size * patch_size).to(device)


def _check(
    pixel_values: Tensor,
    image_grid_thw: Tensor,
    image_keys: Tensor,
    image_mean: Sequence[float],
    patch_size: int,
    temporal_patch_size: int,
) -> int:
    """Validate the call's arguments against each other; returns the channel count C."""
    if image_keys.shape != (image_grid_thw.shape[0],):
        raise ValueError(f"image_keys must be [num_images={image_grid_thw.shape[0]}], got {tuple(image_keys.shape)}")
    if int(image_grid_thw.prod(-1).sum()) != pixel_values.shape[0]:
        raise ValueError("image_grid_thw does not match the number of pixel_values rows")
    channels = channels_of(pixel_values, patch_size, temporal_patch_size)
    if len(image_mean) != channels:
        raise ValueError(f"{len(image_mean)} image_mean values for {channels}-channel pixel rows")
    return channels


def _keyed_draws(
    image_grid_thw: Tensor,
    image_keys: Tensor,
    generator: torch.Generator,
    device: torch.device,
    draw: Callable[[torch.Generator, int], Tensor],
) -> Tensor:
    """Concatenate ``draw(stream, rows)`` over images, one stream per image seeded with ``base + key``.

    ``generator`` advances by one value per call. Neighbouring seeds give unrelated streams in practice (the CPU
    Mersenne Twister spreads the seed through its initialiser, CUDA uses it as the Philox key); the CPU generator
    keeps only the low 32 bits of a seed (checked), so keys are distinct modulo 2**32.
    """
    base = int(torch.randint(0, _BASE_SEED_HIGH, (1,), generator=generator, device=generator.device))
    stream = torch.Generator(device=device)
    cache: dict[tuple[int, int, int, int], Tensor] = {}
    out = []
    for key, (t, h, w) in zip(image_keys.tolist(), image_grid_thw.tolist()):
        if key < 0:
            raise ValueError(f"image_keys must be non-negative, got {key}")
        if (key, t, h, w) not in cache:
            stream.manual_seed(base + int(key))
            cache[(key, t, h, w)] = draw(stream, t * h * w)
        out.append(cache[(key, t, h, w)])
    return torch.cat(out) if out else torch.empty(0, device=device)


# Perturbations -------------------------------------------------------------------------------------------------


class PatchBlackening:
    """Black out each vision patch independently with probability ``p`` (VPPO's perturbation).

    The released code resizes the image to the processor's pixel range, tiles it into 14-px squares (exactly
    the vision patches) and paints each one black with probability 0.5. A row of ``pixel_values`` is one such
    patch (both temporal frames), so here a row is replaced by pixel value 0 in every channel, i.e.
    ``(0 - mean_c) / std_c`` in normalised units. Rows that are kept are returned bit-identical.

    The keep/blacken draws (one uniform per row) come from CPU streams, so the pattern is the same on CPU and GPU.

    Args:
        p: probability that a patch is blackened, in [0, 1]; VPPO uses 0.5. 0 gives the identity and 1 the
            all-black image.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"perturb.p must be in [0, 1], got {p}")
        self.p = p

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor:
        _check(pixel_values, image_grid_thw, image_keys, image_mean, patch_size, temporal_patch_size)
        mask = _keyed_draws(
            image_grid_thw, image_keys, generator, torch.device("cpu"), lambda g, n: torch.rand(n, generator=g) < self.p
        ).to(pixel_values.device)
        black = _row_pattern(normalised_value(0.0, image_mean, image_std), temporal_patch_size, patch_size, mask.device)
        return torch.where(mask[:, None], black.to(pixel_values.dtype), pixel_values)


class GaussianNoise:
    """Add i.i.d. Gaussian noise in pixel space, then clip to valid pixels (an unused VPPO alternative).

    The noise has standard deviation ``std`` in 0-255 pixel units, i.e. ``std / 255 / std_c`` in normalised units
    of channel c, and is drawn per pixel and channel; the T frames of a patch get the same noise, as they would
    if a noisy still image were re-encoded. The result is clipped to the normalised images of pixel values 0 and
    1 per channel. Unlike noise added to a PIL image, nothing is rounded to 8 bits. The noise is drawn on the
    device of ``pixel_values`` (CPU and CUDA streams differ).

    Args:
        std: noise standard deviation in 0-255 pixel units; 189 is the value in the released code (at that
            level most pixels saturate at 0 or 255 after clipping).
        clip: clip to the valid pixel range; off only to inspect the raw noise.
    """

    def __init__(self, std: float = 189.0, clip: bool = True) -> None:
        if std < 0:
            raise ValueError(f"perturb.std must be >= 0, got {std}")
        self.std, self.clip = std, clip

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor:
        c = _check(pixel_values, image_grid_thw, image_keys, image_mean, patch_size, temporal_patch_size)
        p, tp, device = patch_size, temporal_patch_size, pixel_values.device

        def draw(g: torch.Generator, n: int) -> Tensor:
            return torch.randn(n, c, 1, p, p, generator=g, device=device)

        noise = _keyed_draws(image_grid_thw, image_keys, generator, device, draw)
        scale = (self.std / 255.0 / torch.tensor(image_std, dtype=torch.float32, device=device)).view(1, c, 1, 1, 1)
        x = pixel_values.float().reshape(-1, c, tp, p, p) + noise * scale
        x = x.reshape(pixel_values.shape)
        if self.clip:
            lo = _row_pattern(normalised_value(0.0, image_mean, image_std), tp, p, device)
            hi = _row_pattern(normalised_value(1.0, image_mean, image_std), tp, p, device)
            x = torch.maximum(torch.minimum(x, hi), lo)
        return x.to(pixel_values.dtype)


class GaussianBlur:
    """Blur each image with a Gaussian of standard deviation ``radius`` pixels (an unused VPPO alternative).

    The rows are turned back into images, each frame is blurred with a separable Gaussian kernel (truncated at
    3 sigma and renormalised) with replicate padding at the borders, and the result is patchified again. The blur
    runs on normalised values: normalisation is affine per channel and the kernel sums to one, so this equals
    blurring the pixels and normalising afterwards. Draws nothing (``generator`` and ``image_keys`` are unused).

    Differences to ``PIL.ImageFilter.GaussianBlur(radius)`` of the released code: PIL also reads ``radius`` as
    the standard deviation but approximates the Gaussian with three box blurs and rounds to 8 bits; here the kernel
    is a sampled Gaussian in float. Measured on a random 112x112 RGB image at radius 6: mean absolute difference
    0.6/255 (0.3 inside, 1.8 near the borders); PIL's impulse response has variance 28 px^2 against 35 here, as
    8-bit rounding drops its tails. PIL extends border pixels too (checked on a step edge). The blur acts at the
    resolution the model sees (after resizing); whether the released code blurred before or after its own resize
    was not checked, and a blur before a downscale is relatively weaker.

    Args:
        radius: Gaussian standard deviation in pixels of the resized image; 6 as in the released code.
    """

    def __init__(self, radius: float = 6.0) -> None:
        if radius <= 0:
            raise ValueError(f"perturb.radius must be > 0, got {radius}")
        self.radius = radius

    def kernel(self, device: torch.device | None = None) -> Tensor:
        """[2k+1] float32 1-D Gaussian taps with k = ceil(3 * radius), summing to one."""
        k = math.ceil(3.0 * self.radius)
        x = torch.arange(-k, k + 1, dtype=torch.float32, device=device)
        taps = torch.exp(-0.5 * (x / self.radius) ** 2)
        return taps / taps.sum()

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor:
        _check(pixel_values, image_grid_thw, image_keys, image_mean, patch_size, temporal_patch_size)
        taps = self.kernel(pixel_values.device)
        k = (taps.numel() - 1) // 2
        blurred = []
        for image in unpatchify(pixel_values.float(), image_grid_thw, patch_size, temporal_patch_size, merge_size):
            c, frames, h, w = image.shape
            x = image.reshape(c * frames, 1, h, w)
            x = F.conv2d(F.pad(x, (0, 0, k, k), mode="replicate"), taps.view(1, 1, -1, 1))
            x = F.conv2d(F.pad(x, (k, k, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
            blurred.append(x.reshape(c, frames, h, w))
        out, _ = patchify(blurred, patch_size, temporal_patch_size, merge_size)
        return out.to(pixel_values.dtype)


#: Named grey levels of ``FullMask``, before normalisation.
_MASK_LEVELS = {"black": 0.0, "grey": 0.5}


class FullMask:
    """Replace the whole image by one colour (an unused VPPO alternative: "full grey mask").

    Draws nothing. With ``value="mean"`` every value becomes 0 in normalised units, i.e. the normaliser's mean
    colour (for the CLIP statistics of Qwen2/2.5-VL a slightly blue grey, for Qwen3-VL pixel 0.5 grey).

    Args:
        value: ``"mean"`` (normalised 0), ``"black"`` (pixel 0), ``"grey"`` (pixel 0.5, i.e. 127.5/255), or a
            number in [0, 1] taken as a grey level before normalisation.
    """

    def __init__(self, value: str | float = "mean") -> None:
        if isinstance(value, str) and value not in ("mean", *_MASK_LEVELS):
            raise ValueError(f"perturb.value={value!r}; choose mean, black, grey or a level in [0, 1]")
        if not isinstance(value, str) and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"perturb.value must be in [0, 1] when numeric, got {value}")
        self.value = value

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor:
        _check(pixel_values, image_grid_thw, image_keys, image_mean, patch_size, temporal_patch_size)
        if self.value == "mean":
            return torch.zeros_like(pixel_values)
        level = _MASK_LEVELS[self.value] if isinstance(self.value, str) else float(self.value)
        row = _row_pattern(normalised_value(level, image_mean, image_std), temporal_patch_size, patch_size, "cpu")
        return row.to(pixel_values.device, pixel_values.dtype).expand_as(pixel_values).clone()


class NoPerturbation:
    """Identity (the "perturbation off" ablation): VPPO then measures zero visual dependency everywhere.

    Returns a copy, so a caller may modify the result without touching the rollout's pixels. Draws nothing.
    """

    def __call__(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        image_keys: Tensor,
        generator: torch.Generator,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
    ) -> Tensor:
        return pixel_values.clone()
