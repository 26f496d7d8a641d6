"""GeoViS-style region search before grounding (``+method=geovis``): a best-first tree search over image windows.

GeoViS (arXiv 2512.02715) recasts grounding of tiny targets as a reward-guided search over sub-regions, then
grounds inside the chosen region and maps the box back to global coordinates. Its search, scorer and constants
are unpublished [NF]; ours (shared/methods/others.md §8 skeleton): a node is a window of the original image; its
children are the ``split`` x ``split`` grid of it, each grown by ``overlap`` of its side; a region scorer rates
every child; the best-scored unexpanded node is expanded next, to ``depth`` levels and ``budget`` scored nodes.
The chosen window is the best-scored node, ties to the deeper (smaller) one. The policy then sees the full image
and the chosen window, enlarged, and answers a box in the window's frame, which ``WindowIoU`` maps back.

A scorer is any ``scorer(sample, image, windows) -> list[float]``: ``OracleCoverage`` (the fraction of the row's
annotated target inside each window) stands in for GeoViS' VisualRAG model, which needs a served judge.
"""

from __future__ import annotations

import heapq
import json
from typing import Any

from PIL import Image

from vrl.rewards.extract import AnswerExtractor, parse_box
from vrl.rewards.iou import box_iou
from vrl.rewards.tools import cover
from vrl.sampler.hf import HFSampler
from vrl.tools.base import zoom_size
from vrl.types import Rollout

Box = tuple[int, int, int, int]


def children(window: Box, split: int, overlap: float, size: tuple[int, int]) -> list[Box]:
    """The ``split`` x ``split`` grid of ``window``, each cell grown by ``overlap`` x its side on every edge and
    clipped to the image (raster order)."""
    x1, y1, x2, y2 = window
    out = []
    for r in range(split):
        for c in range(split):
            cx1, cx2 = x1 + (x2 - x1) * c // split, x1 + (x2 - x1) * (c + 1) // split
            cy1, cy2 = y1 + (y2 - y1) * r // split, y1 + (y2 - y1) * (r + 1) // split
            gx, gy = round((cx2 - cx1) * overlap), round((cy2 - cy1) * overlap)
            out.append((max(0, cx1 - gx), max(0, cy1 - gy), min(size[0], cx2 + gx), min(size[1], cy2 + gy)))
    return out


def best_first(size: tuple[int, int], score, split: int = 2, overlap: float = 0.25, depth: int = 3, budget: int = 16):
    """Best-first search from the whole image. ``score(windows) -> list[float]``.

    Returns:
        (chosen window, number of scored nodes, depth of the chosen window).
    """
    root: Box = (0, 0, size[0], size[1])
    best = (float(score([root])[0]), 0, root)
    frontier = [(-best[0], 0, 0, root)]  # (-score, depth, tie-break counter, window)
    scored, counter = 1, 0
    while frontier and scored < budget:
        _, d, _, node = heapq.heappop(frontier)
        if d >= depth:
            continue
        kids = children(node, split, overlap, size)[: budget - scored]
        for kid, s in zip(kids, score(kids)):
            counter += 1
            scored += 1
            heapq.heappush(frontier, (-float(s), d + 1, counter, kid))
            if (float(s), d + 1) > best[:2]:
                best = (float(s), d + 1, kid)
    return best[2], scored, best[1]


class OracleCoverage:
    """Window score = the fraction of the row's annotated target (``meta[key]``, original pixels) inside it."""

    def __init__(self, key: str = "detail_box") -> None:
        self.key = key

    def __call__(self, sample: dict, image: Image.Image, windows: list[Box]) -> list[float]:
        meta = sample.get("meta") or {}
        target = (json.loads(meta) if isinstance(meta, str) else meta).get(self.key)
        if target is None:
            raise ValueError(f"row uid={sample.get('uid')!r}: meta has no {self.key!r} for the oracle region scorer")
        return [cover(target, list(w)) for w in windows]


class WindowSearchSampler(HFSampler):
    """Searches each prompt's image for the target's window, then samples G answers from [image, window crop].

    Args:
        scorer: the region scorer (``OracleCoverage`` or any callable of that signature).
        split, overlap, depth, budget: the tree (children per node, their overlap, levels, scored nodes).
        zoom_pixels, max_upscale: the window crop is enlarged to at most this many pixels (as the crop tool).
        window_prompt: appended to the question, with the ``<image>`` placeholder of the window crop.
        **kwargs: ``HFSampler``'s knobs.
    """

    def __init__(
        self,
        scorer: Any = None,
        split: int = 2,
        overlap: float = 0.25,
        depth: int = 3,
        budget: int = 16,
        zoom_pixels: int | None = None,
        max_upscale: float = 4.0,
        window_prompt: str = "\nThe search zoomed into this region: <image>",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if split < 2 or depth < 1 or budget < 1 + split * split or not 0 <= overlap < 0.5:
            raise ValueError(
                "sampler: split >= 2, depth >= 1, budget >= 1 + split^2 and 0 <= overlap < 0.5 needed, got "
                f"{split}, {depth}, {budget}, {overlap}"
            )
        self.scorer = scorer or OracleCoverage()
        self.split, self.overlap, self.depth, self.budget = split, overlap, depth, budget
        self.zoom_pixels, self.max_upscale, self.window_prompt = zoom_pixels, max_upscale, window_prompt
        self._stats: dict[str, float] = {}

    def generate(self, vlm, samples: list[dict], group_size: int | None = None, greedy: bool = False) -> Rollout:
        rows = []
        for s in samples:
            image = s["images"][0].convert("RGB")
            window, nodes, depth = best_first(
                image.size, lambda ws, s=s, im=image: self.scorer(s, im, ws), self.split, self.overlap, self.depth,
                self.budget,
            )  # fmt: skip
            crop = image.crop(window)
            size = zoom_size(crop.size, self.zoom_pixels, self.max_upscale)
            crop = crop.resize(size, Image.BICUBIC) if size != crop.size else crop
            prompt = s["prompt"] if "<image>" in s["prompt"] else "<image>\n" + s["prompt"]
            rows.append(
                {**s, "images": [image, crop], "prompt": prompt + self.window_prompt, "search_window": list(window)}
            )
            if not greedy:
                for k, v in {"nodes": nodes, "depth": depth, "n": 1}.items():
                    self._stats[k] = self._stats.get(k, 0) + v
        return super().generate(vlm, rows, group_size, greedy)

    def pop_stats(self) -> dict[str, float]:
        s, self._stats = self._stats, {}
        return {"search/nodes_mean": s["nodes"] / s["n"], "search/depth_mean": s["depth"] / s["n"]} if s else {}


class WindowIoU:
    """Acc@``threshold`` of a box answered in the window crop's frame (the second image's ``model_image_sizes``),
    mapped back to the original image's pixels: x = wx1 + x' * (wx2 - wx1) / w'. The ground truth is the row's
    ``answer`` box in original pixels. 0 for an answer without a box.

    Args:
        threshold: the IoU that counts as correct (GeoViS reports Acc@0.5).
        answer_tag: where the box is read (then ``\\boxed{}``, then the whole response).
    """

    def __init__(self, threshold: float = 0.5, answer_tag: str = "answer", weight: float = 1.0) -> None:
        self.threshold, self.weight = threshold, weight
        self.extract = AnswerExtractor(answer_tag=answer_tag, fallback="whole")

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        out = []
        for response, s in zip(responses, samples):
            box = parse_box(self.extract(response) or "")
            truth = parse_box(str(s["answer"]))
            if truth is None:
                raise ValueError(f"row uid={s.get('uid')!r}: answer {s['answer']!r} is not a box")
            if box is None:
                out.append(0.0)
                continue
            wx1, wy1, wx2, wy2 = s["search_window"]
            fw, fh = s["model_image_sizes"][1]
            sx, sy = (wx2 - wx1) / fw, (wy2 - wy1) / fh
            mapped = [wx1 + box[0] * sx, wy1 + box[1] * sy, wx1 + box[2] * sx, wy1 + box[3] * sy]
            out.append(float(float(box_iou(mapped, truth)) >= self.threshold))
        return out
