"""Dispatch rules, the package name guard, the no-Triton import path and a CPU proxy for "no host syncs"."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vrl_kernels
from vrl_kernels import (
    dual_vocab_stats,
    masked_grpo_loss,
    segmented_topk_mask_and_shape,
    vocab_stats,
)
from vrl_kernels._dispatch import resolve_impl

REPO = Path(__file__).resolve().parents[2]


def test_resolve_impl_rules(monkeypatch):
    cpu = torch.zeros(2)
    assert resolve_impl("torch", cpu) == "torch"
    assert resolve_impl("auto", cpu) == "torch"  # CPU tensors always take the reference under auto
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", cpu) == "triton"
    with pytest.raises(ValueError, match="supports"):
        resolve_impl("triton", cpu.double())
    with pytest.raises(ValueError, match="limits"):
        resolve_impl("triton", cpu, max_ok=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", cpu)
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", cpu)


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_and_reference_work_without_triton(tmp_path):
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` fail, as on a machine without it
import torch, vrl_kernels
assert not vrl_kernels.triton_available()
x = torch.randn(3, 4, 11)
ids = torch.randint(0, 11, (3, 4))
vrl_kernels.dual_vocab_stats(x, x, ids)
vrl_kernels.segmented_topk_mask_and_shape(torch.rand(3, 4), torch.ones(3, 4, dtype=torch.bool), rho=0.4)
x.requires_grad_(True)
loss, _ = vrl_kernels.masked_grpo_loss(x, ids, torch.zeros(3, 4), torch.ones(3), torch.ones(3, 4),
                                       torch.ones(3, 4), 12.0, impl="torch")
loss.backward()
try:
    vrl_kernels.vocab_stats(x.detach(), ids, impl="triton")
except RuntimeError as err:
    assert "triton" in str(err)
else:
    raise AssertionError("impl='triton' without triton must fail")
print("ok")
"""
    out = _run_python(code, tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_folder_never_shadows_the_kernels_package():
    # `python -c` puts the repo root on sys.path, where `kernels/` lives. It has no __init__.py, so at most an
    # empty namespace package comes back: none of our code, no __file__, and transformers' probe for HF's
    # `kernels` package (which imports it) still reports it absent.
    code = (
        "import kernels, transformers.utils.import_utils as iu\n"
        "assert getattr(kernels, '__file__', None) is None, kernels.__file__\n"
        "assert not hasattr(kernels, 'vocab_stats') and not hasattr(kernels, 'get_kernel')\n"
        "assert not iu.is_kernels_available()\n"
        "import vrl_kernels\n"
        "print('ok')"
    )
    out = _run_python(code, REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert Path(vrl_kernels.__file__).resolve().parent == REPO / "kernels" / "vrl_kernels"


@contextlib.contextmanager
def _forbid_host_reads():
    """Make every Tensor -> Python conversion raise: a CPU stand-in for CUDA's sync-debug mode."""

    def boom(*_args, **_kwargs):
        raise AssertionError("host read of a tensor value (a device sync on CUDA)")

    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def test_ops_read_no_tensor_values_on_the_host(device):
    x = torch.randn(2, 5, 37, device=device, requires_grad=True)
    ids = torch.randint(0, 37, (2, 5), device=device)
    resp = torch.rand(2, 5, device=device) > 0.2
    norm = resp.sum().float()
    zeros, ones = torch.zeros(2, 5, device=device), torch.ones(2, device=device)
    with _forbid_host_reads():
        for impl in ("torch", "triton"):
            vocab_stats(x.detach(), ids, row_mask=resp, impl=impl)
            dual_vocab_stats(x.detach(), x.detach(), ids, row_mask=resp, impl=impl)
            out = segmented_topk_mask_and_shape(torch.rand(2, 5, device=device), resp, rho=0.4, impl=impl)
            loss, _ = masked_grpo_loss(
                x, ids, zeros, ones, out.token_mask, resp.float(), norm,
                advantage_scale=out.alpha, nll_coef=0.1, impl=impl,
            )  # fmt: skip
            loss.backward()
