"""``multiscene runs [DIR]``: one line per run directory under DIR (default ``runs/``) (issue 15, item 4).

Columns: run, env, algorithm (config ``algo``; ``ppo`` for runs written before it existed), critic, seed, steps
done of total, last training return (``charts/episodic_return``), held-out return (test ``return_mean`` of
``eval/final.json``) and status. Everything is read from files, never from a live process.

Status, from what the trainer leaves behind (multiscene/trainer.py records no stop reason of its own):

- ``finished``: ``eval/final.json`` exists, or the last logged update is the run's last one
  (``total_timesteps // (num_envs * num_steps)``; a run with ``--no-final-eval`` ends there).
- ``running``: not finished, and metrics.jsonl or a checkpoint was written in the last ``--active-window``
  seconds (default 300). A guess: a run killed a minute ago looks the same.
- ``stopped``: not finished, and the latest checkpoint is at the last logged update. The trainer writes that
  checkpoint when it stops on purpose: SIGINT/SIGTERM, too many non-finite updates (TrainingStopped) or an env
  error; ``--resume`` continues with nothing lost. A crash right after a periodic checkpoint looks the same,
  and is just as resumable.
- ``crashed``: not finished, and updates were logged after the latest checkpoint (or there is none): the process
  died between checkpoints (exception, out of memory, SIGKILL). ``--resume`` restarts from the checkpoint and
  drops the later metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from multiscene.analysis.stats import compact_steps

ACTIVE_WINDOW_S = 300.0
"""A run whose files changed this recently (seconds) and that has not finished is shown as running."""
STATUS_STYLE = {"finished": "green", "running": "cyan", "stopped": "yellow", "crashed": "red"}


@dataclass(frozen=True)
class RunRow:
    """What ``multiscene runs`` shows about one run directory."""

    path: Path
    env: str | None
    algo: str
    critic: str | None
    seed: int | None
    steps_done: int
    """Largest ``global_step`` in metrics.jsonl (0 before the first update)."""
    total_steps: int | None
    """Steps the run was asked for: updates x (num_envs x num_steps), as the trainer counts them."""
    last_update: int
    num_updates: int | None
    last_checkpoint: int | None
    """Update of the newest checkpoint folder, None without one."""
    last_return: float | None
    """The last logged ``charts/episodic_return`` (mean return of the episodes that ended in that rollout)."""
    held_out_return: float | None
    """Test-level ``return_mean`` of eval/final.json (sampled policy), None before the final evaluation."""
    status: str
    """finished, running, stopped or crashed (module docstring)."""
    note: str
    """Why this status, in a few words."""


def _read_config(path: Path) -> dict[str, Any]:
    try:
        record = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    config = record.get("config") if isinstance(record, dict) else None
    return config if isinstance(config, dict) else {}


def _latest_checkpoint(path: Path) -> tuple[int | None, float]:
    """(update of the newest whole checkpoint folder, its mtime); temporary ``.update-*`` folders do not count."""
    best, mtime = None, 0.0
    root = path / "checkpoints"
    if root.is_dir():
        for entry in root.iterdir():
            name = entry.name
            if entry.is_dir() and name.startswith("update-") and name[len("update-"):].isdigit():
                update = int(name[len("update-"):])
                if best is None or update > best:
                    best, mtime = update, entry.stat().st_mtime
    return best, mtime


def _held_out_return(path: Path) -> float | None:
    try:
        final = json.loads((path / "eval" / "final.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = (final.get("test") or {}).get("return_mean") if isinstance(final, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize_run(path: Path, now: float | None = None, active_window_s: float = ACTIVE_WINDOW_S) -> RunRow:
    """Read one run directory into a RunRow (tolerates a missing or torn metrics.jsonl and a partial config)."""
    from multiscene.logger import METRICS_FILE, read_metrics

    now = time.time() if now is None else now
    config = _read_config(path)
    metrics = read_metrics(path / METRICS_FILE)
    steps_done = max((int(r["global_step"]) for r in metrics if isinstance(r.get("global_step"), (int, float))),
                     default=0)
    last_update = max((int(r["update"]) for r in metrics if isinstance(r.get("update"), (int, float))), default=0)
    returns = [r["charts/episodic_return"] for r in metrics
               if isinstance(r.get("charts/episodic_return"), (int, float))]
    total, envs, steps = (_int_or_none(config.get(k)) for k in ("total_timesteps", "num_envs", "num_steps"))
    num_updates = total // (envs * steps) if total is not None and envs and steps else None
    total_steps = num_updates * envs * steps if num_updates is not None and envs and steps else total
    checkpoint, checkpoint_mtime = _latest_checkpoint(path)
    held_out = _held_out_return(path)
    metrics_mtime = (path / METRICS_FILE).stat().st_mtime if (path / METRICS_FILE).exists() else 0.0
    last_write = max(metrics_mtime, checkpoint_mtime)
    skipped = bool(metrics) and bool(metrics[-1].get("nonfinite/skipped_update"))

    if (path / "eval" / "final.json").exists():
        status, note = "finished", "final evaluation done"
    elif num_updates is not None and last_update >= num_updates:
        status, note = "finished", "all updates done; no final evaluation"
    elif now - last_write < active_window_s:
        status, note = "running", f"files written {now - last_write:.0f} s ago"
    elif checkpoint is not None and checkpoint == last_update:
        reason = "non-finite updates" if skipped else "signal, error or stop"
        status, note = "stopped", f"checkpoint at the last update ({reason}); --resume continues"
    elif checkpoint is not None:
        status, note = "crashed", (f"{last_update - checkpoint} update(s) logged after the last checkpoint "
                                   f"(update {checkpoint}); --resume restarts there")
    else:
        status, note = "crashed", "no checkpoint" + ("" if metrics else " and no update logged")
    return RunRow(path=path, env=config.get("env"), algo=str(config.get("algo", "ppo")), critic=config.get("critic"),
                  seed=_int_or_none(config.get("seed")), steps_done=steps_done, total_steps=total_steps,
                  last_update=last_update, num_updates=num_updates, last_checkpoint=checkpoint,
                  last_return=float(returns[-1]) if returns else None, held_out_return=held_out, status=status,
                  note=note)


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories in ``root`` and one level below (``runs/sweep-1/run-3``), sorted; ``root`` itself when
    it is a run. Anything else (stray files, report folders) is passed over."""
    from multiscene.rundir import is_run_dir

    if is_run_dir(root):
        return [root]
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if is_run_dir(child):
            found.append(child)
        else:
            found += [g for g in sorted(p for p in child.iterdir() if p.is_dir()) if is_run_dir(g)]
    return found


def scan_runs(root: Path, now: float | None = None, active_window_s: float = ACTIVE_WINDOW_S) -> list[RunRow]:
    """A RunRow for every run directory under ``root`` (see ``find_run_dirs``)."""
    return [summarize_run(p, now=now, active_window_s=active_window_s) for p in find_run_dirs(root)]


def _number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"


def render_table(rows: list[RunRow], root: Path, notes: bool = False) -> Any:
    """A rich Table of the rows (run names relative to ``root``); ``notes`` adds why each run has its status."""
    from rich.table import Table

    table = Table(title=f"runs under {root}", title_justify="left")
    columns = [("run", "left"), ("env", "left"), ("algo", "left"), ("critic", "left"), ("seed", "right"),
               ("steps", "right"), ("last return", "right"), ("held-out return", "right"), ("status", "left")]
    for name, justify in columns + ([("why", "left")] if notes else []):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        name = str(row.path.relative_to(root)) if row.path != root and row.path.is_relative_to(root) else str(row.path)
        total = compact_steps(row.total_steps) if row.total_steps is not None else "?"
        style = STATUS_STYLE.get(row.status, "")
        cells = [name, row.env or "?", row.algo, row.critic or "?", "?" if row.seed is None else str(row.seed),
                 f"{compact_steps(row.steps_done)} / {total}", _number(row.last_return), _number(row.held_out_return),
                 f"[{style}]{row.status}[/{style}]" if style else row.status]
        table.add_row(*cells, *([row.note] if notes else []))
    return table


def main(argv: list[str]) -> int:
    """Entry point of ``multiscene runs [DIR]``; returns the exit status (2 for a DIR that does not exist)."""
    parser = argparse.ArgumentParser(prog="multiscene runs",
                                     description="A table of the run directories under DIR: env, algorithm, "
                                                 "critic, seed, steps, returns and whether each run finished, is "
                                                 "running, stopped (resumable) or crashed.")
    parser.add_argument("dir", type=Path, nargs="?", default=Path("runs"),
                        help="folder holding run directories, or one run directory (default: runs)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--notes", action="store_true", help="add a column saying why each run has its status")
    parser.add_argument("--active-window", type=float, default=ACTIVE_WINDOW_S,
                        help="seconds since the last write under which an unfinished run counts as running")
    ns = parser.parse_args(argv)
    if not ns.dir.is_dir():
        what = "is a file" if ns.dir.exists() else "does not exist"
        print(f"multiscene runs: error: {ns.dir} {what}; pass the folder that holds your run directories "
              "(the parent of each --run-dir; default runs/).", file=sys.stderr)
        return 2
    rows = scan_runs(ns.dir, active_window_s=ns.active_window)
    if ns.json:
        print(json.dumps([{**asdict(r), "path": str(r.path)} for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no run directories under {ns.dir} (a run directory holds config.json and metrics.jsonl).")
        return 0
    from rich.console import Console

    table = render_table(rows, ns.dir, notes=ns.notes)
    # Not a terminal (a pipe, a log file): wide enough that a row stays on one line.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    return 0
