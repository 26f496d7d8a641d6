"""model=tiny_instruct (vrl/instruct.py): cell labels by hand, a deterministic build, the cache, the config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from vrl.instruct import cell_labels, load_tiny_instruct

SMALL = {"pretrain_steps": 2, "pretrain_batch": 4, "sft_steps": 2, "sft_batch": 4}


def test_cell_labels_by_hand():
    scene = {"width": 56, "objects": [
        {"x": 14, "y": 14, "color": "red", "shape": "circle"},   # upper left: cell 0
        {"x": 42, "y": 40, "color": "blue", "shape": "star"},    # lower right: cell 3
    ]}  # fmt: skip
    colours, shapes = cell_labels(scene)
    # COLOURS = (none, red, green, blue, ...), SHAPE_NAMES = (none, circle, square, triangle, star)
    assert colours == [1, 0, 0, 3] and shapes == [1, 0, 0, 4]


def _model_args(compose):
    cfg = compose(["model=tiny_instruct"]).model
    args = {k: v for k, v in cfg.items() if k not in ("_target_", "recipe", "cache_dir")}
    args["tiny_extra_texts"] = instantiate(cfg.tiny_extra_texts)
    args["tiny_single_tokens"] = instantiate(cfg.tiny_single_tokens)
    args["seed"] = 0
    return args


def test_build_is_deterministic_cached_and_moves_the_weights(compose, tmp_path):
    from vrl.models.loading import load_vlm

    args = _model_args(compose)
    rng_before = torch.get_rng_state()
    first = load_tiny_instruct(recipe=SMALL, cache_dir=str(tmp_path / "a"), **args)
    assert torch.equal(torch.get_rng_state(), rng_before)  # building draws nothing from the run's RNG stream
    (cached,) = (tmp_path / "a").glob("*.pt")
    again = load_tiny_instruct(recipe=SMALL, cache_dir=str(tmp_path / "b"), **args)  # a second, independent build
    loaded = load_tiny_instruct(recipe=SMALL, cache_dir=str(tmp_path / "a"), **args)  # read back from the file
    state = first.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.model.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())
    assert [p.name for p in (tmp_path / "b").glob("*.pt")] == [cached.name]  # same config -> same key
    random = load_vlm(**args).model.state_dict()
    moved = {k for k in state if not torch.equal(state[k], random[k])}
    assert any(k.startswith("model.visual.") for k in moved)  # vision pretraining
    assert any(k.startswith("model.language_model.") for k in moved)  # SFT
    other = load_tiny_instruct(recipe={**SMALL, "sft_steps": 1}, cache_dir=str(tmp_path / "a"), **args)
    assert len(list((tmp_path / "a").glob("*.pt"))) == 2 and other is not None  # another recipe, another file


def test_refusals_and_the_config_freezes_vision_when_asked(compose, tmp_path):
    args = _model_args(compose)
    assert args.pop("lora")["r"] == 0  # the lora group's "none"
    with pytest.raises(ValueError, match="LoRA"):
        load_tiny_instruct(recipe=SMALL, cache_dir=None, lora={"r": 8}, **args)
    with pytest.raises(ValueError, match="tiny:<family>"):
        load_tiny_instruct(name_or_path="Qwen/Qwen2.5-VL-3B-Instruct", recipe=SMALL, cache_dir=None)
    cfg = compose(["model=tiny_instruct", f"model.cache_dir={tmp_path}", "model.freeze_vision=true",
                   *[f"model.recipe.{k}={v}" for k, v in SMALL.items()]])  # fmt: skip
    from vrl.validate import validate_config

    validate_config(compose(["model=tiny_instruct", "output_dir=/tmp/unused"]))  # every key is one the loader takes
    vlm = instantiate(cfg.model)
    assert not any(p.requires_grad for n, p in vlm.model.named_parameters() if n.startswith("model.visual."))
    assert any(p.requires_grad for n, p in vlm.model.named_parameters() if n.startswith("model.language_model."))
