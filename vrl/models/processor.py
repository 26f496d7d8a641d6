"""Image-only Qwen-VL processors (no torchvision needed), their loader, and the prompt -> messages helper.

The stock ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` insist on a video processor,
and every video processor in transformers needs torchvision. Where torchvision is missing or broken (a CPU
box with the CUDA build of torchvision fails on import: ``operator torchvision::nms does not exist``), the
stock classes cannot load. The subclasses here take only ``image_processor, tokenizer, chat_template``;
everything else (placeholder expansion, ``mm_token_type_ids``, decoding) is inherited unchanged, so video
input is unsupported.

Saved files name the **stock** class (``"processor_class": "Qwen2_5_VLProcessor"``, as a hub checkpoint
does), so a policy written by ``vrl.models.loading.save_vlm`` loads with plain
``AutoProcessor.from_pretrained(dir)`` wherever torchvision works. Without torchvision, load it with
``vrl.models.load_processor(dir, model_type)`` (or ``load_vlm(dir)``), which picks the image-only class for
the same files; the model, the image processor and the tokenizer load with plain transformers either way.
Importing this module also registers the image-only classes with ``AutoProcessor`` by config type when
torchvision is unusable (for directories that name no processor class).

How a data row becomes model inputs::

    messages = messages_from_prompt("<image>\\nWhat colour is the shape?")
    # [{"role": "user",
    #   "content": [{"type": "image"}, {"type": "text", "text": "\\nWhat colour is the shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[row["images"]], return_tensors="pt", padding=True)
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, ProcessorMixin
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLProcessor
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLProcessor

#: The Qwen2-VL / Qwen2.5-VL instruct chat template, rewritten to render identically: a default system
#: prompt when none is given, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image item (the
#: processor then expands ``<|image_pad|>`` to one token per merged patch), ``add_generation_prompt``.
QWEN2_VL_CHAT_TEMPLATE = (
    "{%- set ns = namespace(images=0, videos=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set ns.images = ns.images + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' + ns.images|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{%- set ns.videos = ns.videos + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' + ns.videos|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: Where the dataset puts an image in a prompt string (``vrl.types``: one per image, in order).
IMAGE_PLACEHOLDER = "<image>"


def torchvision_usable() -> bool:
    """True when torchvision imports. A broken install (a CUDA build on a CPU box) counts as unusable."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CUDA build raises RuntimeError on import, not ImportError
        return False
    return True


class _SavedAsStock:
    """Saves under the stock class name, so the files load with plain transformers where torchvision works.

    ``ProcessorMixin`` writes ``type(self).__name__`` into ``processor_config.json`` (``to_dict``) and into the
    tokenizer's ``tokenizer_config.json``; a name only vrl defines makes stock ``AutoProcessor`` fall back to a
    bare tokenizer. The saved files hold nothing image-only-specific, so the stock name is the honest one.
    """

    stock_class: type[ProcessorMixin]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = self.stock_class.__name__
        return out

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        result = super().save_pretrained(save_directory, *args, **kwargs)
        rename_processor_class(save_directory, type(self).__name__, self.stock_class.__name__)
        write_preprocessor_config(save_directory)
        return result


class Qwen2VLImageOnlyProcessor(_SavedAsStock, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (so without torchvision)."""

    stock_class = Qwen2VLProcessor

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


class Qwen2_5_VLImageOnlyProcessor(_SavedAsStock, Qwen2_5_VLProcessor):  # noqa: N801 (mirrors transformers)
    """``Qwen2_5_VLProcessor`` without a video processor (so without torchvision)."""

    stock_class = Qwen2_5_VLProcessor

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


class Qwen3VLImageOnlyProcessor(_SavedAsStock, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor (so without torchvision)."""

    stock_class = Qwen3VLProcessor

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


def write_preprocessor_config(directory: str | Path) -> None:
    """Also write the image processor's settings as ``preprocessor_config.json``, as Qwen's hub checkpoints do.

    With no video processor, ``processor_config.json`` holds no ``video_processor`` entry, and stock
    ``AutoProcessor`` (which loads one for ``Qwen*VLProcessor``) would find no settings for it. Like for a hub
    checkpoint, transformers then reads ``preprocessor_config.json`` and builds the family's video processor
    from the image settings (``image_processor_type`` ``Qwen2VLImageProcessor`` -> ``Qwen2VLVideoProcessor``).
    """
    directory = Path(directory)
    saved = json.loads((directory / "processor_config.json").read_text())
    config = {**saved["image_processor"], "processor_class": saved["processor_class"]}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (directory / "preprocessor_config.json").write_text(text)


def rename_processor_class(directory: str | Path, old: str, new: str) -> None:
    """Replace ``"processor_class": old`` by ``new`` in the JSON files at the top of ``directory``."""
    for file in Path(directory).glob("*.json"):
        try:
            data = json.loads(file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("processor_class") == old:
            data["processor_class"] = new
            file.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


#: model_type -> (config class, image-only processor class).
_IMAGE_ONLY = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLImageOnlyProcessor),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLImageOnlyProcessor),
}
_IMAGE_ONLY_NAMES = {cls.__name__ for _, cls in _IMAGE_ONLY.values()}


def image_only_processor_class(family: str) -> type[ProcessorMixin]:
    """The image-only processor class of a Qwen-VL ``family`` (a ``model_type``)."""
    if family not in _IMAGE_ONLY:
        raise ValueError(f"no image-only processor for family {family!r}; known: {sorted(_IMAGE_ONLY)}")
    return _IMAGE_ONLY[family][1]


def register_image_only_processors() -> None:
    """Make ``AutoProcessor`` pick the image-only classes, by config type and by saved class name.

    Only done without torchvision: where torchvision works, the stock processors (with video) stay the
    default. Idempotent.
    """
    if torchvision_usable():
        return
    for config_class, processor_class in _IMAGE_ONLY.values():
        AutoProcessor.register(config_class, processor_class, exist_ok=True)


def _saved_processor_class(path: str) -> str | None:
    """The ``processor_class`` a local directory declares, if any (hub ids are not looked into here)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        file = Path(path) / name
        if file.is_file():
            value = json.loads(file.read_text()).get("processor_class")
            if value:
                return value
    return None


def load_processor(name_or_path: str, model_type: str, **kwargs: Any) -> ProcessorMixin:
    """Load the processor of a local directory or hub id, avoiding torchvision for Qwen-VL models.

    A hub checkpoint names the stock processor (``"processor_class": "Qwen2_5_VLProcessor"``), which
    ``AutoProcessor`` would instantiate by name, video processor and all, whatever is registered. So for a
    Qwen-VL ``model_type`` without torchvision, or for a directory saved with an image-only class, the
    image-only class loads the same files itself; anything else goes through ``AutoProcessor``.

    Args:
        name_or_path: local directory or hub id.
        model_type: ``config.model_type`` of the model saved there.
        **kwargs: passed to ``from_pretrained`` (``trust_remote_code``, ``revision``, ...).
    """
    saved = _saved_processor_class(name_or_path) if Path(name_or_path).is_dir() else None
    if model_type in _IMAGE_ONLY and (saved in _IMAGE_ONLY_NAMES or not torchvision_usable()):
        return image_only_processor_class(model_type).from_pretrained(name_or_path, **kwargs)
    return AutoProcessor.from_pretrained(name_or_path, **kwargs)


def messages_from_prompt(prompt: str, system: str | None = None) -> list[dict[str, Any]]:
    """Turn a data row's ``prompt`` (``<image>`` placeholders in the text) into chat ``messages``.

    Text around the placeholders is kept verbatim (including the newline after a leading ``<image>``), and
    each placeholder becomes a ``{"type": "image"}`` item, so the chat template emits the vision tokens in
    the same order as the row's ``images``. Empty text pieces are dropped.

    Args:
        prompt: e.g. ``"<image>\\nWhat colour is the shape?"``.
        system: optional system prompt; without one, the Qwen2-VL template adds its default.

    Returns:
        ``[{"role": "system", ...}?, {"role": "user", "content": [items]}]``.
    """
    content: list[dict[str, Any]] = []
    for i, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    return messages


register_image_only_processors()
