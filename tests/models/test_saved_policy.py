"""A saved policy is a plain transformers checkpoint: it names the stock processor class and loads without vrl.

On a GPU box (torchvision installed) stock ``AutoProcessor.from_pretrained(dir)`` builds the stock
``Qwen*VLProcessor`` from the saved name; here torchvision is broken, so the subprocess test loads what
transformers can load without it (model, image processor, tokenizer) in a Python that never imports vrl, and
checks the logits against vrl's own processing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from vrl.models.loading import load_vlm, save_vlm
from vrl.models.processor import messages_from_prompt
from vrl.models.tiny import TINY_FAMILIES

STOCK = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_saved_files_name_the_stock_processor_class(family, tmp_path):
    from transformers.models.auto.processing_auto import processor_class_from_name

    save_vlm(load_vlm(f"tiny:{family}"), tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["processor_class"]
    assert saved == STOCK[family]
    # what stock AutoProcessor instantiates from that name: the transformers class, not a tokenizer fallback
    assert processor_class_from_name(saved).__module__.startswith("transformers.models.")
    texts = {f.name: f.read_text() for f in tmp_path.glob("*.json")}
    assert not [name for name, text in texts.items() if "ImageOnly" in text]


def test_saved_files_hold_the_settings_stock_autoprocessor_reads_for_its_video_processor(tmp_path):
    # Stock Qwen*VLProcessor.from_pretrained also loads a video processor (AutoVideoProcessor). Before
    # preprocessor_config.json was written, this lookup raised "Can't load video processor" on any machine.
    from transformers.video_processing_utils import BaseVideoProcessor

    vlm = load_vlm("tiny:qwen2_5_vl")
    save_vlm(vlm, tmp_path)
    settings, _ = BaseVideoProcessor.get_video_processor_dict(str(tmp_path))
    # the hub-checkpoint fallback: Qwen2VLImageProcessor -> Qwen2VLVideoProcessor, built from these settings
    assert settings["image_processor_type"] == "Qwen2VLImageProcessor"
    image = vlm.processor.image_processor
    assert (settings["patch_size"], settings["merge_size"]) == (image.patch_size, image.merge_size)
    assert settings["size"] == {"shortest_edge": image.size.shortest_edge, "longest_edge": image.size.longest_edge}


_PLAIN_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = sys.argv[1]
    model = AutoModelForImageTextToText.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    vision = image_processor(images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    n_tokens = int(vision["image_grid_thw"].prod()) // image_processor.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n_tokens)  # what the processor's expansion does
    ids = tokenizer([text], return_tensors="pt")
    # what the processor adds besides: token types, from which Qwen-VL builds its 3-D (M-RoPE) positions
    ids["mm_token_type_ids"] = (ids["input_ids"] == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(**ids, **vision).logits
    torch.save({"input_ids": ids["input_ids"], "logits": logits}, sys.argv[2])
    print(json.dumps({"vrl_imported": any(m == "vrl" or m.startswith("vrl.") for m in sys.modules)}))
    """
)


@pytest.mark.slow
def test_saved_policy_runs_with_plain_transformers_in_a_python_without_vrl(tmp_path):
    vlm = load_vlm("tiny:qwen2_5_vl", seed=3)
    policy = save_vlm(vlm, tmp_path / "policy")
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-P", "-c", _PLAIN_LOAD, str(policy), str(tmp_path / "plain.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"vrl_imported": False}
    plain = torch.load(tmp_path / "plain.pt")
    text = vlm.processor.apply_chat_template(
        messages_from_prompt("<image>What colour is it?"), add_generation_prompt=True, tokenize=False
    )
    batch = vlm.processor(text=[text], images=[[Image.new("RGB", (112, 112), "red")]], return_tensors="pt")
    assert torch.equal(plain["input_ids"], batch["input_ids"])  # same prompt tokens, image tokens included
    with torch.no_grad():
        logits = vlm.model(**batch).logits
    torch.testing.assert_close(plain["logits"], logits)
