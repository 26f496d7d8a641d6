"""PRM-guided selection per item on the tiny policy and PRM: each mode's response and cost accounting."""

from __future__ import annotations

import pytest
from PIL import Image

from vrl.models.loading import load_vlm
from vrl.prm.generative import GenerativePRM
from vrl.prm.readout import PlusMinusPRM
from vrl.prm.select import select_item
from vrl.sampler.hf import HFSampler

ROW = {"prompt": "<image>\nWhat colour is the shape?", "images": [Image.new("RGB", (56, 56), "red")], "answer": "red"}


@pytest.fixture(scope="module")
def parts():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=0)
    return vlm, HFSampler(group_size=2, max_new_tokens=4, temperature=1.0), PlusMinusPRM(vlm)


def test_greedy_needs_no_prm_and_costs_one_sequence(parts):
    vlm, sampler, _ = parts
    response, cost = select_item("greedy", ROW, sampler, vlm, None, n=4)
    assert response == sampler.generate(vlm, [ROW], greedy=True).responses[0]
    assert cost["policy_sequences"] == 1 and cost["prm_prompts"] == 0


def test_best_of_n_scores_each_sample_once_as_an_outcome_or_per_step(parts):
    vlm, sampler, prm = parts
    _, cost = select_item("bon", ROW, sampler, vlm, prm, n=3, aggregate="orm")
    assert cost["policy_sequences"] == 3 and cost["prm_prompts"] == 3  # one readout per whole response
    assert 0 < cost["policy_tokens"] <= 3 * 4
    _, cost = select_item("bon", ROW, sampler, vlm, prm, n=3, aggregate="min")
    assert cost["prm_prompts"] >= 3 - 1  # one readout per step (an empty response has no step)


def test_step_search_reads_one_prompt_per_candidate_step(parts):
    vlm, sampler, prm = parts
    response, cost = select_item("step_search", ROW, sampler, vlm, prm, n=2, max_steps=2)
    assert cost["policy_sequences"] in (2, 4)  # 2 candidates a step, 1 or 2 steps
    assert cost["prm_prompts"] <= cost["policy_sequences"] and response.count("\n") <= 1


def test_refined_bon_reviews_every_solution_in_the_pool():
    vlm = load_vlm("tiny:qwen2_5_vl", seed=0)
    sampler = HFSampler(group_size=2, max_new_tokens=4, temperature=1.0)
    gm = GenerativePRM(vlm, scores="verdict", max_new_tokens=4)  # the random model's reviews never parse
    _, cost = select_item("refined_bon", ROW, sampler, vlm, gm, n=4)
    # N/2 = 2 samples, each reviewed once (no first error parsed -> no refinement)
    assert cost["policy_sequences"] == 2 and gm.stats["prm/reviews"] == cost["prm_prompts"] <= 2


def test_a_prm_mode_without_a_prm_is_refused(parts):
    vlm, sampler, _ = parts
    with pytest.raises(ValueError, match="needs a PRM"):
        select_item("bon", ROW, sampler, vlm, None, n=2)
