"""RACRO: the caption's reward is the frozen reasoner's correctness (against a stand-in chat server), the reasoner
sees only the caption and the question, and inference hands it the tentative answer."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from vrl.judges import HTTPJudge, LocalJudge
from vrl.judges.tiny import tiny_text_model
from vrl.methods.racro import ReasonerReward, answer_with_reasoner
from vrl.models.tiny import build_tiny_tokenizer

SAMPLES = [
    {"prompt": "<image>What colour is the circle?", "answer": "red", "answer_type": "text"},
    {"prompt": "<image>What colour is the circle?", "answer": "blue", "answer_type": "text"},
    {"prompt": "<image>What colour is the circle?", "answer": "red", "answer_type": "text"},
]


@pytest.fixture(scope="module")
def server_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parents[1] / "judges"))
        return importlib.import_module("_openai_server")


def test_caption_reward_is_the_reasoners_correctness(server_module):
    model, tok = server_module.tiny_causal_lm(seed=0)
    with server_module.ChatServer(model, tok, reply="The caption says red. \\boxed{red}") as server:
        term = ReasonerReward(HTTPJudge(server.url, "reasoner", {"system": "s"}, backoff_s=0.01), system="Reason.")
        values = term(["a red circle on white", "a red circle on white", "   "], SAMPLES)
    # row 0: red == red; row 1: the same caption (asked once) but the answer is blue; row 2: empty caption, not asked
    assert values == [1.0, 0.0, 0.0] and server.requests == 1
    (body,) = server.bodies
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and body["messages"][0]["content"] == "Reason."
    user = body["messages"][1]["content"]
    assert user.startswith("Image description: a red circle on white\nQuestion: What colour is the circle?\n")
    stats = term.pop_stats()
    assert (stats["reward/caption/samples"], stats["reward/caption/empty"], stats["judge/caption/calls"]) == (3, 1, 1)


def test_a_failed_reasoner_call_scores_the_failure_value(server_module):
    model, tok = server_module.tiny_causal_lm(seed=0)
    with server_module.ChatServer(model, tok, fail_first=100) as server:
        judge = HTTPJudge(server.url, "reasoner", {"system": "s"}, retries=0, backoff_s=0.01)
        term = ReasonerReward(judge, failure_value=-0.5)
        assert term(["a red circle"], SAMPLES[:1]) == [-0.5]
    assert term.pop_stats()["reward/caption/failed"] == 1.0


def test_inference_hands_the_tentative_answer_to_the_reasoner(server_module):
    model, tok = server_module.tiny_causal_lm(seed=0)
    with server_module.ChatServer(model, tok, reply="Evidence agrees. \\boxed{red}") as server:
        judge = HTTPJudge(server.url, "reasoner", {"system": "s"}, backoff_s=0.01)
        answers = answer_with_reasoner(judge, ["a red circle"], SAMPLES[:1], ["red"])
    assert answers == ["red"] and "tentative answer: red\n" in server.bodies[0]["messages"][0]["content"]


def test_the_tiny_offline_reasoner_answers_every_caption():
    judge = LocalJudge(tiny_text_model(seed=0), tokenizer=build_tiny_tokenizer(), max_new_tokens=4)
    term = ReasonerReward(judge)
    values = term(["a red circle", "a blue square"], SAMPLES[:2])
    assert values == [0.0, 0.0]  # 4 random tokens hold no \boxed{}
    assert judge.stats.calls == 2 and judge.stats.request_failures == 0
    assert tiny_text_model(seed=0).state_dict()["lm_head.weight"].equal(judge.module().state_dict()["lm_head.weight"])
