"""The run directory: creation, the refuse/resume/overwrite rule, and writability checks (issues #2, #6).

Layout: config.json, metrics.jsonl, events.out.tfevents.* (TensorBoard), model.safetensors and
trainer_state.pt (latest checkpoint), checkpoints/ (last N, each with a checksum file), eval/, report/.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from multiscene.config import ConfigError

RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints", "model.safetensors")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def check_writable(path: Path, min_free_bytes: int = 50 * 2**20) -> None:
    """Fail early, in plain words, if the run directory cannot be written or its disk is (nearly) full."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"multiscene")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConfigError(f"--run-dir {path}: the disk is full ({e.strerror}); free some space or choose another --run-dir.") from e
        raise ConfigError(f"--run-dir {path} cannot be written ({e.strerror}); choose a directory you can write to.") from e
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise ConfigError(
            f"--run-dir {path}: only {free / 2**20:.1f} MiB free on its disk; checkpoints need at least "
            f"{min_free_bytes / 2**20:.0f} MiB. Free some space or choose another --run-dir."
        )


def prepare_run_dir(path: Path, resume: bool, overwrite: bool) -> Path | None:
    """Apply the refuse/resume/overwrite rule. Returns the backup folder the old run was moved to, if any.

    A directory that already holds a run is refused unless --resume (continue it) or --overwrite (start
    afresh; the old files are moved to ``<run_dir>.backup-<time>``, never deleted).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it afresh.")
    if resume:
        if not is_run_dir(path):
            raise ConfigError(f"--resume: {path} holds no run to continue (no config.json or checkpoint).")
        check_writable(path)
        return None
    backup = None
    if is_run_dir(path):
        if not overwrite:
            raise ConfigError(
                f"--run-dir {path} already holds a run. Pass --resume to continue it, --overwrite to start "
                "afresh (the old run is kept as a backup), or choose another --run-dir."
            )
        backup = path.with_name(f"{path.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        path.rename(backup)
    check_writable(path)
    return backup


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
