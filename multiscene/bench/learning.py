"""``multiscene bench learning``: RL², DVE and Sparse DVE on multi-scene MiniGrid tasks (issues #5, #14).

Each task is a MiniGrid id made multi-scene the library's usual way: a fixed set of training level seeds
``[0, num_levels)`` and a disjoint held-out range after it (``multiscene.envs.minigrid``). The default tasks are
ones where the right value of a state depends on the level and the agent can only infer the level from its
trajectory, the setting DVE's per-level value clusters are meant for (SPEC §1, §3), and where every method
learns well above the random policy within the default budget: HiddenPayoff (every level starts with the same
frame; a cue seen later decides what the goal pays, three scenes) and MultiRoom-N2-S4 (where the connecting door
lies must be found and remembered). Any MiniGrid id can be passed with ``--tasks`` (DoorKey-5x5 and LavaGapS5,
the defaults before issue 14, need more than 150k steps with this agent).

Every (task, method, seed) is one trial of ``multiscene sweep`` (``multiscene.scale.sweep``): Ray Tune runs them
on a local Ray instance started and stopped by this command (``--workers`` at a time, one CPU and one torch thread
each), or on a cluster with ``--address``; each trial writes a normal run directory under ``--out/trials``. From
each run's final evaluation the bench reads held-out and train return and episode length and the random policy's
held-out return (``eval/final.json``), and from the held-out steps (``eval/final_steps_test.npz``) the value error
``|V * reward_scale - realized discounted return-to-go|``, the mean confusion ``delta = 1 / (N_b sum_i alpha_i^2)``,
the clusters in use (clusters that win the argmax of alpha on at least 10% of the steps) and the normalized mutual
information between the argmax cluster and the scene (HiddenPayoff's three scenes; elsewhere the level). It
aggregates runs x tasks per method with the IQM and 95% stratified-bootstrap intervals of rliable and writes
``results.json``, ``table.md`` and ``figure.png`` into ``--out``. Finished trials are reused and an interrupted
one resumes from its checkpoint, so an interrupted benchmark continues where it stopped with the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.config import ConfigError

DEFAULT_TASKS = ("MiniGrid-HiddenPayoff-v0", "MiniGrid-MultiRoom-N2-S4-v0")
"""Tasks on which every method learns well above the random policy within the default budget (issue 14).
DoorKey-5x5 and LavaGapS5, the earlier defaults, did not learn at 150k steps in a pilot (docs/benchmarks.md)."""
METHODS = {"rl2": "scalar", "dve": "dve", "sparse-dve": "sparse-dve"}
"""Benchmark method name -> ``--critic``. RL² is the scalar critic on the same LSTM agent (SPEC §2)."""
METRICS = (
    ("test_return", "held-out return", True),
    ("train_return", "train return", True),
    ("test_length", "held-out episode length", False),
    ("test_value_error", "held-out value error", False),
    ("test_confusion", "held-out mean confusion", False),
    ("test_clusters_in_use", "held-out clusters in use", True),
    ("test_scene_nmi", "NMI(argmax cluster, scene)", True),
)
"""(key, label, higher is better)."""
DEFAULT_SEEDS = 5
DEFAULT_TIMESTEPS = 150_000
CLUSTER_IN_USE_SHARE = 0.1
"""A cluster is in use when it wins the argmax of alpha on at least this share of the held-out steps (issue 14)."""


def sweep_argv(ns: argparse.Namespace) -> list[str]:
    """The ``multiscene sweep`` arguments of the whole benchmark: the quickstart preset, resized for many parallel
    runs, over the grid task x critic, with seeds 1..N."""
    fixed = {
        "total_timesteps": ns.total_timesteps, "num_envs": ns.num_envs, "num_steps": ns.num_steps,
        "num_minibatches": ns.num_minibatches, "hidden_size": ns.hidden_size, "num_levels": ns.num_levels,
        "start_level": 0, "eval_episodes": ns.eval_episodes, "eval_num_envs": min(ns.eval_episodes, 16),
        "checkpoint_interval": ns.checkpoint_interval, "torch_threads": 1, "num_threads": 1, "progress": "none",
        "tensorboard": False,
        # The benchmark's figures come from the full final evaluation (--eval-episodes per split), never capped.
        "final_eval_steps": 0,
    }
    argv = ["--preset", "quickstart", "--task", "train", "--out", str(ns.out), "--seeds", str(ns.seeds),
            "--grid", "env=" + ",".join(ns.tasks), "--grid", "critic=" + ",".join(METHODS[m] for m in ns.methods),
            "--cpus-per-trial", "1", "--max-concurrent", str(ns.workers)]
    for key, value in fixed.items():
        argv += ["--set", f"{key}={value}"]
    for text in ns.set:
        argv += ["--set", text]
    if ns.address is not None:
        argv += ["--address", ns.address]
    return argv


def check_args(ns: argparse.Namespace) -> Any:
    """Bad input as ConfigError naming the flag, before any trial starts; returns the sweep spec."""
    from multiscene.envs import check_env_id
    from multiscene.scale.sweep import parse_args as sweep_spec

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
    return sweep_spec(sweep_argv(ns))  # builds and validates every trial's config


def trial_key(trial: Any) -> tuple[str, str, int]:
    """(task, method, seed) of a sweep trial of this benchmark."""
    method = {critic: name for name, critic in METHODS.items()}[trial.overrides["critic"]]
    return trial.overrides["env"], method, trial.seed


def scenes_of(run_dir: Path, level_seeds: np.ndarray) -> np.ndarray:
    """The scene of each level seed: HiddenPayoff's three scenes (``multiscene.envs.scenes.level_scene``); on any
    other task each level is its own scene."""
    from multiscene.envs.scenes import HIDDEN_PAYOFF_ID, level_scene

    env = json.loads((run_dir / "config.json").read_text())["config"]["env"]
    if env != HIDDEN_PAYOFF_ID:
        return np.asarray(level_seeds)
    table = {int(s): level_scene(int(s)) for s in np.unique(level_seeds)}
    return np.array([table[int(s)] for s in level_seeds])


def run_metrics(run_dir: Path) -> dict[str, float]:
    """One finished run's figures; NaN where a figure does not exist (confusion of the scalar critic)."""
    from multiscene.analysis.stats import cluster_level_purity, value_error

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
        "test_clusters_in_use": math.nan,
        "test_scene_nmi": math.nan,
        "test_random_return": (math.nan if final.get("random_policy_test") is None
                               else float(final["random_policy_test"]["return_mean"])),
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
            winner = alpha.argmax(-1)
            shares = np.bincount(winner, minlength=alpha.shape[-1]) / len(winner)
            out["test_clusters_in_use"] = float((shares >= CLUSTER_IN_USE_SHARE).sum())
            if "level_seed" in steps:
                scene = scenes_of(run_dir, steps["level_seed"])
                out["test_scene_nmi"] = float(cluster_level_purity(winner, scene)["nmi"])
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
    # The random policy's held-out return per task (the floor "clearly learns" is read against): the mean over
    # every run's own random-policy pass on its held-out levels.
    out["random_floor"] = {
        t: (float(np.nanmean(v)) if np.isfinite(v := np.array([r["test_random_return"] for (tt, _m, _s), r
                                                                in per_run.items() if tt == t])).any() else None)
        for t in tasks}
    return out


def _fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def paired_markdown(per_run: dict[tuple[str, str, int], dict[str, float]], tasks: Sequence[str],
                    methods: Sequence[str], seeds: int, key: str = "test_value_error") -> str:
    """Per task, each method against each earlier one on the same seeds: the mean difference of ``key`` and
    in how many seeds the later method is lower (for the value error: better)."""
    pairs = [(a, b) for i, b in enumerate(methods) for a in methods[:i]]
    if not pairs:
        return ""
    lines = [f"Paired by seed, `{key}` of the second method minus the first's (mean; seeds where it is lower):", "",
             "| task | " + " | ".join(f"{b} - {a}" for a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for t in tasks:
        cells = []
        for a, b in pairs:
            diff = np.array([per_run[(t, b, s)][key] - per_run[(t, a, s)][key] for s in range(1, seeds + 1)])
            diff = diff[np.isfinite(diff)]
            cells.append("n/a" if not diff.size else f"{diff.mean():+.3f} ({int((diff < 0).sum())} of {diff.size})")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(agg: dict[str, Any], tasks: Sequence[str], methods: Sequence[str]) -> str:
    """IQM [95% CI] per metric and method, then the per-task means."""
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, label, higher in METRICS:
        arrow = "higher is better" if higher else "lower is better"
        if key == "test_confusion":
            arrow = "1/N_b = one-hot, 1 = uniform"
        cells = [_fmt(agg[key][m]["iqm"], agg[key][m]["iqm_ci"]) for m in methods]
        lines.append(f"| {label} ({arrow}), IQM [95% CI] | " + " | ".join(cells) + " |")
    lines += ["", "Per-task means over seeds (held-out return / held-out length / value error), and the random "
              "policy's held-out return:", "",
              "| task | " + " | ".join(methods) + " | random policy |", "|---|" + "---|" * (len(methods) + 1)]
    for t in tasks:
        floor = agg.get("random_floor", {}).get(t)
        cells = []
        for m in methods:
            parts = [agg[k][m]["per_task"][t] for k in ("test_return", "test_length", "test_value_error")]
            cells.append(" / ".join("n/a" if p is None else f"{p:.3g}" for p in parts))
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {'n/a' if floor is None else f'{floor:.3g}'} |")
    return "\n".join(lines) + "\n"


def figure(agg: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    """One panel per metric: the IQM of each method with its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(METRICS))
    rows = -(-len(METRICS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(METRICS):]:
        ax.set_visible(False)
    for ax, (key, label, _higher) in zip(axes.flat, METRICS):
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
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learning"),
                   help="trials (run directories), table and figure go here")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="MiniGrid ids (default: the three above)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="rl2, dve, sparse-dve (default: all)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds 1..N per task and method (default {DEFAULT_SEEDS})")
    p.add_argument("--total-timesteps", type=int, default=DEFAULT_TIMESTEPS,
                   help=f"env steps per run (default {DEFAULT_TIMESTEPS})")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--num-minibatches", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-levels", type=int, default=50, help="training level seeds [0, N); test levels follow")
    p.add_argument("--eval-episodes", type=int, default=32, help="final-evaluation episodes per split")
    p.add_argument("--checkpoint-interval", type=int, default=10,
                   help="updates between checkpoints (an interrupted run resumes from the last one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field for every run, as multiscene sweep --set (e.g. dve.k1=0.02)")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (default 2, one per core)")
    p.add_argument("--address", default=None,
                   help="auto or HOST:PORT: run the trials on that Ray cluster (default: a local Ray instance)")
    p.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    return p


def main(argv: list[str]) -> int:
    """Train every (task, method, seed) as Ray Tune trials, aggregate, write results.json, table.md, figure.png."""
    from multiscene.scale.sweep import RESULT_FILE, pending, run_sweep

    ns = parser().parse_args(argv)
    spec = check_args(ns)
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.rerun:
        for trial in spec.trials:
            (ns.out / "trials" / trial.name / RESULT_FILE).unlink(missing_ok=True)
    to_train = [t.name for t in pending(spec)]
    start = time.time()
    run_sweep(spec)
    wall = time.time() - start
    # A later call (to finish interrupted runs, or just to rebuild the table) adds to the calls before it rather
    # than replacing their wall time with its own: wall_seconds is the sum over every call that trained runs here.
    previous = ns.out / "results.json"
    calls: list[dict[str, Any]] = []
    if previous.exists():
        try:
            calls = list(json.loads(previous.read_text()).get("calls", []))
        except (OSError, ValueError):
            calls = []
    calls.append({"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)), "wall_seconds": wall,
                  "trained": to_train})
    failed = [t.name for t in pending(spec)]
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not finish ({', '.join(failed)}); their run directories under "
                           f"{ns.out / 'trials'} hold the logs. Run the same command again to retry them.")
    per_run = {trial_key(t): run_metrics(ns.out / "trials" / t.name) for t in spec.trials}
    agg = aggregate(per_run, ns.tasks, ns.methods, ns.seeds)
    table = table_markdown(agg, ns.tasks, ns.methods) + "\n" + paired_markdown(per_run, ns.tasks, ns.methods, ns.seeds)
    results = {
        "command": "multiscene bench learning " + " ".join(argv),
        "wall_seconds": sum(float(c["wall_seconds"]) for c in calls),
        "calls": calls,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "runs": [{"task": t, "method": m, "seed": s, **{k: (v if math.isfinite(v) else None) for k, v in r.items()}}
                 for (t, m, s), r in per_run.items()],
        "aggregate": agg,
    }
    (ns.out / "results.json").write_text(json.dumps(results, indent=1))
    (ns.out / "table.md").write_text(table)
    figure(agg, ns.methods, ns.out / "figure.png")
    print(table)
    print(f"wall_seconds: {wall:.0f} this call ({len(to_train)} runs trained), "
          f"{results['wall_seconds']:.0f} over {len(calls)} call(s)")
    print(f"written: {ns.out / 'results.json'}, {ns.out / 'table.md'}, {ns.out / 'figure.png'}")
    return 0
