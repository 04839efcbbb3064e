"""metrics.jsonl, TensorBoard and the progress display (rich bar on a terminal, plain lines otherwise)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


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


class MetricsLogger:
    """Appends one JSON record per update to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
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
                    low = record.get(f"{key}_low", 0.0)  # e.g. confusion bins span [1/N_b, 1]
                    edges = np.linspace(low if isinstance(low, (int, float)) else 0.0, 1.0, len(counts) + 1)
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
