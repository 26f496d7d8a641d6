"""Parsing of box answers: Visual-RFT's answer span, its repairs of a box list, and ground-truth box lists.

Split from the scoring (:mod:`vrl.rewards.visual_rft`) so other box rewards (DIP-R1's) read answers the same way.
Worked out from the released Visual-RFT code (github.com/Liuziyu77/Visual-RFT @9486633,
``src/virft/src/open_r1/grpo.py``); the steps are listed in :mod:`vrl.rewards.visual_rft`'s docstring (1-3).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>")
_ANSWER_DOTALL = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NO_OBJECTS = re.compile(r"^\s*(?:<answer>)?\s*no objects?\.?\s*(?:</answer>)?\s*$", re.IGNORECASE)

Prediction = tuple[list[float], float]  # (box [x1, y1, x2, y2], confidence)


def answer_span(text: str, multiline: bool = False) -> str:
    """The released extraction: the first ``<answer>...</answer>`` (one line unless ``multiline``), else the text."""
    match = (_ANSWER_DOTALL if multiline else _ANSWER).search(text)
    return match.group(1).strip() if match else text.strip()


def repaired_answer(response: str) -> str:
    """The detection answer text after the released repairs (steps 1-2 of :mod:`vrl.rewards.visual_rft`)."""
    text = f"<answer>{answer_span(response)}</answer>".replace("[[", "[").replace("]]", "]").replace("\n", "")
    end = text.find("</answer>")  # the wrapper's, or an earlier one left in a multi-line answer
    body = text[len("<answer>") : end]
    if not body.endswith("]"):  # truncated: keep the complete entries
        body = body.rsplit("},", 1)[0] + "}]"
    return body.replace("'", '"')


def parse_detections(response: str) -> list[Prediction] | None:
    """The predictions of a detection response, duplicates removed; None when it holds no valid list.

    Valid: after :func:`repaired_answer`, JSON for a non-empty list of objects, each with ``Position`` (four finite
    numbers) and a numeric ``Confidence``.
    """
    try:
        items = json.loads(repaired_answer(response))
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or not items:
        return None
    out: list[Prediction] = []
    seen: set[tuple[float, ...]] = set()
    for item in items:
        box = as_box(item.get("Position")) if isinstance(item, dict) else None
        conf = item.get("Confidence") if isinstance(item, dict) else None
        if box is None or not is_number(conf):
            return None
        if tuple(box) not in seen:  # exact duplicates: the first is kept
            seen.add(tuple(box))
            out.append((box, float(conf)))
    return out


def parse_gold_boxes(answer: Any) -> list[list[float]] | None:
    """Ground-truth boxes of a detection row; ``[]`` for ``No Objects``; None when the answer holds no box list.

    Accepts the Visual-RFT solution format (``<answer>[{'Position': [...], 'Confidence': 1}, ...]</answer>``, tags
    optional), a JSON list of ``[x1, y1, x2, y2]`` lists, or such a list itself.
    """
    if isinstance(answer, str):
        if NO_OBJECTS.match(answer):
            return []
        try:
            answer = json.loads(answer_span(answer).replace("'", '"'))
        except json.JSONDecodeError:
            return None
    if not isinstance(answer, list | tuple):
        return None
    boxes = [as_box(item.get("Position") if isinstance(item, dict) else item) for item in answer]
    return None if any(b is None for b in boxes) else boxes  # type: ignore[return-value]


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_box(value: Any) -> list[float] | None:
    """``[x1, y1, x2, y2]`` as floats when ``value`` is four finite numbers, else None."""
    if isinstance(value, list | tuple) and len(value) == 4 and all(is_number(v) for v in value):
        return [float(v) for v in value]
    return None
