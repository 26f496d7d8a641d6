"""VL-RewardBench (arXiv 2411.17451, github.com/vl-rewardbench/VL_RewardBench ``prompt.py``, ``inference_hf.py``,
``cal.py``): a VLM used as a pairwise judge, scored against human preferences.

Per item the two responses are shown in a random order as "Answer 1" and "Answer 2" (position bias is averaged
out), the judge ends with "Overall Judgment: Answer X is better", and the choice is parsed by a regex (the last
match): **agree** when the chosen response is not the human-rejected one, **reject** when it is, **doesntMatch**
when nothing parses. k runs (published default 10; the paper varies k in {1, 3, 5, 7, 9}) give k outcomes per item
and the majority decides; an item whose majority is doesntMatch counts in neither agree nor reject. Group accuracy
= agree / (agree + reject) over the group's items, overall accuracy = sum of agree / sum of (agree + reject), macro
accuracy = the mean of the group accuracies. Groups by ``query_source`` [C]: vlfeedback, wildvision-battle ->
general; povid, rlaif-v, rlhf-v -> hallucination; mathverse, mmmu -> reasoning.

Item schema (the published one): ``id, query, image, response [2], human_ranking, models, judge, rationale,
query_source``; ``human_ranking[i]`` is response i's rank (0 = preferred), so the rejected response is the one
with the highest rank. ``image`` is ``{"bytes", "path"}``, raw bytes or a path relative to the file.

Deliberate differences: the judge prompt is our paraphrase of ``prompt.py`` (same criteria, same closing line);
majority ties go to the outcome seen first (Python's ``Counter.most_common``) [ours, cal.py's tie rule is NF];
no LLM re-parse of unparsable replies. Sampling (T 0.2, top-p 0.2, 2048 tokens) is the judge's setting.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

GROUPS = {
    "vlfeedback": "general",
    "wildvision-battle": "general",
    "povid": "hallucination",
    "rlaif-v": "hallucination",
    "rlhf-v": "hallucination",
    "mathverse": "reasoning",
    "mmmu": "reasoning",
}
AGREE, REJECT, NO_MATCH = "agree", "reject", "doesntMatch"
CHOICE = re.compile(r"Overall\s+Judgment\s*:\s*Answer\s*([12])\s+is\s+better", re.IGNORECASE)
PROMPT = (
    "You are a careful judge of answers to a question about an image. Compare the two answers below for accuracy "
    "(does the answer match what the image shows and what the question asks), completeness, clarity and relevance. "
    "Explain your reasoning briefly, then end with exactly one line of the form "
    '"Overall Judgment: Answer X is better", where X is 1 or 2.\n\nQuestion: {query}\n\n'
    "[Answer 1]\n{answer1}\n[End of Answer 1]\n\n[Answer 2]\n{answer2}\n[End of Answer 2]"
)


def group_of(source: str) -> str:
    """The group of a ``query_source`` (case-insensitive; a source may carry a suffix such as ``mmmu-pro``)."""
    key = str(source).strip().lower()
    for name, group in GROUPS.items():
        if key == name or key.startswith(name):
            return group
    raise ValueError(f"unknown query_source {source!r} (known: {', '.join(GROUPS)})")


@dataclass
class BenchItem:
    """One pair: the query, its images, the two responses, which one humans rejected, and its group."""

    id: str
    query: str
    responses: tuple[str, str]
    rejected: int
    group: str
    images: list = field(default_factory=list)


def bench_item(row: dict, where: str = "item") -> BenchItem:
    """A :class:`BenchItem` from a row of the published schema; a clear error names the item and the field."""
    name = f"{where} id={row.get('id')!r}"
    responses, ranking = row.get("response"), row.get("human_ranking")
    if (
        not isinstance(responses, (list, tuple))
        or len(responses) != 2
        or not all(isinstance(r, str) for r in responses)
    ):
        raise ValueError(f"{name}: field 'response' must be a list of two texts")
    if not isinstance(ranking, (list, tuple)) or len(ranking) != 2 or ranking[0] == ranking[1]:
        raise ValueError(f"{name}: field 'human_ranking' must rank the two responses differently, got {ranking!r}")
    try:
        group = group_of(row.get("query_source", ""))
    except ValueError as err:
        raise ValueError(f"{name}: field 'query_source': {err}") from None
    images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
    return BenchItem(
        str(row.get("id")),
        str(row.get("query", "")),
        tuple(responses),
        int(ranking[1] > ranking[0]),
        group,
        list(images),
    )


def parse_choice(reply: str) -> int | None:
    """The answer position (1 or 2) the reply's last "Overall Judgment" line names, or None."""
    found = CHOICE.findall(reply or "")
    return int(found[-1]) if found else None


def outcome(choice: int | None, order: tuple[int, int], rejected: int) -> str:
    """agree / reject / doesntMatch of one run; ``order[p]`` is the response shown as Answer p+1."""
    if choice is None:
        return NO_MATCH
    return REJECT if order[choice - 1] == rejected else AGREE


def majority(outcomes: Sequence[str]) -> str:
    """The most common outcome (ties: the one seen first)."""
    return Counter(outcomes).most_common(1)[0][0]


def run_bench(
    items: Sequence[BenchItem], judge: Callable[[list[str], list[list]], list[str]], runs: int = 10, seed: int = 0
) -> tuple[dict[str, float], list[dict]]:
    """Judge every item ``runs`` times in random orders; the metrics and a per-item record.

    Args:
        judge: ``judge(prompts, images) -> replies`` for a batch (a local VLM, a served model, a script in tests).
    """
    rng = random.Random(seed)
    orders = [[tuple(rng.sample((0, 1), 2)) for _ in items] for _ in range(runs)]
    per_item: list[list[str]] = [[] for _ in items]
    for r in range(runs):
        prompts = [
            PROMPT.format(query=it.query, answer1=it.responses[o[0]], answer2=it.responses[o[1]])
            for it, o in zip(items, orders[r])
        ]
        replies = judge(prompts, [it.images for it in items])
        for i, (it, reply) in enumerate(zip(items, replies)):
            per_item[i].append(outcome(parse_choice(reply), orders[r][i], it.rejected))
    records = [
        {"id": it.id, "group": it.group, "outcomes": outs, "majority": majority(outs), "orders": [o[i] for o in orders]}
        for i, (it, outs) in enumerate(zip(items, per_item))
    ]
    return metrics(records), records


def metrics(records: Sequence[dict]) -> dict[str, float]:
    """Group, overall and macro accuracy from per-item majorities (``bench/...`` keys), and the counts."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        counts[rec["group"]][rec["majority"]] += 1
    out, accs = {}, []
    for group in sorted(counts):
        c = counts[group]
        decided = c[AGREE] + c[REJECT]
        out[f"bench/{group}/count"] = float(sum(c.values()))
        out[f"bench/{group}/unparsable"] = float(c[NO_MATCH])
        if decided:
            out[f"bench/{group}/accuracy"] = c[AGREE] / decided
            accs.append(out[f"bench/{group}/accuracy"])
    agree = sum(c[AGREE] for c in counts.values())
    decided = sum(c[AGREE] + c[REJECT] for c in counts.values())
    out["bench/overall_accuracy"] = agree / decided if decided else float("nan")
    out["bench/macro_accuracy"] = sum(accs) / len(accs) if accs else float("nan")
    out["bench/unparsable"] = float(sum(c[NO_MATCH] for c in counts.values()))
    return out


def load_items(path: str) -> list[BenchItem]:
    """Items of a ``.jsonl``/``.parquet`` file in the published schema, read with ``datasets``; images decoded."""
    from pathlib import Path

    from vrl.data.images import image_storage, open_image
    from vrl.data.json_rows import read_with_datasets

    file = Path(path)
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(file.suffix.lower())
    if builder is None or not file.is_file():
        raise ValueError(f"{path}: not a .jsonl/.json/.parquet file")
    root = file.resolve().parent
    items = []
    for i, row in enumerate(read_with_datasets(builder, file)):
        row = dict(row)
        if row.get("image") is not None:
            row["image"] = open_image(image_storage(row["image"], root))
        items.append(bench_item(row, f"{path}: row {i}"))
    return items


def synthetic_items(n: int = 12, seed: int = 0) -> list[BenchItem]:
    """A small offline pair set: synthetic colour questions, the true colour against a wrong one, the groups'
    sources in turn (so every group has items)."""
    from vrl.data.synthetic import build_synthetic

    data = build_synthetic(tasks=["color"], formats=["open"], num_samples=n, image_size=56, seed=seed, mode="stream")
    sources = list(GROUPS)
    rng = random.Random(seed)
    items = []
    for i in range(n):
        row = dict(data[i])
        wrong = rng.choice([c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c != row["answer"]])
        good, bad = f"The answer is {row['answer']}.", f"The answer is {wrong}."
        flip = rng.random() < 0.5
        responses = (bad, good) if flip else (good, bad)
        items.append(
            BenchItem(
                f"syn-{i}",
                row["prompt"].replace("<image>", "").strip(),
                responses,
                0 if flip else 1,
                group_of(sources[i % len(sources)]),
                list(row["images"]),
            )
        )
    return items


def vlm_judge(vlm: Any, temperature: float = 0.2, top_p: float = 0.2, max_new_tokens: int = 2048, batch_size: int = 8):
    """A ``judge`` callable from a local VLM (VL-RewardBench's sampling by default)."""
    import torch

    from vrl.sampler.prompts import encode_prompts

    def judge(prompts: list[str], images: list[list]) -> list[str]:
        out = []
        tok = vlm.processor.tokenizer
        device = next(vlm.model.parameters()).device
        for start in range(0, len(prompts), batch_size):
            rows = [{"prompt": p, "images": im} for p, im in zip(prompts[start : start + batch_size], images[start:])]
            enc, _ = encode_prompts(vlm.processor, rows)
            enc = {k: v.to(device) for k, v in enc.items()}
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature else {}
            with torch.no_grad():
                seq = vlm.model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling
                )
            out += tok.batch_decode(seq[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    return judge
