"""Model-based judges are parts of the training module: registered, frozen, moved with it, left out of checkpoints,
rebuilt on resume (vrl/lit/attach.py); policy judges are bound to the policy itself."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.judges import LocalJudge, PolicyJudge
from vrl.lit.attach import attach_models, find_models

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"
JUDGE_PATH = "reward__terms__visual__judge"


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random causal LM and its tokenizer saved to disk: the judge is rebuilt from this path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parents[1] / "judges"))
        model, tokenizer = importlib.import_module("_openai_server").tiny_causal_lm(seed=3)
    path = tmp_path_factory.mktemp("judge")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _overrides(tiny_overrides, judge_dir, out):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    return base + [
        f"output_dir={out}",
        "+method=perception_r1",
        "judge@reward.visual.judge=local",
        f"reward.visual.judge.model={judge_dir}",
        "reward.visual.judge.max_new_tokens=3",
        "trainer.limit_val_batches=0",
        LENGTH_REWARD,
    ]


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, trainer


def test_find_models_walks_rewards_hooks_and_lists_once():
    local = LocalJudge("some/path", {"system": "s"})
    policy = PolicyJudge()

    class Term:  # a test-local class is not under vrl.*: the walk does not look inside it
        judge = local

    from vrl.rewards.perception import VisualPerception

    term = VisualPerception(judge=local)
    found = find_models({"reward": {"visual": term, "other": Term()}, "hooks": [policy, policy]})
    assert found == [("reward.visual.judge", local), ("hooks.0", policy)]  # the second `policy` is the same object
    stage = {"hooks": [{"stages": {"late": {"reward": {"terms": {"visual": term}}}}}]}  # a curriculum stage's reward
    assert find_models(stage) == [("hooks.0.stages.late.reward.terms.visual.judge", local)]
    assert find_models({"rows": [{"j": term}] * 300}) == []  # long containers (data rows) are not searched


def test_policy_judge_is_bound_without_a_copy(tiny_lm_vlm):
    judge = PolicyJudge()
    models = attach_models({"advantage": [judge]}, tiny_lm_vlm)
    assert len(models) == 0 and judge.model is tiny_lm_vlm.model  # bound to the policy itself, nothing registered


@pytest.fixture
def tiny_lm_vlm():
    from vrl.models.loading import load_vlm

    return load_vlm("tiny:qwen2_vl")


def test_local_judge_is_a_frozen_submodule_moved_with_the_module_and_left_out_of_checkpoints(
    compose, tiny_overrides, judge_dir, tmp_path
):
    cfg = compose(_overrides(tiny_overrides, judge_dir, tmp_path) + ["trainer.max_steps=1"])
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    build_trainer(cfg).fit(module)
    judge_model = module.reward.terms["visual"].judge._model
    assert module.judges[JUDGE_PATH] is judge_model  # the judge's own model object, registered (no copy)
    names = {n for n, _ in module.named_parameters()}
    judge_names = {f"judges.{JUDGE_PATH}.{n}" for n, _ in judge_model.named_parameters()}
    assert judge_names and judge_names <= names
    assert all(not p.requires_grad for p in judge_model.parameters())
    assert {p.device for p in judge_model.parameters()} == {module.device}
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("judges.") for k in checkpoint["state_dict"])
    module.to(torch.float64)  # a move of the module (dtype here; a device on GPU) reaches the judge's weights
    assert {p.dtype for p in judge_model.parameters()} == {torch.float64}
    # FSDP1's wrap policy over the whole module (Lightning's FSDPStrategy with NoSplitPolicy, set by hand) would make
    # the judge's decoder layers units of their own, as the policy's. trainer=fsdp (FSDP2, vrl/lit/fsdp.py) shards the
    # policy and the reference only: a judge's forwards are not lock-step across ranks, so its model stays whole.
    from vrl.models.sharding import NoSplitPolicy

    wrap = NoSplitPolicy()
    wrap(module, recurse=True)  # the root first: the names are read from every submodule, the judge's included
    units = [n for n, m in module.named_modules() if wrap(m, recurse=False)]
    judge_layers = len(judge_model.model.layers)
    assert sum(n.startswith(f"judges.{JUDGE_PATH}.") for n in units) == judge_layers > 0
    assert any(n.startswith("policy.") for n in units)


@pytest.mark.slow
def test_resume_with_a_local_judge_is_exact(compose, tiny_overrides, judge_dir, tmp_path):
    base = _overrides(tiny_overrides, judge_dir, tmp_path / "a") + ["ckpt_every=1"]
    straight, _ = _train(compose, base + ["trainer.max_steps=2"])
    other = [o if not o.startswith("output_dir") else f"output_dir={tmp_path / 'b'}" for o in base]
    _train(compose, other + ["trainer.max_steps=1"])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("judges.") for k in torch.load(ckpt, weights_only=False)["state_dict"])
    resumed, _ = _train(compose, other + ["trainer.max_steps=2"], ckpt_path=ckpt)  # the judge is rebuilt from its path
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    assert not [n for n in a if not torch.equal(a[n], b[n])]
    ja, jb = straight.judges[JUDGE_PATH].state_dict(), resumed.judges[JUDGE_PATH].state_dict()
    assert all(torch.equal(ja[k], jb[k]) for k in ja)
