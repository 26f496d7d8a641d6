"""load_vlm / save_vlm: tiny and by-path loading through one code path, LoRA, freezing, checkpointing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from vrl.models.loading import VLM, count_parameters, load_vlm, save_vlm, vision_module_names
from vrl.models.processor import load_processor, messages_from_prompt
from vrl.models.tiny import TINY_FAMILIES


def _inputs(vlm: VLM, prompts=("<image>\nWhat colour is the shape?", "<image>\nCount the circles.")):
    texts = [
        vlm.processor.apply_chat_template(messages_from_prompt(p), add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    images = [[Image.new("RGB", (112, 112), c)] for c, _ in zip(("red", "blue"), prompts)]
    return vlm.processor(text=texts, images=images, return_tensors="pt", padding=True)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _perturb_lora(vlm: VLM) -> None:
    """lora_B starts at zero, which would make every merge test pass trivially."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in vlm.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def tiny() -> VLM:
    return load_vlm("tiny:qwen2_5_vl", seed=1)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_then_load_by_path_is_bitwise_identical(family, tmp_path):
    vlm = load_vlm(f"tiny:{family}", seed=2)
    assert (vlm.family, vlm.merge_size, vlm.is_lora) == (family, 2, False)
    assert vlm.patch_size == (16 if family == "qwen3_vl" else 14)
    save_vlm(vlm, tmp_path)
    loaded = load_vlm(str(tmp_path))
    assert (loaded.family, loaded.patch_size, loaded.merge_size) == (
        vlm.family,
        vlm.patch_size,
        vlm.merge_size,
    )
    batch, batch_loaded = _inputs(vlm), _inputs(loaded)
    assert batch.keys() == batch_loaded.keys()
    assert all(torch.equal(batch[k], batch_loaded[k]) for k in batch)
    assert torch.equal(_logits(vlm.model, batch), _logits(loaded.model, batch))


def test_saved_dir_loads_with_transformers_and_vrls_processor_loader(tiny, tmp_path):
    # the plain-transformers side, without importing vrl at all, is tests/models/test_saved_policy.py
    save_vlm(tiny, tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = load_processor(str(tmp_path), "qwen2_5_vl")
    assert type(processor) is type(tiny.processor)  # no torchvision here: the image-only class, same files
    assert processor.tokenizer.padding_side == "left"
    batch = _inputs(tiny)
    assert torch.equal(_logits(model, batch), _logits(tiny.model, batch))


def test_hub_style_dir_naming_the_stock_processor_loads(tiny, tmp_path):
    # A hub checkpoint says "processor_class": "Qwen2_5_VLProcessor", whose video processor needs torchvision.
    save_vlm(tiny, tmp_path)
    config_file = tmp_path / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["processor_class"] = "Qwen2_5_VLProcessor"
    config_file.write_text(json.dumps(config))
    loaded = load_vlm(str(tmp_path), max_pixels=28 * 28 * 4)
    batch = loaded.processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (448, 448))]
    )
    assert batch["input_ids"][0].count(loaded.processor.image_token_id) == 4  # max_pixels was applied


def test_bfloat16(tmp_path):
    vlm = load_vlm("tiny:qwen3_vl", dtype="bfloat16")
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(_logits(vlm.model, _inputs(vlm)).float()).all()
    save_vlm(vlm, tmp_path)
    assert {p.dtype for p in load_vlm(str(tmp_path), dtype="bfloat16").model.parameters()} == {torch.bfloat16}


def test_attn_implementation_is_applied():
    sdpa = load_vlm("tiny:qwen2_vl", seed=3)
    eager = load_vlm("tiny:qwen2_vl", seed=3, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert sdpa.model.config._attn_implementation != "eager"
    batch = _inputs(sdpa)
    torch.testing.assert_close(_logits(eager.model, batch), _logits(sdpa.model, batch), atol=1e-4, rtol=1e-4)


# --- LoRA -----------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_skips_the_vision_tower():
    vlm = load_vlm("tiny:qwen2_5_vl", lora={"r": 4, "alpha": 8})
    assert vlm.is_lora
    trainable = _trainable(vlm.model)
    assert trainable
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not [n for n in trainable if ".visual." in n]
    # 2 layers x 7 projections x (A, B): all language-model attention and MLP projections are adapted
    assert len(trainable) == 2 * 7 * 2
    # Qwen2.5-VL's vision MLP reuses gate/up/down_proj: only the path exclusion keeps LoRA out of it
    assert vision_module_names(vlm.model) == ["base_model.model.model.visual"]


def test_lora_can_include_the_vision_tower():
    vlm = load_vlm("tiny:qwen2_vl", lora={"r": 4, "include_vision": True})
    vision = [n for n in _trainable(vlm.model) if ".visual." in n]
    assert any(".attn.qkv." in n for n in vision)
    assert any(".mlp.fc1." in n for n in vision)


def test_lora_merged_save_loads_with_plain_transformers(tmp_path):
    vlm = load_vlm("tiny:qwen2_5_vl", lora={"r": 4}, seed=5)
    _perturb_lora(vlm)
    batch = _inputs(vlm)
    before = _logits(vlm.model, batch)
    reference = copy.deepcopy(vlm.model).merge_and_unload()
    save_vlm(vlm, tmp_path, merge_lora=True)
    assert not (tmp_path / "adapter_config.json").exists()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    merged = _logits(loaded, batch)
    assert torch.equal(merged, _logits(reference, batch))  # same W + delta, same computation
    torch.testing.assert_close(merged, before)  # and the LoRA model computes the same function
    assert (merged - _logits(load_vlm("tiny:qwen2_5_vl", seed=5).model, batch)).abs().max() > 1e-3
    assert torch.equal(_logits(vlm.model, batch), before)  # saving left the LoRA model as it was
    assert load_vlm(str(tmp_path)).family == "qwen2_5_vl"


def test_lora_adapter_save_loads_with_peft(tmp_path):
    from peft import PeftModel

    vlm = load_vlm("tiny:qwen3_vl", lora={"r": 4}, seed=6)
    _perturb_lora(vlm)
    save_vlm(vlm, tmp_path, merge_lora=False)
    assert (tmp_path / "adapter_config.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    base = load_vlm("tiny:qwen3_vl", seed=6).model  # a tiny base is rebuilt from its seed
    restored = PeftModel.from_pretrained(base, tmp_path)
    batch = _inputs(vlm)
    assert torch.equal(_logits(restored, batch), _logits(vlm.model, batch))
    assert type(load_processor(str(tmp_path), "qwen3_vl")) is type(vlm.processor)
    with pytest.raises(ValueError, match="adapter only"):
        load_vlm(str(tmp_path))


def test_lora_rank_zero_is_off_and_alpha_defaults_to_twice_the_rank():
    off = load_vlm("tiny:qwen2_vl", lora={"r": 0, "alpha": None, "include_vision": False})  # conf/lora/none.yaml
    assert not off.is_lora
    assert all(p.requires_grad for p in off.model.parameters())
    on = load_vlm("tiny:qwen2_vl", lora={"r": 4, "alpha": None})
    assert on.model.peft_config["default"].lora_alpha == 8  # 2 * r
    with pytest.raises(ValueError, match="lora.r must be an integer >= 0"):
        load_vlm("tiny:qwen2_vl", lora={"r": -1})


def test_count_parameters_counts_lora_by_hand():
    plain = load_vlm("tiny:qwen2_5_vl", seed=4)
    lora = load_vlm("tiny:qwen2_5_vl", lora={"r": 4}, seed=4)
    trainable, total = count_parameters(plain.model)
    assert trainable == total  # everything trains without LoRA
    # tied input/output embeddings are one tensor: counted once
    assert total == sum(p.numel() for p in plain.model.parameters())
    assert total < sum(p.numel() for p in plain.model.state_dict().values())
    # LoRA r=4 adds r * (in + out) per adapted projection; hidden 64, 4 heads of 16, 2 KV heads (k/v out 32),
    # MLP 128: q 4*(64+64)=512, k 4*(64+32)=384, v 384, o 512, gate 4*(64+128)=768, up 768, down 768
    # = 4096 per layer, x 2 layers = 8192
    lora_trainable, lora_total = count_parameters(lora.model)
    assert lora_trainable == 8192
    assert lora_total == total + 8192


def test_lora_adapter_names_a_base_that_loads_by_that_name(tmp_path, monkeypatch):
    from peft import PeftModel

    base_dir = save_vlm(load_vlm("tiny:qwen2_5_vl", seed=8), tmp_path / "base_model")
    monkeypatch.chdir(tmp_path)  # load the base by a relative path: the adapter must still name it absolutely
    for source, expected in (("base_model", str(base_dir.resolve())), ("tiny:qwen2_5_vl", None)):
        vlm = load_vlm(source, lora={"r": 4}, seed=8)
        _perturb_lora(vlm)
        out = save_vlm(vlm, tmp_path / f"adapter_{source.replace(':', '_')}", merge_lora=False)
        name = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        # a tiny base exists only in memory, so it is saved next to the adapter and named there
        assert name == (expected or str((out / "base").resolve()))
        monkeypatch.chdir(out.parent.parent)  # anywhere else
        restored = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(name), out)
        batch = _inputs(vlm)
        assert torch.equal(_logits(restored, batch), _logits(vlm.model, batch))
        monkeypatch.chdir(tmp_path)


def test_lora_generates():
    vlm = load_vlm("tiny:qwen2_vl", lora={"r": 2})
    batch = _inputs(vlm)
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=3, do_sample=True)
    assert out.shape[0] == 2
    assert out.shape[1] > batch["input_ids"].shape[1]


# --- freezing and checkpointing ---------------------------------------------------------------------------


def test_freeze_vision_freezes_tower_and_merger_only():
    vlm = load_vlm("tiny:qwen3_vl", freeze_vision=True)
    visual = vlm.model.model.visual
    assert not any(p.requires_grad for p in visual.parameters())
    assert not any(p.requires_grad for p in visual.merger.parameters())
    assert all(p.requires_grad for p in vlm.model.model.language_model.parameters())
    vlm.model.train()
    batch = _inputs(vlm)
    vlm.model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is None for p in visual.parameters())


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_gradient_checkpointing_gives_the_same_gradients(lora):
    plain = load_vlm("tiny:qwen2_5_vl", lora=lora, seed=7)
    checkpointed = load_vlm("tiny:qwen2_5_vl", lora=lora, seed=7, gradient_checkpointing=True)
    calls = []
    for module in checkpointed.model.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
            inner = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    batch = _inputs(plain)
    grads = []
    for vlm in (plain, checkpointed):
        vlm.model.train()
        vlm.model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in vlm.model.named_parameters() if p.requires_grad})
    assert len(calls) >= 2  # both decoder layers (and the vision blocks) really went through checkpoint()
    assert grads[0].keys() == grads[1].keys()
    assert all(g is not None for g in grads[1].values())
    assert any(g.abs().sum() > 0 for g in grads[1].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# --- errors -----------------------------------------------------------------------------------------------


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="tiny:qwen2_vl, tiny:qwen2_5_vl, tiny:qwen3_vl"):
        load_vlm("tiny:llava")
    with pytest.raises(ValueError, match="dtype"):
        load_vlm("tiny:qwen2_vl", dtype="fp32")
    with pytest.raises(ValueError, match="alpah"):
        load_vlm("tiny:qwen2_vl", lora={"alpah": 16})
    with pytest.raises(ValueError, match="include_vision"):
        load_vlm("tiny:qwen2_vl", freeze_vision=True, lora={"include_vision": True})
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_vlm(str(tmp_path / "missing" / "model"))
    with pytest.raises(FileNotFoundError, match="hub id"):
        load_vlm("./checkpoints/step_100")
