"""Training runs compared on their training curves: what benchmarks/acktr_vs_a2c.py and
benchmarks/a2mc_vs_baselines.py share (issues 10 and 11, "Learning evidence").

A benchmark is a list of ``Run``s, one ``multiscene train`` process each, ``--workers`` at a time with one torch
thread apiece (``train_all``). A run directory whose metrics reach the budget is reused, so a benchmark called
again continues where it stopped. From each run's ``metrics.jsonl`` come two scores (``run_scores``):

- ``auc``: the area under the training curve divided by its length, i.e. sample efficiency: the mean over
  updates of the update's mean episodic return, carried forward through updates where no episode finished
  (from the first finished episode on);
- ``final``: the same mean over the updates in the last 20% of the budget.

``task_intervals`` aggregates them per method over seeds (IQM and mean with 95% stratified-bootstrap intervals,
rliable via multiscene/analysis/stats.py); ``figure`` draws every run's curve.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.children import child_env

__all__ = [
    "REPO",
    "Run",
    "curve",
    "figure",
    "finished",
    "finite_scores",
    "format_interval",
    "is_atari",
    "parse_tasks",
    "read_records",
    "run_scores",
    "task_intervals",
    "train",
    "train_all",
    "train_command",
]

REPO = Path(__file__).resolve().parents[2]
"""The repository root: the training processes get it on their PYTHONPATH."""


def is_atari(task: str) -> bool:
    """True for an Atari id (``BreakoutNoFrameskip-v4``, ``ALE/Boxing-v5``)."""
    return "NoFrameskip" in task or task.startswith("ALE/")


@dataclass(frozen=True)
class Run:
    """One (task, method, seed) training run."""

    task: str
    """Gymnasium id."""
    budget: int
    """Env steps."""
    method: str
    """The benchmark's name for the method (a key of its method table)."""
    seed: int
    """--seed."""
    run_dir: Path
    """Its run directory."""

    @property
    def atari(self) -> bool:
        return is_atari(self.task)


def train_command(preset: str, env: str, budget: int, seed: int, run_dir: Path,
                  extra: Sequence[str] = ()) -> list[str]:
    """``multiscene train`` for one run: the preset, then ``extra`` flags, on one torch thread on the CPU, with
    no final evaluation (the budget is for training), no TensorBoard and no progress display."""
    return [sys.executable, "-m", "multiscene", "train", "--preset", preset, "--env", env, *extra,
            "--total-timesteps", str(budget), "--seed", str(seed), "--torch-threads", "1",
            "--device", "cpu", "--no-final-eval", "--no-tensorboard", "--progress", "none",
            "--run-dir", str(run_dir), "--overwrite"]


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` up to a torn last line; [] when there is none."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            break
    return out


def finished(run: Run, slack: int = 2500) -> bool:
    """True when the run's metrics reach within ``slack`` steps of its budget (the last update can end short of
    the budget by less than one batch; the largest batch of the benchmarks' presets is ACKTR's 2,500)."""
    records = read_records(run.run_dir)
    return bool(records) and max(r.get("global_step", 0) for r in records) >= run.budget - slack


def train(run: Run, command: Sequence[str]) -> tuple[float, int]:
    """Run ``command`` for ``run`` unless it has finished; (wall seconds, exit code). Its output goes to
    ``<run_dir>.log``."""
    if finished(run):
        return 0.0, 0
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    # child_env: the run ends with this process if it is killed (multiscene/children.py), never left behind.
    env = child_env(dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.time()
    with open(run.run_dir.parent / f"{run.run_dir.name}.log", "w") as log:
        code = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.time() - start
    print(f"{run.task} {run.method} seed {run.seed}: exit {code}, {seconds:.0f} s", flush=True)
    return seconds, code


def train_all(runs: Sequence[Run], command_for: Callable[[Run], list[str]], workers: int) -> list[Run]:
    """Train every run, ``workers`` at a time, in the order given; returns the runs that failed (each named on
    stderr with its log)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda run: train(run, command_for(run)), runs))
    failed = [r for r, (_, code) in zip(runs, results) if code != 0]
    for r in failed:
        print(f"FAILED: {r.run_dir} (see {r.run_dir}.log)", file=sys.stderr)
    return failed


def curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global_step, mean episodic return of the update, episodes finished in the update), updates with
    finished episodes only."""
    rows = [(r["global_step"], r["charts/episodic_return"], r.get("charts/episodes", 1))
            for r in read_records(run_dir) if r.get("charts/episodic_return") is not None
            and math.isfinite(r["charts/episodic_return"])]
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    a = np.asarray(rows, dtype=np.float64)
    return a[:, 0], a[:, 1], a[:, 2]


def run_scores(run_dir: Path, budget: int, final_fraction: float = 0.2) -> dict[str, float]:
    """``auc``: the learning curve's mean over the updates, the curve being at each update the mean return of
    the episodes finished in it, carried forward through updates where none finished (a balanced pendulum
    finishes no episode for a long time: weighting by finished episodes would favour the many short early
    ones); ``final``: the same over the updates in the last ``final_fraction`` of the budget. NaN before the
    first finished episode; ``nonfinite`` counts updates the loop skipped for a non-finite value."""
    records = read_records(run_dir)
    out = {"auc": math.nan, "final": math.nan,
           "nonfinite": float(sum(1 for r in records if r.get("nonfinite/skipped_update"))),
           "steps": float(max((r.get("global_step", 0) for r in records), default=0))}
    last, carried, late = math.nan, [], []
    for r in records:
        value = r.get("charts/episodic_return")
        if value is not None and math.isfinite(value):
            last = float(value)
        if math.isnan(last):
            continue
        carried.append(last)
        if r.get("global_step", 0) > (1.0 - final_fraction) * budget:
            late.append(last)
    if carried:
        out["auc"] = float(np.mean(carried))
    if late:
        out["final"] = float(np.mean(late))
    return out


def finite_scores(per_run: Mapping[tuple[str, str, int], Mapping[str, float]], task: str, method: str,
                  metric: str) -> dict[int, float]:
    """seed -> score of one (task, method), the seeds with a finite ``metric`` only."""
    return {s: float(v[metric]) for (t, m, s), v in per_run.items()
            if t == task and m == method and math.isfinite(v[metric])}


def task_intervals(per_run: Mapping[tuple[str, str, int], Mapping[str, float]], task: str,
                   methods: Iterable[str], metrics: Sequence[str] = ("auc", "final"),
                   reps: int = 2000) -> dict[str, Any]:
    """metric -> method -> IQM and mean over seeds with 95% stratified-bootstrap intervals
    (``stats.aggregate_intervals``), or None for a method with no finite score.

    per_run: (task, method, seed) -> ``run_scores``. A run without a finished episode in the window (none
    started, or all still running: a balanced pendulum) has no score there; ``runs`` says how many runs a
    figure rests on. ``reps``: bootstrap replicates.
    """
    from multiscene.analysis.stats import aggregate_intervals

    methods = list(methods)
    out: dict[str, Any] = {}
    for metric in metrics:
        scores = {m: np.array([[v] for v in finite_scores(per_run, task, m, metric).values()]) for m in methods}
        usable = {m: s for m, s in scores.items() if s.size}
        out[metric] = aggregate_intervals(usable, reps=reps) if usable else {}
        for m in methods:
            if m not in usable:
                out[metric][m] = None
    return out


def format_interval(e: Mapping[str, Any] | None) -> str:
    """``IQM [low, high] (n=runs)`` of one ``aggregate_intervals`` entry; ``n/a`` for None."""
    if not e:
        return "n/a"
    return f"{e['iqm']:.1f} [{e['iqm_ci'][0]:.1f}, {e['iqm_ci'][1]:.1f}] (n={e['runs']})"


def figure(runs: Sequence[Run], path: Path, rows: Sequence[Sequence[str]] | None = None) -> None:
    """One panel per task (columns) and method group (``rows``; default: one row with every method): every
    run's training return against env steps (3-update running mean), one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in runs))
    groups = [list(g) for g in rows] if rows is not None else [list(dict.fromkeys(r.method for r in runs))]
    fig, axes = plt.subplots(len(groups), len(tasks), figsize=(4.2 * len(tasks), 3.2 * len(groups)),
                             squeeze=False)
    for row, group in zip(axes, groups):
        for ax, task in zip(row, tasks):
            methods = [m for m in dict.fromkeys(r.method for r in runs if r.task == task) if m in group]
            for i, m in enumerate(methods):
                for j, r in enumerate(x for x in runs if x.task == task and x.method == m):
                    steps, returns, _ = curve(r.run_dir)
                    if steps.size == 0:
                        continue
                    k = min(3, returns.size)
                    smooth = np.convolve(returns, np.ones(k) / k, mode="valid")
                    ax.plot(steps[k - 1:], smooth, color=f"C{i}", alpha=0.85, label=m if j == 0 else None,
                            marker="o" if smooth.size < 5 else None)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("env steps", fontsize=8)
            ax.set_ylabel("training episodic return", fontsize=8)
            if ax.get_legend_handles_labels()[0]:  # a panel whose runs finished no episode has nothing to name
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_tasks(specs: Sequence[str], default_budget: int = 30_000) -> dict[str, int]:
    """``ID:BUDGET`` (or ``ID``, for ``default_budget``) -> {id: budget}, in the order given."""
    out = {}
    for spec in specs:
        task, _, budget = spec.partition(":")
        try:
            out[task] = int(budget) if budget else default_budget
        except ValueError:
            raise ValueError(f"--tasks: {spec!r} is not ID:STEPS (e.g. Hopper-v5:20000)") from None
        if not task or out[task] <= 0:
            raise ValueError(f"--tasks: {spec!r} needs a Gymnasium id and a positive number of steps")
    return out
