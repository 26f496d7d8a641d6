"""Best-of-N, VL-PRM's greedy step search and GM-PRM's Refined-BoN on scripted policies and step scores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from vrl.models.loading import load_vlm
from vrl.prm.search import PolicyStepper, best_of_n, first_step, greedy_step_search, refined_bon, step_aggregate_score


def test_first_step_and_whether_it_ends_the_solution():
    assert first_step("\nlook at it\nthen answer") == ("look at it", False)
    assert first_step("answer: red") == ("answer: red", True)
    assert first_step("  \n") == ("", True)


def test_best_of_n_with_the_prm_as_outcome_model_or_by_step_aggregates():
    scores = {"a": 0.2, "b": 0.9, "c": 0.9}
    choice = best_of_n(["a", "b", "c"], scores.get)
    assert (choice.response, choice.index, choice.scores) == ("b", 1, [0.2, 0.9, 0.9])  # ties: the first
    steps = {"x": 0.9, "y": 0.1, "z": 0.6}  # per step text
    score = step_aggregate_score(lambda ss: [steps[s] for s in ss], "min")
    # "x\ny": min 0.1; "z\nz": 0.6; "x": 0.9
    assert best_of_n(["x\ny", "z\nz", "x"], score).index == 2
    mean = step_aggregate_score(lambda ss: [steps[s] for s in ss], "mean")
    # "x\ny": 0.5; "z\nx": 0.75; "y": 0.1
    assert best_of_n(["x\ny", "z\nx", "y"], mean).response == "z\nx"


def test_greedy_step_search_follows_the_published_candidate_score():
    # scripted policy: from "", candidates A (long) / B (short) / C; after "B", candidates D (ends) / E
    proposals = {"": ["A\nmore", "B\nmore", "C\nmore"], "B\n": ["D", "E\nmore"]}
    p_plus = {"A": 0.9, "B": 0.6, "C": 0.3, "D": 0.2, "E": 0.4}
    lengths = {"A": 40, "B": 8, "C": 2, "D": 5, "E": 50}
    calls = []

    def propose(prefix, k):
        calls.append((prefix, k))
        return proposals[prefix]

    def score_last(prefixes):
        return [(p_plus[p[-1]], lengths[p[-1]]) for p in prefixes]

    choice = greedy_step_search(propose, score_last, candidates=3, max_steps=2)
    # step 1: A 0.9^0.3/40^0.6 = 0.1059, B 0.6^0.3/8^0.6 = 0.2464, C reads "-" (-1) -> B
    # step 2: D and E both read "-" -> the lowest P(-): E (0.6 < 0.8), although D would end the solution;
    # max_steps = 2 ends the search there
    assert [t["pick"] for t in choice.trace] == [1, 1] and choice.response == "B\nE"
    assert calls == [("", 3), ("B\n", 3)]


def test_greedy_step_search_stops_when_the_chosen_candidate_ends_the_solution():
    choice = greedy_step_search(
        lambda prefix, k: {"": ["A\nx"], "A\n": ["B"]}[prefix], lambda ps: [(0.9, 3)] * len(ps), candidates=1
    )
    assert choice.response == "A\nB" and len(choice.trace) == 2


def test_refined_bon_continues_from_the_corrected_prefix_and_picks_from_the_pool():
    solutions = ["s1 ok\ns1 bad\ns1 end", "s2 ok\ns2 end"]
    step_score = {"s1 ok": 0.9, "s1 bad": 0.1, "s1 end": 0.8, "s2 ok": 0.7, "s2 end": 0.6, "fixed": 0.95, "cont": 0.85}

    def review(steps):
        scores = [step_score[s] for s in steps]
        first = next((i + 1 for i, s in enumerate(scores) if s < 0.5), None)
        return SimpleNamespace(scores=scores, first_error=first, correction="fixed" if first else None)

    prefixes = []

    def continue_from(prefix):
        prefixes.append(prefix)
        return "cont"

    choice = refined_bon(lambda m: solutions[:m], review, continue_from, n=4, how="min")
    # s1: min 0.1, first error step 2 -> prefix "s1 ok\nfixed\n" + "cont": min(0.9, 0.95, 0.85) = 0.85; s2: 0.6
    assert prefixes == ["s1 ok\nfixed\n"]
    assert choice.pool == [solutions[0], "s1 ok\nfixed\ncont", solutions[1]]
    assert choice.scores == pytest.approx([0.1, 0.85, 0.6]) and choice.response == "s1 ok\nfixed\ncont"


def test_policy_stepper_continues_the_reply_from_a_prefix_on_the_tiny_model():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=0)
    row = {"prompt": "<image>\nWhat colour?", "images": [Image.new("RGB", (56, 56), "blue")]}
    greedy = PolicyStepper(vlm, max_new_tokens=5, temperature=0.0)
    a, b = greedy.continue_from(row, "blue\n", 1)[0], greedy.continue_from(row, "blue\n", 1)[0]
    assert a == b  # greedy: the same continuation
    sampled = PolicyStepper(vlm, max_new_tokens=5, temperature=1.0).continue_from(row, "", 3)
    assert len(sampled) == 3 and all(isinstance(s, str) for s in sampled)
