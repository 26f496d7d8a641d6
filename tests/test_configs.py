"""Configs are code: every preset composes, every ``_target_`` binds to its constructor, and the composed
configs are kept as reviewable snapshots (regenerate with ``VRL_UPDATE_SNAPSHOTS=1 pytest tests/test_configs.py``)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
SNAPSHOTS = Path(__file__).parent / "snapshots"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
GROUP_OPTIONS = [
    (group, p.stem)
    for group in (
        "model",
        "data",
        "advantage",
        "policy_loss",
        "loss_agg",
        "kl",
        "reward",
        "scheduler",
        "kernels",
        "callbacks",
        "lora",
        "experiment",
    )
    for p in sorted((CONF / group).glob("*.yaml"))
]
COMPOSITIONS = [[]] + [[f"+method={m}"] for m in METHODS] + [["+method=[grpo,dr_grpo]"]]


def walk(node, path=""):
    """Yield (path, node) for every dict carrying a ``_target_``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def bind_all(cfg) -> int:
    tree = OmegaConf.to_container(cfg, resolve=False)
    count = 0
    for path, node in walk(tree):
        assert node["_target_"].startswith(("vrl.", "torch.", "lightning.")), f"{path}: {node['_target_']}"
        kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
        target = get_object(node["_target_"])
        inspect.signature(target).bind_partial(**kwargs)  # TypeError names an unknown key
        count += 1
    return count


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=lambda o: ",".join(o) or "base")
def test_every_preset_composes_and_binds(compose, overrides):
    cfg = compose(overrides)
    assert bind_all(cfg) >= 8  # model, rollout, advantage, policy_loss, loss_agg, optimizer, trainer, data...


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=lambda x: str(x))
def test_every_group_option_composes_and_binds(compose, group, option):
    bind_all(compose([f"{group}={option}"]))


M = "vrl.methods."


def test_method_presets_choose_axes(compose):
    dr = compose(["+method=dr_grpo"])
    assert dr.advantage._target_ == M + "advantage.GroupMean"
    assert dr.loss_agg._target_ == M + "loss_agg.SeqMeanTokenSumNorm"
    assert not dr.kl
    grpo = compose(["+method=grpo"])
    assert grpo.kl._target_ == M + "kl.K3" and grpo.loss_agg._target_ == M + "loss_agg.SeqMeanTokenMean"


def test_stacked_presets_later_wins_and_command_line_wins_last(compose):
    stacked = compose(["+method=[grpo,dr_grpo]"])
    assert stacked.advantage._target_ == M + "advantage.GroupMean"  # dr_grpo came last
    assert not stacked.kl
    cli = compose(["+method=dr_grpo", "loss_agg=token_mean"])
    assert cli.loss_agg._target_ == M + "loss_agg.TokenMean"


def test_dapo_overlong_cap_is_the_whole_response_region_of_a_multi_turn_sampler(compose):
    # single turn: the cap is max_new_tokens; multi-turn: the policy's turns together may take up to
    # max_total_tokens (e.g. zoom: 3 turns x 64 tokens per turn > 64), so the cap is the region, not one turn
    single = compose(["+method=dapo", "sampler.max_new_tokens=48"])
    assert single.reward.overlong.max_len == 48
    multi = compose(["+method=[zoom,dapo]", "sampler.max_new_tokens=64", "sampler.max_total_tokens=300"])
    assert multi.reward.overlong.max_len == 300


def test_objective_node_follows_the_groups_and_the_sampling_temperature(compose):
    from hydra.utils import instantiate

    from vrl.methods.kl import K3
    from vrl.methods.loss_agg import SeqMeanTokenMean
    from vrl.methods.policy_loss import PPOClip

    cfg = compose(["+method=vppo", "kl=k3", "kl.coef=0.1", "sampler.temperature=0.7"])
    objective = instantiate(cfg.objective)
    assert objective.policy_loss == PPOClip(0.2, 0.28, 3.0) and objective.kl == K3(coef=0.1)
    assert objective.temperature == 0.7 and objective.kernel_impl == "torch" and objective.nll_coef == 0.06
    assert instantiate(compose(["+method=grpo"]).objective).loss_agg == SeqMeanTokenMean()
    assert instantiate(compose([]).objective).kl is None  # kl=none


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=lambda o: ",".join(o) or "base")
def test_composed_config_matches_snapshot(compose, overrides):
    name = ("base" if not overrides else overrides[0].split("=", 1)[1]).replace("[", "").replace("]", "")
    text = OmegaConf.to_yaml(compose(overrides), resolve=False)
    path = SNAPSHOTS / f"{name.replace(',', '+')}.yaml"
    if os.environ.get("VRL_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(text)
        if not os.environ.get("VRL_UPDATE_SNAPSHOTS"):
            pytest.fail(f"snapshot {path.name} was missing and has been written; review and commit it")
    assert text == path.read_text(), f"composed config changed; review and run VRL_UPDATE_SNAPSHOTS=1 ({path.name})"


def test_lora_is_a_group_and_its_keys_take_dotted_overrides(compose):
    assert compose([]).model.lora.r == 0  # conf/lora/none.yaml: no LoRA
    dotted = compose(["model.lora.r=8"]).model.lora  # the override that failed with "Key 'r' is not in struct"
    assert (dotted.r, dotted.alpha, dotted.include_vision) == (8, None, False)
    assert compose(["lora=r64"]).model.lora.r == 64
    assert compose(["lora=r64_vision", "model.lora.dropout=0.05"]).model.lora.include_vision
    assert compose(["model=qwen2_5_vl_7b", "lora=r8"]).model.lora.r == 8  # the group follows any model


def test_help_lists_every_method_and_group():
    text = (CONF / "hydra" / "help" / "vrl.yaml").read_text()
    missing = [m for m in METHODS if f"\n    {m} " not in text]
    assert not missing, f"--help does not describe {missing}"
    assert "$APP_CONFIG_GROUPS" in text  # Hydra fills in every group with its options


def test_real_model_recipes_compose_validate_and_differ_only_in_the_model(compose):
    from vrl.validate import validate_config

    three, seven = (compose([f"experiment=grpo_synthetic_qwen2_5_vl_{s}", "output_dir=/tmp/x"]) for s in ("3b", "7b"))
    for cfg in (three, seven):
        validate_config(cfg)  # no weights needed: the model is not built
        assert (cfg.model.lora.r, cfg.model.freeze_vision, cfg.model.dtype) == (64, True, "bfloat16")
        assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert (three.model.name_or_path, seven.model.name_or_path) == (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "Qwen/Qwen2.5-VL-7B-Instruct",
    )
    a, b = (OmegaConf.to_container(c, resolve=False) for c in (three, seven))
    a.pop("model"), b.pop("model")
    assert a == b  # the 7B recipe changes the model and nothing else
