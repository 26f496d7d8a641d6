"""Cropping a normalised box out of an image (VisRL's box -> crop step, pair rows with crops)."""

from __future__ import annotations

from PIL import Image


def crop(image: Image.Image, box: list[float] | None, min_side: int = 56) -> Image.Image:
    """The box's region (normalised coordinates), scaled up so its short side is >= ``min_side`` pixels (the
    processor's smallest patch grid); the whole image when there is no box."""
    image = image.convert("RGB")
    if box is None:
        return image
    w, h = image.size
    region = image.crop(
        (
            int(box[0] * w),
            int(box[1] * h),
            max(int(box[2] * w), int(box[0] * w) + 1),
            max(int(box[3] * h), int(box[1] * h) + 1),
        )
    )
    scale = max(1.0, min_side / min(region.size))
    return region.resize((round(region.size[0] * scale), round(region.size[1] * scale)), Image.BILINEAR)
