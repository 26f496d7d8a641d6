"""Thread choice: from the CPUs the process may use (affinity, cgroup quota), the env, or the knob."""

import os
import subprocess
import sys

import pytest
import torch

from vrl.utils import threads
from vrl.utils.threads import configure_threads, resolve_threads


def test_auto_follows_the_affinity_mask_not_the_core_count():
    # Pin a child to CPU 0 only: auto must say 1 although os.cpu_count() still reports every core.
    code = (
        "import os; os.sched_setaffinity(0, {0}); os.environ.pop('OMP_NUM_THREADS', None)\n"
        "from vrl.utils.threads import resolve_threads; c = resolve_threads()\n"
        "print(c.intra_op, os.cpu_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n, cores = map(int, out.stdout.split())
    assert n == 1
    assert cores >= 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2: quota 150 ms per 100 ms period = 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2: unlimited
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1: unlimited
        ({}, None),  # no cgroup files (not Linux, or not mounted)
    ],
)
def test_cgroup_quota_is_read_in_cpus(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads._cgroup_cpu_quota(tmp_path) == expected


def test_a_quota_caps_the_affinity(monkeypatch):
    # 1.5 CPUs of quota on a process allowed every core: floor(1.5) = 1 thread (never more than the quota)
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda root=None: 1.5)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda root=None: 0.5)  # half a CPU still gets one thread
    assert threads.available_cpus() == 1


def test_env_then_knob(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads().intra_op == 3
    assert "OMP_NUM_THREADS" in resolve_threads().reason
    assert resolve_threads(intra_op=1).intra_op == 1  # an explicit value beats the environment
    assert resolve_threads(inter_op="auto").inter_op == 3  # auto inter-op = the intra-op count
    assert resolve_threads().inter_op == 1


@pytest.mark.parametrize(("key", "value"), [("intra_op", 0), ("intra_op", "two"), ("inter_op", -1), ("intra_op", True)])
def test_bad_counts_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"threads.{key}"):
        resolve_threads(**{key: value})


def test_configure_applies_to_torch():
    before = torch.get_num_threads()
    try:
        choice = configure_threads(intra_op=1)
        assert torch.get_num_threads() == 1
        assert choice.describe().startswith("threads: intra-op 1, inter-op 1")
    finally:
        torch.set_num_threads(before)


def test_before_torch_the_openmp_pool_is_sized_and_passive():
    # In a fresh process (torch not yet imported) the env is set first, so OpenMP starts at that size.
    code = (
        "import os; [os.environ.pop(k, None) for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY')]\n"
        "from vrl.utils.threads import configure_threads; configure_threads(intra_op=1)\n"
        "import torch; print(os.environ['OMP_NUM_THREADS'], os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "PASSIVE", "1"]
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}  # a user's own choice is kept
    keep = code.replace("('OMP_NUM_THREADS', 'OMP_WAIT_POLICY')", "('OMP_NUM_THREADS',)")
    out = subprocess.run([sys.executable, "-c", keep], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[1] == "ACTIVE"
