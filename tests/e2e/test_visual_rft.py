"""Visual-RFT's detection preset composes and trains a few steps on the tiny VLM and the synthetic detection rows."""

from __future__ import annotations

import torch

from tests.e2e.test_vppo import _fit


def test_visual_rft_trains_on_synthetic_detection(compose, tiny_overrides):
    module, metrics = _fit(compose, tiny_overrides + ["+method=visual_rft"])
    last = metrics[-1]
    for term in ("accuracy", "confidence", "format"):  # R_IoU (keyed accuracy), R_conf, format
        assert 0.0 <= last[f"reward/{term}_mean"] <= 1.0
    assert last["policy/kl_ref"] >= 0  # k3 to the reference (validation at step 2 scores R_IoU as val/accuracy)
    assert module.train_data[0]["answer_type"] == "detection"
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
