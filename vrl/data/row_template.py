"""Text written from a row's fields: ``str.format`` with the row as keywords, JSON text fields parsed first.

Used where a config writes text from ground truth: an SFT warm start's targets (:class:`vrl.lit.sft.TemplateTargets`)
and Vision-SR1's pass-2 warm-start rows (:class:`vrl.methods.vision_sr1.DescribedRows`). Nested values of a parsed
field are reached with format's indexing, ``{meta[target][0][color]}``; literal braces are doubled.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from typing import Any


def check_template(template: str, key: str) -> None:
    """ValueError naming the config ``key`` when ``template`` is not a format string or names no field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{key} is not a format string ({e}): {template!r}") from None
    if not fields:
        raise ValueError(f"{key} names no row field: {template!r}")


def fill(template: str, row: Mapping[str, Any], json_fields: Sequence[str] = ("meta",), key: str = "template") -> str:
    """``template`` filled from ``row`` (images left out); a missing field or bad JSON is a ValueError naming the
    row's uid, the field and the config ``key``."""
    fields = {k: v for k, v in row.items() if k != "images"}
    where = row.get("uid", "?")
    for name in json_fields:
        if isinstance(fields.get(name), str):
            try:
                fields[name] = json.loads(fields[name])
            except json.JSONDecodeError as e:
                raise ValueError(f"{key}: row {where}'s {name!r} is not JSON ({e})") from None
    try:
        return template.format(**fields)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"{key}: row {where} has no {e!s} (template {template!r})") from None
