"""Dispatch rules, the package name guard, the no-Triton import path and a CPU proxy for "no host syncs"."""

import contextlib
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

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


def _site_packages_farm(root: Path, with_kernels: bool) -> Path:
    """A site directory that mirrors this interpreter's, with HF's ``kernels`` package present or absent.

    Every entry of site-packages is symlinked except ``kernels`` and its dist-info; with ``with_kernels`` the real
    package is linked back when installed, otherwise a minimal stand-in (an ``__init__`` with ``get_kernel`` and
    its metadata) is planted. Both environments thus exist whatever this machine has installed.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    farm = root / ("site-with" if with_kernels else "site-without")
    farm.mkdir()
    hf_kernels = [p for p in site.iterdir() if p.name == "kernels" or p.name.startswith("kernels-")]
    for entry in site.iterdir():
        if entry not in hf_kernels:
            (farm / entry.name).symlink_to(entry)
    if with_kernels and hf_kernels:
        for entry in hf_kernels:
            (farm / entry.name).symlink_to(entry)
    elif with_kernels:
        (farm / "kernels").mkdir()
        (farm / "kernels" / "__init__.py").write_text("def get_kernel(name):\n    raise NotImplementedError\n")
        (farm / "kernels-0.19.1.dist-info").mkdir()
        (farm / "kernels-0.19.1.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n"
        )
    return farm


_PROBE = """
import importlib, json, site, sys
site.addsitedir(sys.argv[1])  # python -S: only this site dir (its .pth files too, e.g. the editable vrl install)
try:
    mod = importlib.import_module("kernels")
    found = {"file": getattr(mod, "__file__", None), "get_kernel": hasattr(mod, "get_kernel"),
             "ours": any(hasattr(mod, n) for n in ("vocab_stats", "masked_grpo_loss", "vrl_kernels"))}
except ModuleNotFoundError:
    found = None
import transformers.utils.import_utils as iu
import vrl_kernels
print(json.dumps({"kernels": found, "hf_probe": iu.is_kernels_available(), "vrl_kernels": vrl_kernels.__file__}))
"""


@pytest.mark.parametrize("with_kernels", [True, False], ids=["hf-kernels-installed", "hf-kernels-absent"])
def test_folder_never_shadows_the_kernels_package(tmp_path, with_kernels):
    # The property (issue 10): our top-level kernels/ folder never stands in for HF's PyPI `kernels` package.
    # From the repository root (where `python -c` puts kernels/ on sys.path first) and from elsewhere,
    # `import kernels` is the installed package or absent (at most an empty namespace: kernels/ has no
    # __init__.py), transformers' probe gives the same answer in both places, and vrl_kernels is ours.
    farm = _site_packages_farm(tmp_path, with_kernels)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    seen = {}
    for where in (REPO, elsewhere):
        out = subprocess.run(
            [sys.executable, "-S", "-c", _PROBE, str(farm)], cwd=where, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        seen[where] = json.loads(out.stdout.strip().splitlines()[-1])
        got = seen[where]
        assert Path(got["vrl_kernels"]).resolve().parent == REPO / "kernels" / "vrl_kernels"
        if with_kernels:  # the PyPI package (or its stand-in), imported from the site directory
            assert got["kernels"]["get_kernel"] and Path(got["kernels"]["file"]).parent.parent == farm, got
        else:  # absent, or only the empty namespace that kernels/ (no __init__.py) gives from the repo root
            assert got["kernels"] in (None, {"file": None, "get_kernel": False, "ours": False}), got
            assert got["hf_probe"] is False, got
    assert seen[REPO]["hf_probe"] == seen[elsewhere]["hf_probe"], seen


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
