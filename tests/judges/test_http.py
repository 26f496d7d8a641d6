"""HTTPJudge against a real OpenAI-compatible server on 127.0.0.1 (tests/judges/_openai_server.py): a tiny random
transformers LM behind stdlib HTTP that can be told to fail or to delay, so retries and timeouts happen for real."""

from __future__ import annotations

import json
import socket
import time

import pytest

from vrl.judges import HTTPJudge, JudgeItem, parse_verdict
from vrl.rewards import VisualPerception

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.02}  # retry at once: the tests are about counts, not waiting
ITEMS = [JudgeItem(("the circle is red", "there are 2 objects"), f"response {k}") for k in range(6)]


@pytest.fixture
def serve(server_module, tiny_lm):
    def start(**kwargs):
        return server_module.ChatServer(*tiny_lm, **kwargs)

    return start


def test_request_carries_the_prompt_and_the_published_decoding(serve, prompt, monkeypatch):
    monkeypatch.setenv("VRL_TEST_JUDGE_KEY", "sk-test")
    with serve(reply="<info1>1</info1>\n<info2>0</info2>") as server:
        judge = HTTPJudge(server.url, "judge-model", prompt, api_key_env="VRL_TEST_JUDGE_KEY", **FAST)
        verdicts = judge.judge(ITEMS[:2])
    assert [v.scores for v in verdicts] == [(1.0, 0.0), (1.0, 0.0)] and all(v.ok for v in verdicts)
    body = server.bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    sent = sorted(json.dumps(b["messages"]) for b in server.bodies)  # the two requests race: compare as sets
    assert sent == sorted(json.dumps(prompt.messages(i.annotations, i.response)) for i in ITEMS[:2])
    user = prompt.messages(ITEMS[0].annotations, "response 0")[1]["content"]
    assert user == "Visual Key Information: <info1>the circle is red</info1>\n<info2>there are 2 objects</info2>\n" + (
        "Response: response 0\n"
    )
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert judge.stats.calls == 2 and judge.stats.request_failures == 0


def test_real_model_reply_is_parsed_and_equals_greedy_decoding(serve, server_module, tiny_lm, prompt):
    item = ITEMS[0]
    with serve(max_tokens_cap=6) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, **FAST)
        (verdict,) = judge.judge([item])
        (again,) = judge.judge([item])
    expected = server_module.greedy_chat(*tiny_lm, prompt.messages(item.annotations, item.response), 6)
    assert verdict.raw == expected  # exactly what the model said, through HTTP and JSON
    assert verdict == parse_verdict(expected, 2)  # a random model hardly ever writes a tag: usually a failed verdict
    assert server.requests == 1 and again is verdict  # the second call came from the cache
    assert judge.stats.cache_hits == 1 and judge.stats.parse_failures == (0 if verdict.ok else 1)


@pytest.mark.parametrize(("max_workers", "expect"), [(2, 2), (6, 6)])
def test_concurrency_cap_is_respected(serve, prompt, max_workers, expect):
    # 6 requests that each take 0.3 s: with 2 workers at most 2 are ever in flight, with 6 all of them
    with serve(reply="<info1>1</info1>", delay_s=0.3) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, max_workers=max_workers, **FAST)
        judge.judge(ITEMS)
    assert server.requests == 6 and server.max_in_flight == expect


def test_server_errors_are_retried_with_backoff(serve, prompt):
    with serve(reply="<info1>1</info1><info2>1</info2>", fail_first=2) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, retries=3, backoff_s=0.05, backoff_max_s=1.0)
        start = time.monotonic()
        (verdict,) = judge.judge(ITEMS[:1])
        took = time.monotonic() - start
    # attempts: 500, 500, 200 -> two retries, back-offs 0.05 + 0.10 s
    assert verdict.ok and verdict.scores == (1.0, 1.0)
    assert server.requests == 3 and judge.stats.retries == 2 and judge.stats.request_failures == 0
    assert took >= 0.14


def test_a_timed_out_request_is_retried(serve, prompt):
    with serve(reply="<info1>0</info1><info2>1</info2>", delay_s=2.0, delay_requests=1) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, timeout_s=0.3, retries=1, **FAST)
        start = time.monotonic()
        (verdict,) = judge.judge(ITEMS[:1])
        took = time.monotonic() - start
    assert verdict.ok and verdict.scores == (0.0, 1.0)
    assert server.requests == 2 and judge.stats.retries == 1
    assert 0.25 <= took < 2.0  # waited for the timeout, not for the slow answer


def test_failed_judgement_scores_zero_is_counted_and_is_not_cached(serve, prompt):
    with serve(reply="<info1>1</info1><info2>1</info2>", fail_first=100) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, retries=2, **FAST)
        term = VisualPerception(judge)
        sample = {"visual_key_info": "<info1>the circle is red</info1><info2>there are 2 objects</info2>"}
        assert term(["a red circle"], [sample]) == [0.0]
        assert server.requests == 3  # 1 try + 2 retries
        assert term(["a red circle"], [sample]) == [0.0]
        assert server.requests == 6  # asked again: request failures are not cached
    stats = term.pop_stats()
    assert stats["reward/visual/failed"] == 2.0
    assert stats["judge/visual/request_failures"] == 2.0 and stats["judge/visual/retries"] == 4.0


def test_timeouts_after_every_retry_fail_the_item(serve, prompt):
    with serve(reply="<info1>1</info1>", delay_s=1.0) as server:
        judge = HTTPJudge(server.url, "tiny", prompt, timeout_s=0.2, retries=1, **FAST)
        (verdict,) = judge.judge(ITEMS[:1])
    assert not verdict.ok and verdict.transient and "timed out" in verdict.error
    assert server.requests == 2 and judge.stats.request_failures == 1


def test_unreachable_server_and_client_errors(serve, prompt):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = HTTPJudge(f"http://127.0.0.1:{port}/v1", "tiny", prompt, retries=2, **FAST)
    (verdict,) = judge.judge(ITEMS[:1])
    assert not verdict.ok and "cannot reach" in verdict.error and judge.stats.retries == 2
    with serve(reply="<info1>1</info1>") as server:  # 404: a wrong base URL is not worth retrying
        judge = HTTPJudge(server.url.replace("/v1", "/v2"), "tiny", prompt, retries=3, **FAST)
        (verdict,) = judge.judge(ITEMS[:1])
    assert not verdict.ok and "HTTP 404" in verdict.error
    assert server.requests == 1 and judge.stats.retries == 0 and judge.stats.request_failures == 1


# ----------------------------------------------------------------- free chats and probability readouts
CHATS = [
    [{"role": "system", "content": "Answer Yes or No."}, {"role": "user", "content": f"Is the circle red? ({k})"}]
    for k in range(3)
]


def test_probability_readout_equals_a_direct_forward(serve, tiny_lm, server_module):
    import torch

    model, tokenizer = tiny_lm
    with serve() as server:
        judge = HTTPJudge(server.url, "m", {"system": "s"}, top_logprobs=len(tokenizer), **FAST)
        replies = judge.probability(CHATS)
    assert server.bodies[0]["max_tokens"] == 1 and server.bodies[0]["logprobs"] is True
    for chat, reply in zip(CHATS, replies):
        lp = dict(server_module.first_token_logprobs(model, tokenizer, chat))  # every token: Yes and No included
        expected = 1 / (1 + torch.exp(torch.tensor(lp["No"] - lp["Yes"], dtype=torch.float64)))
        assert reply.ok and reply.text is None and reply.prob == pytest.approx(float(expected), abs=1e-12)
    assert judge.stats.calls == 3 and judge.probability(CHATS[:1]) == replies[:1] and server.requests == 3  # cached


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("Yes", -0.5), (" Yes", -0.7), ("No", -1.5)], 1 / (1 + 2.718281828459045**-1.0)),  # sigma(-0.5 + 1.5)
        ([("Yes", -0.1), ("Maybe", -2.0)], 1.0),  # no "No" among the alternatives: P(No) counts as 0
        ([("Maybe", -0.1), ("No", -2.0)], 0.0),
        ([("Maybe", -0.1)], 0.0),  # neither: 0, as PaCo-Reward
    ],
)
def test_readout_from_top_logprobs(serve, pairs, expected):
    with serve(logprobs=pairs) as server:
        (reply,) = HTTPJudge(server.url, "m", {"system": "s"}, **FAST).probability(CHATS[:1])
    assert server.bodies[0]["top_logprobs"] == 20 and reply.ok
    assert reply.prob == pytest.approx(expected, abs=1e-12)


def test_complete_returns_text_and_contains_failures(serve):
    with serve(reply="The answer is \\boxed{red}.") as server:
        judge = HTTPJudge(server.url, "m", {"system": "s"}, max_tokens=7, **FAST)
        replies = judge.complete(CHATS[:2] + CHATS[:1])  # a repeat is asked once
    assert [r.text for r in replies] == ["The answer is \\boxed{red}."] * 3 and server.requests == 2
    assert server.bodies[0]["max_tokens"] == 7 and server.bodies[0]["messages"] in CHATS
    with serve(fail_first=100) as server:
        judge = HTTPJudge(server.url, "m", {"system": "s"}, retries=1, **FAST)
        (reply,) = judge.complete(CHATS[:1])
    assert not reply.ok and reply.text is None and reply.transient and "HTTP 500" in reply.error
    assert judge.stats.request_failures == 1 and judge.stats.retries == 1 and len(judge.cache) == 0
