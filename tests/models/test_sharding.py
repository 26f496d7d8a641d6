"""trainer=fsdp / trainer=ddp: the configs compose, the wrap policy finds Qwen-VL's decoder layers and vision blocks
on the tiny models (CPU), activation checkpointing through it leaves gradients unchanged, FSDP2's units; a 1-GPU
FSDP run where CUDA is present (gpu marker). Two sharded CPU ranks against one process: tests/lit/test_fsdp.py."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from vrl.models.sharding import NoSplitPolicy, no_split_classes, no_split_names
from vrl.models.tiny import build_tiny_tokenizer, build_tiny_vlm

UNITS = {
    "qwen2_vl": {"Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"},
    "qwen2_5_vl": {"Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"},
    "qwen3_vl": {"Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"},
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("family", sorted(UNITS))
def test_the_wrap_policy_finds_the_decoder_layers_and_vision_blocks(tokenizer, family):
    model = build_tiny_vlm(family, tokenizer)
    assert {c.__name__ for c in no_split_classes(model)} == UNITS[family]
    policy = NoSplitPolicy()
    assert policy(model, recurse=True)  # torch asks the root first, on the way down
    wrapped = [name for name, m in model.named_modules() if policy(m, recurse=False)]
    layers = model.config.text_config.num_hidden_layers
    blocks = model.config.vision_config.depth
    assert len(wrapped) == layers + blocks, wrapped
    assert policy.names == no_split_names(model)
    text_only = NoSplitPolicy(vision=False)
    text_only(model, recurse=True)
    assert sum(text_only(m, recurse=False) for m in model.modules()) == layers


def test_activation_checkpointing_through_the_policy_keeps_the_gradient(tokenizer):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    model = build_tiny_vlm("qwen2_5_vl", tokenizer).train()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = grads()
    apply_activation_checkpointing(model, checkpoint_wrapper, auto_wrap_policy=NoSplitPolicy(vision=False))
    assert sum(isinstance(m, CheckpointWrapper) for m in model.modules()) == model.config.text_config.num_hidden_layers
    after = {n.replace("._checkpoint_wrapped_module", ""): g for n, g in grads().items()}
    assert after.keys() == before.keys()
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, msg=name)


def test_the_trainer_presets_compose_and_build_their_strategies(compose):
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from vrl.lit.fsdp import FSDP2Strategy

    fsdp = compose(["trainer=fsdp"]).trainer
    assert (fsdp.accelerator, fsdp.precision) == ("gpu", "bf16-mixed")
    strategy = instantiate(fsdp.strategy)
    assert isinstance(strategy, FSDP2Strategy) and isinstance(strategy, ModelParallelStrategy)  # Lightning's FSDP2
    assert strategy.unit_names is None  # the model's _no_split_modules
    assert strategy.activation_checkpointing  # the decoder layers are recomputed in backward
    assert strategy.mp_policy() == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert strategy._save_distributed_checkpoint is False  # last.ckpt: full weights in one file
    with pytest.raises(ValueError, match="trainer.strategy.param_dtype='int8'"):
        FSDP2Strategy(param_dtype="int8")
    ddp = compose(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8"]).trainer
    assert (ddp.strategy, ddp.num_nodes, ddp.devices, ddp.accelerator) == ("ddp", 2, 8, "gpu")


@pytest.mark.gpu
@pytest.mark.slow
def test_a_one_gpu_fsdp_run_trains_and_saves_a_loadable_policy(compose, tiny_overrides, tmp_path):
    from safetensors.torch import load_file

    from vrl.train import run

    overrides = [o for o in tiny_overrides if not o.startswith("save_policy")] + ["save_policy=true"]
    overrides += ["trainer=fsdp", "trainer.devices=1"]  # saving a sharded LoRA policy is not supported yet
    overrides.append("+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}")  # a non-zero gradient
    metrics = run(compose(overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert metrics["train/grad_norm"] > 0
    weights = load_file(tmp_path / "policy" / "model.safetensors")
    assert weights and all(torch.isfinite(w.float()).all() for w in weights.values())


def test_fsdp2_shards_the_units_and_gathers_back_the_plain_model(tokenizer, tmp_path):
    # One gloo rank (fully_shard needs a process group; two ranks: tests/lit/test_fsdp.py). The units are the
    # 2 decoder layers, the vision blocks and the vision tower; the sharded model computes what the plain one does,
    # and the weights gathered back make a plain model that saves the keys transformers saves.
    import copy

    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.distributed.device_mesh import init_device_mesh

    from vrl.lit.fsdp import full_state_dict
    from vrl.models.sharding import fully_shard_units, is_sharded, synced_gpus, unsharded_model

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = build_tiny_vlm("qwen2_5_vl", tokenizer).eval()
        plain = copy.deepcopy(model)
        units = model.config.text_config.num_hidden_layers + model.config.vision_config.depth + 1
        assert fully_shard_units(model, init_device_mesh("cpu", (1,))) == units
        assert fully_shard_units(model, None) == 0  # already sharded: nothing to do
        assert is_sharded(model) and not is_sharded(plain)
        assert not synced_gpus(model)  # one rank: nobody to wait for
        ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
        back = unsharded_model(model, full_state_dict(model))
        assert type(back) is type(plain) and not is_sharded(back)
        back.save_pretrained(tmp_path / "back")
        plain.save_pretrained(tmp_path / "plain")
        a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    finally:
        dist.destroy_process_group()
