"""Qwen-VL pixel tensors: the processor's patch-row layout, and moving between it and images.

Layout of ``pixel_values`` (checked against transformers' ``Qwen2VLImageProcessor*.patchify``, which Qwen2-VL,
Qwen2.5-VL and Qwen3-VL all use, and against the vision tower's ``PatchEmbed``, which reads a row as
``view(-1, C, T, P, P)``):

* pixels are resized to multiples of ``P * merge``, rescaled to [0, 1], then normalised per channel,
  ``x = (pixel/255 - mean_c) / std_c``;
* one row is one P x P vision patch: ``C * T * P * P`` values in (channel, frame, y, x) order, where the
  T = ``temporal_patch_size`` frames of a still image are identical copies;
* rows are ordered (t, y_block, x_block, y_in_block, x_in_block): the ``merge x merge`` patches that the
  merger later fuses into one LLM token are adjacent rows, blocks are in raster order;
* images are concatenated in order, image i contributing ``prod(image_grid_thw[i])`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def unpatchify(
    pixel_values: Tensor, image_grid_thw: Tensor, patch_size: int, temporal_patch_size: int, merge_size: int
) -> list[Tensor]:
    """Turn processor rows back into images, exactly (a pure reshape/permute, no arithmetic).

    Args:
        pixel_values: [sum_i t_i*h_i*w_i, C*T*P*P] rows as the Qwen-VL image processor emits them.
        image_grid_thw: [num_images, 3] (t, h, w) patch grid of each image.
        patch_size: P, the vision patch side in pixels (14 for Qwen2/2.5-VL, 16 for Qwen3-VL).
        temporal_patch_size: T, frames per temporal patch (2; a still image is duplicated T times).
        merge_size: side of the patch block the merger fuses into one LLM token (2).

    Returns:
        One [C, t*T, h*P, w*P] tensor per image, in the processor's normalised units.
    """
    p, tp, m = patch_size, temporal_patch_size, merge_size
    channels = channels_of(pixel_values, p, tp)
    images, start = [], 0
    for t, h, w in image_grid_thw.tolist():
        rows = pixel_values[start : start + t * h * w]
        start += t * h * w
        x = rows.reshape(t, h // m, w // m, m, m, channels, tp, p, p)
        # (t, by, bx, my, mx, C, T, py, px) -> (C, t, T, by, my, py, bx, mx, px)
        images.append(x.permute(5, 0, 6, 1, 3, 7, 2, 4, 8).reshape(channels, t * tp, h * p, w * p))
    if start != pixel_values.shape[0]:
        raise ValueError(f"image_grid_thw covers {start} patch rows but pixel_values has {pixel_values.shape[0]}")
    return images


def patchify(
    images: Sequence[Tensor], patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`unpatchify`: [C, F, H, W] images -> (pixel_values, image_grid_thw).

    Args:
        images: [C, F, H, W] tensors with F a multiple of T and H, W multiples of ``patch_size * merge_size``.
        patch_size: P.
        temporal_patch_size: T.
        merge_size: merger block side.

    Returns:
        pixel_values [sum of patches, C*T*P*P] and image_grid_thw [num_images, 3] (int64, on the images' device).
    """
    p, tp, m = patch_size, temporal_patch_size, merge_size
    rows, grids = [], []
    for image in images:
        c, frames, height, width = image.shape
        if frames % tp or height % (p * m) or width % (p * m):
            raise ValueError(f"image of shape {tuple(image.shape)} does not tile into T={tp}, P*merge={p * m}")
        t, h, w = frames // tp, height // p, width // p
        x = image.reshape(c, t, tp, h // m, m, p, w // m, m, p)
        # (C, t, T, by, my, py, bx, mx, px) -> (t, by, bx, my, mx, C, T, py, px)
        rows.append(x.permute(1, 3, 6, 4, 7, 0, 2, 5, 8).reshape(t * h * w, c * tp * p * p))
        grids.append([t, h, w])
    device = images[0].device if len(images) else None
    return torch.cat(rows), torch.tensor(grids, dtype=torch.long, device=device)


def per_image_keys(images_per_seq: Tensor, sequence_keys: Tensor) -> Tensor:
    """Per-image keys from per-sequence keys, distinct for the different image slots of one sequence.

    ``key = sequence_key * S + slot`` with S the largest number of images per sequence. With
    ``sequence_keys = group_ids`` the j-th image of every response in a group shares one draw (the group's
    responses carry the same images), while image 0 and image 1 of a response get independent draws; with
    ``sequence_keys = arange(N)`` every image of every response is drawn independently.

    Args:
        images_per_seq: [N] images each sequence carries (``Rollout.images_per_seq``).
        sequence_keys: [N] non-negative integer key per sequence.

    Returns:
        [sum(images_per_seq)] int64 keys on CPU, in the order of the images in ``pixel_values``.
    """
    counts = images_per_seq.cpu().long()
    slots = max(int(counts.max()), 1) if counts.numel() else 1
    seq_of_image = torch.repeat_interleave(sequence_keys.cpu().long(), counts)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(int(counts.sum())) - torch.repeat_interleave(first, counts)
    return seq_of_image * slots + slot


def normalised_value(pixel: float, image_mean: Sequence[float], image_std: Sequence[float]) -> Tensor:
    """[C] float32: a grey level ``pixel`` in [0, 1] (before normalisation) in the processor's units."""
    mean = torch.tensor(image_mean, dtype=torch.float32)
    std = torch.tensor(image_std, dtype=torch.float32)
    return (pixel - mean) / std


def channels_of(pixel_values: Tensor, patch_size: int, temporal_patch_size: int) -> int:
    """C, the channels of a [rows, C*T*P*P] patch-row tensor; a clear error when the layout does not fit."""
    per_channel = temporal_patch_size * patch_size * patch_size
    if pixel_values.dim() != 2 or pixel_values.shape[1] % per_channel:
        raise ValueError(
            f"pixel_values {tuple(pixel_values.shape)} is not [rows, C*T*P*P] for T={temporal_patch_size}, "
            f"P={patch_size}; are patch_size/temporal_patch_size those of the processor?"
        )
    return pixel_values.shape[1] // per_channel
