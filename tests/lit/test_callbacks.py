"""The ``callbacks`` config group: named nodes, each instantiated by ``build_trainer``."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from vrl.build import build_trainer
from vrl.lit.checkpoint import Checkpoints


def _of(trainer, cls):
    return [c for c in trainer.callbacks if isinstance(c, cls)]


def test_default_group_builds_checkpoints_progress_bar_and_lr_monitor(compose, tmp_path):
    cfg = compose([f"output_dir={tmp_path}", "ckpt_every=7"])
    trainer = build_trainer(cfg, CSVLogger(tmp_path))
    (keeper,) = _of(trainer, Checkpoints)
    assert keeper.every_n_steps == 7 and keeper.dirpath == tmp_path / "checkpoints"  # ckpt_every is the alias
    assert _of(trainer, TQDMProgressBar)[0].refresh_rate == 5
    assert len(_of(trainer, LearningRateMonitor)) == 1


def test_lr_monitor_and_progress_bar_left_out_where_lightning_would_refuse_them(compose, tmp_path, caplog):
    # Lightning raises for an LR monitor without a logger and for a progress bar with enable_progress_bar=false
    cfg = compose([f"output_dir={tmp_path}", "trainer.enable_progress_bar=false"])
    with caplog.at_level(logging.INFO, logger="vrl"):
        trainer = build_trainer(cfg)
    assert not _of(trainer, LearningRateMonitor) and not _of(trainer, TQDMProgressBar)
    assert any("callbacks.lr_monitor" in r.getMessage() for r in caplog.records)
    assert len(_of(trainer, Checkpoints)) == 1


def test_entries_switch_off_and_a_passed_checkpoints_replaces_the_configs(compose, tmp_path):
    assert not _of(build_trainer(compose([f"output_dir={tmp_path}", "callbacks=none"])), Checkpoints)
    cfg = compose([f"output_dir={tmp_path}", "callbacks.progress_bar=null"])
    mine = Checkpoints(tmp_path / "mine", every_n_steps=3)
    trainer = build_trainer(cfg, callbacks=[mine])
    assert _of(trainer, Checkpoints) == [mine]
    assert not any(type(c) is TQDMProgressBar and c.refresh_rate == 5 for c in trainer.callbacks)
