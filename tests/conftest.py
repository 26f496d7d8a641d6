"""Test isolation: everything offline, every cache inside a temporary folder, CPU only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.mkdtemp(prefix="vrl-test-cache-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(_CACHE / "hf"),
        "VRL_CACHE_DIR": str(_CACHE / "vrl"),
        "HF_DATASETS_CACHE": str(_CACHE / "datasets"),
        "MPLCONFIGDIR": str(_CACHE / "mpl"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCHINDUCTOR_CACHE_DIR": str(_CACHE / "inductor"),
    }
)
# As `python -m vrl` does (vrl/utils/threads.py): idle OpenMP threads sleep instead of spinning, so the suite
# (and the runs it starts as subprocesses) does not collapse when the machine is shared. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`pytest -n 2`, the README's command) each worker is a process of its own: one torch thread
# each (and in the runs it starts), so 2 workers on 2 cores do not run 4 OpenMP threads (10-15x slower, measured).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

# Triton reads TRITON_INTERPRET when a @triton.jit function is defined, and any earlier test may import a
# module that defines kernels; so CPU runs switch the interpreter on here, before every test module.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_artifacts_left_behind():
    """Fail a test that writes into the repository (outputs/, mlflow.db, ...) instead of tmp_path."""
    before = {p.name for p in REPO.iterdir()}
    yield
    left = {p.name for p in REPO.iterdir()} - before - {".pytest_cache", "__pycache__"}
    assert not left, f"test left artifacts in the repository: {sorted(left)}"


def compose_config(overrides: list[str] | None = None):
    """Compose ``conf/train.yaml`` (as installed: ``vrl_conf``) with overrides, outside of a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


@pytest.fixture
def compose():
    """The config composer, as a fixture (tests are imported without the repo root on sys.path)."""
    return compose_config


@pytest.fixture
def tiny_overrides(tmp_path):
    """Shrink the default run to seconds: few prompts, short responses, no tracking."""
    return [
        f"output_dir={tmp_path}",
        "logger=none",
        "data.train.num_samples=32",
        "data.val.num_samples=8",
        "data_loader.batch_size=2",
        "sampler.group_size=4",
        "sampler.max_new_tokens=4",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "update.log_rollouts_every=0",
        "save_policy=false",
        "callbacks.image_use.at_start=false",  # 3 greedy passes per fit; tests/lit/test_diagnostics.py turns it on
    ]
