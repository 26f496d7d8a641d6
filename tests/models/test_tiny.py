"""Tiny tokenizer, chat template, processor and the three tiny Qwen-VL families (CPU, offline)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from vrl.models.processor import messages_from_prompt
from vrl.models.tiny import (
    PLAIN_ADDED_TOKENS,
    SPECIAL_TOKENS,
    TINY_FAMILIES,
    build_processor,
    build_tiny_tokenizer,
    build_tiny_vlm,
    tiny_config,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _image(size: int, colour: str = "red") -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def _batch(processor, prompts: list[str], size: int = 112):
    texts = [
        processor.apply_chat_template(messages_from_prompt(p), add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    images = [[_image(size, c)] for c, _ in zip(["red", "blue", "green"], prompts)]
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


# --- tokenizer ----------------------------------------------------------------------------------------


def test_tokenizer_is_deterministic_and_small(tokenizer):
    again = build_tiny_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert 300 <= len(tokenizer) <= 1100


def test_tokenizer_is_deterministic_across_processes(tokenizer, tmp_path):
    # Rust hash maps are seeded per process, so an in-process rebuild alone could miss an ordering bug.
    code = "from vrl.models.tiny import build_tiny_tokenizer as b; print(b().backend_tokenizer.to_str())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert out.strip() == tokenizer.backend_tokenizer.to_str()


def test_must_be_single_tokens_with_and_without_space(tokenizer):
    words = ["zebra", "Xylophone", "magenta", "A"]
    assert len(tokenizer.encode(" zebra", add_special_tokens=False)) > 1  # the guarantee is not free
    tok = build_tiny_tokenizer(extra_texts=["a zebra and a xylophone"], must_be_single_tokens=words)
    for word in words:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    assert tok.decode(tok.encode(" zebra", add_special_tokens=False)) == " zebra"


@pytest.mark.parametrize("word", ["12", "red car", "(A)"])
def test_must_be_single_tokens_rejects_what_the_split_cuts(word):
    with pytest.raises(ValueError, match="pre-tokenizer"):
        build_tiny_tokenizer(must_be_single_tokens=[word])


def test_tokenizer_special_tokens_and_padding(tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    assert tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    for token in SPECIAL_TOKENS + PLAIN_ADDED_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [ids(token)], token
    text = "<think>\nhmm</think> <answer>red</answer><|im_end|>"
    assert (
        tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)
        == "<think>\nhmm</think> <answer>red</answer>"
    )
    unicode = "Ünïcode 😀 works, [1, 2, 3, 4]"  # byte-level: anything round-trips
    assert tokenizer.decode(tokenizer.encode(unicode)) == unicode
    padded = tokenizer(["red", "the red circle"], padding=True)["input_ids"]
    assert padded[0][0] == tokenizer.pad_token_id
    assert padded[1][0] != tokenizer.pad_token_id


# --- chat template --------------------------------------------------------------------------------------


def test_chat_template_renders_images_and_generation_prompt(tokenizer):
    messages = messages_from_prompt("<image>\nLeft: <image> vs right?")
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "\nLeft: "},
                {"type": "image"},
                {"type": "text", "text": " vs right?"},
            ],
        }
    ]
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{vision}\nLeft: {vision} vs right?<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + "<|im_start|>assistant\n"


def test_chat_template_system_and_string_content(tokenizer):
    messages = messages_from_prompt("Say yes.", system="Be brief.")
    messages.append({"role": "assistant", "content": "<answer>yes</answer>"})
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay yes.<|im_end|>\n"
        "<|im_start|>assistant\n<answer>yes</answer><|im_end|>\n"
    )


# --- processor ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(("size", "n_tokens"), [(112, 16), (64, 4)])
def test_processor_image_token_count(tokenizer, family, size, n_tokens):
    processor = build_processor(family, tokenizer)
    batch = _batch(processor, ["<image>\nWhat colour is the shape?"], size=size)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == pad).sum()) == n_tokens
    patch = 16 if family == "qwen3_vl" else 14
    assert int(batch["image_grid_thw"].prod()) == n_tokens * 4  # 2x2 patches merge into one token
    assert batch["pixel_values"].shape == (n_tokens * 4, 3 * 2 * patch * patch)


def test_processor_pixel_bounds(tokenizer):
    processor = build_processor("qwen2_5_vl", tokenizer, max_pixels=28 * 28 * 4)
    batch = _batch(processor, ["<image>"], size=448)
    assert int((batch["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 4


# --- models ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_family_forward_generate_backward(tokenizer, family):
    model = build_tiny_vlm(family, tokenizer, seed=0)
    processor = build_processor(family, tokenizer)
    batch = _batch(processor, ["<image>\nWhat colour is the shape?", "<image>\nCount."])
    assert (batch["attention_mask"][1] == 0).any()  # the shorter prompt is left-padded
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=4, do_sample=True)
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()
    assert out.shape[0] == 2
    assert 1 <= out.shape[1] - batch["input_ids"].shape[1] <= 4
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    visual = model.model.visual
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in visual.parameters())  # images matter
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_same_seed_same_weights(tokenizer):
    rng_before = torch.random.get_rng_state()
    a = build_tiny_vlm("qwen2_5_vl", tokenizer, seed=3).state_dict()
    b = build_tiny_vlm("qwen2_5_vl", tokenizer, seed=3).state_dict()
    c = build_tiny_vlm("qwen2_5_vl", tokenizer, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global stream is not consumed
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tiny_config_token_ids_and_sizes(tokenizer):
    config = tiny_config("qwen3_vl", tokenizer, num_hidden_layers=3)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.num_hidden_layers == 3
    section = config.text_config.rope_parameters["mrope_section"]
    assert sum(section) == config.text_config.head_dim // 2
    assert config.vision_config.patch_size == 16


def test_bigger_tiny_model(tokenizer):
    model = build_tiny_vlm("qwen2_vl", tokenizer, hidden_size=128, num_attention_heads=4, vision_depth=3)
    assert model.config.text_config.hidden_size == 128
    assert len(model.model.visual.blocks) == 3
    batch = _batch(build_processor("qwen2_vl", tokenizer), ["<image>\nHi"])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_bad_family_and_size_key(tokenizer):
    with pytest.raises(ValueError, match="qwen2_vl, qwen2_5_vl, qwen3_vl"):
        build_tiny_vlm("llava", tokenizer)
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_vlm("qwen2_vl", tokenizer, hiden_size=8)
