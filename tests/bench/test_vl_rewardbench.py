"""VL-RewardBench's protocol on a hand-made 6-item set: random orders, k-run majority, group/overall/macro accuracy."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from vrl.bench.vl_rewardbench import (
    AGREE,
    NO_MATCH,
    REJECT,
    bench_item,
    group_of,
    load_items,
    majority,
    parse_choice,
    run_bench,
    synthetic_items,
    vlm_judge,
)

# id, source, what the scripted judge does in runs 1..3 (A = pick the human-preferred answer, R = the rejected one,
# U = an unparsable reply), and the majority:
PLAN = {
    "g1": ("vlfeedback", "AAR"),  # agree
    "g2": ("wildvision-battle", "RRA"),  # reject
    "h1": ("povid", "AUU"),  # doesntMatch: counts nowhere
    "h2": ("rlaif-v", "AAA"),  # agree
    "r1": ("mathverse", "RRR"),  # reject
    "r2": ("mmmu", "AUA"),  # agree
}


def _rows():
    # human_ranking [0, 1]: response 0 preferred; [1, 0]: response 1 preferred (alternating, so "good" moves)
    rows = []
    for i, (k, (src, _)) in enumerate(PLAN.items()):
        first = i % 2 == 0
        responses = [f"{k} good", f"{k} bad"] if first else [f"{k} bad", f"{k} good"]
        ranking = [0, 1] if first else [1, 0]
        rows.append({"id": k, "query": f"question {k}", "response": responses, "human_ranking": ranking,
                     "query_source": src, "models": [], "judge": "", "rationale": ""})  # fmt: skip
    return rows


class ScriptedJudge:
    """Reads the item and where its good answer was placed from the prompt; answers as PLAN says for this run."""

    def __init__(self) -> None:
        self.run = -1
        self.first_positions = []

    def __call__(self, prompts, images):
        self.run += 1
        replies = []
        for p in prompts:
            item = re.search(r"Question: question (\w+)", p).group(1)
            good_at = 1 if p.index(f"{item} good") < p.index(f"{item} bad") else 2
            self.first_positions.append(good_at)
            act = PLAN[item][1][self.run]
            if act == "U":
                replies.append("Both answers have merits; I cannot decide.")
            else:
                pick = good_at if act == "A" else 3 - good_at
                replies.append(f"Answer {3 - pick} is vague.\nOverall Judgment: Answer {pick} is better")
        return replies


def test_six_items_by_hand():
    items = [bench_item(r) for r in _rows()]
    judge = ScriptedJudge()
    metrics, records = run_bench(items, judge, runs=3, seed=7)
    assert [r["majority"] for r in records] == [AGREE, REJECT, NO_MATCH, AGREE, REJECT, AGREE]
    # general: g1 agree, g2 reject -> 1/2; hallucination: h2 agree (h1 undecided) -> 1/1; reasoning: r2 agree,
    # r1 reject -> 1/2. Overall (1 + 1 + 1) / (2 + 1 + 2) = 0.6; macro (0.5 + 1 + 0.5) / 3 = 0.6667
    assert metrics["bench/general/accuracy"] == 0.5
    assert metrics["bench/hallucination/accuracy"] == 1.0 and metrics["bench/hallucination/unparsable"] == 1.0
    assert metrics["bench/reasoning/accuracy"] == 0.5
    assert metrics["bench/overall_accuracy"] == pytest.approx(0.6)
    assert metrics["bench/macro_accuracy"] == pytest.approx(2 / 3)
    assert records[2]["outcomes"] == [AGREE, NO_MATCH, NO_MATCH]
    assert set(judge.first_positions) == {1, 2}  # the good answer was shown first and second: orders are random


def test_a_position_biased_judge_agrees_only_where_the_order_put_the_preferred_answer_first():
    items = [bench_item(r) for r in _rows()]
    metrics, records = run_bench(items, lambda ps, ims: ["Overall Judgment: Answer 1 is better"] * len(ps), runs=1)
    for rec, item in zip(records, items):  # orders[0][0]: the response shown as Answer 1
        assert rec["majority"] == (REJECT if rec["orders"][0][0] == item.rejected else AGREE)


def test_parsing_majority_and_schema_errors():
    assert parse_choice("Overall Judgment: Answer 2 is better") == 2
    assert parse_choice("overall judgment:answer 1 is better ... Overall Judgment: Answer 2 is better") == 2
    assert parse_choice("Answer 1 is better") is None
    assert majority([REJECT, AGREE, AGREE, REJECT]) == REJECT  # tie: the first seen
    assert group_of("MMMU-Pro") == "reasoning" and group_of("RLHF-V") == "hallucination"
    with pytest.raises(ValueError, match="field 'query_source'"):
        bench_item({**_rows()[0], "query_source": "elsewhere"})
    with pytest.raises(ValueError, match=r"id='g1': field 'human_ranking'"):
        bench_item({**_rows()[0], "human_ranking": [0, 0]})


def test_items_load_from_a_file_in_the_published_schema(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{**r, "image": "a.png"} for r in _rows()[:2]]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items(str(tmp_path / "bench.jsonl"))
    assert [(i.id, i.rejected, i.group) for i in items] == [("g1", 1, "general"), ("g2", 0, "general")]
    assert items[0].images[0].size == (8, 8)


def test_the_synthetic_set_runs_offline_with_a_tiny_vlm_judge():
    from vrl.models.loading import load_vlm

    items = synthetic_items(7)
    assert {i.group for i in items} == {"general", "hallucination", "reasoning"}
    metrics, records = run_bench(items, vlm_judge(load_vlm("tiny:qwen2_5_vl"), max_new_tokens=6), runs=2)
    assert metrics["bench/unparsable"] == 7.0  # a random tiny model never writes the judgment line
