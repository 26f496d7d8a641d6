"""Kernel tests run on CPU through the Triton interpreter unless a GPU is present.

TRITON_INTERPRET is read when a kernel module is imported (at @triton.jit), so it is set here, before
any test module imports vrl_kernels' kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where the kernels under test run: CUDA when present, else CPU under the interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
