"""Rows -> chat messages -> processor tensors. Shared by rollout, preflight and evaluation."""

from __future__ import annotations

from typing import Any

import torch

IMAGE_PLACEHOLDER = "<image>"


def to_messages(sample: dict, system_prompt: str | None = None, prompt_suffix: str = "") -> list[dict]:
    """Chat messages for one row; each ``<image>`` placeholder becomes an image content item in place.

    A row without placeholders but with images gets its images before the text (the RLVR convention).

    Raises:
        ValueError: placeholder count differs from the number of images (names the row's uid).
    """
    text = str(sample["prompt"]) + prompt_suffix
    images = sample.get("images") or []
    parts = text.split(IMAGE_PLACEHOLDER)
    n_placeholders = len(parts) - 1
    if n_placeholders == 0 and images:
        parts = [""] * len(images) + [text]
        n_placeholders = len(images)
    if n_placeholders != len(images):
        raise ValueError(
            f"row uid={sample.get('uid')!r}: prompt has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders "
            f"but {len(images)} images"
        )
    content: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if part.strip():
            content.append({"type": "text", "text": part.strip("\n")})
        if i < n_placeholders:
            content.append({"type": "image"})
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages


def encode_prompts(
    processor, samples: list[dict], system_prompt: str | None = None, prompt_suffix: str = ""
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenise B rows with their images (left padding).

    Returns:
        the processor's tensors (input_ids, attention_mask, pixel_values, image_grid_thw) and
        images_per_prompt [B].
    """
    texts = [
        processor.apply_chat_template(
            to_messages(s, system_prompt, prompt_suffix), tokenize=False, add_generation_prompt=True
        )
        for s in samples
    ]
    images = [img.convert("RGB") for s in samples for img in (s.get("images") or [])]
    counts = torch.tensor([len(s.get("images") or []) for s in samples], dtype=torch.long)
    kwargs = {"images": images} if images else {}
    enc = processor(text=texts, return_tensors="pt", padding=True, **kwargs)
    return dict(enc), counts


def model_image_sizes(image_grid_thw: torch.Tensor, patch_size: int) -> list[list[int]]:
    """[w, h] of each image in the processor's resized frame (grid cells * patch size)."""
    return [[int(w) * patch_size, int(h) * patch_size] for _, h, w in image_grid_thw.tolist()]
