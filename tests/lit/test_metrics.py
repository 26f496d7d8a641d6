"""A step's metrics as one record (``log_step``): where Lightning's per-key logging put them, and nowhere else."""

from __future__ import annotations

import csv

import lightning as L
import torch
from hydra.utils import instantiate

from vrl.build import build_module, build_trainer


def test_one_record_per_step_reaches_the_logger_callbacks_and_progress_bar(compose, tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides + ["logger=csv", "trainer.max_steps=3", "callbacks.image_use=null"])
    L.seed_everything(cfg.seed, verbose=False)
    module, trainer = build_module(cfg), build_trainer(cfg, logger=instantiate(cfg.logger))
    trainer.fit(module)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["train/loss"]]
    # three optimizer steps -> three training records at Lightning's step count 0, 1, 2 (as self.log_dict wrote
    # them), each with Lightning's epoch key; the validation record at step 1 (val_check_interval=2) is separate
    assert [int(r["step"]) for r in train] == [0, 1, 2]
    assert all(r["epoch"] == "0" for r in train)
    assert [int(r["step"]) for r in rows if r["val/accuracy"]] == [1]
    assert all(r["rollout/reward_mean"] for r in train) and all(not r["val/accuracy"] for r in train)
    # callbacks and stage rules read the last step's values (tensors, as Lightning stores them) ...
    logged = trainer.callback_metrics
    assert isinstance(logged["train/loss"], torch.Tensor)
    assert float(logged["train/loss"]) == float(train[-1]["train/loss"])
    # ... and the progress bar shows reward and loss, which the logger does not get
    assert set(trainer.progress_bar_metrics) >= {"reward", "loss"} and "reward" not in rows[0]
    assert float(trainer.progress_bar_metrics["reward"]) == float(train[-1]["rollout/reward_mean"])


def test_stage_builder_counts_add_up_over_ranks():
    from vrl.lit.metrics import merge_scalars

    # rank 0 built 3 pairs from its shard, rank 1 built 5: the run built 8 (not their mean, 4); a rate stays a mean
    merged = merge_scalars([{"dpo/pairs_built": 3.0, "sft/kept": 2.0, "sft/judge_mean": 0.5},
                            {"dpo/pairs_built": 5.0, "sft/kept": 1.0, "sft/judge_mean": 0.7}])  # fmt: skip
    assert merged == {"dpo/pairs_built": 8.0, "sft/kept": 3.0, "sft/judge_mean": 0.6}
