"""The wheel carries every module and every config, so a non-editable install runs from any directory."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_every_module_and_config(tmp_path):
    # build from a copy: setuptools writes build/ next to the sources, and tests must not touch the checkout
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "outputs", "multirun", "mlruns", "*.db")
    shutil.copytree(REPO, src, ignore=junk)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"vrl/{p.relative_to(REPO / 'vrl').as_posix()}" for p in (REPO / "vrl").rglob("*.py")}
    expected |= {f"vrl_conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    expected |= {f"vrl_kernels/{p.name}" for p in (REPO / "kernels" / "vrl_kernels").glob("*.py")}
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel (packages list in pyproject.toml?): {missing[:10]}"
    assert not any(n.startswith("kernels/") for n in names)  # never installed under the name `kernels`
