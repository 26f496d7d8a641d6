"""One way in for every policy model: ``load_vlm`` builds a tiny VLM in process or loads a real one.

``name_or_path`` is ``tiny:<family>`` (built here, offline, seeded), a local directory, or a hub id. Local
directories and hub ids go through the very same ``from_pretrained`` calls, so the hub path (which cannot
run offline) differs from the tested local path only in where transformers finds the files.

On top of the raw model, ``load_vlm`` applies the training-time choices a config makes: dtype, LoRA
(PEFT, imported only when asked for: it costs ~6 s), a frozen vision tower and activation checkpointing.
``save_vlm`` writes a directory that plain transformers (or PEFT, for a bare adapter) loads back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin
from transformers.image_utils import SizeDict

from vrl.models import tiny
from vrl.models.dedupe import share_repeated_work as share_repeated_work_on
from vrl.models.processor import load_processor

if TYPE_CHECKING:
    from peft import LoraConfig

#: Families with first-class support; anything else loads as ``family="other"``.
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TINY_PREFIX = "tiny:"

#: Attribute names under which VLMs in transformers keep their vision encoder (Qwen-VL: ``model.visual``).
VISION_MODULE_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder")

#: Default LoRA targets: the language model's attention and MLP projections (Qwen2/2.5/3 names).
LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Extra targets when ``lora.include_vision`` is set: Qwen-VL vision attention (``qkv``, ``proj``) and MLP
#: (Qwen2-VL ``fc1/fc2``, Qwen3-VL ``linear_fc1/linear_fc2``; Qwen2.5-VL reuses ``gate/up/down_proj``).
VISION_LORA_TARGETS = ("qkv", "proj", "fc1", "fc2", "linear_fc1", "linear_fc2")

_LORA_KEYS = {"r": 8, "alpha": None, "dropout": 0.0, "target_modules": None, "include_vision": False}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class VLM:
    """A loaded policy and what the rest of vrl needs to know about it.

    Attributes:
        model: the ``PreTrainedModel``, or a ``peft.PeftModel`` wrapping it when ``is_lora``.
        processor: turns chat text + PIL images into model inputs (see ``vrl.models.processor``).
        family: ``qwen2_vl`` | ``qwen2_5_vl`` | ``qwen3_vl`` | ``other``.
        patch_size: side of a vision patch in pixels (VPPO-style perturbations work per patch); 0 if unknown.
        merge_size: patches merged per side into one image token (Qwen: 2); 0 if unknown.
        is_lora: whether ``model`` is a LoRA-wrapped ``PeftModel`` (only its LoRA weights train).
    """

    model: nn.Module
    processor: ProcessorMixin
    family: str
    patch_size: int
    merge_size: int
    is_lora: bool


def load_vlm(
    name_or_path: str,
    dtype: str = "float32",
    lora: dict[str, Any] | None = None,
    freeze_vision: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    seed: int = 0,
    tiny_extra_texts: list[str] | None = None,
    tiny_single_tokens: list[str] | None = None,
    trust_remote_code: bool = False,
    share_repeated_work: bool = True,
) -> VLM:
    """Build or load a VLM with its processor, ready to train.

    Args:
        name_or_path: ``tiny:qwen2_vl`` | ``tiny:qwen2_5_vl`` | ``tiny:qwen3_vl`` (random weights, built in
            process), a local directory (e.g. written by ``save_vlm``), or a hub id such as
            ``Qwen/Qwen2.5-VL-3B-Instruct``.
        dtype: ``float32`` | ``bfloat16`` | ``float16``, the dtype of the weights.
        lora: ``None`` (or ``r`` = 0, what ``conf/lora/none.yaml`` sets) trains every weight. A dict with
            ``r`` >= 1 enables PEFT LoRA: ``r`` (rank, 8 when absent), ``alpha`` (None = 2 * r), ``dropout``
            (0.0), ``target_modules`` (default ``LM_LORA_TARGETS``: the language model's attention and MLP
            projections), ``include_vision`` (False: no LoRA module is put in the vision tower, whatever the
            targets; True adds ``VISION_LORA_TARGETS`` to the default targets and lifts the exclusion).
        freeze_vision: freeze the whole vision tower, **including its merger** (the MLP that projects patch
            features into the language model). Qwen-VL keeps the merger inside ``model.visual``, and RL
            recipes (VERL's ``freeze_vision_tower``) freeze that module as a whole; training the merger
            alone is not offered. Irrelevant with LoRA, which freezes all base weights anyway.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant), trading
            compute for memory; only active in ``train()`` mode.
        attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``; None keeps transformers'
            default.
        min_pixels: smallest image area after resizing; None keeps the processor's (tiny: 4 image tokens).
        max_pixels: largest image area after resizing; None keeps the processor's. Images are resized to a
            multiple of ``patch_size * merge_size`` per side within these bounds.
        seed: seeds the tiny model's weights and the LoRA initialisation.
        tiny_extra_texts: tiny models only (ignored otherwise): extra tokenizer training text.
        tiny_single_tokens: tiny models only (ignored otherwise): words that must be single tokens.
        trust_remote_code: passed to ``from_pretrained`` for models whose code lives on the hub.
        share_repeated_work: one encoding per distinct image, M-RoPE positions per distinct row and one prompt
            forward per group (``vrl.models.dedupe``, ``vrl.models.prefix``; Qwen-VL only), not per sampled
            sequence; same outputs up to float rounding; ``++model.share_repeated_work=false`` rules it out.

    Returns:
        A ``VLM``; ``model`` is in eval mode (call ``train()`` before a training step).

    Raises:
        ValueError: unknown tiny family, bad ``dtype`` or ``lora`` keys, no vision tower to freeze, or
            ``freeze_vision`` together with ``lora.include_vision``.
        FileNotFoundError: ``name_or_path`` is neither a directory nor a plausible hub id.
    """
    torch_dtype = _resolve_dtype(dtype)
    lora_settings = _lora_settings(lora) if lora is not None else None  # None: r = 0, LoRA off
    if freeze_vision and lora_settings is not None and lora_settings["include_vision"]:
        raise ValueError("freeze_vision=True contradicts lora.include_vision=True (its LoRA would not train)")
    if name_or_path.startswith(TINY_PREFIX):
        model, processor = _build_tiny(name_or_path, seed, tiny_extra_texts, tiny_single_tokens, min_pixels, max_pixels)
        model = model.to(torch_dtype)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    else:
        model, processor = _from_pretrained(name_or_path, torch_dtype, attn_implementation, trust_remote_code)
        _set_pixel_bounds(processor, min_pixels, max_pixels)
    family = model.config.model_type if model.config.model_type in FAMILIES else "other"
    if freeze_vision:
        freeze_vision_tower(model)
    if gradient_checkpointing:
        _enable_checkpointing(model)
    if lora_settings is not None:
        model = apply_lora(model, lora_settings, seed=seed, input_grads=gradient_checkpointing)
    if share_repeated_work:
        share_repeated_work_on(model)
    patch_size, merge_size = _vision_geometry(model, processor)
    return VLM(model.eval(), processor, family, patch_size, merge_size, is_lora=lora_settings is not None)


def save_vlm(vlm: VLM, out_dir: str | Path, merge_lora: bool = True, state_dict: dict | None = None) -> Path:
    """Write ``vlm`` so that transformers (or PEFT) loads it back, processor included.

    Args:
        vlm: what ``load_vlm`` returned (possibly trained since).
        out_dir: target directory (created).
        merge_lora: for a LoRA model, True writes a plain transformers checkpoint with the LoRA deltas folded
            into the base weights (``AutoModelForImageTextToText.from_pretrained(out_dir)`` or
            ``load_vlm(out_dir)`` loads it); False writes only the adapter (``adapter_config.json`` +
            weights) for ``peft.PeftModel.from_pretrained(base_model, out_dir)``. Its
            ``base_model_name_or_path`` names the base as it was loaded (hub id, or the directory as an
            absolute path); a tiny base, which exists only in memory, is saved under ``out_dir/base`` and named
            there. The in-memory model is left untouched either way, so training can go on. Ignored for
            non-LoRA models.
        state_dict: full weights to write instead of the model's (a sharded policy's, ``vrl.lit.fsdp``); no LoRA.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        if vlm.is_lora:
            raise NotImplementedError("save_policy of a sharded LoRA policy (trainer=fsdp): use last.ckpt for now")
        from vrl.models.sharding import unsharded_model

        unsharded_model(vlm.model, state_dict).save_pretrained(out)
    elif vlm.is_lora and merge_lora:
        base = vlm.model.get_base_model()
        base.save_pretrained(out, state_dict=merged_lora_state_dict(vlm.model))
    else:
        vlm.model.save_pretrained(out)
        if vlm.is_lora:
            _name_adapter_base(vlm, out)
    vlm.processor.save_pretrained(out)
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor shared by several modules (tied embeddings) counts once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def freeze_vision_tower(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on every parameter of the vision tower (merger included).

    Returns:
        The names of the frozen modules (e.g. ``["model.visual"]``).

    Raises:
        ValueError: when the model has no module named like a vision tower (``VISION_MODULE_NAMES``).
    """
    names = vision_module_names(model)
    if not names:
        raise ValueError(f"freeze_vision: no vision tower (a module named one of {VISION_MODULE_NAMES})")
    modules = dict(model.named_modules())
    for name in names:
        modules[name].requires_grad_(False)
    return names


def vision_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the vision tower root(s), outermost only: ``model.visual`` for Qwen-VL 5.x."""
    found = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in VISION_MODULE_NAMES]
    return [n for n in found if not any(n.startswith(other + ".") for other in found)]


def apply_lora(model: PreTrainedModel, settings: dict[str, Any], seed: int = 0, input_grads: bool = False) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; only the LoRA weights stay trainable.

    Args:
        model: the base model.
        settings: a complete LoRA dict (see ``load_vlm``'s ``lora``; ``_lora_settings`` fills defaults).
        seed: seeds the random ``lora_A`` initialisation (``lora_B`` starts at zero).
        input_grads: make the input embeddings' output require grad, so that a reentrant checkpointed
            block has a grad-requiring input even though every base weight is frozen.
    """
    from peft import get_peft_model

    config = _lora_config(model, settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    if input_grads:
        model.enable_input_require_grads()
    return peft_model


def merged_lora_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA delta folded in, without touching ``peft_model``.

    PEFT's ``merge_and_unload`` rewrites the model in place, and ``merge``/``unmerge`` round trips are not
    bitwise in low precision; computing ``W + delta`` into fresh tensors costs only the targeted weights.
    """
    return _base_state_dict(peft_model, merge=True)


def _base_state_dict(peft_model: nn.Module, merge: bool) -> dict[str, torch.Tensor]:
    """The base model's state dict under its own key names, LoRA deltas folded in (``merge``) or left out."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for prefix, module in base.named_modules():
        if merge and isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            merged[f"{prefix}.weight"] = (weight + delta).detach()
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


def _resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _name_adapter_base(vlm: VLM, out: Path) -> None:
    """Point ``adapter_config.json``'s ``base_model_name_or_path`` at a base that loads by that name."""
    base = vlm.model.get_base_model()
    name = str(base.name_or_path or "")
    if not name or not (Path(name).is_dir() or _HUB_ID.match(name)):  # built in memory (tiny): no name to load
        base.save_pretrained(out / "base", state_dict=_base_state_dict(vlm.model, merge=False))
        vlm.processor.save_pretrained(out / "base")
        name = str((out / "base").resolve())
    file = out / "adapter_config.json"
    config = json.loads(file.read_text())
    config["base_model_name_or_path"] = name
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _lora_settings(lora: dict[str, Any]) -> dict[str, Any] | None:
    """Complete LoRA settings, or None when ``r`` is 0 (LoRA off: every weight trains)."""
    unknown = sorted(set(lora) - set(_LORA_KEYS))
    if unknown:
        raise ValueError(f"lora: unknown keys {unknown}; valid: {sorted(_LORA_KEYS)}")
    settings = _LORA_KEYS | dict(lora)
    r = settings["r"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"lora.r must be an integer >= 0 (0 = no LoRA), got {r!r}")
    if r == 0:
        return None
    if settings["alpha"] is None:
        settings["alpha"] = 2 * r  # the usual alpha = 2r: the update's scale alpha / r stays 2 for any rank
    return settings


def _lora_config(model: nn.Module, settings: dict[str, Any]) -> LoraConfig:
    from peft import LoraConfig

    targets = settings["target_modules"]
    if targets is None:
        targets = list(LM_LORA_TARGETS) + (list(VISION_LORA_TARGETS) if settings["include_vision"] else [])
    elif not isinstance(targets, str):
        targets = list(targets)
    exclude = None
    vision = vision_module_names(model)
    if vision and not settings["include_vision"]:  # names are matched against the whole module path
        exclude = "(" + "|".join(re.escape(n) for n in vision) + r")(\..*)?"
    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=targets,
        exclude_modules=exclude,
        task_type="CAUSAL_LM",
    )


def _build_tiny(
    name: str,
    seed: int,
    extra_texts: list[str] | None,
    single_tokens: list[str] | None,
    min_pixels: int | None,
    max_pixels: int | None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    family = name.removeprefix(TINY_PREFIX)
    if family not in tiny.TINY_FAMILIES:
        raise ValueError(
            f"unknown tiny family {family!r} in {name!r}; valid: "
            + ", ".join(TINY_PREFIX + f for f in tiny.TINY_FAMILIES)
        )
    tokenizer = tiny.build_tiny_tokenizer(extra_texts, single_tokens)
    model = tiny.build_tiny_vlm(family, tokenizer, seed=seed)
    return model, tiny.build_processor(family, tokenizer, min_pixels, max_pixels)


def _from_pretrained(
    name_or_path: str, dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load model and processor from a directory or a hub id, through the same calls for both."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise ValueError(
                f"name_or_path: {name_or_path!r} holds a LoRA adapter only (save_vlm(merge_lora=False)); "
                "load its base with load_vlm and wrap it with peft.PeftModel.from_pretrained(base, dir)"
            )
        name_or_path = str(path.resolve())  # absolute: a LoRA adapter saved later names its base by this
    elif not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"name_or_path: {name_or_path!r} is not a local directory, and it does not look like a hub id "
            f"(owner/name), nor like a tiny model ({', '.join(TINY_PREFIX + f for f in tiny.TINY_FAMILIES)})"
        )
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    processor = load_processor(name_or_path, model.config.model_type, trust_remote_code=trust_remote_code)
    return model, processor


def _set_pixel_bounds(processor: ProcessorMixin, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the image area bounds (Qwen processors store them as ``size`` shortest/longest edge)."""
    if min_pixels is None and max_pixels is None:
        return
    image_processor = processor.image_processor
    size = image_processor.size
    image_processor.size = SizeDict(
        shortest_edge=min_pixels if min_pixels is not None else size.shortest_edge,
        longest_edge=max_pixels if max_pixels is not None else size.longest_edge,
    )


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing (``activation_checkpointing_enable`` from transformers 5.2x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older transformers (e.g. the GPU image's 5.17)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _vision_geometry(model: nn.Module, processor: ProcessorMixin) -> tuple[int, int]:
    """(patch_size, merge_size): the processor's first, the vision config's as a fallback, else 0."""
    image_processor = getattr(processor, "image_processor", None)
    vision_config = getattr(model.config, "vision_config", None)
    patch = getattr(image_processor, "patch_size", None) or getattr(vision_config, "patch_size", 0)
    merge = getattr(image_processor, "merge_size", None) or getattr(vision_config, "spatial_merge_size", 0)
    return int(patch), int(merge)
