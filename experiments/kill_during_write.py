"""Kill -9 *during* a checkpoint write with the run on tmpfs, resume, and check the MLflow history (issue 11).

Three runs of the tiny default model with the same seed, each in its own output folder under a tmpfs mount
(default /dev/shm) while $TMPDIR stays on the root filesystem (the case where a write through the temp folder
becomes a cross-filesystem copy):

1. straight: N steps, uninterrupted (the reference history);
2. killed: the same, but the second checkpoint write is killed after its first 64 KiB reach the disk;
3. resumed: ``ckpt_path=last`` in the killed run's folder.

Prints what was on disk after the kill, whether the resume continued the same MLflow run, and per metric whether
every step appears exactly once with the reference's values. Usage:
``python experiments/kill_during_write.py [--root /dev/shm/vrl-kill] [--steps 6]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

HARNESS = """
import os, signal, torch
from vrl.lit import checkpoint
real_save, count = torch.save, [0]
def save_and_die(obj, f, *args, **kwargs):
    count[0] += 1
    if count[0] == int(os.environ["KILL_AT_SAVE"]):
        import io
        buf = io.BytesIO(); real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: 64 * 1024]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # mid-write: 64 KiB of the new checkpoint are on disk
    real_save(obj, f, *args, **kwargs)
checkpoint.torch.save = save_and_die
from vrl.train import main
main()
"""


def overrides(root: Path, name: str, steps: int) -> list[str]:
    return [
        f"hydra.run.dir={root / name}",
        f"logger.tracking_uri=sqlite:///{root / name}.db",
        f"logger.artifact_location={root / 'artifacts'}",
        "seed=5",
        f"trainer.max_steps={steps}",
        "ckpt_every=2",
        "trainer.enable_progress_bar=false",
        "save_policy=false",
    ]


def history(db: Path) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]]:
    with sqlite3.connect(db) as con:
        runs = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        out: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in con.execute("SELECT key, step, value FROM metrics ORDER BY step, timestamp"):
            out.setdefault(key, []).append((step, value))
    return runs, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/dev/shm/vrl-kill")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    fs = subprocess.run(["df", "-T", str(root), os.environ.get("TMPDIR", "/tmp")], capture_output=True, text=True)
    print(fs.stdout)
    vrl = [sys.executable, "-m", "vrl"]
    straight = subprocess.run([*vrl, *overrides(root, "straight", args.steps)], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    env = {**os.environ, "KILL_AT_SAVE": "2"}
    killed = subprocess.run([sys.executable, "-c", HARNESS, *overrides(root, "run", args.steps)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    print(f"killed run: exit {killed.returncode}; files after the kill:")
    for p in sorted((root / "run" / "checkpoints").iterdir()):
        print(f"  {p.name:28s} {p.stat().st_size:>9d} bytes")
    resumed = subprocess.run([*vrl, *overrides(root, "run", args.steps), "ckpt_path=last"], capture_output=True,
                             text=True)  # fmt: skip
    print(f"resumed run: exit {resumed.returncode}")
    print("  " + "\n  ".join(line for line in resumed.stdout.splitlines() + resumed.stderr.splitlines()
                              if "[vrl]" in line or "resum" in line.lower())[:2000])  # fmt: skip
    _, ref = history(root / "straight.db")
    runs, got = history(root / "run.db")
    print(f"MLflow runs in the killed+resumed store: {runs}")
    for key in ("rollout/reward_mean", "train/grad_norm", "rollout/response_len_mean", "val/accuracy"):
        steps = [s for s, _ in got.get(key, [])]
        once = len(steps) == len(set(steps))
        print(f"  {key:28s} steps {steps}  each once: {once}  equal to uninterrupted: {got.get(key) == ref.get(key)}")


if __name__ == "__main__":
    main()
