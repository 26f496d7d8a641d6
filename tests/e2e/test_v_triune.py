"""V-Triune's preset trains a few steps on mixed counting + detection rows, each scored by the verifier it names."""

from __future__ import annotations

from tests.e2e.test_vppo import _fit

SMALL = [
    f"data.{split}.sources.{s}.num_samples={n}"
    for split, n in (("train", 16), ("val", 4))
    for s in ("synthetic_count", "synthetic_detection")
]


def test_v_triune_routes_rows_and_reports_per_source(compose, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("data.")] + ["+method=v_triune", *SMALL]
    module, metrics = _fit(compose, overrides)
    rows = [module.train_data[i] for i in range(len(module.train_data))]
    assert {r["data_source"] for r in rows} == {"synthetic_count", "synthetic_detection"}
    assert module.reward.row_weights_key == "reward_spec.weights"
    seen = {k for m in metrics for k in m if k.startswith("by_")}
    assert {"by_verifier/math/count", "by_verifier/detection/count"} & seen  # each step samples at least one source
    assert any(k.startswith("by_data_source/") and k.endswith("/accuracy") for k in seen)
    assert metrics[-1]["reward/errors/accuracy"] == 0.0  # every row found its verifier
