"""PEARL and its stacks on the tiny VLM: the real loop, real generate, real probes."""

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.data.source import PromptSource

# One-item probes answered by their first word: what a tiny one-word policy can produce.
TINY_PROBES = ["hooks.pearl.group_size=3", "hooks.pearl.max_items=1", "hooks.pearl.plain_single=true",
               "hooks.pearl.fallback=first_word"]  # fmt: skip
# A random policy almost never answers right: a varying length term gives every group signal.
VARY = ["+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}", "hooks.dynamic_sampling.keys=[reward]",
        "hooks.dynamic_sampling.criterion=nonzero_std"]  # fmt: skip


class Capture(L.Callback):
    def __init__(self):
        self.metrics = []

    def on_train_batch_end(self, trainer, *args):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.parametrize("stack", ["+method=pearl", "+method=[vppo,pearl]", "+method=[dapo,pearl]"])
def test_stacks_train_with_probes_attached(compose, tiny_overrides, stack):
    cfg = compose(
        tiny_overrides + [stack, *TINY_PROBES, *VARY, "hooks.pearl.gate=false", "trainer.limit_val_batches=0"]
    )
    L.seed_everything(0, verbose=False)
    module = build_module(cfg)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    cap = Capture()
    build_trainer(cfg, callbacks=[cap]).fit(module)
    last = cap.metrics[-1]
    # B = 2 prompts x (G = 4 main + G_p = 3 probes): probe share 3 / 7 of the sequences
    assert last["pearl/probe_seq_frac"] == pytest.approx(3 / 7)
    assert last["pearl/gate_pass"] == 1.0  # gate off
    assert 0.5 <= last["pearl/reweight_mean"] <= 1.0  # max(P, tau = 0.5)
    assert "reward/probe_accuracy_mean" not in last  # step metrics are over the main branch
    moved = [n for n, p in module.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved
    assert module.hooks.state_dict()["pearl"]["draws"] >= 2  # one probe draw per step at least


def _driven(compose, tiny_overrides, extra):
    cfg = compose(tiny_overrides + ["+method=[vppo,pearl]", *TINY_PROBES, *VARY, *extra])
    L.seed_everything(0, verbose=False)
    module = build_module(cfg)
    build_trainer(cfg)
    module.prompts = PromptSource(module.train_data, module.batch_size, seed=0)
    module.objective.suppress_ids = []
    return module


def test_gate_drops_prompts_before_reasoning_and_refills(compose, tiny_overrides):
    # threshold 1: no prompt's mean probe score exceeds it; bypass 0: the gate always applies
    module = _driven(compose, tiny_overrides, ["hooks.pearl.gate_threshold=1.0", "hooks.pearl.bypass_prob=0.0"])
    assert module.make_rollout(module.context()) is None
    # max_tries = 3 draws of B = 2 prompts, none of which reached generation
    assert module.prompts.rows_drawn == 6
    assert module._sampling_stats == {"rollout/kept_group_frac": 0.0, "rollout/generate_calls": 3}


def test_vppo_shapes_only_the_main_branch(compose, tiny_overrides):
    module = _driven(compose, tiny_overrides, ["hooks.pearl.gate=false", "sampler.max_new_tokens=6"])
    ctx = module.context()
    rollout = module.make_rollout(ctx)
    module.score_passes(rollout, ctx)
    probe = rollout.branch == 1
    assert probe.sum() == 2 * 3  # B x G_p
    assert torch.equal(rollout.extras["vppo_token_mask"][probe], rollout.response_mask[probe])
    assert bool((rollout.extras["vppo_alpha"][probe] == 1).all())
    # main rows: ceil(0.4 * L_i) tokens kept, alphas in [0.9, ...] averaging 1 over the main rows
    main_alpha = rollout.extras["vppo_alpha"][~probe]
    assert main_alpha.min() >= 0.9 - 1e-6 and main_alpha.mean() == pytest.approx(1.0, abs=1e-5)
    # the paired pass filled the old log-probs of every row, probes included
    assert rollout.old_logprobs.shape == rollout.response_mask.shape


def test_zero_probe_coef_leaves_the_main_gradient_untouched(compose, tiny_overrides):
    module = _driven(compose, tiny_overrides, ["hooks.pearl.gate=false", "hooks.pearl.probe_coef=0.0"])
    ctx = module.context()
    rollout = module.make_rollout(ctx)
    module.score_passes(rollout, ctx)
    rollout.advantages = module.advantage(rollout.rewards, rollout.advantage_groups())
    rollout.advantages = rollout.advantages * module.hooks.advantage_factor(rollout, ctx)
    rollout.loss_mask, rollout.norm_mask = module.hooks.token_weights(rollout, ctx)

    def grads(r):
        module.policy.zero_grad(set_to_none=True)
        norm = module.objective.normalizer(r, module.sampler.max_new_tokens)
        if r.branch is not None:
            norm = norm[r.branch]
        loss, _, _ = module.objective(module.policy, r, norm)
        loss.backward()
        return {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None}

    both, main = grads(rollout), grads(rollout.main())
    # lambda = 0: the probe rows add nothing, and the main rows keep their own denominator (main tokens only)
    assert both.keys() == main.keys()
    assert all(torch.allclose(both[n], main[n], atol=1e-6, rtol=1e-4) for n in both)
    assert any(float(g.abs().sum()) > 0 for g in main.values())
