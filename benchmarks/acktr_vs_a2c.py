"""ACKTR vs A2C sample efficiency at a budget that fits a shared 2-core machine (issue 10, "Learning evidence").

The ACKTR paper (Wu et al. 2017, §5) reports ACKTR at least as sample efficient as A2C on Atari and MuJoCo.
This script trains both with the library's own presets, one ``multiscene train`` process per (task, method,
seed), ``--workers`` at a time with one torch thread each, and compares them on the training curve:

- ``auc``: the area under the training curve divided by its length, i.e. sample efficiency: the mean over
  updates of the update's mean episodic return, carried forward through updates where no episode finished
  (from the first finished episode on);
- ``final``: the same mean over the updates in the last 20% of the budget.

Methods (MuJoCo): ``a2c`` = ``--preset a2c-mujoco`` (8 envs x 20 steps, RMSprop 7e-4); ``acktr`` =
``--preset acktr-mujoco`` (5 x 500 = 2,500 steps per update as seed 004 §6.2, K-FAC lr 0.03); ``acktr-n20`` =
``acktr-mujoco`` at A2C's batch (8 x 20), so that the two differ only in the optimizer. Atari: ``a2c-atari`` and
``acktr-atari`` (32 x 20 both, as the ACKTR paper). Episodic returns on Atari are raw game scores.

Per task, every method's IQM over seeds with a 95% stratified-bootstrap interval and P(ACKTR > A2C) (rliable,
via multiscene/analysis/stats.py) go into ``table.md`` and ``results.json``; ``curves.png`` draws every run.
Finished runs (a run directory whose metrics reach the budget) are reused when called again.

Default budget (the cut, sized for a 2-core machine shared with other jobs, load average ~10):
InvertedPendulum-v5 12k steps, Hopper-v5 20k steps (2 seeds x {a2c, acktr-n20}; ``--mujoco-methods a2c acktr
acktr-n20`` adds the 2,500-step-batch preset, which gets only 5-8 updates at these budgets),
BreakoutNoFrameskip-v4 5,120 steps (8 updates; 1 seed x 2 methods). The ACKTR paper trains 1M MuJoCo steps and
10M Atari steps; these budgets show only the start of learning.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/acktr_vs_a2c.py --out docs/figures/acktr_vs_a2c [--seeds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# method -> (preset, extra train flags), per env family.
MUJOCO_METHODS: dict[str, tuple[str, list[str]]] = {
    "a2c": ("a2c-mujoco", []),
    "acktr": ("acktr-mujoco", []),
    "acktr-n20": ("acktr-mujoco", ["--num-envs", "8", "--num-steps", "20"]),
    # Investigation of a slower ACKTR: the paper's lr (Atari and the gym preset), where the KL trust region
    # (0.001) sets the step size instead of lr 0.03; and A2C's return/advantage settings with K-FAC.
    "acktr-n20-lr0.25": ("acktr-mujoco", ["--num-envs", "8", "--num-steps", "20", "--learning-rate", "0.25"]),
    "acktr-n20-a2cset": ("acktr-mujoco", ["--num-envs", "8", "--num-steps", "20", "--no-norm-adv", "--anneal-lr",
                                          "--acktr.gae-lambda", "1.0"]),
}
ATARI_METHODS: dict[str, tuple[str, list[str]]] = {
    "a2c": ("a2c-atari", []),
    "acktr": ("acktr-atari", []),
}
DEFAULT_TASKS = ("InvertedPendulum-v5:12000", "Hopper-v5:20000", "BreakoutNoFrameskip-v4:5120")
DEFAULT_MUJOCO_METHODS = ("a2c", "acktr-n20")


@dataclass(frozen=True)
class Run:
    """One (task, method, seed) training run."""

    task: str
    """Gymnasium id."""
    budget: int
    """Env steps."""
    method: str
    """Key of MUJOCO_METHODS / ATARI_METHODS."""
    seed: int
    """--seed."""
    run_dir: Path
    """Its run directory."""

    @property
    def atari(self) -> bool:
        return "NoFrameskip" in self.task or self.task.startswith("ALE/")


def methods_for(task: str) -> dict[str, tuple[str, list[str]]]:
    return ATARI_METHODS if ("NoFrameskip" in task or task.startswith("ALE/")) else MUJOCO_METHODS


def train_command(run: Run) -> list[str]:
    preset, extra = methods_for(run.task)[run.method]
    return [sys.executable, "-m", "multiscene", "train", "--preset", preset, "--env", run.task, *extra,
            "--total-timesteps", str(run.budget), "--seed", str(run.seed), "--torch-threads", "1",
            "--device", "cpu", "--no-final-eval", "--no-tensorboard", "--progress", "none",
            "--run-dir", str(run.run_dir), "--overwrite"]


def read_records(run_dir: Path) -> list[dict[str, Any]]:
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


def finished(run: Run) -> bool:
    records = read_records(run.run_dir)
    return bool(records) and max(r.get("global_step", 0) for r in records) >= run.budget - 2500


def train(run: Run) -> tuple[float, int]:
    """Train one run unless already finished; (wall seconds, exit code)."""
    if finished(run):
        return 0.0, 0
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.time()
    with open(run.run_dir.parent / f"{run.run_dir.name}.log", "w") as log:
        code = subprocess.run(train_command(run), stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.time() - start
    print(f"{run.task} {run.method} seed {run.seed}: exit {code}, {seconds:.0f} s", flush=True)
    return seconds, code


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


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per task: each method's IQM [95% CI] of auc and final over seeds, and P(method > a2c) on auc."""
    from multiscene.analysis.stats import aggregate_intervals, probability_of_improvement

    per_run = {(r.task, r.method, r.seed): run_scores(r.run_dir, r.budget) for r in runs}
    tasks = list(dict.fromkeys(r.task for r in runs))
    out: dict[str, Any] = {"runs": [{"task": t, "method": m, "seed": s, **v} for (t, m, s), v in per_run.items()],
                           "tasks": {}}
    for task in tasks:
        methods = list(dict.fromkeys(r.method for r in runs if r.task == task))
        entry: dict[str, Any] = {}
        for metric in ("auc", "final"):
            # A run without a finished episode in the window (none started, or all still running: a balanced
            # pendulum) has no score there; the table's n says how many runs a figure rests on.
            scores = {m: np.array([[v[metric]] for (t, mm, _), v in per_run.items()
                                   if t == task and mm == m and math.isfinite(v[metric])]) for m in methods}
            usable = {m: s for m, s in scores.items() if s.size}
            entry[metric] = aggregate_intervals(usable) if usable else {}
            for m in methods:
                if m not in usable:
                    entry[metric][m] = None
        if "a2c" in methods:
            base = np.array([[v["auc"]] for (t, m, _), v in per_run.items()
                             if t == task and m == "a2c" and math.isfinite(v["auc"])])
            for m in methods:
                if m == "a2c":
                    continue
                other = np.array([[v["auc"]] for (t, mm, _), v in per_run.items()
                                  if t == task and mm == m and math.isfinite(v["auc"])])
                if base.size and other.size:
                    entry[f"p_{m}_gt_a2c"] = probability_of_improvement(other, base)
        out["tasks"][task] = entry
    return out


def _fmt(e: dict[str, Any] | None) -> str:
    if not e:
        return "n/a"
    return f"{e['iqm']:.1f} [{e['iqm_ci'][0]:.1f}, {e['iqm_ci'][1]:.1f}] (n={e['runs']})"


def table_markdown(summary: dict[str, Any], budgets: dict[str, int]) -> str:
    lines = ["| task (budget) | method | mean return over the budget (auc), IQM [95% CI] | final 20%, IQM [95% CI] |"
             " P(method > A2C) on auc |", "|---|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        for m in entry["auc"]:
            p = entry.get(f"p_{m}_gt_a2c")
            ptxt = "—" if m == "a2c" else (f"{p['probability']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]" if p else "n/a")
            lines.append(f"| {task} ({budgets[task]:,}) | {m} | {_fmt(entry['auc'].get(m))} | "
                         f"{_fmt(entry['final'].get(m))} | {ptxt} |")
    return "\n".join(lines) + "\n"


def figure(runs: list[Run], path: Path) -> None:
    """One panel per task: every run's training return against env steps (3-update running mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        methods = list(dict.fromkeys(r.method for r in runs if r.task == task))
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
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_tasks(specs: list[str]) -> dict[str, int]:
    out = {}
    for spec in specs:
        task, _, budget = spec.partition(":")
        out[task] = int(budget) if budget else 30_000
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "acktr_vs_a2c")
    p.add_argument("--runs-dir", type=Path, default=None, help="run directories (default OUT/runs)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="ID:BUDGET ...")
    p.add_argument("--seeds", type=int, default=2, help="seeds per MuJoCo (task, method)")
    p.add_argument("--atari-seeds", type=int, default=1, help="seeds per Atari (task, method)")
    p.add_argument("--mujoco-methods", nargs="+", default=list(DEFAULT_MUJOCO_METHODS),
                   choices=sorted(MUJOCO_METHODS), help="MuJoCo methods (default a2c acktr-n20)")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time (1 torch thread each)")
    p.add_argument("--report-only", action="store_true", help="summarize existing runs, train nothing")
    args = p.parse_args(argv)
    budgets = parse_tasks(args.tasks)
    runs_dir = args.runs_dir or args.out / "runs"
    runs = []
    # Seeds outermost, so that a run cut short still has every (task, method) at seed 1.
    for seed in range(1, max(args.seeds, args.atari_seeds) + 1):
        for task, budget in budgets.items():
            if seed > (args.atari_seeds if methods_for(task) is ATARI_METHODS else args.seeds):
                continue
            for method in methods_for(task):
                if methods_for(task) is MUJOCO_METHODS and method not in args.mujoco_methods:
                    continue
                runs.append(Run(task, budget, method, seed, runs_dir / f"{task.replace('/', '_')}-{method}-{seed}"))
    started = time.time()
    if not args.report_only:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(train, runs))
        failed = [r for r, (_, code) in zip(runs, results) if code != 0]
        for r in failed:
            print(f"FAILED: {r.run_dir} (see {r.run_dir}.log)", file=sys.stderr)
    summary = summarize(runs)
    summary["wall_seconds"] = time.time() - started
    summary["budgets"] = budgets
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    table = table_markdown(summary, budgets)
    (args.out / "table.md").write_text(table)
    figure(runs, args.out / "curves.png")
    print(table)
    print(f"wall_seconds: {summary['wall_seconds']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
