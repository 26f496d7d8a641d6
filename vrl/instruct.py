"""``model=tiny_instruct``: the tiny random VLM after vision pretraining and frozen-vision SFT, built once and cached.

A randomly initialised tiny VLM starts every RL run at the answer prior: whatever a method changes, the first
hundred steps are spent learning to see. Measured outside the project (issue 20): supervised warm starts of the
whole model stay at the prior for minutes, while (1) pretraining the vision tower alone with a per-cell colour and
shape head on its merged tokens, then (2) supervised fine-tuning of the language side with the vision tower frozen,
reaches 0.40-0.56 on open colour questions (chance 1/6). This module does exactly that, deterministically:

1. :func:`pretrain_vision`: scenes with one large shape in some of the four quadrants of a 56 px image (the testbed's
   ``big_count`` layout, so each of the 4 merged vision tokens covers one quadrant); a linear head on each merged
   token predicts the colour and the shape in its quadrant (or "none"); cross-entropy, Adam, vision tower only.
2. :func:`sft_language`: the calibrated testbed's questions (:mod:`vrl.data.testbed`) with their answers, teacher-
   forced (:func:`vrl.lit.sft.sft_backward`), vision tower frozen.

The weights are a pure function of the model config, the seed and the :class:`Recipe`; they are saved under
``cache_dir`` in a file named by a hash of those and of the torch / transformers versions (another version may
compute other floats), and rebuilt when the file is absent. Nothing about this is in the published methods: it is a
CPU-scale stand-in for starting RL from an instruct checkpoint, as every paper does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vrl.data.scene import PALETTE, SHAPES
from vrl.models.loading import VLM, freeze_vision_tower, load_vlm

log = logging.getLogger("vrl")

#: Bump when the build changes the weights it produces (part of the cache key).
INSTRUCT_VERSION = 1
COLOURS, SHAPE_NAMES = ("none", *PALETTE), ("none", *SHAPES)


@dataclass(frozen=True)
class Recipe:
    """How the instruct weights are built (every field is part of the cache key).

    Attributes:
        pretrain_steps, pretrain_batch, pretrain_lr: vision pretraining (images per step, Adam lr).
        sft_steps, sft_batch, sft_lr: frozen-vision SFT on testbed questions (rows per step, Adam lr).
        tasks: testbed task families of the SFT rows; difficulty: their level (1..3).
    """

    pretrain_steps: int = 300
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    sft_steps: int = 300
    sft_batch: int = 32
    sft_lr: float = 1e-3
    tasks: tuple[str, ...] = ("big_color", "half", "quadrant", "big_count")
    difficulty: int = 1


def cache_key(model_args: dict[str, Any], recipe: Recipe) -> str:
    """Hex digest of what determines the weights: model config, seed, recipe, build and library versions."""
    import transformers

    blob = json.dumps([INSTRUCT_VERSION, model_args, asdict(recipe), torch.__version__, transformers.__version__],
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cell_labels(scene: dict) -> tuple[list[int], list[int]]:
    """Colour and shape class of each quadrant (row-major: upper left, upper right, lower left, lower right)."""
    colours, shapes = [0] * 4, [0] * 4
    half = scene["width"] // 2
    for obj in scene["objects"]:
        cell = (obj["y"] >= half) * 2 + (obj["x"] >= half)
        colours[cell], shapes[cell] = COLOURS.index(obj["color"]), SHAPE_NAMES.index(obj["shape"])
    return colours, shapes


def pretrain_vision(vlm: VLM, recipe: Recipe, seed: int) -> float:
    """Train the vision tower (merger included) with a per-quadrant colour + shape head; returns the last loss."""
    from vrl.data.testbed import TestbedSpec

    visual = vlm.model.model.visual
    spec = TestbedSpec(("big_count",), seed, "instruct-vision", 56, 3)

    def merged(rows: list[dict]) -> torch.Tensor:  # [4 B, width]: one token per quadrant, row-major
        enc = vlm.processor.image_processor(images=[r["images"][0] for r in rows], return_tensors="pt")
        return visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output

    with torch.no_grad():
        width = merged([spec.row(0)]).shape[-1]
    head = torch.nn.Linear(width, len(COLOURS) + len(SHAPE_NAMES))
    opt = torch.optim.Adam([*visual.parameters(), *head.parameters()], lr=recipe.pretrain_lr)
    loss = torch.zeros(())
    for step in range(recipe.pretrain_steps):
        rows = [spec.row(step * recipe.pretrain_batch + i) for i in range(recipe.pretrain_batch)]
        tokens = merged(rows)
        labels = [cell_labels(json.loads(r["meta"])["scene"]) for r in rows]
        colours = torch.tensor([c for lab in labels for c in lab[0]])
        shapes = torch.tensor([s for lab in labels for s in lab[1]])
        logits = head(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, : len(COLOURS)], colours)
        loss = loss + torch.nn.functional.cross_entropy(logits[:, len(COLOURS) :], shapes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def sft_language(vlm: VLM, recipe: Recipe, seed: int) -> float:
    """Teacher-forced SFT on testbed questions with the vision tower frozen; returns the last loss."""
    from vrl.data.testbed import TestbedSpec
    from vrl.lit.sft import build_sft_rollout, sft_backward
    from vrl.sampler.hf import suppressed_token_ids

    frozen = {n: p.requires_grad for n, p in vlm.model.named_parameters()}
    freeze_vision_tower(vlm.model)
    params = [p for p in vlm.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.sft_lr)
    spec = TestbedSpec(tuple(recipe.tasks), seed, "instruct-sft", 56, recipe.difficulty)
    suppress = suppressed_token_ids(vlm.processor.tokenizer)
    loss = 0.0
    for step in range(recipe.sft_steps):
        rows = [spec.row(step * recipe.sft_batch + i) for i in range(recipe.sft_batch)]
        batch = build_sft_rollout(vlm, rows, [r["answer"] for r in rows])
        opt.zero_grad()
        loss, _ = sft_backward(vlm.model, batch, recipe.sft_batch, suppress)
        opt.step()
    for name, p in vlm.model.named_parameters():  # the caller decides what trains next (freeze_vision)
        p.requires_grad_(frozen[name])
    return loss


def load_tiny_instruct(
    name_or_path: str = "tiny:qwen2_5_vl",
    recipe: dict[str, Any] | None = None,
    cache_dir: str | None = "~/.cache/vrl/tiny_instruct",
    freeze_vision: bool = False,
    lora: dict[str, Any] | None = None,
    **model_args: Any,
) -> VLM:
    """The tiny VLM with instruct weights: loaded from ``cache_dir`` when built before, else built and saved.

    Args:
        name_or_path: a ``tiny:<family>`` model (Qwen2-VL and Qwen2.5-VL keep the merged tokens in
            ``pooler_output``, which pretraining reads).
        recipe: :class:`Recipe` fields to change.
        cache_dir: folder of the cached weights (``None``: build every time, save nothing).
        freeze_vision: freeze the vision tower for the run that follows (as ``load_vlm``).
        lora: must be off (``r`` = 0): the cached weights are the full model's.
        **model_args: the remaining ``load_vlm`` arguments (dtype, seed, pixels, tokenizer words ...).
    """
    if lora and int(lora.get("r") or 0) > 0:
        raise ValueError("model=tiny_instruct: LoRA is not supported (the cached weights are the full model's)")
    if not name_or_path.startswith("tiny:"):
        raise ValueError(f"model=tiny_instruct builds from a tiny:<family> model, got name_or_path={name_or_path!r}")
    plan = Recipe(**{**(recipe or {}), "tasks": tuple((recipe or {}).get("tasks", Recipe.tasks))})
    vlm = load_vlm(name_or_path, **model_args)
    key_args = {"name_or_path": name_or_path, **model_args}
    texts = json.dumps(list(model_args.get("tiny_extra_texts") or []))
    key_args["tiny_extra_texts"] = hashlib.sha256(texts.encode()).hexdigest()
    path = Path(cache_dir).expanduser() / f"{cache_key(key_args, plan)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        vlm.model.load_state_dict(torch.load(path, weights_only=True))
        log.info("model=tiny_instruct: weights from %s", path)
    else:
        seed = int(model_args.get("seed", 0))
        with torch.random.fork_rng(devices=[]):  # the run's RNG stream is the same whether built or loaded
            torch.manual_seed(seed)
            vision_loss = pretrain_vision(vlm, plan, seed)
            sft_loss = sft_language(vlm, plan, seed)
        log.info("model=tiny_instruct: built (vision loss %.3f, SFT loss %.3f)", vision_loss, sft_loss)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            torch.save(vlm.model.state_dict(), tmp)
            os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
    vlm.model.eval()
    if freeze_vision:
        freeze_vision_tower(vlm.model)
    return vlm
