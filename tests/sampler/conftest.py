"""Fixtures of the sampler tests: the stand-in rollout server's class and the model it serves (built once)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vlm_server():
    """``_vlm_server.VLMServer`` (tests are imported without their folder on sys.path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parent))
        yield importlib.import_module("_vlm_server").VLMServer


@pytest.fixture(scope="session")
def served_vlm():
    """The served model: the default run's tiny Qwen2.5-VL base (the policy's config and seed, no LoRA). Servers
    only read it: adapters load onto copies, and a full reload replaces the server's own reference."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=none"])
    return instantiate(cfg.model)
