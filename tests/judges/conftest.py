"""Fixtures of the judge tests: the tiny causal LM (built once) and the helper server module."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def server_module():
    """``_openai_server``, importable by name (tests are imported without their folder on sys.path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parent))
        yield importlib.import_module("_openai_server")


@pytest.fixture(scope="session")
def tiny_lm(server_module):
    """(model, tokenizer) of a random 2-layer Qwen2 causal LM; shared, never trained."""
    return server_module.tiny_causal_lm(seed=0)


@pytest.fixture
def prompt():
    from vrl.judges import JudgePrompt

    return JudgePrompt(
        system="Say for each item whether the response states it, as <info1>1 or 0</info1>.",
        examples=[{"annotations": ["the circle is red"], "response": "a red circle", "judgement": [1]}],
    )
