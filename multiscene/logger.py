"""metrics.jsonl, TensorBoard, Weights & Biases and the progress display (rich bar on a terminal, plain lines
otherwise).

metrics.jsonl in the run directory is the source of truth; TensorBoard and W&B (``--track``, as in CleanRL,
issue 15) are mirrors of the same records.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from multiscene.config import ConfigError

METRICS_FILE = "metrics.jsonl"
WANDB_RUN_FILE = "wandb_run.json"
"""The W&B run id of a tracked run, so that --resume continues the same W&B run instead of starting another."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All whole records of a metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    records = []
    if not path.exists():
        return records
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_metrics(path: Path, last_update: int) -> None:
    """Keep only whole records with ``update <= last_update`` (resume: no torn or duplicated lines)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("update", 0) <= last_update]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def require_wandb() -> ModuleType:
    """Import wandb, or raise ConfigError naming --track (issue 15: one clear message, not a traceback)."""
    try:
        import wandb
    except ImportError as e:
        raise ConfigError("--track logs to Weights & Biases, but the wandb package is not installed; "
                          "`pip install wandb` or drop --track.") from e
    return wandb


def _histogram_edges(record: dict[str, Any], key: str, bins: int) -> Any:
    """Bin edges of a logged histogram: [<key>_low, 1] (e.g. confusion bins span [1/N_b, 1]), else [0, 1]."""
    import numpy as np

    low = record.get(f"{key}_low", 0.0)
    return np.linspace(low if isinstance(low, (int, float)) else 0.0, 1.0, bins + 1)


class MetricsLogger:
    """Appends one JSON record per update to metrics.jsonl and mirrors it to TensorBoard and, with ``track``,
    to Weights & Biases.

    W&B: ``wandb.init(project=wandb_project, entity=wandb_entity, config=config, name=run_name)`` with its files
    under ``run_dir/wandb/`` (or ``$WANDB_DIR``); ``WANDB_MODE=offline`` works without network. Every record is
    logged against ``global_step`` (``define_metric``), so a resumed run may log a step again without W&B
    dropping it; the run id is kept in ``run_dir/wandb_run.json`` so that a resumed run continues the same W&B run.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        purge_step: int | None = None,
        track: bool = False,
        wandb_project: str = "multiscene",
        wandb_entity: str | None = None,
        config: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self._wandb_run: Any = None
        self._wandb: ModuleType | None = None
        if track:
            # Before any file is opened: a missing package or a failed login leaves nothing half-written.
            self._wandb = require_wandb()
            self._wandb_run = self._init_wandb(run_dir, wandb_project, wandb_entity, config or {}, run_name)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def _init_wandb(self, run_dir: Path, project: str, entity: str | None, config: dict[str, Any],
                    run_name: str | None) -> Any:
        from multiscene.rundir import atomic_write_json

        wandb = self._wandb
        assert wandb is not None
        id_file = run_dir / WANDB_RUN_FILE
        saved = json.loads(id_file.read_text()) if id_file.exists() else {}
        run_id = saved.get("id") or uuid.uuid4().hex[:8]  # W&B's own id form: 8 characters of [a-z0-9]
        try:
            run = wandb.init(project=project, entity=entity, config=config, name=run_name or run_dir.name,
                             id=run_id, resume="allow",
                             dir=None if os.environ.get("WANDB_DIR") else str(run_dir))
        except Exception as e:  # noqa: BLE001 - wandb raises several types (UsageError, CommError, ...)
            raise ConfigError(f"--track: wandb.init failed ({type(e).__name__}: {e}). Run `wandb login`, or set "
                              "WANDB_MODE=offline to log without network (sync later with `wandb sync`).") from e
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        atomic_write_json(id_file, {"id": run_id, "project": project, "entity": entity,
                                    "mode": os.environ.get("WANDB_MODE", "online")})
        return run

    def _wandb_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The W&B form of a record: numbers and strings as they are, ``*hist`` count lists as histograms."""
        assert self._wandb is not None
        out: dict[str, Any] = {}
        for key, value in record.items():
            if value is None:
                continue
            if isinstance(value, list):
                if key.endswith("hist") and value and all(isinstance(c, (int, float)) for c in value):
                    import numpy as np

                    counts = np.asarray(value, dtype=float)
                    edges = _histogram_edges(record, key, len(counts))
                    out[key] = self._wandb.Histogram(np_histogram=(counts, edges))
                continue
            out[key] = value
        return out

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(self._wandb_record(record))
        if self._tb is not None:
            step = int(record["global_step"])
            for key, value in record.items():
                if key in ("global_step", "update") or "/" not in key:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
                elif isinstance(value, list) and key.endswith("hist") and value:
                    import numpy as np

                    counts = np.asarray(value, dtype=float)
                    edges = _histogram_edges(record, key, len(counts))  # e.g. confusion bins span [1/N_b, 1]
                    centers = np.repeat((edges[:-1] + edges[1:]) / 2, counts.astype(int))
                    if centers.size:
                        self._tb.add_histogram(key, centers, step)

    def sync(self) -> None:
        """Make every logged line durable (called before each checkpoint)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.sync()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


class Progress:
    """A rich progress bar on a terminal; plain log lines every few seconds otherwise."""

    def __init__(self, total: int, mode: str = "auto", start: int = 0, line_interval_s: float = 10.0) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total
        self.line_interval_s = line_interval_s
        self._last_line = 0.0
        self._bar = None
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, info: dict[str, float | None]) -> None:
        text = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None)
        if self._bar is not None:
            self._bar.update(self._task, completed=min(step, self.total), info=text)
        elif self.mode == "plain":
            now = time.monotonic()
            if now - self._last_line >= self.line_interval_s or step >= self.total:
                self._last_line = now
                print(f"[multiscene] step {step}/{self.total}  {text}", flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "none":
            print(f"[multiscene] {text}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
