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


def is_sharded(model: torch.nn.Module) -> bool:
    """True when FSDP (``fully_shard``, or FSDP1's wrapper) manages ``model`` or a submodule: its forwards are
    then collectives (each unit all-gathers its parameters), which every rank must run as often."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def synced_gpus(model: torch.nn.Module) -> bool:
    """``generate(..., synced_gpus=...)`` for ``model``: True for a sharded model on more than one rank, so that a
    rank whose sequences all ended keeps running (dummy) forwards until every rank's have (Hugging Face detects
    only models it sharded itself)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_sharded(model)


def fully_shard_units(
    model: torch.nn.Module,
    mesh,
    names: Iterable[str] | None = None,
    mp_policy=None,
    checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> int:
    """FSDP2: shard each unit of ``model`` (its ``_no_split_modules``: decoder layers, vision blocks) on ``mesh``,
    then the vision tower (its patch embedding and merger), then the root (the rest: embeddings, norm, LM head).
    A no-op on a model already sharded.

    Args:
        model: the policy, the frozen reference or a judge's model.
        mesh: the data-parallel ``DeviceMesh`` (every rank holds 1/W of each parameter).
        names: unit class names; None = the model's ``_no_split_modules``.
        mp_policy: ``torch.distributed.fsdp.MixedPrecisionPolicy`` or None (parameters in their own dtype).
        checkpointing: recompute the decoder layers in backward (activation checkpointing; not the vision blocks).
        reshard_after_forward: free each unit's gathered parameters after its forward (ZeRO-3); False keeps
            them until backward (ZeRO-2: more memory, one all-gather less).

    Returns:
        the number of units sharded (0 when ``model`` already was).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if is_sharded(model):
        return 0
    policy = NoSplitPolicy(names)
    policy(model, recurse=True)
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        apply_activation_checkpointing(model, checkpoint_wrapper, auto_wrap_policy=NoSplitPolicy(names, vision=False))
    wanted = policy.resolve(model)
    inner = lambda m: getattr(m, "_checkpoint_wrapped_module", m)  # noqa: E731
    # a checkpointed layer is sharded as its wrapper (torch's pattern: the recompute then sees gathered weights)
    units = [m for m in model.modules() if type(inner(m)).__name__ in wanted and not _wrapped(model, m)]
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    # the vision tower is a unit too: transformers' generate encodes the images before its first forward (it calls
    # get_image_features, hence the tower, on its own), so the tower gathers its own weights (patch embedding,
    # merger); its blocks are units inside it
    from vrl.models.loading import vision_module_names

    units += [model.get_submodule(name) for name in vision_module_names(model)]
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    if hasattr(model, "generate"):  # generate is a forward of the root: its weights gathered around the whole call
        register_fsdp_forward_method(model, "generate")
    return len(units)


def _wrapped(root: torch.nn.Module, module: torch.nn.Module) -> bool:
    """True for a module that a ``CheckpointWrapper`` of ``root`` holds (its wrapper is the unit)."""
    return any(getattr(m, "_checkpoint_wrapped_module", None) is module for m in root.modules())


def unsharded_model(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (unsharded) Hugging Face model of ``model``'s class and config holding the full weights ``state``
    (what ``vrl.lit.fsdp.full_state_dict`` gathered), for ``save_pretrained``: a sharded model's own class is
    FSDP's subclass, which transformers' key conversions and tied-weight handling do not recognise. Built on the
    meta device and given ``state``'s tensors, so it costs no memory beyond ``state``."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls._from_config(model.config)
    plain.load_state_dict(state, assign=True, strict=True)
    plain.tie_weights()
    return plain.eval()
