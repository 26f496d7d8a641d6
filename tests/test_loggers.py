"""``logger=csv|tensorboard|wandb``: Lightning's own loggers as config options; MLflow stays the default."""

import csv
import importlib.util

import pytest
from hydra.utils import instantiate

from vrl.errors import ConfigError


def test_csv_logger_writes_every_step_and_the_summary_names_it(compose, tiny_overrides, tmp_path, capsys):
    from vrl.train import run

    cfg = compose([*tiny_overrides, "logger=csv", "update.log_rollouts_every=1"])
    metrics = run(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == [0, 1]  # one row per optimizer step (the rollout table is MLflow's: skipped here)
    assert any(r.get("val/accuracy") for r in rows)
    assert "val/accuracy" in metrics
    assert f"[vrl] metrics: {(tmp_path / 'csv' / 'version_0').resolve()} (CSVLogger)" in capsys.readouterr().out


@pytest.mark.parametrize(("option", "package"), [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_logger_whose_package_is_missing_stops_in_one_line(compose, tmp_path, option, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    cfg = compose([f"output_dir={tmp_path}", f"logger={option}"])
    with pytest.raises(Exception) as info:  # noqa: PT011 - Hydra wraps what the builder raises
        instantiate(cfg.logger)
    err = info.value
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    assert err is not None, info.value
    assert f"logger={option} needs the {package} package" in str(err)
    assert f"pip install {package}" in str(err)
