"""Policy models: tiny Qwen-VLs built in process and real ones loaded by hub id or path, one entry point.

Names are imported lazily (``from vrl.models import load_vlm``) so that ``import vrl.models`` alone does not
pay for transformers. Importing ``vrl.models.processor`` (which ``loading`` and ``tiny`` do) registers the
image-only Qwen-VL processors with ``AutoProcessor`` when torchvision is unusable; a saved policy's processor
loads there with ``load_processor(dir, model_type)`` (see ``vrl.models.processor``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VLM": "vrl.models.loading",
    "load_vlm": "vrl.models.loading",
    "save_vlm": "vrl.models.loading",
    "count_parameters": "vrl.models.loading",
    "freeze_vision_tower": "vrl.models.loading",
    "vision_module_names": "vrl.models.loading",
    "build_tiny_tokenizer": "vrl.models.tiny",
    "build_tiny_vlm": "vrl.models.tiny",
    "build_processor": "vrl.models.tiny",
    "TINY_FAMILIES": "vrl.models.tiny",
    "messages_from_prompt": "vrl.models.processor",
    "load_processor": "vrl.models.processor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vrl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
