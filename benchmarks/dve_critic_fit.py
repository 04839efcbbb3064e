"""Value error of the scalar, DVE and Sparse DVE critics fitted to one frozen behaviour policy (issue 3).

The PPO benchmark (``benchmarks/dve_value_error.py``) could not separate the critics: within its budget no
critic learned the scene. This benchmark isolates the critic (``multiscene.bench.critic_fit``): it records
episodes of a fixed behaviour policy on ``MiniGrid-HiddenPayoff-v0`` once (the shortest path to the goal with a
random action in ``--epsilon`` of the steps), then trains each critic variant, with the library's own encoder,
LSTM core and critic modules, to predict the realized discounted return-to-go G_t of those episodes. Every
variant of one seed starts from the same encoder and core weights and sees the same minibatches, so paired
differences between variants are differences between critics.

Reported, on episodes of held-out levels (disjoint level seeds, same three scenes), over the steps t > 0 (after
the first step, which looks the same in every level): the mean |V - G| at each evaluation, its mean over the
whole fit (the area under the error curve, our headline number: it rewards learning the scene early), the final
error, and the first fit step at which the error fell below ``--learned-below``. Two floors put the numbers in
scale: the error of the best prediction that knows t only (scene-blind) and t and the scene (scene-aware).
For the DVE critics it also prints the final mean confusion ``delta`` and the normalized mutual information
(scikit-learn) between the argmax cluster and the level's scene over the held-out steps t > 0: 0 when the
clusters ignore the scene, 1 when each scene has its own cluster.

Usage (the numbers in docs/dve_benchmark.md)::

    PYTHONPATH=. python benchmarks/dve_critic_fit.py --seeds 1 2 3 4 5 6 --jobs 2 \\
        --out-dir runs/dve_critic_fit --json runs/dve_critic_fit/results.json --figure runs/dve_critic_fit/curves.png

Finished runs are cached in ``--out-dir`` (one JSON per variant and seed) and reused by a later call with the
same settings. This is a benchmark, not a test: ``tests/test_critic_fit.py`` runs it on a tiny budget only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import multiprocessing
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAPER_LCC: dict[str, Any] = {"k1": 0.02, "k2": 0.02, "schedule": "pre-boost", "contribution": "paper"}
"""L_CC as measured on 2026-11-22 (the defaults then): seed 000's form, pre-boost ramp over the first quarter."""
RECIPE_LCC: dict[str, Any] = {"k1": 0.02, "k2": 0.02, "schedule": "post-boost", "postboost_fraction": 0.5,
                              "contribution": "normalized"}
"""L_CC of the issue-14 recipe (docs/dve_benchmark.md, "Issue 14"): normalized contribution, switched on at half
the fit (measured with ``--steps 2000``, i.e. from fit step 1000)."""

VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "scalar": ("scalar", "core", {}),
    "dve": ("dve", "core", {}),
    "dve-encoder": ("dve", "encoder", {}),
    "sparse-dve": ("sparse-dve", "core", PAPER_LCC),
    "sparse-dve-encoder": ("sparse-dve", "encoder", PAPER_LCC),
    "sparse-dve-recipe": ("sparse-dve", "encoder", RECIPE_LCC),
}
"""Variant name -> (``--critic``, ``--dve.cluster-input``, other ``--dve.*`` fields). ``*-encoder``: the cluster
means V_i read the per-frame encoder output, the weights alpha the LSTM output (SPEC §3.2's switch). The L_CC
fields are explicit, so that a change of the library's defaults does not change what a cached variant means."""


@dataclass(frozen=True)
class Settings:
    """Everything shared by all variants and seeds (part of the cache key)."""

    epsilon: float = 0.3
    train_levels: int = 200
    episodes_per_level: int = 10
    test_levels: int = 400
    test_level_start: int = 10_000
    gamma: float = 0.99
    hidden_size: int = 64
    learning_rate: float = 1e-3
    steps: int = 3000
    batch_episodes: int = 32
    eval_every: int = 250
    learned_below: float = 0.1


@functools.lru_cache(maxsize=1)
def _data(settings: Settings) -> tuple[Any, Any]:
    """Training and held-out episodes of the behaviour policy (recorded once per process and settings)."""
    from multiscene.bench.critic_fit import collect_episodes, hidden_payoff_policy
    from multiscene.envs.scenes import HIDDEN_PAYOFF_ID

    policy = hidden_payoff_policy(settings.epsilon)
    train_seeds = np.repeat(np.arange(settings.train_levels), settings.episodes_per_level)
    test_seeds = np.arange(settings.test_level_start, settings.test_level_start + settings.test_levels)
    train = collect_episodes(HIDDEN_PAYOFF_ID, train_seeds, policy, settings.gamma, seed=0)
    test = collect_episodes(HIDDEN_PAYOFF_ID, test_seeds, policy, settings.gamma, seed=1)
    return train, test


def floors(test: Any) -> dict[str, float]:
    """Mean |G - m| over t > 0 of the best per-group constant m (the median) when the groups are t only
    (scene-blind) or t and the scene (scene-aware)."""
    from multiscene.analysis.stats import mean_abs_to_group_median
    from multiscene.envs.scenes import level_scene

    after = test.valid.copy()
    after[0] = False
    t = np.broadcast_to(np.arange(after.shape[0])[:, None], after.shape)[after]
    scene = np.broadcast_to(np.array([level_scene(int(s)) for s in test.level_seed]), after.shape)[after]
    g = test.returns[after]
    return {
        "scene_blind": mean_abs_to_group_median(g, t),
        "scene_aware": mean_abs_to_group_median(g, np.stack([t, scene], axis=1)),
    }


def run_one(variant: str, seed: int, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Fit one variant for one seed (cached as ``out_dir/<variant>-<seed>.json``)."""
    import torch

    from multiscene.bench.critic_fit import fit_critic
    from multiscene.config import DVEConfig, TrainConfig
    from multiscene.envs.scenes import HIDDEN_PAYOFF_ID

    path = out_dir / f"{variant}-{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("settings") == asdict(settings):
            return cached
    torch.set_num_threads(1)
    train, test = _data(settings)
    critic, cluster_input, dve_fields = VARIANTS[variant]
    cfg = TrainConfig(
        env=HIDDEN_PAYOFF_ID,
        critic=critic,  # type: ignore[arg-type]
        hidden_size=settings.hidden_size,
        learning_rate=settings.learning_rate,
        gamma=settings.gamma,
        total_timesteps=settings.steps,  # the L_CC schedule's clock: fit steps
        dve=DVEConfig(cluster_input=cluster_input, **dve_fields),  # type: ignore[arg-type]
    )
    result = fit_critic(cfg, train, test, settings.steps, settings.batch_episodes, settings.eval_every, seed,
                        grad_every=50)
    curve = result.curve
    scene_clusters = None
    if result.alpha is not None:
        # Which cluster wins the argmax at each step t > 0 of the held-out episodes, against the level's scene.
        from multiscene.analysis.stats import cluster_level_purity
        from multiscene.envs.scenes import level_scene

        after = test.valid.copy()
        after[0] = False
        scene = np.broadcast_to(np.array([level_scene(int(s)) for s in test.level_seed]), after.shape)
        scene_clusters = cluster_level_purity(result.alpha.argmax(axis=-1)[after], scene[after])
    after = np.array([entry["error_after"] for entry in curve])
    learned = [int(entry["step"]) for entry in curve if entry["error_after"] < settings.learned_below]
    record = {
        "variant": variant,
        "seed": seed,
        "settings": asdict(settings),
        "curve": curve,
        "auc_error_after": float(after.mean()),
        "final_error_after": float(after[-1]),
        "final_error_t0": float(curve[-1]["error_t0"]),
        "learned_step": learned[0] if learned else None,
        "final_confusion": curve[-1].get("confusion"),
        "scene_clusters": scene_clusters,
        "argmax_counts": None if result.alpha is None else np.bincount(
            result.alpha.argmax(axis=-1)[test.valid & (np.arange(test.valid.shape[0]) > 0)[:, None]],
            minlength=result.alpha.shape[-1]).tolist(),
        "cc_fired_step": result.cc_fired_step,
        "gradients": result.gradients,
        "seconds": result.seconds,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def summarize(records: list[dict[str, Any]], variants: list[str], seeds: list[int]) -> dict[str, Any]:
    by = {(r["variant"], r["seed"]): r for r in records}
    summary: dict[str, Any] = {}
    for variant in variants:
        rows = [by[(variant, s)] for s in seeds]
        auc = np.array([r["auc_error_after"] for r in rows])
        final = np.array([r["final_error_after"] for r in rows])
        entry: dict[str, Any] = {
            "auc_mean": float(auc.mean()),
            "auc_sem": float(auc.std(ddof=1) / np.sqrt(len(auc))) if len(auc) > 1 else float("nan"),
            "final_mean": float(final.mean()),
            "final_sem": float(final.std(ddof=1) / np.sqrt(len(final))) if len(final) > 1 else float("nan"),
            "learned_steps": [r["learned_step"] for r in rows],
            "final_confusion": [r["final_confusion"] for r in rows],
            "scene_nmi": [None if r.get("scene_clusters") is None else r["scene_clusters"]["nmi"] for r in rows],
            "clusters_used": [None if r.get("scene_clusters") is None else r["scene_clusters"]["clusters_used"]
                              for r in rows],
            "curve_mean": np.mean([[e["error_after"] for e in r["curve"]] for r in rows], axis=0).tolist(),
            "curve_steps": [int(e["step"]) for e in rows[0]["curve"]],
        }
        if variant != "scalar" and "scalar" in variants:
            diff = auc - np.array([by[("scalar", s)]["auc_error_after"] for s in seeds])
            entry["auc_minus_scalar"] = diff.tolist()
            entry["auc_minus_scalar_mean"] = float(diff.mean())
            entry["auc_minus_scalar_sem"] = (
                float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            )
            entry["seeds_below_scalar"] = int((diff < 0).sum())
        summary[variant] = entry
    return summary


def print_table(summary: dict[str, Any], floor: dict[str, float], seeds: list[int]) -> None:
    print(f"\nheld-out levels, |V - G| over t > 0; mean ± s.e.m. over {len(seeds)} seeds")
    print(f"scene-blind floor {floor['scene_blind']:.3f}   scene-aware floor {floor['scene_aware']:.3f}")
    print(f"{'variant':<20} {'AUC':>15} {'final':>15} {'AUC - scalar':>17} {'< scalar':>9} {'delta':>6} {'NMI':>6}"
          "  learned at step")
    for variant, e in summary.items():
        diff = (f"{e['auc_minus_scalar_mean']:+.3f} ± {e['auc_minus_scalar_sem']:.3f}"
                if "auc_minus_scalar_mean" in e else "")
        below = f"{e['seeds_below_scalar']}/{len(seeds)}" if "seeds_below_scalar" in e else ""
        learned = ", ".join("-" if s is None else str(s) for s in e["learned_steps"])
        nmi = [v for v in e["scene_nmi"] if v is not None]
        scene = f"{np.mean(nmi):.2f}" if nmi else ""
        confusion = [v for v in e["final_confusion"] if v is not None]
        delta = f"{np.mean(confusion):.2f}" if confusion else ""
        print(f"{variant:<20} {e['auc_mean']:.3f} ± {e['auc_sem']:.3f}   {e['final_mean']:.3f} ± {e['final_sem']:.3f}"
              f"   {diff:>17} {below:>9} {delta:>6} {scene:>6}  {learned}")


def plot(summary: dict[str, Any], floor: dict[str, float], path: Path) -> None:
    """Mean held-out error (t > 0) over the fit, one line per variant, with both floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant, entry in summary.items():
        ax.plot(entry["curve_steps"], entry["curve_mean"], marker="o", markersize=3, label=variant)
    ax.axhline(floor["scene_blind"], color="grey", linestyle="--", linewidth=1, label="scene-blind floor")
    ax.axhline(floor["scene_aware"], color="black", linestyle=":", linewidth=1, label="scene-aware floor")
    ax.set_xlabel("fit step (minibatch of episodes)")
    ax.set_ylabel("held-out |V - G|, t > 0 (mean over seeds)")
    ax.set_title("MiniGrid-HiddenPayoff-v0, frozen behaviour policy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradients(records: list[dict[str, Any]], path: Path) -> None:
    """Issue 14, lead 1: gradient norms on the attention layer over the fit, one panel per Sparse DVE variant:
    the value loss's and each L_CC term's at full weight (mean over seeds, log scale), and mean confusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_variant: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("gradients") and "grad_norm_cc_confusion" in record["gradients"][0]:
            by_variant.setdefault(record["variant"], []).append(record)
    if not by_variant:
        return
    fig, axes = plt.subplots(1, len(by_variant), figsize=(4.2 * len(by_variant), 3.6), squeeze=False)
    for ax, (variant, rows) in zip(axes[0], sorted(by_variant.items()), strict=True):
        steps = [g["step"] for g in rows[0]["gradients"]]
        for key, label in (("grad_norm_value", "value loss"), ("grad_norm_cc_confusion", "k1 * confusion term"),
                           ("grad_norm_cc_contribution", "k2 * contribution term")):
            ax.plot(steps, np.mean([[g[key] for g in r["gradients"]] for r in rows], axis=0), label=label)
        ax.set_yscale("log")
        ax.set_xlabel("fit step")
        ax.set_title(variant, fontsize=9)
        twin = ax.twinx()
        twin.plot(steps, np.mean([[g["confusion"] for g in r["gradients"]] for r in rows], axis=0), color="grey",
                  linestyle=":", label="confusion (right)")
        twin.set_ylim(0.3, 1.02)
        # where L_CC switched on (first recorded step with a non-zero share of it in force), mean over seeds
        on = [next((g["step"] for g in r["gradients"] if g["cc_factor"] > 0), None) for r in rows]
        on = [x for x in on if x is not None]
        if on:
            ax.axvline(float(np.mean(on)), color="black", linewidth=0.8, linestyle="--")
    axes[0][0].set_ylabel("gradient norm on the attention layer")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (one torch thread each)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/dve_critic_fit"))
    p.add_argument("--json", type=Path, default=None, help="write settings, floors, per-run records and summary")
    p.add_argument("--figure", type=Path, default=None, help="write the mean error curves as a PNG")
    p.add_argument("--figure-gradients", type=Path, default=None,
                   help="write the attention layer's gradient norms of the Sparse DVE variants as a PNG")
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ns = p.parse_args(argv)
    settings = Settings(**{k: getattr(ns, k) for k in asdict(defaults)})
    if settings.steps < 1 or settings.eval_every < 1 or settings.batch_episodes < 1:
        p.error("--steps, --eval-every and --batch-episodes must be >= 1")
    if settings.batch_episodes > settings.train_levels * settings.episodes_per_level:
        p.error("--batch-episodes must not exceed --train-levels x --episodes-per-level")
    if ns.jobs < 1:
        p.error("--jobs must be >= 1")

    start = time.time()
    jobs = [(v, s) for s in ns.seeds for v in ns.variants]
    records: list[dict[str, Any]] = []
    if ns.jobs == 1:
        for v, s in jobs:
            records.append(run_one(v, s, settings, ns.out_dir))
            print(f"{v} seed {s}: AUC {records[-1]['auc_error_after']:.3f}", flush=True)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(ns.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_one, v, s, settings, ns.out_dir): (v, s) for v, s in jobs}
            for future in concurrent.futures.as_completed(futures):
                record = future.result()
                records.append(record)
                print(f"{record['variant']} seed {record['seed']}: AUC {record['auc_error_after']:.3f}", flush=True)
    _, test = _data(settings)
    floor = floors(test)
    summary = summarize(records, ns.variants, ns.seeds)
    print_table(summary, floor, ns.seeds)
    if ns.figure is not None:
        plot(summary, floor, ns.figure)
    if ns.figure_gradients is not None:
        plot_gradients(records, ns.figure_gradients)
    wall = time.time() - start
    print(f"\nwall time {wall:.0f} s")
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps({
            "settings": asdict(settings),
            "seeds": ns.seeds,
            "floors": floor,
            "summary": summary,
            "runs": sorted(records, key=lambda r: (r["variant"], r["seed"])),
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": wall,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
