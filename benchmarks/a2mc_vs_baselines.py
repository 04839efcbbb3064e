"""A2MC vs ACKTR and MC-PPO vs PPO on MuJoCo, and hot-wiring on a sparse Atari game, at a budget that fits 90
minutes on a shared 2-core machine (issue 11, "Learning evidence"; seed 004 §5, §6.2).

MuJoCo. Seed 004's Table 2 reports its largest margins on Swimmer (A2MC +333.7% over ACKTR), Walker2d (+120.5%)
and HalfCheetah (+60.8%). Each (task, method, seed) is one ``multiscene train`` process with the seed-004 preset
of that task: ``acktr-mujoco-TASK``, ``a2mc-mujoco-TASK`` (ACKTR + the VWR multi-critic, 5 envs x 500 steps =
2,500 per update), ``ppo-mujoco-TASK`` and ``mcppo-mujoco-TASK`` (PPO + the multi-critic, 1 env x 2,048 steps).
``--workers`` processes run at a time, one torch thread each, no final evaluation (the budget is for training).
Per task and method, over seeds, ``table.md`` and ``results.json`` give the IQM with a 95% stratified-bootstrap
interval (rliable, multiscene/analysis/stats.py) of

- ``auc``: the mean training return over the budget (sample efficiency; the carried-forward curve of
  multiscene/bench/paired_runs.py), and
- ``final``: the same over the last 20% of the budget,

and, for A2MC vs ACKTR and MC-PPO vs PPO, the paired margin ``(IQM(ours) - IQM(baseline)) / |IQM(baseline)| x
100`` over the seeds both have, with a 95% paired-bootstrap interval (the same seeds resampled for both), next to
seed 004's margin for the task (multiscene/analysis/seed004_reference.py; the seed's MC-PPO column survives only
as a parenthesized number of unknown unit, shown as printed). Seed 004's margins are on the final return at 1M
steps; ours are on training returns at a tenth of that, so they show the start of learning only.

Atari (``--atari GAME[:STEPS]``, default Freeway). A2C (``a2c-atari``: 32 envs x 20 steps) with and without
hot-wiring, ``--atari-seeds`` seeds each. Both arms run with ``--hotwire`` so that both log ``hotwire/*``; the
control arm sets ``--hotwire-cfg.epsilon 0``, which never forces an action and trains exactly as plain A2C (same
metrics, checked on CartPole). The initial stage is the whole budget (``--hotwire-cfg.fraction 1.0``): the
library's default stage, 5% of an Atari preset's 10M-15M steps (500k-750k), holds a budget this small entirely.
Per run the table gives the env step of the first non-zero raw reward (the end of the first update where
``hotwire/envs_trapped`` fell below the number of envs; resolution one batch, 640 steps), the envs that had
scored by the end, the hot-wired env-segments, the finished games, how many of them scored
(``charts/episodes_nonzero_return``) and their mean raw score. A Freeway game lasts about 2,050 agent steps, so with 32 envs the first games end near 65k steps.
``--atari-algo acktr`` runs ACKTR instead; on this code base K-FAC on Atari produced NaN logits at the second
update of a Freeway run (2026-12-06), so A2C is the default.

Measured cost (2026-12-06, 2-core Intel Xeon, two ``multiscene train`` processes at a time, 10k-step runs, load
average 1.6-2.8 including the two runs): training SPS per process HalfCheetah acktr 1,720, a2mc 1,250, ppo
530-780, mcppo 420-570; Swimmer 1,650 / 1,250 / 510 / 400; Walker2d 1,850 / 1,550 / 1,080 / 790; a2c-atari on
Freeway 530; plus about 9 s of start-up per process. The load average before the first of these runs was 0.8;
other engineers' tests ran beside some of them, hence the ranges. ``ESTIMATED_SPS`` holds per-method figures
rounded between the tasks, from which the script prints its plan's expected duration before it starts.

Default budget (the cut): HalfCheetah-v5, Swimmer-v5 and Walker2d-v5 at 100k steps each (40 ACKTR/A2MC updates,
48 PPO/MC-PPO updates), 5 seeds x 4 methods = 60 runs, about 66 min; Freeway at 135k steps (210 updates, two
games per env), 2 seeds x 2 arms = 4 runs, about 9 min. Expected about 75 min on an idle machine (the script
prints its estimate); more when other jobs share the cores. Seed 004 trains 1M MuJoCo and 15M-50M Atari steps.

A pilot of the Atari part (seed 1, Freeway, 128k steps, load average 6-8 from other jobs, 16 min): with
hot-wiring the first non-zero reward came at step 5,760 and 22 of 32 envs had scored by the end (781 hot-wired
env-segments; the first 32 games averaged 0.53); without, the first came at step 119,040 and 1 env had scored
(the first 32 games all scored 0).

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/a2mc_vs_baselines.py --out docs/figures/a2mc_vs_baselines

Finished runs (a run directory whose metrics reach the budget) are reused when called again; ``--report-only``
summarizes what is there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.bench.paired_runs import (
    REPO,
    Run,
    figure,
    finite_scores,
    format_interval,
    parse_tasks,
    read_records,
    run_scores,
    task_intervals,
    train_all,
    train_command,
)

MUJOCO_METHODS = ("acktr", "a2mc", "ppo", "mcppo")
"""Seed 004's four MuJoCo runs; the preset of method m on task T is ``m-mujoco-t`` (multiscene/presets.py)."""
PAIRS: tuple[tuple[str, str], ...] = (("acktr", "a2mc"), ("ppo", "mcppo"))
"""(baseline, multi-critic), as seed 004 Table 2."""
ATARI_ALGOS = {"a2c": "a2c-atari", "acktr": "acktr-atari"}
HOTWIRE_ON, HOTWIRE_OFF = "hotwire", "no-hotwire"
DEFAULT_TASKS = ("HalfCheetah-v5:100000", "Swimmer-v5:100000", "Walker2d-v5:100000")
DEFAULT_ATARI = "Freeway:135000"
ESTIMATED_SPS: dict[str, float] = {"acktr": 1700.0, "a2mc": 1300.0, "ppo": 650.0, "mcppo": 500.0, "atari": 530.0}
"""Training steps per second of one process while another runs beside it, on the 2-core machine (module doc)."""
STARTUP_SECONDS = 9.0


def task_name(env: str) -> str:
    """Seed 004's task name of a Gymnasium id: ``HalfCheetah-v5`` -> ``HalfCheetah``."""
    return env.split("-v")[0]


def mujoco_preset(method: str, task: str) -> str:
    return f"{method}-mujoco-{task_name(task).lower()}"


def atari_env(game: str) -> str:
    """``Freeway`` -> ``FreewayNoFrameskip-v4``; a full id is kept."""
    return game if "NoFrameskip" in game or game.startswith("ALE/") else f"{game}NoFrameskip-v4"


def atari_flags(arm: str, fraction: float) -> list[str]:
    """Both arms log hot-wiring's counters; the control arm never forces an action (epsilon 0)."""
    flags = ["--hotwire", "--hotwire-cfg.fraction", str(fraction)]
    return flags + (["--hotwire-cfg.epsilon", "0"] if arm == HOTWIRE_OFF else [])


def command_for(args: argparse.Namespace) -> Callable[[Run], list[str]]:
    """run -> its ``multiscene train`` command."""

    def command(run: Run) -> list[str]:
        if run.atari:
            arm = HOTWIRE_ON if run.method.endswith(f"+{HOTWIRE_ON}") else HOTWIRE_OFF
            return train_command(ATARI_ALGOS[args.atari_algo], run.task, run.budget, run.seed, run.run_dir,
                                 atari_flags(arm, args.hotwire_fraction))
        return train_command(mujoco_preset(run.method, run.task), run.task, run.budget, run.seed, run.run_dir)

    return command


def atari_arms(algo: str) -> tuple[str, str]:
    """(control, hot-wired) method names, e.g. ("a2c", "a2c+hotwire")."""
    return algo, f"{algo}+{HOTWIRE_ON}"


def plan(budgets: Mapping[str, int], seeds: int, atari: tuple[str, int] | None, atari_seeds: int, algo: str,
         runs_dir: Path, methods: Sequence[str] = MUJOCO_METHODS) -> list[Run]:
    """Every run, seeds outermost, so that a benchmark cut short still has every (task, method) at seed 1."""
    runs = []
    for seed in range(1, max(seeds, atari_seeds if atari else 0) + 1):
        if seed <= seeds:
            for task, budget in budgets.items():
                for method in (m for m in MUJOCO_METHODS if m in methods):
                    runs.append(Run(task, budget, method, seed, runs_dir / f"{task}-{method}-{seed}"))
        if atari is not None and seed <= atari_seeds:
            env, budget = atari
            for method in atari_arms(algo):
                name = method.replace("+", "-")
                runs.append(Run(env, budget, method, seed, runs_dir / f"{env.replace('/', '_')}-{name}-{seed}"))
    return runs


def estimated_seconds(runs: Sequence[Run], workers: int) -> float:
    """Wall seconds of ``runs`` on ``workers`` cores at ``ESTIMATED_SPS`` (no idle core counted)."""
    total = sum(r.budget / ESTIMATED_SPS["atari" if r.atari else r.method] + STARTUP_SECONDS for r in runs)
    return total / max(1, workers)


# ----------------------------------------------------------------------------------------------------------
# MuJoCo: IQM per method and the paired margins


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The interquartile mean (25% trimmed mean), as rliable's aggregate_iqm, along ``axis``."""
    from scipy import stats

    return np.asarray(stats.trim_mean(values, proportiontocut=0.25, axis=axis))


def paired_margin(baseline: Mapping[int, float], ours: Mapping[int, float], reps: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, Any] | None:
    """Relative margin in percent, ``(IQM(ours) - IQM(baseline)) / |IQM(baseline)| x 100``, over the seeds both
    have, with a paired-bootstrap interval: each replicate draws seeds with replacement and takes both methods'
    runs of those seeds. None without a common seed or when the baseline's IQM is 0.

    baseline, ours: seed -> score. Seed 004's margins are the same ratio on mean final returns.
    """
    common = sorted(set(baseline) & set(ours))
    if not common:
        return None
    base = np.array([baseline[s] for s in common], dtype=np.float64)
    mine = np.array([ours[s] for s in common], dtype=np.float64)
    base_iqm, mine_iqm = float(iqm(base)), float(iqm(mine))
    if base_iqm == 0:
        return None
    draws = np.random.RandomState(seed).randint(0, len(common), size=(reps, len(common)))
    base_rep, mine_rep = iqm(base[draws], axis=1), iqm(mine[draws], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        margins = np.where(base_rep != 0, (mine_rep - base_rep) / np.abs(base_rep) * 100.0, np.nan)
    tail = (1.0 - confidence) / 2 * 100.0
    low, high = np.nanpercentile(margins, [tail, 100.0 - tail])
    return {"margin_pct": (mine_iqm - base_iqm) / abs(base_iqm) * 100.0, "ci": [float(low), float(high)],
            "seeds": len(common), "baseline_iqm": base_iqm, "ours_iqm": mine_iqm}


def seed004_margin(task: str, ours: str) -> dict[str, Any] | None:
    """Seed 004 Table 2's number for (task, multi-critic method): A2MC's margin over ACKTR in percent, or MC-PPO's
    parenthesized number (unit lost in extraction)."""
    from multiscene.analysis.seed004_reference import MUJOCO_TABLE2

    row = MUJOCO_TABLE2.get(task_name(task))
    if row is None:
        return None
    if ours == "a2mc":
        return {"value": row["a2mc_margin_pct"], "kind": "margin_pct"}
    return {"value": row["mcppo_parenthesized"], "kind": "parenthesized"}


def summarize_mujoco(runs: Sequence[Run], reps: int = 2000) -> dict[str, Any]:
    """Per task: each method's IQM [95% CI] of auc and final, and per pair the paired margin on both and
    P(ours > baseline) on auc; ``reps`` bootstrap replicates each."""
    from multiscene.analysis.stats import probability_of_improvement

    runs = [r for r in runs if not r.atari]
    per_run = {(r.task, r.method, r.seed): run_scores(r.run_dir, r.budget) for r in runs}
    out: dict[str, Any] = {"runs": [{"task": t, "method": m, "seed": s, **v} for (t, m, s), v in per_run.items()],
                           "tasks": {}}
    for task in dict.fromkeys(r.task for r in runs):
        methods = [m for m in MUJOCO_METHODS if any(r.task == task and r.method == m for r in runs)]
        entry = task_intervals(per_run, task, methods, reps=reps)
        entry["margins"] = {}
        for base, ours in PAIRS:
            if base not in methods or ours not in methods:
                continue
            pair: dict[str, Any] = {"baseline": base, "seed004": seed004_margin(task, ours)}
            for metric in ("auc", "final"):
                pair[metric] = paired_margin(finite_scores(per_run, task, base, metric),
                                             finite_scores(per_run, task, ours, metric), reps=reps)
            a = np.array([[v] for v in finite_scores(per_run, task, ours, "auc").values()])
            b = np.array([[v] for v in finite_scores(per_run, task, base, "auc").values()])
            pair["p_auc"] = probability_of_improvement(a, b, reps=reps) if a.size and b.size else None
            entry["margins"][ours] = pair
        out["tasks"][task] = entry
    return out


# ----------------------------------------------------------------------------------------------------------
# Atari: hot-wiring and the first rewards


def atari_run_summary(run_dir: Path) -> dict[str, Any]:
    """First non-zero raw reward, envs that scored, hot-wired segments and finished games of one Atari run.

    ``first_reward_step``: ``global_step`` of the first update after which ``hotwire/envs_trapped`` (envs with no
    non-zero raw reward since the start) is below the number of envs; the reward came in that update's batch.
    None when no env scored (or the run has no ``hotwire/*`` counters). ``mean_return``: the finished games'
    mean raw score (each update's mean weighted by its games).
    """
    records = read_records(run_dir)
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()).get("config", {}) if config_path.exists() else {}
    num_envs = int(config.get("num_envs", 0))
    trapped = [(r["global_step"], r["hotwire/envs_trapped"]) for r in records if "hotwire/envs_trapped" in r]
    first = next((step for step, n in trapped if n < num_envs), None)
    games = [(r["charts/episodic_return"], r.get("charts/episodes", 1), r.get("charts/episodes_nonzero_return"))
             for r in records if r.get("charts/episodic_return") is not None]
    episodes = int(sum(n for _, n, _ in games))
    nonzero = [z for _, _, z in games]
    return {
        "steps": int(max((r.get("global_step", 0) for r in records), default=0)),
        "num_envs": num_envs,
        "batch": num_envs * int(config.get("num_steps", 0)),
        "first_reward_step": first,
        "envs_scored": int(num_envs - trapped[-1][1]) if trapped else None,
        "segments_hotwired": int(records[-1].get("hotwire/segments_hotwired_total", 0)) if records else 0,
        "episodes": episodes,
        "episodes_nonzero": int(sum(nonzero)) if nonzero and None not in nonzero else None,
        "mean_return": float(sum(v * n for v, n, _ in games) / episodes) if episodes else None,
        "trapped_curve": trapped,
    }


def summarize_atari(runs: Sequence[Run]) -> dict[str, Any]:
    """Per Atari run its ``atari_run_summary``, and per arm the median first-reward step over the seeds where it
    came (and how many of them it came in)."""
    runs = [r for r in runs if r.atari]
    out: dict[str, Any] = {"runs": [], "arms": {}}
    for r in runs:
        out["runs"].append({"task": r.task, "method": r.method, "seed": r.seed, "budget": r.budget,
                            **{k: v for k, v in atari_run_summary(r.run_dir).items() if k != "trapped_curve"}})
    for method in dict.fromkeys(r.method for r in runs):
        mine = [x for x in out["runs"] if x["method"] == method]
        firsts = [x["first_reward_step"] for x in mine if x["first_reward_step"] is not None]
        out["arms"][method] = {"runs": len(mine), "runs_with_reward": len(firsts),
                               "median_first_reward_step": float(np.median(firsts)) if firsts else None}
    return out


# ----------------------------------------------------------------------------------------------------------
# Output


def _margin_cell(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "n/a"
    return f"{m['margin_pct']:+.1f}% [{m['ci'][0]:+.1f}, {m['ci'][1]:+.1f}] (n={m['seeds']})"


def _seed_cell(ref: Mapping[str, Any] | None) -> str:
    if not ref:
        return "—"
    return f"{ref['value']:+.1f}%" if ref["kind"] == "margin_pct" else f"({ref['value']:.1f})"


def table_markdown(summary: Mapping[str, Any], budgets: Mapping[str, int]) -> str:
    """The MuJoCo table (IQM per method, margins next to seed 004's) and the Atari hot-wiring table."""
    lines = []
    mujoco = summary.get("mujoco", {}).get("tasks", {})
    if mujoco:
        lines += ["| task (budget) | method | mean return over the budget (auc), IQM [95% CI] | final 20%, IQM "
                  "[95% CI] | margin over baseline, auc [95% CI] | margin, final 20% [95% CI] | seed 004 (1M "
                  "steps, final) |", "|---|---|---|---|---|---|---|"]
        for task, entry in mujoco.items():
            for m in entry["auc"]:
                pair = entry["margins"].get(m)
                cells = [f"{task} ({budgets[task]:,})", m if not pair else f"{m} vs {pair['baseline']}",
                         format_interval(entry["auc"].get(m)), format_interval(entry["final"].get(m)),
                         _margin_cell(pair["auc"]) if pair else "—", _margin_cell(pair["final"]) if pair else "—",
                         _seed_cell(pair["seed004"]) if pair else "—"]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Margin: (IQM(ours) - IQM(baseline)) / |IQM(baseline)| x 100 over the seeds both have, 95% "
                  "paired-bootstrap interval. Seed 004: its Table 2 margin of A2MC over ACKTR; for MC-PPO the "
                  "parenthesized number its extracted text keeps (unit lost; multiscene/analysis/"
                  "seed004_reference.py). Returns are training returns, not evaluations.", ""]
    atari = summary.get("atari", {}).get("runs", [])
    if atari:
        lines += ["| game (budget) | arm | seed | first non-zero reward (env step) | envs that scored | hot-wired "
                  "env-segments | games finished | games that scored | mean raw score |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in atari:
            first = (f"{r['first_reward_step']:,}" if r["first_reward_step"] is not None
                     else f"none by {r['steps']:,}")
            scored = "n/a" if r["envs_scored"] is None else f"{r['envs_scored']} of {r['num_envs']}"
            nonzero = "n/a" if r["episodes_nonzero"] is None else str(r["episodes_nonzero"])
            score = "n/a" if r["mean_return"] is None else f"{r['mean_return']:.2f}"
            lines.append(f"| {r['task']} ({r['budget']:,}) | {r['method']} | {r['seed']} | {first} | {scored} | "
                         f"{r['segments_hotwired']} | {r['episodes']} | {nonzero} | {score} |")
        batch = atari[0]["batch"]
        lines += ["", f"First non-zero reward: the end of the first update (batch {batch:,} steps) after which an "
                  "env had received one. Control arm: --hotwire with epsilon 0 (never forces an action)."]
    return "\n".join(lines) + "\n"


def hotwire_figure(runs: Sequence[Run], path: Path) -> None:
    """Envs that have received a non-zero reward against env steps, per Atari run, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    methods = list(dict.fromkeys(r.method for r in runs))
    for i, m in enumerate(methods):
        for j, r in enumerate(x for x in runs if x.method == m):
            s = atari_run_summary(r.run_dir)
            if not s["trapped_curve"]:
                continue
            steps, trapped = zip(*s["trapped_curve"])
            ax.step(steps, s["num_envs"] - np.asarray(trapped), where="post", color=f"C{i}", alpha=0.85,
                    label=m if j == 0 else None)
    ax.set_title(runs[0].task if runs else "", fontsize=9)
    ax.set_xlabel("env steps", fontsize=8)
    ax.set_ylabel("envs that have scored", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_atari(spec: str, default_budget: int = 135_000) -> tuple[str, int] | None:
    """``GAME[:STEPS]`` -> (env id, steps); ``none`` -> None. Checks the id against Gymnasium's registry."""
    if spec.lower() == "none":
        return None
    game, _, steps = spec.partition(":")
    try:
        budget = int(steps) if steps else default_budget
    except ValueError:
        raise ValueError(f"--atari: {spec!r} is not GAME[:STEPS] (e.g. Freeway:135000) or none") from None
    env = atari_env(game)
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    if env not in gymnasium.registry or budget <= 0:
        raise ValueError(f"--atari: {spec!r} needs an Atari game known to Gymnasium (e.g. Freeway, Boxing) and a "
                         "positive number of steps")
    return env, budget


def check_tasks(budgets: Mapping[str, int]) -> None:
    from multiscene.presets import SEED004_MUJOCO

    for task in budgets:
        if task_name(task) not in SEED004_MUJOCO:
            raise ValueError(f"--tasks: {task!r} has no seed-004 preset; choose among "
                             f"{', '.join(t + '-v5' for t in SEED004_MUJOCO)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "a2mc_vs_baselines")
    p.add_argument("--runs-dir", type=Path, default=None, help="run directories (default OUT/runs)")
    p.add_argument("--tasks", nargs="*", default=list(DEFAULT_TASKS), help="MuJoCo ID:STEPS ... (none: no MuJoCo)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per MuJoCo (task, method)")
    p.add_argument("--methods", nargs="+", choices=MUJOCO_METHODS, default=list(MUJOCO_METHODS),
                   help="MuJoCo methods (default all four; a margin needs both sides of its pair)")
    p.add_argument("--atari", default=DEFAULT_ATARI, help="GAME[:STEPS] for the hot-wiring runs, or none")
    p.add_argument("--atari-seeds", type=int, default=2, help="seeds per hot-wiring arm")
    p.add_argument("--atari-algo", choices=sorted(ATARI_ALGOS), default="a2c", help="algorithm of both arms")
    p.add_argument("--hotwire-fraction", type=float, default=1.0,
                   help="--hotwire-cfg.fraction of both arms (share of the budget where hot-wiring may fire)")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time (1 torch thread each)")
    p.add_argument("--report-only", action="store_true", help="summarize existing runs, train nothing")
    args = p.parse_args(argv)
    if args.seeds < 0 or args.atari_seeds < 0 or args.workers < 1:
        p.error("--seeds and --atari-seeds must be >= 0 and --workers >= 1")
    if not 0.0 <= args.hotwire_fraction <= 1.0:
        p.error(f"--hotwire-fraction must be in [0, 1], got {args.hotwire_fraction}")
    try:
        budgets = parse_tasks([t for t in args.tasks if t.lower() != "none"])
        check_tasks(budgets)
        atari = parse_atari(args.atari)
    except ValueError as e:
        p.error(str(e))
    runs_dir = args.runs_dir or args.out / "runs"
    runs = plan(budgets, args.seeds, atari, args.atari_seeds, args.atari_algo, runs_dir, args.methods)
    if not runs:
        p.error("nothing to run: give --tasks with --seeds >= 1, or --atari with --atari-seeds >= 1")
    started = time.time()
    if not args.report_only:
        print(f"{len(runs)} runs, {args.workers} at a time; expected about "
              f"{estimated_seconds(runs, args.workers) / 60:.0f} min on an idle 2-core machine", flush=True)
        train_all(runs, command_for(args), args.workers)
    summary: dict[str, Any] = {"mujoco": summarize_mujoco(runs), "atari": summarize_atari(runs)}
    summary["wall_seconds"] = time.time() - started
    summary["budgets"] = dict(budgets)
    summary["atari_budget"] = dict([atari]) if atari else {}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(jsonable(summary), indent=2))
    table = table_markdown(summary, budgets)
    (args.out / "table.md").write_text(table)
    mujoco_runs = [r for r in runs if not r.atari]
    if mujoco_runs:
        figure(mujoco_runs, args.out / "curves.png", rows=[list(pair) for pair in PAIRS])
    atari_runs = [r for r in runs if r.atari]
    if atari_runs:
        hotwire_figure(atari_runs, args.out / "hotwire.png")
    print(table)
    print(f"wall_seconds: {summary['wall_seconds']:.0f}")
    return 0


def jsonable(value: Any) -> Any:
    """``value`` with NaN and inf as None (strict JSON), tuples as lists and anything else unknown as text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (int, np.integer)) or value is None or isinstance(value, (str, bool)):
        return value.item() if isinstance(value, np.integer) else value
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
