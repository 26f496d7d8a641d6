"""VisRL's self-built step-level preference pairs (arXiv 2503.07523, github.com/zhangquanchen/VisRL
``data_gen/generate.py``, ``data_gen/filter.py``), for a ``dpo`` stage (:mod:`vrl.lit.preference`).

Per question, ``attempts`` times (published: 3), two trajectories of the box -> crop -> answer rollout at
temperature 2.0: a **good** one (box and answer sampled) and a **bad** one (a second box sampled; if its IoU with
the good box, both square-padded, exceeds 0.05 it is replaced by a random box of similar size, width and height
within +-30 % (+0.1 every 20 tries), that does not overlap the good box; then the answer from its crop). A judge
scores each trajectory: ``s_ans`` (the answer against the ground truth) and ``s_box`` (does the crop alone hold
the answer). A question is kept when max s_ans >= 0.8, min s_ans <= 0.2 and they differ; chosen = the first
trajectory with s_ans = max and s_box >= 0.8, rejected = the first with s_ans = min and s_box <= 0.2.

Pairs: stage 1 = the box step alone; stage 2 = 0.5 x box step + 0.5 x answer step, each answer conditioned on its
own crop (``segments`` with ``chosen_crop`` / ``rejected_crop``, :func:`vrl.lit.preference.pair_batch`).

Deliberate differences: the two turns are flattened into single-turn prompts (turn 2 = the question, the box it
chose and the crop as a second image; VisRL continues the chat); the judge is a rule on the synthetic scene (s_ans
= the run's accuracy reward, s_box = the fraction of the target object's box inside the crop) instead of a served
VLM; a box that does not parse scores s_box 0 and crops nothing (the answer sees the full image twice).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from vrl.data.crop import crop
from vrl.data.source import dataset_row
from vrl.rewards.extract import parse_box
from vrl.rewards.iou import box_iou

BOX_INSTRUCTION = (
    " First give the bounding box of the image region that answers the question as [x1, y1, x2, y2], each in [0, 1]."
)
ANSWER_INSTRUCTION = "\nThe region {box} is shown as the second image{image}. Answer the question."


def answer_prompt(prompt: str, box_text: str) -> str:
    """Turn 2's prompt: the question, the box and the crop (an ``<image>`` placeholder when the row uses them)."""
    image = ": <image>" if "<image>" in prompt else ""
    return prompt + ANSWER_INSTRUCTION.format(box=box_text.strip(), image=image)


def square_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """A box normalised to the image, in the frame of the image padded to a square (centred), normalised again."""
    side = max(width, height)
    dx, dy = (side - width) / 2, (side - height) / 2
    x1, y1, x2, y2 = box
    return [(x1 * width + dx) / side, (y1 * height + dy) / side, (x2 * width + dx) / side, (y2 * height + dy) / side]


def valid_box(box: Sequence[float] | None) -> list[float] | None:
    """A box clipped to [0, 1] with positive area, or None."""
    if box is None:
        return None
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def replace_bad_box(good: list[float], rng: random.Random, tol: float = 0.3, max_tries: int = 200) -> list[float]:
    """A random box of the good box's size (each side within +-tol, tol + 0.1 every 20 tries) not overlapping it."""
    w, h = good[2] - good[0], good[3] - good[1]
    for attempt in range(max_tries):
        t = tol + 0.1 * (attempt // 20)
        bw, bh = min(w * rng.uniform(1 - t, 1 + t), 1.0), min(h * rng.uniform(1 - t, 1 + t), 1.0)
        x1, y1 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
        box = [x1, y1, x1 + bw, y1 + bh]
        if box_iou(box, good) == 0.0 and bw > 0 and bh > 0:
            return box
    raise ValueError(f"visrl: no box of the size of {good} avoids it in {max_tries} tries")


def box_coverage(crop_box: list[float] | None, target: list[float]) -> float:
    """The fraction of ``target`` (normalised) inside ``crop_box``: the rule judge's s_box."""
    if crop_box is None:
        return 0.0
    ix = max(0.0, min(crop_box[2], target[2]) - max(crop_box[0], target[0]))
    iy = max(0.0, min(crop_box[3], target[3]) - max(crop_box[1], target[1]))
    area = (target[2] - target[0]) * (target[3] - target[1])
    return ix * iy / area if area > 0 else 0.0


def target_box(row: dict) -> list[float] | None:
    """The synthetic scene's target object box, normalised (from the row's ``meta``), or None."""
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else (row.get("meta") or {})
    targets, size = meta.get("target") or [], meta.get("image_size")
    if not targets or not size:
        return None
    x1, y1, x2, y2 = targets[0]["bbox"]
    return [x1 / size[0], y1 / size[1], x2 / size[0], y2 / size[1]]


def select_pair(trajectories: Sequence[dict], high: float = 0.8, low: float = 0.2) -> tuple[dict, dict] | None:
    """VisRL's filter: (chosen, rejected) trajectories, or None when the question is dropped."""
    scores = [t["s_ans"] for t in trajectories]
    if not scores or max(scores) < high or min(scores) > low or max(scores) == min(scores):
        return None
    chosen = next((t for t in trajectories if t["s_ans"] == max(scores) and t["s_box"] >= high), None)
    rejected = next((t for t in trajectories if t["s_ans"] == min(scores) and t["s_box"] <= low), None)
    return (chosen, rejected) if chosen is not None and rejected is not None else None


def pair_record(index: int, row: dict, chosen: dict, rejected: dict, stage: int) -> dict:
    """A pair record: stage 1 = the box step; stage 2 = box step + answer step (0.5 each), each answer on its own
    crop."""
    box_step = {
        "prompt": row["prompt"] + BOX_INSTRUCTION,
        "chosen": chosen["box_text"],
        "rejected": rejected["box_text"],
    }
    if stage == 1:
        return {"index": index, "segments": [{**box_step, "weight": 1.0}]}
    answer = {"chosen": chosen["answer"], "rejected": rejected["answer"], "weight": 0.5}
    for side, t in (("chosen", chosen), ("rejected", rejected)):
        answer[f"{side}_prompt"] = answer_prompt(row["prompt"], t["box_text"])
        answer[f"{side}_crop"] = t["box"]
    return {"index": index, "segments": [{**box_step, "weight": 0.5}, answer]}


class VisRLPairs:
    """Builds a ``dpo`` stage's pairs with the policy's box -> crop -> answer rollouts and the rule judge.

    Args:
        stage: 1 (box step only) or 2 (box + answer steps).
        attempts: good/bad trajectory pairs per question (published: 3).
        temperature: sampling temperature of boxes and answers (published: 2.0).
        max_new_tokens: cap per turn; None = the run's.
        seed: seeds the bad-box draws with the row index.
    """

    def __init__(
        self,
        stage: int = 2,
        attempts: int = 3,
        temperature: float = 2.0,
        max_new_tokens: int | None = None,
        seed: int = 0,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"visrl: stage must be 1 or 2, got {stage}")
        self.stage, self.attempts, self.temperature = stage, attempts, temperature
        self.max_new_tokens, self.seed = max_new_tokens, seed

    def _answer(self, ctx: Any, rows: list[dict], boxes: list[list[float] | None], texts: list[str]) -> list[str]:
        asked = [
            {
                **r,
                "prompt": answer_prompt(r["prompt"], t),
                "images": [*r["images"], crop(r["images"][0], b)],
            }
            for r, b, t in zip(rows, boxes, texts)
        ]
        return ctx.generate(asked, group_size=1, **self._sampling()).responses

    def _sampling(self) -> dict:
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def trajectories(self, ctx: Any, row: dict, index: int) -> list[dict]:
        """2 x attempts scored trajectories of one row (good, bad, good, bad, ...)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        asked = [{**row, "prompt": row["prompt"] + BOX_INSTRUCTION}] * (2 * self.attempts)
        box_texts = list(ctx.generate(asked, group_size=1, **self._sampling()).responses)
        boxes = [valid_box(parse_box(t)) for t in box_texts]
        w, h = row["images"][0].size
        for i in range(1, len(boxes), 2):  # the bad trajectory's box must not sit on the good one
            good, bad = boxes[i - 1], boxes[i]
            if good is not None and (bad is None or box_iou(square_box(bad, w, h), square_box(good, w, h)) > 0.05):
                boxes[i] = replace_bad_box(good, rng)
                box_texts[i] = "[" + ", ".join(f"{v:.2f}" for v in boxes[i]) + "]"
        answers = self._answer(ctx, [row] * len(boxes), boxes, box_texts)
        s_ans = [float(a) for a in ctx.reward(answers, [row] * len(answers))[1]["accuracy"]]
        target = target_box(row)
        return [
            {"box_text": t, "box": b, "answer": a, "s_ans": s, "s_box": box_coverage(b, target) if target else 0.0}
            for t, b, a, s in zip(box_texts, boxes, answers, s_ans)
        ]

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[dict], dict[str, float]]:
        records = []
        for i in indices:
            row = dataset_row(data, i)
            pair = select_pair(self.trajectories(ctx, row, i))
            if pair is not None:
                records.append(pair_record(int(i), row, *pair, self.stage))
        return records, {"dpo/pairs_built": float(len(records)), "dpo/questions": float(len(indices))}
