"""The hook API with hand-made StepContexts: no module, no model. Values worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from vrl.hooks import Hook, HookSet, PassResult, StageSettings, StepContext, TokenWeights, VisionLayout
from vrl.methods.perturb import NoPerturbation
from vrl.methods.vppo import VPPO
from vrl.types import Rollout


def _rollout(n: int = 2, length: int = 3, **kw) -> Rollout:
    return Rollout(
        input_ids=torch.zeros(n, 2 + length, dtype=torch.long),
        attention_mask=torch.ones(n, 2 + length, dtype=torch.long),
        response_mask=torch.ones(n, length),
        pixel_values=torch.zeros(4 * n, 6),  # one 2x2-patch image per sequence
        image_grid_thw=torch.tensor([[1, 2, 2]] * n),
        images_per_seq=torch.ones(n, dtype=torch.long),
        group_ids=torch.zeros(n, dtype=torch.long),
        samples=[{}] * n,
        responses=[""] * n,
        rewards=torch.zeros(n),
        **kw,
    )


def test_vppo_extra_pass_on_a_fake_context():
    """Old log-probs 0, perturbed log-probs chosen below; the hook returns dependency, mask and alpha."""
    perturbed = torch.tensor([[-1.0, 0.0, -2.0], [-0.1, 0.0, -0.5]])
    calls = []

    def score(rollout, pixel_values=None, micro_batch_size=None):
        calls.append(pixel_values is not None)
        return perturbed

    ctx = StepContext(score=score, vision=VisionLayout(patch_size=1, merge_size=1), micro_batch_size=2)
    hook = VPPO(NoPerturbation(), rho=0.4, beta_min=0.9, paired_pass=False)
    rollout = _rollout(old_logprobs=torch.zeros(2, 3))
    out = hook.extra_pass(rollout, ctx)
    assert calls == [True] and out.old_logprobs is None  # one perturbed pass; the loop owns old log-probs
    # k3(d) = e^d - d - 1 with d = lp' - lp: e^-1 = 0.367879, 0, e^-2 + 1 = 1.135335; 0.004837, 0, 0.106531
    want = torch.tensor([[math.exp(-1), 0.0, math.exp(-2) + 1], [math.exp(-0.1) - 0.9, 0.0, math.exp(-0.5) - 0.5]])
    torch.testing.assert_close(out.extras["visual_dependency"], want)
    # ceil(0.4 * 3) = 2 tokens per response, the two largest: positions 0 and 2 in both rows
    assert out.extras["vppo_token_mask"].tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    # means 0.501071 and 0.037123 -> S_hat 1 and 0, mu 0.5 -> alpha 0.9 + 1 * 0.1 / 0.5 = 1.1 and 0.9
    torch.testing.assert_close(out.extras["vppo_alpha"], torch.tensor([1.1, 0.9]))
    assert rollout.extras == {}  # the hook returned its results; it wrote nothing into the rollout
    rollout.extras.update(out.extras)  # what the loop does
    torch.testing.assert_close(hook.advantage_factor(rollout, ctx), torch.tensor([1.1, 0.9]))
    weights = hook.token_weights(rollout, ctx)
    assert weights.norm is None and torch.equal(weights.loss, out.extras["vppo_token_mask"])


class Factor(Hook):
    def __init__(self, value: float, order: int, log: list) -> None:
        self.value, self.order, self.log = value, order, log

    def advantage_factor(self, rollout, ctx):
        self.log.append(self.value)
        return torch.full((rollout.num_sequences,), self.value)

    def token_weights(self, rollout, ctx):
        return TokenWeights(loss=torch.full_like(rollout.response_mask, self.value), norm=rollout.response_mask * 0.5)

    def filter_groups(self, rollout, ctx):
        return torch.tensor([True, self.value > 1])


class Writer(Hook):
    order = 1

    def extra_pass(self, rollout, ctx):
        return PassResult(extras={"x": torch.ones(rollout.num_sequences)})


class Reader(Hook):
    order = 2

    def extra_pass(self, rollout, ctx):
        return PassResult(extras={"y": rollout.extras["x"] * 2})  # reads what Writer's pass produced


class Counter(Hook):
    def __init__(self) -> None:
        self.n = 0

    def on_step_start(self, ctx):
        self.n += 1
        return StageSettings(batch_size=ctx.step + 1)

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_hookset_orders_and_combines_what_hooks_return():
    seen: list[float] = []
    hooks = HookSet({"b": Factor(3.0, order=20, log=seen), "a": Factor(0.5, order=10, log=seen)})
    rollout, ctx = _rollout(), StepContext()
    torch.testing.assert_close(hooks.advantage_factor(rollout, ctx), torch.tensor([1.5, 1.5]))  # 0.5 * 3
    assert seen == [0.5, 3.0] and hooks.names == ["a", "b"]  # ascending order, not config order
    loss, norm = hooks.token_weights(rollout, ctx)
    assert torch.equal(loss, torch.full((2, 3), 1.5)) and torch.equal(norm, torch.full((2, 3), 0.25))  # 0.5^2
    assert hooks.filter_groups(rollout, ctx).tolist() == [True, False]  # AND: 0.5 drops the second
    assert HookSet({}).advantage_factor(rollout, ctx) is None and HookSet({}).filter_groups(rollout, ctx) is None


def test_extra_passes_run_one_at_a_time_so_a_later_pass_reads_an_earlier_one():
    rollout, hooks = _rollout(), HookSet({"r": Reader(), "w": Writer()})
    for result in hooks.extra_pass(rollout, StepContext()):
        rollout.extras.update(result.extras)  # the loop writes each result before the next hook runs
    assert rollout.extras["y"].tolist() == [2.0, 2.0]


def test_state_round_trips_and_only_stateful_hooks_are_saved():
    counter = Counter()
    hooks = HookSet({"count": counter, "w": Writer()})
    assert [s.batch_size for s in hooks.on_step_start(StepContext(step=4))] == [5]
    state = hooks.state_dict()
    assert state == {"count": {"n": 1}}
    fresh = HookSet({"count": Counter(), "w": Writer()})
    fresh.load_state_dict(state)
    assert fresh.hooks[0].n == 1 and fresh.max_tries == 1 and not fresh.needs_old_logprobs


def test_an_object_that_is_not_a_hook_is_refused_with_its_config_key():
    class Plain:
        order = 0

    with pytest.raises(TypeError, match="hooks.mine: Plain is not a vrl.hooks.Hook"):
        HookSet({"mine": Plain()})


def test_the_context_of_a_test_has_no_model():
    with pytest.raises(RuntimeError, match="no model"):
        StepContext().score(_rollout())
