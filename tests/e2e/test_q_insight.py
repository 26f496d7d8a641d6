"""Q-Insight's preset composes and trains a few steps on the tiny VLM, score / dist / comparison rows mixed."""

from __future__ import annotations

import torch

from tests.e2e.test_vppo import _fit


def test_q_insight_trains_on_mixed_quality_tasks(compose, tiny_overrides):
    overrides = tiny_overrides + ["+method=q_insight", "data.train.tasks=[score,dist,comparison]"]
    module, metrics = _fit(compose, overrides)
    last = metrics[-1]
    assert 0.0 <= last["reward/accuracy_mean"] <= 1.0 and 0.0 <= last["reward/format_mean"] <= 1.0
    assert last["reward/errors/accuracy"] == 0.0  # every row found its task's verifier
    assert {module.train_data[i]["task"] for i in range(len(module.train_data))} == {"score", "dist", "comparison"}
    logged = module.trainer.callback_metrics  # validation at step 2 ran the correlation callback
    assert 0.0 <= float(logged["val/rating_parsed"]) <= 1.0 and -1.0 <= float(logged["val/srcc"]) <= 1.0
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
