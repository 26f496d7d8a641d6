"""VisRL's self-built step-level preference pairs (arXiv 2503.07523, github.com/zhangquanchen/VisRL
``data_gen/generate.py``, ``data_gen/filter.py``), for a ``dpo`` stage (:mod:`vrl.lit.preference`).

The trajectories are the multi-turn crop rollout that ``+method=visrl_online`` trains with GRPO
(``sampler=visrl_crop``: turn 1 writes ``<box>[x1, y1, x2, y2]</box>`` in [0, 1], the crop tool appends the crop
as an observation, turn 2 answers). Per question, ``attempts`` times (published: 3), two trajectories at
temperature 2.0: a **good** one (box and answer sampled) and a **bad** one (a second box sampled; if its IoU with
the good box, both square-padded, exceeds 0.05 it is replaced by a random box of similar size, width and height
within +-30 % (+0.1 every 20 tries), that does not overlap the good box; the trajectory is then re-rolled from that
box, given as its first turn, so the answer sees the bad crop). A judge scores each trajectory: ``s_ans`` (the
answer against the ground truth) and ``s_box`` (does the crop alone hold the answer). A question is kept when
max s_ans >= 0.8, min s_ans <= 0.2 and they differ; chosen = the first trajectory with s_ans = max and
s_box >= 0.8, rejected = the first with s_ans = min and s_box <= 0.2.

Pairs hold both trajectories as token ids per policy turn; the DPO step replays them through the sampler
(:func:`vrl.lit.preference.pair_batch`) and scores one turn per segment: stage 1 = the box turn; stage 2 =
0.5 x the box turn + 0.5 x the answer turn, which is conditioned on the whole conversation so far, its own crop
included.

Deliberate differences: the judge is a rule on the synthetic scene (s_ans = the run's accuracy reward on the
trajectory, s_box = the fraction of the row's annotated region inside the crop: ``meta.detail_box`` on
``data=zoom``, the target object's box on shape scenes) instead of a served VLM; a trajectory without a valid box
call scores s_box 0; the box is in ``<box>`` tags (VisRL: bare).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from vrl.data.source import dataset_row
from vrl.rewards.iou import box_iou
from vrl.rewards.tools import cover

BOX_INSTRUCTION = (
    " First give the image region that answers the question as <box>[x1, y1, x2, y2]</box>, each in [0, 1];"
    " you will then see its crop and answer."
)


def square_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """A box normalised to the image, in the frame of the image padded to a square (centred), normalised again."""
    side = max(width, height)
    dx, dy = (side - width) / 2, (side - height) / 2
    x1, y1, x2, y2 = box
    return [(x1 * width + dx) / side, (y1 * height + dy) / side, (x2 * width + dx) / side, (y2 * height + dy) / side]


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


def call_box(sample: dict) -> list[float] | None:
    """The trajectory's first valid crop, normalised to the image it cut, or None (no call, or an error)."""
    for turn in sample.get("turns") or []:
        if "tool" in turn and "error" not in turn and turn.get("box") is not None:
            w, h = sample["images"][turn.get("source") or 0].size
            x1, y1, x2, y2 = turn["box"]
            return [x1 / w, y1 / h, x2 / w, y2 / h]
    return None


def target_region(row: dict) -> list[float] | None:
    """The row's answer-bearing region in original pixels (``meta.detail_box``, else the first target object's
    ``bbox``), or None."""
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else (row.get("meta") or {})
    if meta.get("detail_box"):
        return [float(v) for v in meta["detail_box"]]
    targets = meta.get("target") or []
    return [float(v) for v in targets[0]["bbox"]] if targets else None


def select_pair(trajectories: Sequence[dict], high: float = 0.8, low: float = 0.2) -> tuple[dict, dict] | None:
    """VisRL's filter: (chosen, rejected) trajectories, or None when the question is dropped."""
    scores = [t["s_ans"] for t in trajectories]
    if not scores or max(scores) < high or min(scores) > low or max(scores) == min(scores):
        return None
    chosen = next((t for t in trajectories if t["s_ans"] == max(scores) and t["s_box"] >= high), None)
    rejected = next((t for t in trajectories if t["s_ans"] == min(scores) and t["s_box"] <= low), None)
    return (chosen, rejected) if chosen is not None and rejected is not None else None


def pair_record(index: int, prompt: str, chosen: dict, rejected: dict, stage: int) -> dict | None:
    """A pair record: stage 1 = the box turn (weight 1); stage 2 = the box turn and the answer turn (0.5 each).
    Both trajectories travel as their turns' token ids; None when a stage-2 side has no answer turn."""
    sides = {"chosen_turns": chosen["turns"], "rejected_turns": rejected["turns"], "prompt": prompt}
    if stage == 1:
        return {"index": index, "segments": [{**sides, "turn": 0, "weight": 1.0}]}
    if len(chosen["turns"]) < 2 or len(rejected["turns"]) < 2:
        return None
    return {"index": index, "segments": [{**sides, "turn": 0, "weight": 0.5}, {**sides, "turn": 1, "weight": 0.5}]}


class VisRLPairs:
    """Builds a ``dpo`` stage's pairs with the policy's box -> crop -> answer rollouts and the rule judge.

    Args:
        stage: 1 (box step only) or 2 (box + answer steps).
        attempts: good/bad trajectory pairs per question (published: 3).
        temperature: sampling temperature of boxes and answers (published: 2.0).
        max_new_tokens: cap per turn; None = the run's.
        instruction: appended to each question (empty when the rows already ask for the box, e.g.
            ``data=zoom`` with ``instruction=box01``).
        call_open, call_close: the box call's tags (keep them equal to the sampler's).
        seed: seeds the bad-box draws with the row index.
    """

    def __init__(
        self,
        stage: int = 2,
        attempts: int = 3,
        temperature: float = 2.0,
        max_new_tokens: int | None = None,
        instruction: str = BOX_INSTRUCTION,
        call_open: str = "<box>",
        call_close: str = "</box>",
        seed: int = 0,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"visrl: stage must be 1 or 2, got {stage}")
        self.stage, self.attempts, self.temperature = stage, attempts, temperature
        self.max_new_tokens, self.instruction, self.seed = max_new_tokens, instruction, seed
        self.call_open, self.call_close = call_open, call_close

    def _roll(self, ctx: Any, rows: list[dict]) -> list[tuple[dict, str]]:
        """(trajectory row, response) per row: one sampled trajectory each."""
        out = ctx.generate(rows, group_size=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        if any("turns" not in s for s in out.samples):
            raise ValueError(
                "visrl: the box -> crop -> answer rollout needs the multi-turn sampler (sampler=visrl_crop)"
            )
        return list(zip(out.samples, out.responses))

    def trajectories(self, ctx: Any, row: dict, index: int) -> list[dict]:
        """2 x attempts scored trajectories of one row (good, bad, good, bad, ...)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        asked = {**row, "prompt": row["prompt"] + self.instruction}
        rolled = self._roll(ctx, [asked] * (2 * self.attempts))
        boxes = [call_box(s) for s, _ in rolled]
        w, h = row["images"][0].size
        redo = {}
        for i in range(1, len(boxes), 2):  # the bad trajectory's box must not sit on the good one
            good, bad = boxes[i - 1], boxes[i]
            if good is not None and (bad is None or box_iou(square_box(bad, w, h), square_box(good, w, h)) > 0.05):
                boxes[i] = replace_bad_box(good, rng)
                redo[i] = self.call_open + "[" + ", ".join(f"{v:.2f}" for v in boxes[i]) + "]" + self.call_close
        if redo:  # re-rolled from the replacement box, given as the first turn
            again = self._roll(ctx, [{**asked, "forced_turns": [text]} for text in redo.values()])
            for i, traj in zip(redo, again):
                rolled[i] = traj
        s_ans = [float(a) for a in ctx.reward([r for _, r in rolled], [row] * len(rolled))[1]["accuracy"]]
        region = target_region(row)
        out = []
        for (sample, response), score in zip(rolled, s_ans):
            crop = call_box(sample)
            s_box = cover(region, [crop[0] * w, crop[1] * h, crop[2] * w, crop[3] * h]) if region and crop else 0.0
            turns = [t["ids"] for t in sample["turns"]]
            out.append({"response": response, "box": crop, "turns": turns, "s_ans": score, "s_box": s_box})
        return out

    def build(self, ctx: Any, data: Any, indices: Sequence[int]) -> tuple[list[dict], dict[str, float]]:
        records = []
        for i in indices:
            row = dataset_row(data, i)
            pair = select_pair(self.trajectories(ctx, row, i))
            record = pair_record(int(i), row["prompt"] + self.instruction, *pair, self.stage) if pair else None
            if record is not None:
                records.append(record)
        return records, {"dpo/pairs_built": float(len(records)), "dpo/questions": float(len(indices))}
