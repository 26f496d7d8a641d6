"""What ``python -m vrl`` (and the ``vrl`` command) print: ``--help``, the run's lines and its summary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf"


def _run(args, cwd, command=(sys.executable, "-P", "-m", "vrl")):
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_help_describes_methods_and_groups(tmp_path):
    out = _run(["--help"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for method in sorted(p.stem for p in (CONF / "method").glob("*.yaml")):
        assert re.search(rf"^\s+{method}\s+\S", out.stdout, flags=re.M), method  # described, not just listed
    assert re.search(r"^lora: none, r64, r64_vision, r8$", out.stdout, flags=re.M)  # Hydra's group listing
    assert "Exit status" in out.stdout
    assert "Powered by Hydra" in out.stdout
    command = shutil.which("vrl")  # the console script that `pip install -e .` puts on PATH
    if command is not None:
        assert _run(["--help"], tmp_path, command=(command,)).stdout == out.stdout


@pytest.mark.slow
def test_cli_run_prints_parameters_metrics_lines_and_a_summary(tmp_path):
    args = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.train.num_samples=16",  # the progress bar stays on: the lines must show around it
        "data.val.num_samples=4",
        "data_loader.batch_size=2",
        "sampler.group_size=2",
        "console.every_n_steps=1",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.artifact_location={tmp_path}/mlartifacts",
        "update.log_rollouts_every=0",
    ]
    out = _run(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout
    assert re.search(r"\[vrl\] parameters: \S+ K trainable of \S+ K total \(100%\)$", lines, flags=re.M)
    assert re.findall(r"\[vrl\] step (\d)/2 \| reward", lines) == ["1", "2"]
    assert re.search(r"^\[vrl\] done: 2/2 steps in ", lines, flags=re.M)
    assert re.search(r"^\[vrl\] last validation: val/accuracy \S+, val/reward \S+$", lines, flags=re.M)
    policy = re.search(r"^\[vrl\] policy: (\S+) ", lines, flags=re.M).group(1)
    assert (Path(policy) / "config.json").is_file()
    run_dir = re.search(r"^\[vrl\] run directory: (\S+) ", lines, flags=re.M).group(1)
    assert (Path(run_dir) / ".hydra" / "config.yaml").is_file()
    assert f"[vrl] view it with: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in lines
