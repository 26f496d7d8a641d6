"""ViCrit's preset composes and trains a few steps on the tiny VLM and the synthetic caption-corruption rows."""

from __future__ import annotations

import torch

from tests.e2e.test_vppo import _fit


def test_vicrit_trains_on_synthetic_caption_corruption(compose, tiny_overrides):
    module, metrics = _fit(compose, tiny_overrides + ["+method=vicrit", "data.train.difficulties=[1]"])
    last = metrics[-1]
    for term in ("accuracy", "relaxed", "format"):  # exact span, the bench's relaxed score (weight 0), format
        assert 0.0 <= last[f"reward/{term}_mean"] <= 1.0
    assert last["reward/errors/relaxed"] == 0.0  # every synthetic row carries its noun phrases
    assert module.train_data[0]["task"] == "vicrit"
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
