"""High-entropy token focus on the tiny VLM, stacked on DAPO as the paper does: one file + one preset."""

from __future__ import annotations

import torch

from tests.e2e.test_vppo import VARY, _fit


def test_dapo_with_entropy_focus_trains_on_the_top_fifth_of_tokens(compose, tiny_overrides):
    overrides = tiny_overrides + ["+method=[dapo,entropy_focus]", *VARY, "trainer.limit_val_batches=0"]
    module, metrics = _fit(compose, overrides)
    last = metrics[-1]
    # k = max(1, ceil(0.2 * T)) of the step's T valid tokens: a fraction in [0.2, 0.2 + 1/T]
    assert 0.2 <= last["entropy_focus/kept_token_frac"] <= 0.2 + 1 / 8
    # the loss trains on exactly those tokens: its kept fraction is the same number
    assert abs(last["policy/kept_token_frac"] - last["entropy_focus/kept_token_frac"]) < 1e-6
    assert last["entropy_focus/entropy_mean"] > 0
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
