"""Which modules FSDP shards as units, found from the model itself (``trainer=fsdp``).

Hugging Face models name the blocks that must never be split across devices in ``_no_split_modules``: for
Qwen2/2.5/3-VL the language model's decoder layers and the vision tower's blocks (``Qwen2_5_VLDecoderLayer``,
``Qwen2_5_VLVisionBlock``). Those are the FSDP units (each all-gathered for its own forward and freed after) and
the activation-checkpointing units. The policy below reads the names from the model when FSDP wraps it, so one
config serves every model family, and the trainer config never has to import a model class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def no_split_names(model: torch.nn.Module) -> set[str]:
    """Class names that ``model`` or any submodule lists in ``_no_split_modules`` (Hugging Face's "keep whole")."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    return names


def no_split_classes(model: torch.nn.Module, names: Iterable[str] | None = None) -> set[type]:
    """The module classes of ``model`` named in ``names`` (default: :func:`no_split_names`)."""
    wanted = set(names) if names is not None else no_split_names(model)
    return {type(m) for m in model.modules() if type(m).__name__ in wanted}


class NoSplitPolicy:
    """FSDP ``auto_wrap_policy`` / Lightning ``activation_checkpointing_policy``: a module is its own unit when its
    class is one the model keeps whole (decoder layers, vision blocks).

    Args:
        names: class names; None = the model's ``_no_split_modules``, read from the root module at the first call.
        vision: False leaves the vision tower's blocks out (e.g. a frozen vision tower under activation
            checkpointing, which has no gradient to recompute for); classes whose name contains ``Vision``.
    """

    def __init__(self, names: Iterable[str] | None = None, vision: bool = True) -> None:
        self.names = set(names) if names is not None else None
        self.vision = vision

    def resolve(self, root: torch.nn.Module) -> set[str]:
        if self.names is None:
            self.names = no_split_names(root)
            if not self.names:
                raise ValueError("trainer=fsdp: no _no_split_modules in the model; set strategy.auto_wrap_policy.names")
        return {n for n in self.names if self.vision or "Vision" not in n}

    def __call__(self, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int = 0) -> bool:
        """torch's policy protocol: called with ``recurse=True`` on the way down (the root first), then ``False``
        per module to ask whether to wrap it."""
        names = self.resolve(module)  # the model's names are read from the root, the first module asked about
        return True if recurse else type(module).__name__ in names
