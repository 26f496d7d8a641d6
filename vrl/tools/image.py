"""The built-in image tools: crop/zoom (DeepEyes, ERGO, VisRL), VACoT's augmentations, GeoViS' window split.

Each is one class with its knobs as constructor arguments and one ``conf/tool/<name>.yaml``. Every output is
a pure function of the call and the image state (no randomness), so a trajectory replays exactly.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageEnhance, ImageFilter

from vrl.tools.base import ImageState, Tool, ToolError, ToolResult, box_arg, pixel_box, to_original, zoom_size


class Crop(Tool):
    """Crop a region of an image and show it enlarged (``{"bbox_2d": [x1, y1, x2, y2], "image": k}``).

    The box is in the frame the model saw (the processor's smart-resized image k; default the first, the
    prompt's overview), mapped back to the original pixels, cut from the **original** (so zooming recovers
    detail the overview lost), grown to ``min_side`` px a side, then enlarged to at most ``zoom_pixels`` pixels
    (at most ``max_upscale`` x); the processor re-resizes it within its pixel budget like any prompt image.

    Args:
        min_side: smallest crop side in original pixels (28 = one merged Qwen patch, DeepEyes' minimum).
        zoom_pixels: target area of the enlarged crop; null = as cut (the processor may still upscale it to
            its ``min_pixels``). Set it to the model's ``max_pixels`` to spend the whole budget on the region.
        max_upscale: cap on the enlargement factor (blurry 10x zooms add tokens, not information).
        normalized: 0 = absolute coordinates in the model's frame (Qwen2.5-VL); 1000 = Qwen2-VL's 0-1000 scale.
        image: default source image index (0 = the prompt's first image).
    """

    description = 'zoom into a region: {"bbox_2d": [x1, y1, x2, y2]} in the image\'s pixel coordinates'

    def __init__(
        self,
        min_side: int = 28,
        zoom_pixels: int | None = None,
        max_upscale: float = 4.0,
        normalized: float = 0,
        image: int = 0,
    ) -> None:
        if min_side < 1 or max_upscale < 1:
            raise ValueError(f"tool crop: min_side >= 1 and max_upscale >= 1 needed, got {min_side}, {max_upscale}")
        self.min_side, self.zoom_pixels, self.max_upscale = min_side, zoom_pixels, max_upscale
        self.normalized, self.image = normalized, image

    def __call__(self, state: ImageState, args: dict[str, Any]) -> ToolResult:
        k = state.pick(args, self.image)
        src = state.images[k]
        box = to_original(box_arg(args), state.frames[k], src.size, self.normalized)
        x1, y1, x2, y2 = pixel_box(box, src.size, self.min_side)
        crop = src.crop((x1, y1, x2, y2))
        size = zoom_size(crop.size, self.zoom_pixels, self.max_upscale)
        if size != crop.size:
            crop = crop.resize(size, Image.BICUBIC)
        return ToolResult(images=[crop], box=[x1, y1, x2, y2], source=k)


class _Augment(Tool):
    """One whole-image operation on image k (default: the latest), returned as a new image (VACoT)."""

    def __init__(self, image: int = -1) -> None:
        self.image = image

    def __call__(self, state: ImageState, args: dict[str, Any]) -> ToolResult:
        k = state.pick(args, self.image)
        return ToolResult(images=[self.apply(state.images[k].convert("RGB"), args)], source=k)

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError


class Rotate(_Augment):
    """Rotate counter-clockwise by ``{"angle": 90 | 180 | 270}`` (lossless: a transpose, no resampling)."""

    description = 'rotate the image: {"angle": 90 | 180 | 270} degrees counter-clockwise'
    _OPS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:
        angle = args.get("angle")
        if angle not in self._OPS or isinstance(angle, bool):
            raise ToolError(f"angle must be 90, 180 or 270, got {angle!r}")
        return image.transpose(self._OPS[angle])


class Flip(_Augment):
    """Mirror ``{"direction": "horizontal" | "vertical"}``."""

    description = 'mirror the image: {"direction": "horizontal" | "vertical"}'
    _OPS = {"horizontal": Image.Transpose.FLIP_LEFT_RIGHT, "vertical": Image.Transpose.FLIP_TOP_BOTTOM}

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:
        direction = args.get("direction")
        if direction not in self._OPS:
            raise ToolError(f'direction must be "horizontal" or "vertical", got {direction!r}')
        return image.transpose(self._OPS[direction])


class Contrast(_Augment):
    """Scale contrast about the mean grey level (PIL ``ImageEnhance.Contrast``) by ``{"factor": f}``.

    Args:
        default: factor when the call gives none; ``lo``/``hi`` bound what a call may ask for.
    """

    description = 'change the contrast: {"factor": f} (2 doubles it)'

    def __init__(self, default: float = 2.0, lo: float = 0.25, hi: float = 4.0, image: int = -1) -> None:
        super().__init__(image)
        self.default, self.lo, self.hi = default, lo, hi

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:
        f = args.get("factor", self.default)
        if isinstance(f, bool) or not isinstance(f, int | float) or not self.lo <= f <= self.hi:
            raise ToolError(f"factor must be a number in [{self.lo}, {self.hi}], got {f!r}")
        return ImageEnhance.Contrast(image).enhance(float(f))


class Denoise(_Augment):
    """Median filter of ``size`` x ``size`` pixels (removes salt-and-pepper noise; no arguments)."""

    description = "remove noise: {} (median filter)"

    def __init__(self, size: int = 3, image: int = -1) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"tool denoise: size must be odd and >= 3, got {size}")
        super().__init__(image)
        self.size = size

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:
        return image.filter(ImageFilter.MedianFilter(self.size))


class Sharpen(_Augment):
    """Sharpen by ``factor`` (PIL ``ImageEnhance.Sharpness``: 1 = unchanged, 2 = sharper; no arguments)."""

    description = "sharpen the image: {}"

    def __init__(self, factor: float = 2.0, image: int = -1) -> None:
        super().__init__(image)
        self.factor = factor

    def apply(self, image: Image.Image, args: dict[str, Any]) -> Image.Image:
        return ImageEnhance.Sharpness(image).enhance(self.factor)


class SplitWindows(Tool):
    """Cut image k into a ``rows`` x ``cols`` grid of windows and show them all (GeoViS' expand action).

    The observation text lists each window's box in the source image's model frame, so the policy can
    crop one window next (a tree search over regions). Windows are cut from the original pixels.

    Args:
        rows, cols: the grid (GeoViS: quadrants, 2 x 2).
        image: default source image index (-1: the latest, i.e. the window being refined).
    """

    description = 'split the image into windows: {"image": k}; then crop the window you want'

    def __init__(self, rows: int = 2, cols: int = 2, image: int = -1) -> None:
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ValueError(f"tool split: rows x cols must be >= 2 windows, got {rows} x {cols}")
        self.rows, self.cols, self.image = rows, cols, image

    def __call__(self, state: ImageState, args: dict[str, Any]) -> ToolResult:
        k = state.pick(args, self.image)
        src, (fw, fh) = state.images[k], state.frames[k]
        w, h = src.size
        images, lines = [], []
        for r in range(self.rows):
            for c in range(self.cols):
                frame_box = [
                    fw * c // self.cols,
                    fh * r // self.rows,
                    fw * (c + 1) // self.cols,
                    fh * (r + 1) // self.rows,
                ]
                orig = (w * c // self.cols, h * r // self.rows, w * (c + 1) // self.cols, h * (r + 1) // self.rows)
                images.append(src.crop(orig))
                lines.append(f"window {len(images)}: {frame_box}")
        return ToolResult(images=images, text="\n".join(lines), box=[0, 0, w, h], source=k)
