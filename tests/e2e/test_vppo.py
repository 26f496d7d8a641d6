"""VPPO as a composable preset on the tiny VLM."""

import math
from dataclasses import replace

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

# the accuracy filter would drop every group of a random policy; filter on a varying total reward instead
VARY = [
    "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}",
    "hooks.dynamic_sampling.keys=[reward]",
    "hooks.dynamic_sampling.criterion=nonzero_std",  # the total is negative: (0.01, 0.99) would drop all
]


class Capture(L.Callback):
    def __init__(self):
        self.metrics = []

    def on_train_batch_end(self, trainer, *args):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(compose, overrides):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    cap = Capture()
    build_trainer(cfg, callbacks=[cap]).fit(module)
    return module, cap.metrics


@pytest.mark.parametrize("stack", ["+method=vppo", "+method=[dapo,vppo]"])
def test_vppo_trains_and_keeps_ceil_rho_tokens(compose, tiny_overrides, stack):
    module, metrics = _fit(compose, tiny_overrides + [stack, *VARY, "trainer.limit_val_batches=0"])
    last = metrics[-1]
    assert last["vppo/dependency_mean"] > 0  # blackening half the patches changes the log-probs
    assert 0.9 - 1e-6 <= last["vppo/alpha_min"] <= 1.0 <= last["vppo/alpha_max"]  # fp32 rounding
    assert last["perf/vppo_pass_s"] > 0


def test_top_k_mask_keeps_ceil_rho_of_each_response(compose, tiny_overrides):
    from vrl.methods.vppo import VPPO

    cfg = compose(tiny_overrides + ["+method=vppo", *VARY, "sampler.max_new_tokens=6"])
    L.seed_everything(0, verbose=False)
    module = build_module(cfg)
    build_trainer(cfg)  # attaches nothing; the module is driven by hand below
    hook = next(h for h in module.hooks.hooks if isinstance(h, VPPO))
    module.objective.suppress_ids = []
    rollout = module.sampler.generate(module.vlm, [module.train_data[i] for i in range(2)])
    rollout.old_logprobs = torch.zeros_like(rollout.response_mask)  # dependency = k3 of lp' - 0
    rollout.extras.update(hook.extra_pass(rollout, module.context()).extras)
    lengths = rollout.response_mask.sum(-1).long().tolist()
    kept = rollout.extras["vppo_token_mask"].sum(-1).long().tolist()
    # k = ceil(0.4 * L) per response: L = 6 -> 3, 5 -> 2, 3 -> 2, 1 -> 1
    assert kept == [math.ceil(0.4 * n - 1e-9) for n in lengths]
    assert bool((rollout.extras["vppo_token_mask"] <= rollout.response_mask).all())


def test_released_scale_scope_uses_the_loops_mini_and_micro_batch_sizes(compose, tiny_overrides):
    from vrl.methods.vppo import VPPO, scoped_alpha

    sizes = ["hooks.vppo.scale_scope=released", "update.mini_batch_size=4", "update.micro_batch_size=2"]
    cfg = compose(tiny_overrides + ["+method=vppo", *VARY, "sampler.max_new_tokens=6", *sizes])
    L.seed_everything(0, verbose=False)
    module = build_module(cfg)
    build_trainer(cfg)
    hook = next(h for h in module.hooks.hooks if isinstance(h, VPPO))
    module.objective.suppress_ids = []
    rollout = module.sampler.generate(module.vlm, [module.train_data[i] for i in range(2)])
    rollout.extras.update(hook.extra_pass(rollout, module.context()).extras)
    score, valid = rollout.extras["vppo_seq_score"], rollout.response_mask.sum(-1) > 0
    want = scoped_alpha(score, valid, 0.9, "released", chunk=2, mini_chunk=4)
    torch.testing.assert_close(rollout.extras["vppo_alpha"], want.to(rollout.extras["vppo_alpha"].dtype))
    assert not torch.equal(want, scoped_alpha(score, valid, 0.9, "released", chunk=2, mini_chunk=None))


def test_paired_pass_matches_two_passes(compose, tiny_overrides):
    """One no-grad pass over [rollout; perturbed] gives the old log-probs and the dependency of two passes."""
    from vrl.methods.vppo import VPPO
    from vrl.models.scoring import score_logprobs

    cfg = compose(tiny_overrides + ["+method=vppo", *VARY, "sampler.max_new_tokens=6"])
    L.seed_everything(0, verbose=False)
    module = build_module(cfg)
    build_trainer(cfg)
    hook = next(h for h in module.hooks.hooks if isinstance(h, VPPO))
    assert hook.paired_pass and not hook.needs_old_logprobs  # the loop leaves the old log-probs to the hook
    module.objective.suppress_ids = []
    rollout = module.sampler.generate(module.vlm, [module.train_data[i] for i in range(2)])
    paired = hook.extra_pass(replace(rollout, extras={}), module.context())
    separate_old = score_logprobs(module.policy, rollout, 1.0, module.micro_batch_size)
    separate = hook.extra_pass(replace(rollout, extras={}, old_logprobs=separate_old), module.context())
    assert separate.old_logprobs is None  # the loop's own pass scored them: nothing to hand back
    assert torch.allclose(paired.old_logprobs, separate_old, atol=1e-5)
    assert torch.allclose(paired.extras["visual_dependency"], separate.extras["visual_dependency"], atol=1e-4)
    assert paired.extras["visual_dependency"].sum() > 0
