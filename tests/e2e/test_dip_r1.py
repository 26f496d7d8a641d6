"""DIP-R1's preset composes and trains a few steps on the tiny VLM and the crowded synthetic scenes."""

from __future__ import annotations

import torch

from tests.e2e.test_vppo import _fit


def test_dip_r1_trains_on_crowded_scenes(compose, tiny_overrides):
    module, metrics = _fit(compose, tiny_overrides + ["+method=dip_r1"])
    last = metrics[-1]
    for term in ("accuracy", "look", "format"):
        assert 0.0 <= last[f"reward/{term}_mean"] <= 1.0
    assert last["reward/errors/look"] == 0.0  # the group-aware term scored the whole batch in one call
    assert module.train_data[0]["task"] == "crowd"
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
