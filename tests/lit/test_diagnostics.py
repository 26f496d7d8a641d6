"""Image-use diagnostics (vrl/lit/diagnostics.py): counterfactual rows, the KL, and diag/* in a real MLflow run."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from vrl.lit.diagnostics import (
    ImageUseDiagnostics,
    blank_rows,
    diagnostic_rows,
    image_use_metrics,
    shuffled_rows,
    token_kl,
)
from vrl.rewards.combine import RewardSet


def _img(colour):
    return Image.new("RGB", (56, 56), colour)


def test_shuffle_is_a_cyclic_shift_within_rows_of_equal_image_count():
    a, b, c, d, e, f = (_img((k, 0, 0)) for k in range(6))
    rows = [{"images": [a]}, {"images": [b]}, {"images": []}, {"images": [c]}, {"images": [d, e]}, {"images": [f]}]
    out, moved = shuffled_rows(rows)
    # one-image rows are 0, 1, 3, 5: 0 <- 1, 1 <- 3, 3 <- 5, 5 <- 0; the text row and the lone two-image row stay
    assert [r["images"] for r in out] == [[b], [c], [], [f], [d, e], [a]]
    assert moved == [True, True, False, True, False, True]
    assert rows[0]["images"] == [a]  # the caller's rows are untouched


def test_blank_rows_keep_sizes_and_fill():
    (row,) = blank_rows([{"images": [Image.new("RGB", (30, 20), (255, 0, 0))], "answer": "red"}], (1, 2, 3))
    assert row["answer"] == "red" and row["images"][0].size == (30, 20)
    assert set(row["images"][0].getdata()) == {(1, 2, 3)}


def test_token_kl_by_hand_and_masked():
    # p = softmax([0, 0]) = (1/2, 1/2); q = softmax([ln 3, 0]) = (3/4, 1/4)
    # KL(p||q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3) = 0.1438410
    p = torch.zeros(1, 2, 2)
    q = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
    kl = token_kl(p, q, torch.tensor([[1.0, 0.0]]))
    assert kl[0, 0].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert kl[0, 1].item() == 0.0  # masked position
    assert token_kl(q, q, torch.ones(1, 2)).abs().max().item() == 0.0


@pytest.fixture
def tiny(compose):
    import lightning as L

    cfg = compose(["data.val.num_samples=8"])
    L.seed_everything(0, verbose=False)
    vlm, sampler = instantiate(cfg.model), instantiate(cfg.sampler)
    reward = RewardSet(instantiate(cfg.reward))
    rows = diagnostic_rows(instantiate(cfg.data.val), 6)
    return vlm, sampler, reward, rows


def test_kl_is_zero_exactly_when_the_counterfactual_image_is_the_same(tiny):
    vlm, sampler, reward, rows = tiny
    vlm.model.train()  # as in a run: the passes switch to eval mode and back
    grey = [{**r, "images": [Image.new("RGB", r["images"][0].size, (128, 128, 128))]} for r in rows]
    # every image is already the blank one: blanking changes nothing and shuffling swaps identical images
    same = image_use_metrics(vlm, sampler, reward, grey, blank_fill=(128, 128, 128))
    assert same["diag/blank/kl"] == 0.0 and same["diag/shuffled/kl"] == 0.0
    assert same["diag/blank/accuracy"] == same["diag/accuracy"] == same["diag/shuffled/accuracy"]
    # the random tiny policy's next-token distribution depends on the picture: distinct images give KL > 0
    real = image_use_metrics(vlm, sampler, reward, rows)
    assert real["diag/blank/kl"] > 1e-7 and real["diag/shuffled/kl"] > 1e-7
    assert 0.0 <= real["diag/accuracy"] <= 1.0
    assert vlm.model.training  # the policy's mode is restored


def test_diag_metrics_appear_in_a_real_mlflow_run(compose, tiny_overrides, tmp_path):
    from mlflow import MlflowClient

    from vrl.train import run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [o for o in tiny_overrides if o != "logger=none"] + [
        "logger=mlflow",
        f"logger.tracking_uri={uri}",
        f"logger.artifact_location={tmp_path}/art",
        "logger.experiment_name=diag",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        "callbacks.image_use.at_start=true",
        "callbacks.image_use.every_n_steps=2",
        "callbacks.image_use.num_rows=4",
    ]
    run(compose(overrides))
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("diag").experiment_id])
    for key in ("diag/accuracy", "diag/blank/kl", "diag/shuffled/kl", "diag/blank/accuracy"):
        steps = [m.step for m in client.get_metric_history(found.info.run_id, key)]
        assert steps == [0, 2], key  # before the first step (at_start) and every 2 steps


def test_off_switches(compose, tiny_overrides):
    from vrl.build import build_trainer

    made = [c for c in build_trainer(compose(tiny_overrides)).callbacks if isinstance(c, ImageUseDiagnostics)]
    assert len(made) == 1 and made[0].every_n_steps == 50  # on by default
    off = build_trainer(compose([*tiny_overrides, "callbacks.image_use=null"])).callbacks
    assert not any(isinstance(c, ImageUseDiagnostics) for c in off)
    with pytest.raises(ValueError, match="callbacks.image_use"):
        ImageUseDiagnostics(every_n_steps=-1)
