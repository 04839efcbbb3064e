"""Value error of the scalar (RL²), DVE and Sparse DVE critics on a task whose levels start alike (issue 3).

Trains each critic for several seeds on ``MiniGrid-HiddenPayoff-v0`` (``multiscene.envs.scenes``: every level
starts with the same observation; a floor cue seen after the first turn tells which of three payoffs the goal
pays) through the real trainer, ``multiscene.trainer.train``, then reads the final evaluation each run writes,
``eval/final_steps_{split}.npz``, and measures per recorded step

    error_t = | V(s_t) * reward_scale - G_t |,    G_t = sum_{k >= t} gamma^(k - t) r_k  (realized, in-episode)

(the critic predicts returns of normalized rewards; ``reward_scale`` undoes the normalization). The error is
reported overall, per scene, per level and per time step since the episode start: the steps are matched on
``t`` because the runs' policies differ, and ``t = 0`` is the state that looks the same in every level, where no
critic can know the payoff. Two references put the numbers in scale, both computed from the same run's
realized returns: ``scene_blind_floor`` (the error of the best prediction that knows ``t`` but not the scene:
the median of ``G`` at that ``t``) and ``scene_aware_floor`` (the same knowing the scene too). They are floors
for mean absolute error among predictors that know only that much, so a critic can beat the first (it sees the
cue) and should not beat the second by more than noise.

Usage (the numbers in docs/dve_benchmark.md)::

    PYTHONPATH=. python benchmarks/dve_value_error.py --seeds 1 2 3 --jobs 2 \
        --out-dir runs/dve_benchmark --json runs/dve_benchmark/results.json

``--reuse`` analyses existing runs in ``--out-dir`` without training them again. This is a benchmark, not a
test: it takes minutes; ``tests/test_scenes.py`` runs it on a tiny budget only to check that it works.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.analysis.stats import mean_abs_to_group_median
from multiscene.children import end_with_this_process
from multiscene.config import DVEConfig, TrainConfig
from multiscene.envs.scenes import HIDDEN_PAYOFF_ID, SCENE_PAYOFFS, level_scene

CRITICS = ("scalar", "dve", "sparse-dve")  # the critics this benchmark compares

SPLITS: tuple[str, ...] = ("train", "test")
LAST_T_BUCKET = 6
"""Steps with ``t >= LAST_T_BUCKET`` share one bucket: a trained agent reaches the goal in 5 steps."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """The training budget and sizes shared by every run (the same for every critic)."""

    total_timesteps: int = 60_000
    num_envs: int = 16
    num_steps: int = 64
    num_levels: int = 200
    hidden_size: int = 64
    learning_rate: float = 1e-3
    gamma: float = 0.99
    eval_episodes: int = 96
    torch_threads: int = 1
    bootstrap_truncation: bool = True
    """Bootstrap a time-limit cut from the value of the episode's final observation (the library default since
    issue 16); ``--no-bootstrap-truncation`` treats a cut as a termination, as the 2026-11-22 figures did."""


def train_config(critic: str, seed: int, settings: BenchmarkSettings, run_dir: Path) -> TrainConfig:
    """The TrainConfig of one run: everything but the critic and the seed is shared by all runs."""
    return TrainConfig(
        preset="dve-benchmark",
        env=HIDDEN_PAYOFF_ID,
        seed=seed,
        critic=critic,  # type: ignore[arg-type]
        num_envs=settings.num_envs,
        num_steps=settings.num_steps,
        total_timesteps=settings.total_timesteps,
        num_levels=settings.num_levels,
        hidden_size=settings.hidden_size,
        learning_rate=settings.learning_rate,
        gamma=settings.gamma,
        update_epochs=4,
        num_minibatches=4,
        ent_coef=0.01,
        eval_episodes=settings.eval_episodes,
        eval_num_envs=16,
        # Only the final checkpoint matters here; writing one every few updates would cost time for nothing.
        checkpoint_interval=10_000,
        keep_checkpoints=1,
        device="cpu",
        torch_threads=settings.torch_threads,
        progress="none",
        tensorboard=False,
        run_dir=str(run_dir),
        overwrite=True,
        # Every evaluation episode counts (no step cap).
        final_eval_steps=0,
        bootstrap_truncation=settings.bootstrap_truncation,
        # N_b = 3 matches the three scenes; Sparse DVE uses the library's default pre-boost schedule.
        dve=DVEConfig(num_clusters=3, schedule="pre-boost"),
    )


def _train_one(cfg: TrainConfig) -> str:
    """Worker entry point (a separate process, so runs do not share torch or RNG state)."""
    from multiscene.trainer import train

    return str(train(cfg))


# ----------------------------------------------------------------------------------------------------------
# Analysis of one run's final evaluation


def returns_to_go(episode: np.ndarray, t: np.ndarray, reward: np.ndarray, gamma: float) -> np.ndarray:
    """Realized discounted return from each recorded step to the end of its episode.

    Rows of different episodes may be interleaved (``run_episodes`` records all envs step by step); rows of one
    episode are ordered by ``t``. Returns ``G`` aligned with the input rows.
    """
    order = np.lexsort((t, episode))
    g_sorted = np.zeros(len(order), dtype=np.float64)
    running = 0.0
    for pos in range(len(order) - 1, -1, -1):
        row = order[pos]
        is_last = pos == len(order) - 1 or episode[order[pos + 1]] != episode[row]
        running = float(reward[row]) + (0.0 if is_last else gamma * running)
        g_sorted[pos] = running
    g = np.empty_like(g_sorted)
    g[order] = g_sorted
    return g


def analyse_split(path: Path) -> dict[str, Any]:
    """Value error of one ``final_steps_{split}.npz``: overall, by t, by scene, per level, plus floors and, for
    DVE critics, confusion and cluster purity."""
    data = np.load(path)
    gamma = float(data["gamma"])
    scale = float(data["reward_scale"])
    episode, t, reward = data["episode"], data["t"], data["reward"]
    g = returns_to_go(episode, t, reward, gamma)
    predicted = data["value"][:, 0].astype(np.float64) * scale
    error = np.abs(predicted - g)
    levels = data["level_seed"].astype(np.int64)
    scene = np.array([level_scene(int(seed)) for seed in levels])
    t_bucket = np.minimum(t, LAST_T_BUCKET)

    by_t: dict[str, dict[str, float]] = {}
    for bucket in range(LAST_T_BUCKET + 1):
        rows = t_bucket == bucket
        if not rows.any():
            continue
        name = f"{bucket}+" if bucket == LAST_T_BUCKET else str(bucket)
        entry: dict[str, float] = {"error": float(error[rows].mean()), "steps": int(rows.sum())}
        for k in range(len(SCENE_PAYOFFS)):
            in_scene = rows & (scene == k)
            if in_scene.any():
                entry[f"value_scene{k}"] = float(predicted[in_scene].mean())
                entry[f"return_scene{k}"] = float(g[in_scene].mean())
        by_t[name] = entry

    result: dict[str, Any] = {
        "steps": int(len(error)),
        "episodes": int(len(np.unique(episode))),
        "error": float(error.mean()),
        "error_t0": float(error[t == 0].mean()),
        "error_after_start": float(error[t > 0].mean()) if (t > 0).any() else None,
        "scene_blind_floor": mean_abs_to_group_median(g, t_bucket),
        "scene_aware_floor": mean_abs_to_group_median(g, np.stack([t_bucket, scene], axis=1)),
        "scene_blind_floor_after_start": (
            mean_abs_to_group_median(g[t > 0], t_bucket[t > 0]) if (t > 0).any() else None
        ),
        "by_t": by_t,
        "by_scene": {
            str(k): {"error": float(error[scene == k].mean()), "steps": int((scene == k).sum())}
            for k in range(len(SCENE_PAYOFFS))
            if (scene == k).any()
        },
        "per_level": {
            str(seed): {"scene": level_scene(int(seed)), "error": float(error[levels == seed].mean()),
                        "steps": int((levels == seed).sum())}
            for seed in np.unique(levels)
        },
    }
    if "alpha" in data.files:
        result["dve"] = _dve_diagnostics(data["alpha"], t, scene)
    return result


def _dve_diagnostics(alpha: np.ndarray, t: np.ndarray, scene: np.ndarray) -> dict[str, float]:
    """Confusion at the start and later, and how purely the argmax cluster follows the scene after the start.

    Purity = share of steps (t > 0) whose argmax cluster is the most common one of their scene; 1/3 means the
    clusters ignore the scene, 1 that each scene has its own cluster (or shares one: read with ``clusters_used``).
    """
    num_clusters = alpha.shape[1]
    delta = 1.0 / (num_clusters * np.square(alpha).sum(axis=1))
    later = t > 0
    winner = alpha.argmax(axis=1)
    matched = 0
    for k in np.unique(scene[later]):
        counts = np.bincount(winner[later & (scene == k)], minlength=num_clusters)
        matched += int(counts.max())
    return {
        "confusion_t0": float(delta[t == 0].mean()),
        "confusion_after_start": float(delta[later].mean()) if later.any() else float("nan"),
        "cluster_purity_after_start": matched / max(int(later.sum()), 1),
        "clusters_used_after_start": int(len(np.unique(winner[later]))) if later.any() else 0,
    }


def analyse_run(run_dir: Path) -> dict[str, Any]:
    """Value error per split plus the run's evaluation return and success rate (sampled policy)."""
    final = json.loads((run_dir / "eval" / "final.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())["config"]
    # Recorded from the run itself, so --reuse reports what was trained rather than this call's flags.
    trained = {name: config[name] for name in asdict(BenchmarkSettings())}
    out: dict[str, Any] = {"run_dir": str(run_dir), "trained_with": trained, "reward_scale": final["reward_scale"]}
    for split in SPLITS:
        out[split] = analyse_split(run_dir / "eval" / f"final_steps_{split}.npz")
        out[split]["return_mean"] = final[split]["return_mean"]
        out[split]["success_rate"] = final[split]["success_rate"]
    return out


# ----------------------------------------------------------------------------------------------------------
# Aggregation and report

SUMMARY_FIELDS: tuple[str, ...] = (
    "error", "error_t0", "error_after_start", "scene_blind_floor_after_start", "scene_aware_floor",
    "return_mean", "success_rate",
)


def _mean_sem(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    sem = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "sem": sem, "n": int(len(array))}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard error over seeds per critic and split, and per-seed differences to the scalar critic
    (paired by seed: the runs of one seed share level draws and evaluation seeds)."""
    summary: dict[str, Any] = {}
    critics = [c for c in CRITICS if any(r["critic"] == c for r in runs)]
    for critic in critics:
        mine = [r for r in runs if r["critic"] == critic]
        summary[critic] = {}
        for split in SPLITS:
            stats = {}
            for name in SUMMARY_FIELDS:
                values = [r[split][name] for r in mine if r[split].get(name) is not None]
                if values:
                    stats[name] = _mean_sem(values)
            by_t = {}
            for bucket in mine[0][split]["by_t"]:
                values = [r[split]["by_t"][bucket]["error"] for r in mine if bucket in r[split]["by_t"]]
                by_t[bucket] = _mean_sem(values)
            stats["by_t"] = by_t
            if "dve" in mine[0][split]:
                stats["dve"] = {
                    key: _mean_sem([r[split]["dve"][key] for r in mine]) for key in mine[0][split]["dve"]
                }
            summary[critic][split] = stats
    paired: dict[str, Any] = {}
    scalar_by_seed = {r["seed"]: r for r in runs if r["critic"] == "scalar"}
    for critic in critics:
        if critic == "scalar":
            continue
        paired[critic] = {}
        for split in SPLITS:
            entry = {}
            for name in ("error", "error_t0", "error_after_start"):
                diffs = [
                    r[split][name] - scalar_by_seed[r["seed"]][split][name]
                    for r in runs
                    if r["critic"] == critic and r["seed"] in scalar_by_seed
                    and r[split][name] is not None and scalar_by_seed[r["seed"]][split][name] is not None
                ]
                if diffs:
                    entry[name] = {**_mean_sem(diffs), "per_seed": diffs,
                                   "seeds_better_than_scalar": int(sum(d < 0 for d in diffs))}
            paired[critic][split] = entry
    return {"per_critic": summary, "minus_scalar": paired}


def _fmt(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    if np.isnan(stat["sem"]):
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} ± {stat['sem']:.4f}"


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text tables: per critic and split, mean ± standard error over seeds."""
    lines = []
    per_critic = summary["per_critic"]
    for split in SPLITS:
        lines.append(f"\n[{split} levels]  |V*scale - G| (mean ± s.e.m. over seeds)")
        header = f"{'critic':<11} {'all steps':>18} {'t=0 (identical)':>18} {'t>0':>18} {'return':>18} {'success':>8}"
        lines.append(header)
        for critic, stats in per_critic.items():
            s = stats[split]
            success = s.get("success_rate")
            lines.append(
                f"{critic:<11} {_fmt(s.get('error')):>18} {_fmt(s.get('error_t0')):>18} "
                f"{_fmt(s.get('error_after_start')):>18} {_fmt(s.get('return_mean')):>18} "
                f"{success['mean'] if success else float('nan'):>8.3f}"
            )
        first = next(iter(per_critic.values()))[split]
        lines.append(
            f"floors for t>0 (scalar-run returns are similar): scene-blind "
            f"{_fmt(first.get('scene_blind_floor_after_start'))}, scene-aware (all t) "
            f"{_fmt(first.get('scene_aware_floor'))}"
        )
        buckets = list(first["by_t"])
        lines.append(f"{'error by t':<11} " + " ".join(f"{b:>16}" for b in buckets))
        for critic, stats in per_critic.items():
            by_t = stats[split]["by_t"]
            lines.append(f"{critic:<11} " + " ".join(f"{_fmt(by_t.get(b)):>16}" for b in buckets))
        for critic, stats in per_critic.items():
            if "dve" in stats[split]:
                d = stats[split]["dve"]
                lines.append(
                    f"{critic:<11} confusion t=0 {_fmt(d['confusion_t0'])}, t>0 {_fmt(d['confusion_after_start'])}, "
                    f"cluster purity t>0 {_fmt(d['cluster_purity_after_start'])} "
                    f"(argmax clusters used {_fmt(d['clusters_used_after_start'])})"
                )
        for critic, splits in summary["minus_scalar"].items():
            e = splits[split].get("error_after_start")
            if e:
                lines.append(
                    f"{critic} - scalar, t>0: {_fmt(e)}; better than scalar in {e['seeds_better_than_scalar']}"
                    f"/{e['n']} seeds; per seed {[round(x, 4) for x in e['per_seed']]}"
                )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """CPU model, cores and versions, so the numbers can be placed."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": multiprocessing.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = BenchmarkSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--critics", nargs="+", default=list(CRITICS), choices=CRITICS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/dve_benchmark"), help="one run per critic x seed")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default OUT_DIR/results.json)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--reuse", action="store_true", help="analyse finished runs in OUT_DIR instead of training")
    parser.add_argument("--total-timesteps", type=int, default=defaults.total_timesteps)
    parser.add_argument("--num-envs", type=int, default=defaults.num_envs)
    parser.add_argument("--num-steps", type=int, default=defaults.num_steps)
    parser.add_argument("--num-levels", type=int, default=defaults.num_levels)
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--gamma", type=float, default=defaults.gamma)
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes)
    parser.add_argument("--torch-threads", type=int, default=defaults.torch_threads)
    parser.add_argument("--bootstrap-truncation", action=argparse.BooleanOptionalAction,
                        default=defaults.bootstrap_truncation,
                        help="bootstrap time-limit cuts (default, as the library); --no-... treats them as terminations")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = BenchmarkSettings(
        total_timesteps=args.total_timesteps, num_envs=args.num_envs, num_steps=args.num_steps,
        num_levels=args.num_levels, hidden_size=args.hidden_size, learning_rate=args.learning_rate,
        gamma=args.gamma, eval_episodes=args.eval_episodes, torch_threads=args.torch_threads,
        bootstrap_truncation=args.bootstrap_truncation,
    )
    jobs = [(critic, seed) for seed in args.seeds for critic in args.critics]
    run_dirs = {(critic, seed): args.out_dir / f"{critic}-s{seed}" for critic, seed in jobs}
    started = time.time()
    if not args.reuse:
        configs = [train_config(c, s, settings, run_dirs[(c, s)]) for c, s in jobs]
        if args.jobs <= 1:
            for cfg in configs:
                _train_one(cfg)
        else:
            # spawn: a fresh interpreter per worker, so no torch thread pool or RNG is inherited by fork; the
            # workers end with this process if it is killed (multiscene/children.py).
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context,
                                                        initializer=end_with_this_process()) as pool:
                for future in [pool.submit(_train_one, cfg) for cfg in configs]:
                    future.result()
    runs = []
    for critic, seed in jobs:
        runs.append({"critic": critic, "seed": seed, **analyse_run(run_dirs[(critic, seed)])})
    results = {
        "benchmark": "dve_value_error",
        "env": HIDDEN_PAYOFF_ID,
        "command": "PYTHONPATH=. python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "settings": asdict(settings) if not args.reuse else "see runs[*].trained_with (--reuse)",
        "critics": args.critics,
        "seeds": args.seeds,
        "runs": runs,
        "summary": summarize(runs),
    }
    json_path = args.json or args.out_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    print(format_table(results["summary"]))
    print(f"\nresults written to {json_path} ({results['wall_seconds']} s)")
    return results


if __name__ == "__main__":
    main()
