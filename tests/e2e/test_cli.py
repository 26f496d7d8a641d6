"""The command line as users type it: ``python -m vrl`` with appended, stacked and swept presets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAST = [
    "logger=none",
    "save_policy=false",
    "trainer.max_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "data.train.num_samples=16",
    "data_loader.batch_size=2",
    "sampler.group_size=2",
]


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": ""}
    # -P: do not put the working directory on sys.path (a user may run from any folder)
    return subprocess.run(
        [sys.executable, "-P", "-m", "vrl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_multirun_sweeps_stacked_presets_into_multirun_dir(tmp_path):
    out = _run(["--multirun", "+method=grpo,dr_grpo", "seed=1,2", *FAST], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    job_dirs = [p for p in (tmp_path / "multirun").glob("*/*/*") if p.is_dir()]
    assert sorted(p.name for p in job_dirs) == ["0", "1", "2", "3"]
    overrides = [(p / ".hydra" / "overrides.yaml").read_text() for p in job_dirs]
    assert sum("+method=dr_grpo" in o for o in overrides) == 2
    assert sum("seed=2" in o for o in overrides) == 2


@pytest.mark.slow
def test_stacked_presets_run_and_plain_method_name_suggests_plus(tmp_path):
    ok = _run(["+method=[grpo,dr_grpo]", *FAST], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    cfg = next(Path(tmp_path, "outputs").glob("*/*/.hydra/config.yaml")).read_text()
    assert "_target_: vrl.methods.advantage.GroupMean" in cfg  # dr_grpo, listed last, wins the shared advantage axis
    bad = _run(["method=grpo", *FAST], tmp_path)
    assert bad.returncode != 0
    assert "+method=grpo" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text", "message"),
    [("empty.jsonl", "", "empty.jsonl is empty"), ("missing.jsonl", None, "matches no file")],
)
def test_unusable_data_file_is_one_line_exit_2(tmp_path, name, text, message):
    # Raised inside Hydra's instantiate of data.train, which wraps it: still one line, exit 2, no traceback.
    if text is not None:
        (tmp_path / name).write_text(text)
    out = _run(["experiment=none", "data=rlvr_local", f"data.train.path={tmp_path / name}", "data.val=null",
                "logger=none"], tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    said = [
        line for line in out.stderr.splitlines() if line.strip() and "[INFO]" not in line and "[WARNING]" not in line
    ]
    assert len(said) == 1 and said[0].startswith("[vrl] data error: ") and message in said[0], said
