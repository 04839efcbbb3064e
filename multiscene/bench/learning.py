"""``multiscene bench learning``: RL², DVE and Sparse DVE on three multi-scene MiniGrid tasks (issue #5).

Each task is a MiniGrid id made multi-scene the library's usual way: a fixed set of training level seeds
``[0, num_levels)`` and a disjoint held-out range after it (``multiscene.envs.minigrid``). The default tasks are
chosen so that levels differ in ways the agent cannot read off its first frame: with MiniGrid's 7x7 egocentric
view, where the key and door (DoorKey), the gap in the lava wall (LavaGap) or the connecting door (MultiRoom)
lie must be found by moving and remembered, so the right value of a state depends on the level, which the agent
can only infer from its trajectory -- the setting DVE's per-level value clusters are meant for (SPEC §1, §3).

Every (task, method, seed) is one ``multiscene train`` process (run in parallel, ``--workers``); each writes a
normal run directory. From each run's final evaluation the bench reads held-out and train return and episode
length (``eval/final.json``), the value error ``|V * reward_scale - realized discounted return-to-go|`` and the
mean confusion ``delta = 1 / (N_b sum_i alpha_i^2)`` on the held-out levels (``eval/final_steps_test.npz``), and
aggregates runs x tasks per method with the IQM and 95% stratified-bootstrap intervals of rliable. It writes
``results.json``, ``table.md`` and ``figure.png`` into ``--out``. Finished runs are reused, so an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.config import ConfigError

DEFAULT_TASKS = ("MiniGrid-DoorKey-5x5-v0", "MiniGrid-LavaGapS5-v0", "MiniGrid-MultiRoom-N2-S4-v0")
METHODS = {"rl2": "scalar", "dve": "dve", "sparse-dve": "sparse-dve"}
"""Benchmark method name -> ``--critic``. RL² is the scalar critic on the same LSTM agent (SPEC §2)."""
METRICS = (
    ("test_return", "held-out return", True),
    ("train_return", "train return", True),
    ("test_length", "held-out episode length", False),
    ("test_value_error", "held-out value error", False),
    ("test_confusion", "held-out mean confusion", False),
)
"""(key, label, higher is better)."""


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    seed: int
    run_dir: Path


def train_args(spec: RunSpec, ns: argparse.Namespace) -> list[str]:
    """The ``multiscene train`` flags of one run: the quickstart preset, resized for many parallel runs."""
    return [
        "--preset", "quickstart", "--env", spec.task, "--critic", METHODS[spec.method], "--seed", str(spec.seed),
        "--total-timesteps", str(ns.total_timesteps), "--num-envs", str(ns.num_envs), "--num-steps", str(ns.num_steps),
        "--num-minibatches", str(ns.num_minibatches), "--hidden-size", str(ns.hidden_size),
        "--num-levels", str(ns.num_levels), "--start-level", "0", "--eval-episodes", str(ns.eval_episodes),
        "--eval-num-envs", str(min(ns.eval_episodes, 16)), "--checkpoint-interval", "1000000",
        "--torch-threads", "1", "--num-threads", "1", "--progress", "none", "--no-tensorboard",
        "--run-dir", str(spec.run_dir), "--overwrite",
        # The benchmark's figures come from the full final evaluation (--eval-episodes per split), never capped.
        "--final-eval-steps", "0",
    ]


def check_args(ns: argparse.Namespace) -> None:
    """Bad input as ConfigError naming the flag, before any process starts."""
    from multiscene.cli import parse_train_args
    from multiscene.config import validate
    from multiscene.envs import check_env_id

    unknown = [m for m in ns.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods must be among {', '.join(METHODS)}; got {', '.join(unknown)}.")
    if ns.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {ns.seeds}.")
    if ns.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {ns.workers}.")
    for task in ns.tasks:
        if not task.startswith("MiniGrid-"):
            raise ConfigError(f"--tasks takes MiniGrid ids (the learning bench is CPU-scale); got {task!r}.")
        check_env_id(task)
    for method in ns.methods:
        validate(parse_train_args(train_args(RunSpec(ns.tasks[0], method, 1, Path("unused")), ns)))


def run_one(spec: RunSpec, ns: argparse.Namespace, log: Any) -> float:
    """Train one run in its own process (skipped when its final evaluation exists); returns wall seconds."""
    if (spec.run_dir / "eval" / "final.json").exists() and not ns.rerun:
        return 0.0
    spec.run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # One torch thread per process: with several processes on 2 cores, more threads only spin (see
    # docs/benchmarks.md, thread settings).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(spec.run_dir.parent / f"{spec.run_dir.name}.log", "w") as out:
        proc = subprocess.run([sys.executable, "-m", "multiscene", "train", *train_args(spec, ns)], stdout=out,
                              stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.time() - start
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {spec.run_dir}.log)"
    print(f"[bench learning] {spec.task} {spec.method} seed {spec.seed}: {status}, {seconds:.0f}s", file=log, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec.run_dir} failed with exit code {proc.returncode}; see {spec.run_dir}.log")
    return seconds


def run_metrics(run_dir: Path) -> dict[str, float]:
    """One finished run's figures; NaN where a figure does not exist (confusion of the scalar critic)."""
    from multiscene.analysis.stats import value_error

    final = json.loads((run_dir / "eval" / "final.json").read_text())

    def number(split: str, key: str) -> float:
        # eval/final.json holds null where no evaluation episode finished (a tiny or capped evaluation).
        value = (final.get(split) or {}).get(key)
        return math.nan if value is None else float(value)

    out = {
        "test_return": number("test", "return_mean"),
        "train_return": number("train", "return_mean"),
        "test_length": number("test", "length_mean"),
        "train_length": number("train", "length_mean"),
        "test_value_error": math.nan,
        "test_confusion": math.nan,
    }
    steps_path = run_dir / "eval" / "final_steps_test.npz"
    if steps_path.exists():
        with np.load(steps_path) as data:
            steps = {k: data[k] for k in data.files}
        err = value_error(steps)
        if err is not None:
            out["test_value_error"] = float(err.abs_error.mean())
        if "alpha" in steps and steps["alpha"].size:
            alpha = np.asarray(steps["alpha"], dtype=np.float64)
            out["test_confusion"] = float((1.0 / (alpha.shape[-1] * np.square(alpha).sum(-1))).mean())
    return out


def aggregate(per_run: dict[tuple[str, str, int], dict[str, float]], tasks: Sequence[str], methods: Sequence[str],
              seeds: int) -> dict[str, Any]:
    """Per metric and method: IQM and mean over runs x tasks with 95% stratified-bootstrap CIs (rliable),
    plus the per-task mean over seeds."""
    from multiscene.analysis.stats import aggregate_intervals

    out: dict[str, Any] = {}
    for key, _label, _higher in METRICS:
        scores = {m: np.array([[per_run[(t, m, s)][key] for t in tasks] for s in range(1, seeds + 1)])
                  for m in methods}
        finite = {m: v for m, v in scores.items() if np.isfinite(v).all()}
        intervals = aggregate_intervals(finite) if finite else {}
        out[key] = {
            m: {**intervals.get(m, {"iqm": None, "iqm_ci": None, "mean": None, "mean_ci": None}),
                "per_task": {t: (float(np.nanmean(scores[m][:, i])) if np.isfinite(scores[m][:, i]).any() else None)
                             for i, t in enumerate(tasks)}}
            for m in methods
        }
    return out


def _fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def table_markdown(agg: dict[str, Any], tasks: Sequence[str], methods: Sequence[str]) -> str:
    """IQM [95% CI] per metric and method, then the per-task means."""
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, label, higher in METRICS:
        arrow = "higher is better" if higher else "lower is better"
        if key == "test_confusion":
            arrow = "1/N_b = one-hot, 1 = uniform"
        cells = [_fmt(agg[key][m]["iqm"], agg[key][m]["iqm_ci"]) for m in methods]
        lines.append(f"| {label} ({arrow}), IQM [95% CI] | " + " | ".join(cells) + " |")
    lines += ["", "Per-task means over seeds (held-out return / held-out length / value error):", "",
              "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for t in tasks:
        cells = []
        for m in methods:
            parts = [agg[k][m]["per_task"][t] for k in ("test_return", "test_length", "test_value_error")]
            cells.append(" / ".join("n/a" if p is None else f"{p:.3g}" for p in parts))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(agg: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    """One panel per metric: the IQM of each method with its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 2.8))
    for ax, (key, label, _higher) in zip(axes, METRICS):
        for i, m in enumerate(methods):
            entry = agg[key][m]
            if entry["iqm"] is None:
                continue
            lo, hi = entry["iqm_ci"]
            ax.errorbar([entry["iqm"]], [i], xerr=[[entry["iqm"] - lo], [hi - entry["iqm"]]], fmt="o", capsize=4,
                        color=f"C{i}")  # one colour per method in every panel
        ax.set_yticks(range(len(methods)), list(methods))
        ax.set_ylim(-0.5, len(methods) - 0.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("IQM (95% CI)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multiscene bench learning", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learning"), help="runs, table and figure go here")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="MiniGrid ids (default: the three above)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="rl2, dve, sparse-dve (default: all)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N per task and method (default 5)")
    p.add_argument("--total-timesteps", type=int, default=50_000, help="env steps per run (default 50000)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--num-minibatches", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-levels", type=int, default=50, help="training level seeds [0, N); test levels follow")
    p.add_argument("--eval-episodes", type=int, default=32, help="final-evaluation episodes per split")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (default 2, one per core)")
    p.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    return p


def main(argv: list[str]) -> int:
    """Train every (task, method, seed), aggregate, write results.json, table.md and figure.png."""
    ns = parser().parse_args(argv)
    check_args(ns)
    ns.out.mkdir(parents=True, exist_ok=True)
    specs = [RunSpec(t, m, s, ns.out / "runs" / f"{t}-{m}-s{s}")
             for s in range(1, ns.seeds + 1) for t in ns.tasks for m in ns.methods]
    start = time.time()
    with ThreadPoolExecutor(max_workers=ns.workers) as pool:
        list(pool.map(lambda spec: run_one(spec, ns, sys.stdout), specs))
    wall = time.time() - start
    per_run = {(s.task, s.method, s.seed): run_metrics(s.run_dir) for s in specs}
    agg = aggregate(per_run, ns.tasks, ns.methods, ns.seeds)
    table = table_markdown(agg, ns.tasks, ns.methods)
    results = {
        "command": "multiscene bench learning " + " ".join(argv),
        "wall_seconds": wall,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "runs": [{"task": t, "method": m, "seed": s, **{k: (v if math.isfinite(v) else None) for k, v in r.items()}}
                 for (t, m, s), r in per_run.items()],
        "aggregate": agg,
    }
    (ns.out / "results.json").write_text(json.dumps(results, indent=1))
    (ns.out / "table.md").write_text(table)
    figure(agg, ns.methods, ns.out / "figure.png")
    print(table)
    print(f"wall_seconds: {wall:.0f}")
    print(f"written: {ns.out / 'results.json'}, {ns.out / 'table.md'}, {ns.out / 'figure.png'}")
    return 0
