"""Reward terms for multi-turn tool rollouts (``sampler=multi_turn``): format, region sufficiency, box size, and
conditional tool use. They read what the sampler records on each row: ``turns`` (per policy turn: ``text``,
``tool``, ``args``, ``error``, ``box`` in original pixels, ``source``), ``tool_calls``, ``invalid_calls``, ``stop``,
``model_image_sizes`` and the prompt's ``images``. A row without ``turns`` (a single-turn sampler) scores as a
trajectory without calls.

Every formula here that the papers leave open ([NF] in shared/methods/others.md §11, §17) is ours and a knob.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vrl.rewards.accuracy import Accuracy


def _calls(sample: dict) -> list[dict]:
    return [t for t in sample.get("turns") or [] if "tool" in t]


def _valid_boxes(sample: dict) -> list[list[float]]:
    return [t["box"] for t in _calls(sample) if "error" not in t and t.get("box") is not None]


class ToolFormat:
    """1.0 for a well-formed trajectory, else 0.0: every call parsed and ran (no error observation), the last
    turn ended with EOS (``stop == "answer"``) and holds one ``<answer>...</answer>`` with text in it.

    Args:
        min_calls, max_calls: how many calls a well-formed trajectory makes (ERGO: exactly one zoom, 1 and 1;
            DeepEyes-style zoom: 0 or more).
        answer_tag: the answer tag (keep it equal to the accuracy extractor's).
    """

    def __init__(self, min_calls: int = 0, max_calls: int | None = None, answer_tag: str = "answer", weight=1.0):
        self.min_calls, self.max_calls, self.weight = min_calls, max_calls, weight
        self.answer = re.compile(rf"<{answer_tag}>\s*\S.*?</{answer_tag}>", re.DOTALL)

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        out = []
        for response, s in zip(responses, samples):
            calls = _calls(s)
            turns = s.get("turns") or [{"text": response}]
            ok = (
                all("error" not in c for c in calls)
                and self.min_calls <= len(calls) <= (self.max_calls if self.max_calls is not None else len(calls))
                and s.get("stop", "answer") == "answer"
                and len(self.answer.findall(turns[-1]["text"])) == 1
            )
            out.append(float(ok))
        return out


class RegionSufficiency:
    """ERGO's region-verification reward, as an oracle rule [ours]: 1.0 when a crop the trajectory made covers at
    least ``min_cover`` of the row's annotated answer region, i.e. the crop alone holds what the answer needs.

    ERGO runs a verifier model on the crop alone ([NF]: which model, which threshold); where rows annotate the
    answer-bearing region (``data=zoom``: ``meta.detail_box``, original pixels) the rule is the exact verifier of
    "the crop alone suffices". Rows without the annotation raise (a data bug, named by uid).

    Args:
        key: the region's key inside the row's JSON ``meta``.
        min_cover: fraction of the region's area a crop must cover.
        which: ``last`` (the crop the answer turn saw last) or ``any``.
    """

    def __init__(self, key: str = "detail_box", min_cover: float = 1.0, which: str = "last", weight: float = 1.0):
        if which not in ("last", "any"):
            raise ValueError(f"reward region: which must be 'last' or 'any', got {which!r}")
        self.key, self.min_cover, self.which, self.weight = key, min_cover, which, weight

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        out = []
        for s in samples:
            region = _meta(s).get(self.key)
            if region is None:
                raise ValueError(f"row uid={s.get('uid')!r}: meta has no {self.key!r} for the region reward")
            boxes = _valid_boxes(s)
            boxes = boxes[-1:] if self.which == "last" else boxes
            out.append(float(any(cover(region, b) >= self.min_cover - 1e-9 for b in boxes)))
        return out


class BoxSize:
    """ERGO's box-adjustment reward [ours]: ``-max(0, area_ratio - a_max)`` for the trajectory's last crop, where
    ``area_ratio`` = crop area / source image area; 0 without a valid crop (the format term handles missing
    calls). Big boxes defeat the purpose of zooming (the crop is re-resized within the same pixel budget).

    Args:
        a_max: the free area ratio (0.25: a quarter of the image costs nothing).
    """

    def __init__(self, a_max: float = 0.25, weight: float = 1.0):
        self.a_max, self.weight = a_max, weight

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        out = []
        for s in samples:
            calls = [t for t in _calls(s) if "error" not in t and t.get("box") is not None]
            if not calls:
                out.append(0.0)
                continue
            x1, y1, x2, y2 = calls[-1]["box"]
            w, h = s["images"][calls[-1].get("source") or 0].size
            out.append(-max(0.0, (x2 - x1) * (y2 - y1) / (w * h) - self.a_max))
        return out


class ToolNecessity:
    """VACoT's conditional reward [ours, the paper's formula is NF]: on a correct trajectory that used a tool,
    ``-tool_penalty`` when a tool-free trajectory of the same prompt (same ``uid``) was also correct (the tool was
    not needed), ``+tool_bonus`` when none was (DeepEyes' bonus for a tool call that led to a right answer);
    minus ``len_penalty * max(0, L - len_free) / len_free`` for L policy tokens past ``len_free``, on correct
    trajectories only. 0 on wrong ones.

    Args:
        tool_bonus, tool_penalty: the two payments (VACoT: penalty only; DeepEyes: bonus only).
        len_free, len_penalty: the length allowance and the penalty slope (0 = no length term).
        accuracy: how correctness is judged (default ``Accuracy()``; configure it like the accuracy term).
    """

    def __init__(
        self,
        tool_bonus: float = 0.0,
        tool_penalty: float = 0.0,
        len_free: int = 256,
        len_penalty: float = 0.0,
        accuracy: Accuracy | None = None,
        weight: float = 1.0,
    ):
        self.tool_bonus, self.tool_penalty = tool_bonus, tool_penalty
        self.len_free, self.len_penalty, self.weight = len_free, len_penalty, weight
        self.accuracy = accuracy or Accuracy()

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        correct = self.accuracy(responses, samples)
        free_ok: dict[Any, bool] = {}
        for c, s in zip(correct, samples):
            if not _calls(s):
                free_ok[s.get("uid")] = free_ok.get(s.get("uid"), False) or c > 0
        out = []
        for c, s in zip(correct, samples):
            if c <= 0:
                out.append(0.0)
                continue
            r = 0.0
            if _valid_boxes(s) or any("error" not in t for t in _calls(s)):
                r += -self.tool_penalty if free_ok.get(s.get("uid"), False) else self.tool_bonus
            length = int(s.get("response_tokens", 0))
            if self.len_penalty and length > self.len_free:
                r -= self.len_penalty * (length - self.len_free) / self.len_free
            out.append(r)
        return out


def cover(region: list[float], box: list[float]) -> float:
    """Fraction of ``region``'s area inside ``box`` (both [x1, y1, x2, y2] in the same pixels)."""
    ix = max(0.0, min(region[2], box[2]) - max(region[0], box[0]))
    iy = max(0.0, min(region[3], box[3]) - max(region[1], box[1]))
    area = (region[2] - region[0]) * (region[3] - region[1])
    return ix * iy / area if area > 0 else 0.0


def _meta(sample: dict) -> dict:
    meta = sample.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)
