"""Choosing between the pure-PyTorch reference and the Triton kernels.

Triton is imported lazily, only when a kernel is actually launched, so `import vrl_kernels` works on a
machine without Triton and the reference path keeps working there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

IMPLS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """True when the `triton` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpret_requested() -> bool:
    """True when `TRITON_INTERPRET=1` is set, i.e. kernels may run on CPU tensors via the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def load_kernels(name: str, like: torch.Tensor) -> ModuleType:
    """Import the kernel module `vrl_kernels.<name>` (this is where `import triton` happens).

    Args:
        name: module name inside the package, e.g. "_vocab_stats_kernels".
        like: an input tensor; CPU tensors need the module to have been imported under the interpreter.

    Raises:
        RuntimeError: when Triton is not installed, or CPU tensors meet kernels compiled for a GPU
            (TRITON_INTERPRET is read once, when the kernel module is first imported).
    """
    if not triton_available():
        raise RuntimeError(
            "impl='triton' needs the `triton` package (pip install -e '.[triton]'); use impl='torch' or 'auto'"
        )
    module = importlib.import_module(f".{name}", __package__)
    if not like.is_cuda and not module.INTERPRETED:
        raise RuntimeError(
            f"Triton kernels got CPU tensors but {module.__name__} was imported without TRITON_INTERPRET=1; "
            "set it before the first kernel launch in this process"
        )
    return module


def resolve_impl(impl: str, *tensors: torch.Tensor | None, max_ok: bool = True) -> str:
    """Turn `impl` into "torch" or "triton" for the given inputs.

    "auto" picks Triton only for CUDA tensors of a dtype the kernels accept (fp32/bf16/fp16) and when the
    shape is within the kernel's limits (`max_ok`); anything else (CPU, float64 for gradchecks, very long
    rows) goes to the reference. "triton" forces the kernel and fails loudly where it cannot run, instead
    of silently measuring the reference.

    Args:
        impl: "auto", "torch" or "triton".
        *tensors: the op's tensor inputs; None entries are ignored. The first one decides the dtype check.
        max_ok: False when a shape exceeds what the Triton kernel supports.

    Returns:
        "torch" or "triton".

    Raises:
        ValueError: unknown `impl`, or forced Triton on an unsupported dtype or shape.
        RuntimeError: forced Triton without Triton installed, or on CPU tensors without TRITON_INTERPRET=1.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    dtype_ok = present[0].dtype in TRITON_DTYPES if present else False
    if impl == "auto":
        return "triton" if on_cuda and dtype_ok and max_ok and triton_available() else "torch"
    if not dtype_ok:
        raise ValueError(f"impl='triton' supports {TRITON_DTYPES}, got {present[0].dtype if present else None}")
    if not max_ok:
        raise ValueError("impl='triton': input shape exceeds the kernel's limits (see the op's docstring)")
    if not triton_available():
        raise RuntimeError("impl='triton' needs the `triton` package; use impl='torch' or 'auto'")
    if not on_cuda and not interpret_requested():
        raise RuntimeError(
            "impl='triton' got CPU tensors: Triton needs CUDA tensors, or TRITON_INTERPRET=1 set in the "
            "environment before vrl_kernels launches its first kernel (CPU interpreter, small shapes only)"
        )
    return "triton"


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def vocab_block(n_cols: int, interpreted: bool, block_v: int | None) -> tuple[int, int]:
    """Pick (BLOCK_V, num_warps) for the row kernels; one fixed config, no autotuning.

    A single config keeps the kernels runnable under the interpreter (multi-config autotune needs a
    driver). 4096 columns x 8 warps streams a 151,936-wide bf16 row in 38 tiles with 16 elements per
    thread per tensor, a standard choice for bandwidth-bound row reductions; re-tune on the GPU.

    Args:
        n_cols: vocabulary size V.
        interpreted: True under TRITON_INTERPRET=1, where larger tiles mean fewer Python-level iterations.
        block_v: explicit override (tests use small blocks to exercise the multi-tile path).
    """
    if block_v is not None:
        if block_v <= 0 or block_v & (block_v - 1):
            raise ValueError(f"block_v must be a power of two, got {block_v}")
        return block_v, 4
    if interpreted:
        return min(next_pow2(n_cols), 16384), 4
    return min(next_pow2(n_cols), 4096), 8


def row_layout(logits: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """Describe a [N, V] or [B, L, V] logits tensor as rows for the row kernels, without copying.

    Only the vocabulary dimension must be contiguous (it is made so by a copy otherwise, which costs
    one extra read+write of the tensor); the row strides may be anything, so a response slice
    `logits[:, p:-1]` of a model output is read in place.

    Returns:
        (tensor, l_inner, stride_outer, stride_inner): row r lives at
        `(r // l_inner) * stride_outer + (r % l_inner) * stride_inner`.
    """
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [N, V] or [B, L, V], got shape {tuple(logits.shape)}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.dim() == 2:
        return logits, max(logits.shape[0], 1), 0, logits.stride(0)
    return logits, max(logits.shape[1], 1), logits.stride(0), logits.stride(1)


def flat_rows(t: torch.Tensor | None, n_rows: int, name: str) -> torch.Tensor | None:
    """A per-row (per-token) tensor as a contiguous [n_rows] vector (an O(N) copy at most)."""
    if t is None:
        return None
    if t.numel() != n_rows:
        raise ValueError(f"{name} must have one entry per row ({n_rows}), got shape {tuple(t.shape)}")
    t = t.reshape(n_rows)
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.contiguous()
