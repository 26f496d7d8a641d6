"""Do per-image work once per distinct image: the G sequences of a group share their prompt's image.

A GRPO batch repeats each prompt's image for its G sampled sequences, so, left alone, the vision tower
encodes the same pixels G times in ``generate``'s prefill, in the teacher-forced old-log-prob pass and in
every update forward; and transformers computes Qwen-VL's M-RoPE position ids in a Python loop over rows,
again G times over identical rows. The speed yardstick (``experiments/bench_vs_trl.py``, LOG 2026-11-25)
measured each as ~7% and ~3% of a small-batch step.

:func:`share_repeated_work` installs, **on one model instance** (never on the transformers class), two thin
wrappers around the inner ``Qwen2VLModel`` / ``Qwen2_5_VLModel``:

- ``get_image_features``: consecutive images with equal grids and equal pixels are encoded once and the
  features shared. The language model sees the same embeddings; in the backward pass the copies' gradients
  add up into the one encoding, which is the sum the G separate encodings produced (summed in another
  order, so equal up to float rounding, not bitwise). Perturbed images (VPPO) differ from each other and are
  encoded one by one, as before.
- ``get_rope_index``: position ids depend on a row's token types, attention mask and image grid, not on its
  token ids, so they are computed once per distinct (types, mask, grid) row and gathered back. Only for
  one image per row (the single-turn layout); any other layout takes the original path.

Both wrappers fall back to the original method whenever nothing repeats, so the only cost then is the
comparison (``torch.equal`` on pixels already in memory). Families other than Qwen2-VL / Qwen2.5-VL are left
alone (Qwen3-VL's image features carry deep-stack outputs that this sharing does not handle).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

#: Inner-model classes whose ``get_image_features`` / ``get_rope_index`` have the layout assumed here.
_SUPPORTED = ("Qwen2VLModel", "Qwen2_5_VLModel")


def share_repeated_work(model: nn.Module) -> bool:
    """Install the sharing wrappers on ``model``'s inner VL model (PEFT-wrapped or not).

    Returns:
        True when installed, False when the model has no supported inner module (then nothing changes).
    """
    inner = next((m for m in model.modules() if type(m).__name__ in _SUPPORTED), None)
    if inner is None:
        return False
    # Bound to the instance: ``copy.deepcopy`` (the frozen reference) rebinds them to the copy.
    inner.get_image_features = types.MethodType(_shared_image_features(type(inner).get_image_features), inner)
    inner.get_rope_index = types.MethodType(_shared_rope_index(type(inner).get_rope_index), inner)
    return True


def distinct_images(pixel_values: torch.Tensor, grid: torch.Tensor) -> tuple[list[int], list[int]]:
    """Which images repeat the one before them.

    Args:
        pixel_values: [sum of patches, D], the images' patches concatenated (the processor's layout).
        grid: [I, 3] (t, h, w) patches per image.

    Returns:
        ``(unique, which)``: indices of the images to encode, and for each of the I images the position in
        ``unique`` of the encoding it uses. Only runs of consecutive equal images are merged, which is how a
        group's copies are laid out; equal images far apart are encoded twice (correct, just not shared).
    """
    sizes = grid.prod(-1).tolist()
    chunks = torch.split(pixel_values, sizes)
    unique: list[int] = []
    which: list[int] = []
    for i, chunk in enumerate(chunks):
        j = unique[-1] if unique else -1
        if j < 0 or not (torch.equal(grid[j], grid[i]) and torch.equal(chunks[j], chunk)):
            unique.append(i)
        which.append(len(unique) - 1)
    return unique, which


def _shared_image_features(original):
    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs: Any):
        if image_grid_thw is None or image_grid_thw.shape[0] < 2:
            return original(self, pixel_values, image_grid_thw, **kwargs)
        unique, which = distinct_images(pixel_values, image_grid_thw)
        if len(unique) == len(which):
            return original(self, pixel_values, image_grid_thw, **kwargs)
        chunks = torch.split(pixel_values, image_grid_thw.prod(-1).tolist())
        out = original(self, torch.cat([chunks[i] for i in unique]), image_grid_thw[unique], **kwargs)
        feats = out.pooler_output  # one tensor per distinct image (the forward reads only these)
        out.pooler_output = tuple(feats[j] for j in which)
        return out

    return get_image_features


def _shared_rope_index(original):
    def get_rope_index(self, input_ids, mm_token_type_ids=None, image_grid_thw=None, **kwargs: Any):
        n = input_ids.shape[0]
        mask = kwargs.get("attention_mask")
        simple = (
            kwargs.get("video_grid_thw") is None
            and image_grid_thw is not None
            and mask is not None
            and mm_token_type_ids is not None
            and image_grid_thw.shape[0] == n
            and n > 1
        )
        if not simple:
            return original(
                self, input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, **kwargs
            )
        key = torch.cat([mm_token_type_ids.long(), mask.long(), image_grid_thw.long()], dim=1)
        distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
        if distinct.shape[0] == n:
            return original(
                self, input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, **kwargs
            )
        rows = torch.arange(n, device=inverse.device)
        first = torch.full((distinct.shape[0],), n, dtype=torch.long, device=inverse.device)
        first = first.scatter_reduce(0, inverse, rows, "amin")  # one representative row per distinct key
        sub = dict(kwargs, attention_mask=mask[first])
        pos, delta = original(
            self,
            input_ids[first],
            mm_token_type_ids=mm_token_type_ids[first],
            image_grid_thw=image_grid_thw[first],
            **sub,
        )
        return pos[:, inverse], delta[inverse]

    return get_rope_index
