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
import time
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.bench.paired_runs import (  # noqa: F401  (curve, finished, read_records: the tests' names)
    REPO,
    Run,
    curve,
    figure,
    finished,
    finite_scores,
    format_interval,
    is_atari,
    parse_tasks,
    read_records,
    run_scores,
    task_intervals,
    train_all,
)
from multiscene.bench.paired_runs import train_command as multiscene_train

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


def methods_for(task: str) -> dict[str, tuple[str, list[str]]]:
    return ATARI_METHODS if is_atari(task) else MUJOCO_METHODS


def train_command(run: Run) -> list[str]:
    preset, extra = methods_for(run.task)[run.method]
    return multiscene_train(preset, run.task, run.budget, run.seed, run.run_dir, extra)


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per task: each method's IQM [95% CI] of auc and final over seeds, and P(method > a2c) on auc."""
    from multiscene.analysis.stats import probability_of_improvement

    per_run = {(r.task, r.method, r.seed): run_scores(r.run_dir, r.budget) for r in runs}
    tasks = list(dict.fromkeys(r.task for r in runs))
    out: dict[str, Any] = {"runs": [{"task": t, "method": m, "seed": s, **v} for (t, m, s), v in per_run.items()],
                           "tasks": {}}
    for task in tasks:
        methods = list(dict.fromkeys(r.method for r in runs if r.task == task))
        entry = task_intervals(per_run, task, methods)
        if "a2c" in methods:
            base = np.array([[v] for v in finite_scores(per_run, task, "a2c", "auc").values()])
            for m in methods:
                if m == "a2c":
                    continue
                other = np.array([[v] for v in finite_scores(per_run, task, m, "auc").values()])
                if base.size and other.size:
                    entry[f"p_{m}_gt_a2c"] = probability_of_improvement(other, base)
        out["tasks"][task] = entry
    return out


def table_markdown(summary: dict[str, Any], budgets: dict[str, int]) -> str:
    lines = ["| task (budget) | method | mean return over the budget (auc), IQM [95% CI] | final 20%, IQM [95% CI] |"
             " P(method > A2C) on auc |", "|---|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        for m in entry["auc"]:
            p = entry.get(f"p_{m}_gt_a2c")
            ptxt = "—" if m == "a2c" else (f"{p['probability']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]" if p else "n/a")
            lines.append(f"| {task} ({budgets[task]:,}) | {m} | {format_interval(entry['auc'].get(m))} | "
                         f"{format_interval(entry['final'].get(m))} | {ptxt} |")
    return "\n".join(lines) + "\n"


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
    try:
        budgets = parse_tasks(args.tasks)
    except ValueError as e:
        p.error(str(e))
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
        train_all(runs, train_command, args.workers)
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
