"""Crash-safe checkpoint writes and the choice of checkpoint to resume from."""

import os

import pytest
import torch

from vrl.errors import ConfigError
from vrl.lit.checkpoint import AtomicCheckpointIO, clean_orphans, previous_path, resolve_resume


class _Boom:
    """Pickling this raises: a stand-in for a writer killed half-way through ``torch.save``."""

    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_save_keeps_the_previous_and_writes_next_to_the_target(tmp_path, monkeypatch):
    # The temporary file must live in the checkpoint folder, not in $TMPDIR (another filesystem in the issue's
    # tmpfs case, where a move becomes a copy): point $TMPDIR at a folder of its own and check it stays empty.
    tmpdir = tmp_path / "systmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    io, target = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    io.save_checkpoint({"step": 2}, target)
    assert torch.load(target)["step"] == 2
    assert torch.load(previous_path(target))["step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]  # no temp files
    assert not any(tmpdir.iterdir())


def test_a_write_that_dies_leaves_the_last_good_checkpoint_in_place(tmp_path):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"step": 2, "x": _Boom()}, target)
    assert torch.load(target)["step"] == 1  # untouched: the new bytes only ever went to the temporary file
    orphans = [p.name for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert orphans == [f".last.ckpt.tmp-{os.getpid()}"]
    assert [p.name for p in clean_orphans(tmp_path)] == orphans
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_resolve_fresh_missing_and_fallback(tmp_path, capsys):
    assert resolve_resume(None, tmp_path) == (None, {})
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no checkpoint in"):
        resolve_resume("last", tmp_path)
    with pytest.raises(ConfigError, match=r"ckpt_path=/nope/x.ckpt: /nope/x.ckpt does not exist"):
        resolve_resume("/nope/x.ckpt", tmp_path)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"vrl": {"bad_steps": 0}, "vrl_run": {"mlflow_run_id": "abc"}}, tmp_path / "last.ckpt")
    io.save_checkpoint({"vrl": {"bad_steps": 1}, "vrl_run": {"mlflow_run_id": "abc"}}, tmp_path / "last.ckpt")
    path, state = resolve_resume("last", tmp_path)
    assert (path.name, state) == ("last.ckpt", {"bad_steps": 1, "mlflow_run_id": "abc"})
    (tmp_path / "last.ckpt").write_bytes(b"")  # the 0-byte last.ckpt
    path, state = resolve_resume("last", tmp_path)
    assert (path.name, state["bad_steps"]) == ("last.prev.ckpt", 0)
    assert "unreadable" in capsys.readouterr().out
    (tmp_path / "last.prev.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint"):
        resolve_resume("last", tmp_path)
