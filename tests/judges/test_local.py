"""LocalJudge on a tiny random causal LM (and a tiny VLM loaded from disk): batching, padding, templates, failures."""

from __future__ import annotations

import pytest

from vrl.judges import JudgeItem, LocalJudge, parse_verdict
from vrl.models.tiny import build_tiny_tokenizer, build_tiny_vlm

ITEMS = [JudgeItem(("the circle is red", "there are 2 objects"), "red " * k) for k in range(1, 6)]


class GenerateSpy:
    """Wraps ``model.generate`` to record each call's batch (input ids and attention mask)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self._generate = model.generate

    def __call__(self, **kwargs):
        self.calls.append({k: kwargs[k].clone() for k in ("input_ids", "attention_mask")})
        return self._generate(**kwargs)


def test_batches_left_pads_and_parses_every_item(tiny_lm, prompt, monkeypatch):
    model, tokenizer = tiny_lm
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    judge = LocalJudge(model, prompt, tokenizer=tokenizer, max_new_tokens=4, batch_size=2)
    verdicts = judge.judge(ITEMS)
    assert len(verdicts) == 5 and [c["input_ids"].shape[0] for c in spy.calls] == [2, 2, 1]  # ceil(5 / 2) calls
    first = spy.calls[0]["attention_mask"]  # items 1 and 2 differ in length: the shorter one is padded on the left
    assert first[:, -1].all() and not first[0, 0] and first[1].all()
    assert all(v == parse_verdict(v.raw, 2) for v in verdicts)
    assert judge.stats.calls == 5 and judge.stats.parse_failures == sum(not v.ok for v in verdicts)
    assert judge.judge(ITEMS[:2]) == verdicts[:2] and len(spy.calls) == 3  # cached


def test_unbatched_reply_equals_the_servers_greedy_decoding(tiny_lm, prompt, server_module):
    judge = LocalJudge(tiny_lm[0], prompt, tokenizer=tiny_lm[1], max_new_tokens=6, batch_size=1)
    (verdict,) = judge.judge(ITEMS[:1])
    messages = prompt.messages(ITEMS[0].annotations, ITEMS[0].response)
    assert verdict.raw == server_module.greedy_chat(*tiny_lm, messages, 6)  # same chat template, same argmax


def test_plain_text_without_a_chat_template(tiny_lm, prompt):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    judge = LocalJudge(tiny_lm[0], prompt, tokenizer=tokenizer, max_new_tokens=2)
    text = judge.render(ITEMS[0])
    assert text == f"{prompt.system_text()}\n{prompt.user(ITEMS[0].annotations, ITEMS[0].response)}Judgement:"
    assert len(judge.judge(ITEMS[:2])) == 2
    with pytest.raises(ValueError, match="no chat template"):
        LocalJudge(tiny_lm[0], prompt, tokenizer=tokenizer, chat_template=True).load()


def test_a_failing_generate_fails_its_batch_without_raising(tiny_lm, prompt):
    class Broken:
        device = "cpu"

        def generate(self, **kwargs):
            raise RuntimeError("CUDA out of memory (simulated)")

    judge = LocalJudge(Broken(), prompt, tokenizer=tiny_lm[1], batch_size=2)
    verdicts = judge.judge(ITEMS[:3])
    assert [v.ok for v in verdicts] == [False] * 3 and all(v.transient and "out of memory" in v.error for v in verdicts)
    assert judge.stats.request_failures == 3 and len(judge.cache) == 0


def test_loads_a_vlm_from_a_path_and_judges_text_only(tmp_path, prompt):
    tokenizer = build_tiny_tokenizer()
    build_tiny_vlm("qwen2_5_vl", tokenizer).save_pretrained(tmp_path)  # not an AutoModelForCausalLM: the fallback
    tokenizer.save_pretrained(tmp_path)
    judge = LocalJudge(str(tmp_path), prompt, max_new_tokens=3, batch_size=4)
    assert judge.render(ITEMS[0]).startswith("<|im_start|>system\n")  # the saved chat template is used
    verdicts = judge.judge(ITEMS)
    assert len(verdicts) == 5 and judge.stats.calls == 5
    with pytest.raises(ValueError, match="tokenizer"):
        LocalJudge(object(), prompt)
