"""STIC's self-generated data (arXiv 2405.19716, github.com/yihedeng9/STIC ``stic/generate_pref.py``).

Stage 1 (:class:`STICPairs`, a ``dpo`` stage's pair builder): per unlabelled image the policy answers

- a detailed step-by-step description prompt on the clean image -> **chosen** (sampled at T = 0.2);
- with probability 0.5 one of 8 hallucination-inducing prompts on the clean image, otherwise one of 8 neutral
  "describe" prompts on a **corrupted** image (with probability 0.5 each: a 20-pixel resize, or a colour
  jitter with brightness 0.5 and hue 0.3) -> **rejected**;

and both are stored under the random neutral prompt on the clean image (what DPO then conditions on).

Stage 2 (:class:`DescriptionInfused`, an ``sft`` stage's set builder): the stage-1 policy describes each image
of a small instruction set; the description is prepended to the question and the ground-truth answer is the
SFT target.

Deliberate differences: the prompts are our paraphrases of the published lists (same roles, same counts); the
20-pixel resize is scaled back to the image's size (the processor's minimum patch grid would otherwise refuse
or pad a 20-pixel image: the information lost is the same); ColorJitter is our PIL version (brightness factor
uniform in [0.5, 1.5], hue shift uniform in [-0.3, 0.3] of the colour circle; torchvision is not a dependency).
Every draw is seeded by (seed, row index), so a rebuilt set is the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from vrl.data.source import dataset_row

DETAILED = (
    "Describe the image step by step. First name the main subjects and objects, then the setting, then the "
    "mood, then the colours and composition, then any symbols or text, and finally what the image as a whole "
    "conveys."
)
HALLUCINATION = (
    "Describe the image, and imagine one more object that could plausibly be in it.",
    "Give a description of the image that mentions things likely to be just outside the frame.",
    "Describe the image, adding details you would expect in such a scene even if you cannot see them.",
    "Write a vivid story-like description of the image, inventing what the objects are doing.",
    "Describe the image and add two objects that often appear together with the ones shown.",
    "Describe what the image would look like with a few more objects added, as if they were there.",
    "Describe the image, guessing the colours of anything that is hard to make out.",
    "Describe the image including the background details a typical photo of this kind would have.",
)
NEUTRAL = (
    "Describe the image.",
    "What is in this image?",
    "Give a short description of the picture.",
    "Tell me what you see in the image.",
    "Summarise the content of this image.",
    "Describe the picture in a few sentences.",
    "What does this image show?",
    "Write a description of this image.",
)
CORRUPTIONS = ("resize", "jitter")


def corrupt(image: Image.Image, kind: str, rng: random.Random, size: int = 20) -> Image.Image:
    """The image with STIC's corruption ``kind``: ``resize`` (to ``size`` px and back) or ``jitter``
    (brightness factor U[0.5, 1.5], then every hue shifted by U[-0.3, 0.3] of a turn)."""
    image = image.convert("RGB")
    if kind == "resize":
        return image.resize((size, size), Image.BILINEAR).resize(image.size, Image.BILINEAR)
    if kind != "jitter":
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {kind!r}")
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.5, 1.5))
    hsv = np.array(image.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(rng.uniform(-0.3, 0.3) * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class STICPairs:
    """Builds a ``dpo`` stage's pair records from the stage's images with the current policy (stage 1).

    Args:
        temperature: sampling temperature of both responses (STIC: 0.2).
        max_new_tokens: response cap; None = the run's.
        hallucination_prob: probability that the rejected response comes from a hallucination prompt on the
            clean image rather than a neutral prompt on a corrupted one (STIC: 0.5).
        resize_px: the resize corruption's size (STIC: 20).
        prompts_per_call: rows per generate call; None = the run's prompts per step.
        seed: seeds every draw together with the row index.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        max_new_tokens: int | None = None,
        hallucination_prob: float = 0.5,
        resize_px: int = 20,
        prompts_per_call: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= hallucination_prob <= 1.0:
            raise ValueError(f"stic: hallucination_prob must be in [0, 1], got {hallucination_prob}")
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.hallucination_prob, self.resize_px = hallucination_prob, resize_px
        self.prompts_per_call, self.seed = prompts_per_call, seed

    def plan(self, row: dict, index: int) -> tuple[dict, dict, dict]:
        """(chosen-generation row, rejected-generation row, the record's meta) for one data row."""
        rng = random.Random(self.seed * 1_000_003 + index)
        neutral = rng.choice(NEUTRAL)
        images = list(row.get("images") or [])
        chosen = {**row, "prompt": DETAILED, "images": images}
        if rng.random() < self.hallucination_prob:
            hallu = rng.choice(HALLUCINATION)
            meta = {"neutral": neutral, "corruption": None, "hallu_prompt": hallu}
            return chosen, {**row, "prompt": hallu, "images": images}, meta
        kind = rng.choice(CORRUPTIONS)
        bad = [corrupt(im, kind, rng, self.resize_px) for im in images]
        return chosen, {**row, "prompt": neutral, "images": bad}, {"neutral": neutral, "corruption": kind}

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[dict], dict[str, float]]:
        plans = [self.plan(dataset_row(data, i), i) for i in indices]
        sampling = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        chosen, rejected = [], []
        for part in _chunks(plans, self.prompts_per_call or ctx.batch_size):
            chosen += ctx.generate([p[0] for p in part], group_size=1, **sampling).responses
            rejected += ctx.generate([p[1] for p in part], group_size=1, **sampling).responses
        records = []
        for i, (_, _, meta), c, r in zip(indices, plans, chosen, rejected):
            if c.strip() and r.strip() and c.strip() != r.strip():  # an empty or tied pair teaches nothing
                seg = {"prompt": meta["neutral"], "chosen": c, "rejected": r, "weight": 1.0}
                records.append({"index": int(i), "segments": [seg], "meta": meta})
        stats = {"dpo/pairs_built": float(len(records)), "dpo/pairs_dropped": float(len(plans) - len(records))}
        return records, stats


class DescriptionInfused:
    """Builds an ``sft`` stage's set: the policy's description prepended to each question, the ground-truth
    answer as target (STIC stage 2). Entries are ``(index, target, prompt)``.

    Args:
        answer_template: the target text, formatted with the row's ``answer`` (e.g. ``<answer>{answer}</answer>``).
        prefix: how the description is introduced before the question.
        temperature, max_new_tokens: the description's sampling (None = the run's cap).
        batch_size: pairs per SFT step; None = the run's prompts per step.
        max_prompts: only the first N rows; None = all.
        prompts_per_call: rows per generate call; None = the run's prompts per step.
    """

    def __init__(
        self,
        answer_template: str = "{answer}",
        prefix: str = "Image description: {description}\n",
        temperature: float = 0.2,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        max_prompts: int | None = None,
        prompts_per_call: int | None = None,
    ) -> None:
        self.answer_template, self.prefix = answer_template, prefix
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.batch_size, self.max_prompts, self.prompts_per_call = batch_size, max_prompts, prompts_per_call

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[tuple], dict[str, float]]:
        rows = [dataset_row(data, i) for i in indices]
        sampling = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        descriptions = []
        for part in _chunks(rows, self.prompts_per_call or ctx.batch_size):
            asked = [{**row, "prompt": DETAILED} for row in part]
            descriptions += ctx.generate(asked, group_size=1, **sampling).responses
        kept = []
        for i, row, desc in zip(indices, rows, descriptions):
            prompt = self.prefix.format(description=desc.strip()) + str(row["prompt"])
            kept.append((int(i), self.answer_template.format(answer=row["answer"]), prompt))
        return kept, {"sft/described": float(len(kept))}
