"""Cell values of a user's RLVR file turned into what rows carry (:mod:`vrl.data.rlvr`'s row mapper uses these):
a dotted column path into structs, the question out of a chat list, the answer as one string (or why it cannot
be one), and text / list coercions that cannot fail the arrow cast.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vrl.data.reasons import BAD_ANSWER, BAD_TYPE


def lookup(values: dict[str, Any], key: str) -> Any:
    """``values[key]``, where ``a.b`` reaches into a struct; None when any level is missing."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def question_text(value: Any) -> str | None:
    """The question as text: a string, or the last user turn of a chat list; None for anything else."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return None
    turns = [m for m in value if m.get("role") == "user"]
    if not turns:
        return None
    content = turns[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style items: image items become placeholders, in place
        parts = [c.get("text", "") if c.get("type") == "text" else "<image>" for c in content if isinstance(c, dict)]
        return "".join(parts)
    return None


def answer_text(answer: Any, answer_type: str) -> tuple[str | None, tuple[str, str] | None]:
    """The answer as the string rows carry, or None and (reason, detail) when it cannot be one.

    ``str()`` would turn a NaN into ``"nan"`` and ``["red", "blue"]`` into ``"['red', 'blue']"``, both of
    which some answer types accept as text; a list of numbers is a box for a "bbox" row.
    """
    if answer is None:
        return None, None
    if isinstance(answer, float) and not math.isfinite(answer):
        return None, (BAD_ANSWER, f"answer is {answer}")
    if isinstance(answer, (list, tuple)) and answer_type == "bbox" and all(is_number(v) for v in answer):
        return "[" + ", ".join(str(v) for v in answer) + "]", None
    if isinstance(answer, (list, tuple)) and answer_type == "detection":
        return json.dumps(answer), None  # a box list; the preflight checks it parses
    if isinstance(answer, (list, tuple, dict)):
        shown = json.dumps(answer, default=str)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return None, (BAD_TYPE, f"answer is a {type(answer).__name__} ({shown}), expected one string or number")
    return str(answer), None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_text(value: Any) -> str | None:
    """A text column's value as ``str`` (None stays None), so that an odd type cannot fail the arrow cast."""
    return None if value is None else value if isinstance(value, str) else str(value)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
