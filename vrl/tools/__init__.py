"""Image tools for multi-turn rollouts (``conf/tool``): see ``vrl.tools.base`` for the call format."""

from vrl.tools.base import ImageState, Tool, ToolError, ToolResult, parse_call
from vrl.tools.image import Contrast, Crop, Denoise, Flip, Rotate, Sharpen, SplitWindows

__all__ = [
    "Contrast",
    "Crop",
    "Denoise",
    "Flip",
    "ImageState",
    "Rotate",
    "Sharpen",
    "SplitWindows",
    "Tool",
    "ToolError",
    "ToolResult",
    "parse_call",
]
