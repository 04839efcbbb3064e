"""Atomic, checksummed checkpoints (issues #2, #6).

Each checkpoint is a folder ``checkpoints/update-NNNNNNNN/`` holding ``model.safetensors`` (agent weights and
the reward normalizer), ``trainer_state.pt`` (optimizer, step counters, schedules, RNG states, env states,
rollout carry) and ``checksums.json`` (sha256 of both). It is written under a temporary name and renamed, so a
crash leaves either a whole checkpoint or none; the latest one is also copied (atomically) to the run
directory's top level. Loading verifies the checksums and falls back to the previous checkpoint when the
newest is truncated or corrupted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from multiscene.rundir import atomic_write_bytes

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CHECKSUM_FILE = "checksums.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    pass


@dataclass
class Checkpoint:
    path: Path
    update: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path, update: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``update`` atomically, refresh the top-level copies, keep the last ``keep``."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"refusing to checkpoint a non-finite tensor: {name}")
    model_bytes = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    buf = io.BytesIO()
    torch.save(state, buf)
    state_bytes = buf.getvalue()
    checksums = {MODEL_FILE: _sha256(model_bytes), STATE_FILE: _sha256(state_bytes), "update": update}

    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"update-{update:08d}"
    tmp = root / f".update-{update:08d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, data in ((MODEL_FILE, model_bytes), (STATE_FILE, state_bytes)):
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    with open(tmp / CHECKSUM_FILE, "w") as f:
        json.dump(checksums, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(run_dir / MODEL_FILE, model_bytes)
    atomic_write_bytes(run_dir / STATE_FILE, state_bytes)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders of interrupted writes are skipped)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("update-"))


def read_checkpoint(path: Path, load_state: bool = True) -> Checkpoint:
    """Read and verify one checkpoint folder; raise CheckpointError when it is incomplete or corrupted."""
    try:
        checksums = json.loads((path / CHECKSUM_FILE).read_text())
        model_bytes = (path / MODEL_FILE).read_bytes()
        state_bytes = (path / STATE_FILE).read_bytes() if load_state else b""
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if _sha256(model_bytes) != checksums.get(MODEL_FILE):
        raise CheckpointError(f"{path / MODEL_FILE}: checksum mismatch (truncated or corrupted)")
    if load_state and _sha256(state_bytes) != checksums.get(STATE_FILE):
        raise CheckpointError(f"{path / STATE_FILE}: checksum mismatch (truncated or corrupted)")
    tensors = st_load(model_bytes)
    state = torch.load(io.BytesIO(state_bytes), weights_only=False) if load_state else {}
    return Checkpoint(path=path, update=int(checksums["update"]), tensors=tensors, state=state)


def load_latest_checkpoint(
    run_dir: Path, load_state: bool = True, warn: Any = print
) -> Checkpoint | None:
    """The newest checkpoint that passes its checksums; each bad one is reported through ``warn``."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path, load_state)
        except CheckpointError as e:
            warn(f"skipping bad checkpoint: {e}; falling back to the previous one")
    return None
