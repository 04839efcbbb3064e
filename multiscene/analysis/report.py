"""``multiscene report RUN_DIR``: one run's analyses as a static page and a JSON summary (issue 4; SPEC §7).

Writes ``RUN_DIR/report/index.html`` with its PNG figures beside it, and ``RUN_DIR/report/summary.json`` with
every number the page shows. Everything is rebuilt from files in the run directory (no agent, no env):

- learning curves of return and episode length over env steps (seed 000 Fig. 5);
- DVE training diagnostics: confusion delta over training and its histogram, contribution rho_i, argmax share
  and cluster means per cluster (SPEC §3.3);
- value-prediction error against realized discounted returns, overall and per level, for every critic (SPEC §7);
- DVE clusters: argmax states, t-SNE of their core latents, example frames per cluster, cluster/level purity
  (seed 000 Fig. 6);
- Pearson r between inverse confusion 1/delta and episode return (seed 000 Fig. 3);
- trajectories: the MiniGrid agent path over the level, or a Procgen filmstrip (seed 000 Fig. 7);
- with ``--aux vae``: the -ELBO curve (``losses/vae_recon + losses/vae_kl``) and frames from training and
  held-out levels next to their reconstructions (eval/vae_frames.npz; seed 002 Figs 3 and 5; issue 12).
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.analysis import figures, stats
from multiscene.analysis.rundata import SPLITS, RunData, RunDataError, load_run

MINIGRID_DEFAULT_TILE = 32
"""minigrid's TILE_PIXELS: the tile size of a full-grid render when the env module does not say otherwise."""

REPORT_FIGURES = ("learning_curves.png", "confusion.png", "contribution.png", "value_error.png", "clusters_tsne.png",
                  "cluster_frames.png", "confusion_return.png", "trajectories.png", "vae_elbo.png",
                  "vae_reconstructions.png")
"""Every figure a report can hold (which ones it holds depends on the critic and on what the run recorded)."""


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of ``multiscene report`` (the defaults suit a real run; tests shrink them)."""

    out_dir: Path | None = None
    tsne_points: int = 1500
    frames_per_cluster: int = 8
    trajectories: int = 3
    filmstrip_frames: int = 8
    smooth: int = 5
    seed: int = 0


@dataclass
class Section:
    """One part of the page: a heading, lines of text, tables and figures (file names in the report folder)."""

    title: str
    text: list[str]
    tables: list[tuple[list[str], list[list[Any]]]]
    figures: list[str]


def jsonable(value: Any) -> Any:
    """Nested dicts/lists with numpy scalars and non-finite floats made valid JSON (NaN/inf -> null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ----------------------------------------------------------------------------------------------------------
# Sections


def learning_section(run: RunData, out: Path, opts: ReportOptions) -> tuple[Section, dict[str, Any]]:
    """Train episodic return and eval train/test return; episode length (seed 000 Fig. 5)."""
    lines = {
        "return": {"train episodes": run.series("charts/episodic_return"),
                   "eval train levels": run.series("eval/train/return_mean"),
                   "eval test levels": run.series("eval/test/return_mean")},
        "episode length": {"train episodes": run.series("charts/episodic_length"),
                           "eval train levels": run.series("eval/train/length_mean"),
                           "eval test levels": run.series("eval/test/length_mean")},
    }
    summary: dict[str, Any] = {"updates": len([r for r in run.metrics if "charts/SPS" in r or "losses/value_loss" in r]),
                               "last_global_step": max((r.get("global_step", 0) for r in run.metrics), default=None)}
    for panel, panel_lines in lines.items():
        for label, (x, y) in panel_lines.items():
            summary[f"{panel} / {label}"] = {"points": int(len(x)), "last": float(y[-1]) if len(y) else None}
    section = Section("Learning curves", [], [], [])
    if any(len(x) for panel in lines.values() for x, _ in panel.values()):
        figures.learning_curves(lines, out / "learning_curves.png", run.label, smooth_window=opts.smooth)
        section.figures.append("learning_curves.png")
        section.text.append(f"Training lines are smoothed over {opts.smooth} updates; evaluation points are raw.")
    else:
        section.text.append("No episode finished in the logged updates: no learning curve to draw.")
    if run.eval_summary is not None:
        rows = []
        # Mario's distance travelled (issue 13), where the evaluation measured it (multiscene.evaluate.summarize).
        x_pos = any("x_pos_mean" in (run.eval_summary.get(split) or {}) for split in SPLITS)
        for split in SPLITS:
            s = run.eval_summary.get(split) or {}
            det = s.get("deterministic") or {}
            rows.append([split, s.get("return_mean"), s.get("return_std"), s.get("length_mean"), s.get("success_rate"),
                         s.get("episodes"), det.get("return_mean")]
                        + ([s.get("x_pos_mean"), det.get("x_pos_mean")] if x_pos else []))
        section.tables.append((["split", "return mean", "return std", "length mean", "success rate", "episodes",
                                "deterministic return"] + (["x_pos mean", "deterministic x_pos"] if x_pos else []),
                               rows))
        section.text.append(f"Evaluation: eval/{run.eval_tag}.json (sampled policy; global step "
                            f"{run.eval_summary.get('global_step')}).")
    return section, summary


def dve_training_section(run: RunData, out: Path) -> tuple[Section, dict[str, Any]] | None:
    """Confusion over training, its histogram, and per-cluster contribution, argmax share, means (SPEC §3.3)."""
    if not run.is_dve:
        return None
    n_b = run.num_clusters or 1
    confusion = run.series("dve/confusion_mean")
    if not len(confusion[0]):
        confusion = run.series("confusion_mean")
    hist_steps, hists = run.histograms()
    per_cluster = {"contribution ρ_i": run.cluster_series("contribution"),
                   "argmax share": run.cluster_series("argmax_share"),
                   "cluster mean V_i": run.cluster_series("cluster_value")}
    summary: dict[str, Any] = {
        "confusion_mean_first": float(confusion[1][0]) if len(confusion[1]) else None,
        "confusion_mean_last": float(confusion[1][-1]) if len(confusion[1]) else None,
        "confusion_hist_last": hists[-1].tolist() if len(hists) else None,
        "confusion_hist_range": [1.0 / n_b, 1.0],
    }
    for name, series in per_cluster.items():
        summary[f"{name} last"] = {str(i): float(y[-1]) for i, (_, y) in series.items()}
    section = Section("Confusion and contribution over training", [], [], [])
    if len(confusion[0]) or len(hists):
        figures.confusion_figure(confusion, hist_steps, hists, n_b, out / "confusion.png", run.label)
        section.figures.append("confusion.png")
        section.text.append(f"δ = 1 / (N_b Σ α_i²) lies in [1/N_b, 1] = [{1 / n_b:.3g}, 1]; 1 is a uniform "
                            "assignment, 1/N_b a one-hot one (SPEC §3.3).")
    if any(per_cluster.values()):
        figures.per_cluster_figure({k: v for k, v in per_cluster.items() if v}, out / "contribution.png", run.label)
        section.figures.append("contribution.png")
    if not section.figures:
        section.text.append("metrics.jsonl holds no DVE diagnostics.")
    return section, summary


def value_error_section(run: RunData, out: Path) -> tuple[Section, dict[str, Any]]:
    """|V * reward_scale - realized discounted return-to-go| on evaluation episodes (SPEC §7), every critic."""
    section = Section("Value-prediction error", [], [], [])
    summary: dict[str, Any] = {}
    drawn = {}
    rows: list[list[Any]] = []
    for split in SPLITS:
        if split not in run.steps:
            continue
        result = stats.value_error(run.steps[split])
        if result is None:
            summary[split] = None
            section.text.append(f"{split}: no step to compare: no complete episode recorded, or every recorded step "
                                "lies in the last steps of an episode cut by a time limit.")
            continue
        s = result.summary()
        summary[split] = s
        drawn[split] = (result.predicted, result.realized, s["per_level"])
        o = s["overall"]
        rows.append([split, o["mean_abs_error"], o["rmse"], o["bias"], o["mean_realized"], o["steps"],
                     len(s["per_level"]), *((s["truncated_episodes"], s["truncated_steps_left_out"])
                                            if s["truncation"] != "unrecorded" else ("not recorded", "—"))])
        if s["truncation"] == "excluded":
            section.text.append(
                f"{split}: {s['truncated_episodes']} episode(s) were cut by a time limit; their last "
                f"{s['truncated_steps_left_out']} step(s), where the unseen rest of the return weighs more than "
                f"γ^k > {stats.TRUNCATION_TAIL_TOLERANCE:g}, are left out of the error (issue 16).")
        elif s["truncation"] == "bootstrapped":
            section.text.append(
                f"{split}: {s['truncated_episodes']} episode(s) were cut by a time limit; their realized return "
                "is bootstrapped with the value of the final observation (issue 16).")
    if rows:
        section.tables.append((["split", "mean |error|", "RMSE", "bias", "mean realized", "steps", "levels",
                                "time-limit cuts", "steps left out"], rows))
    if drawn:
        steps = next(iter(run.steps.values()))
        section.text.append(f"Realized return-to-go uses γ = {float(steps['gamma']):g} and raw rewards; V is "
                            f"multiplied by reward_scale = {float(steps['reward_scale']):.4g} (the critic learns "
                            "normalized rewards). Head 0 (the env-reward value) is compared for every critic.")
        if any(summary[split]["truncation"] == "unrecorded" for split in drawn):
            section.text.append("The evaluation steps record no time-limit flag (a run from before issue 16): every "
                                "episode end counts as a termination, so the last steps of an episode cut by a time "
                                "limit are compared with a return that misses its tail.")
        figures.value_error_figure(drawn, out / "value_error.png", run.label)
        section.figures.append("value_error.png")
    elif not summary and not run.records_steps:
        section.text.append("A Dreamer run's evaluation keeps no per-step values (its critic values imagined latent "
                            "states, not observations): the value error is an on-policy and IMPALA analysis.")
    elif not summary:
        section.text.append("No eval/final_steps_*.npz: value error needs the final evaluation's step records.")
    return section, summary


def _pick_examples(alpha: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Up to k rows among ``rows`` where the cluster is most certain, spread in time order."""
    if len(rows) <= k:
        return rows
    confident = rows[np.argsort(-alpha[rows], kind="stable")[: max(4 * k, k)]]
    confident = np.sort(confident)
    return confident[np.linspace(0, len(confident) - 1, k).round().astype(int)]


def cluster_section(run: RunData, out: Path, opts: ReportOptions) -> tuple[Section, dict[str, Any]] | None:
    """States where each cluster wins the argmax; t-SNE of their core latents; example frames; purity (Fig. 6)."""
    splits = [s for s in SPLITS if s in run.steps and "alpha" in run.steps[s]]
    if not run.is_dve:
        return None
    section = Section("What the clusters are made of", [], [], [])
    if not splits:
        section.text.append("No alpha in eval/final_steps_*.npz: cluster analysis needs the final evaluation.")
        return section, {}
    alpha = np.concatenate([run.steps[s]["alpha"] for s in splits]).astype(np.float64)
    levels = np.concatenate([run.steps[s]["level_seed"] for s in splits])
    split_of = np.concatenate([np.full(len(run.steps[s]["alpha"]), s) for s in splits])
    episode = np.concatenate([run.steps[s]["episode"] for s in splits])
    t = np.concatenate([run.steps[s]["t"] for s in splits])
    winner = alpha.argmax(axis=1)
    n_b = alpha.shape[1]
    share = np.bincount(winner, minlength=n_b) / max(len(winner), 1)
    summary: dict[str, Any] = {"states": int(len(winner)), "splits": splits, "argmax_share": share.tolist(),
                               "purity": {s: stats.cluster_level_purity(winner[split_of == s], levels[split_of == s])
                                          for s in splits}}
    summary["purity"]["all"] = stats.cluster_level_purity(winner, levels)
    section.tables.append((["cluster", "argmax share", "states", "levels it wins in", "mean α when winning"],
                           [[i, float(share[i]), int((winner == i).sum()), len(np.unique(levels[winner == i])),
                             float(alpha[winner == i, i].mean()) if (winner == i).any() else None]
                            for i in range(n_b)]))
    section.tables.append((["states of", "cluster purity", "level purity", "NMI", "levels", "clusters used"],
                           [[s, p["cluster_purity"], p["level_purity"], p["nmi"], p.get("levels"), p.get("clusters_used")]
                            for s, p in summary["purity"].items()]))
    section.text.append("Cluster purity: share of states whose level is their cluster's most common level (1: each "
                        "cluster lives in one level). Level purity: share of states served by their level's most "
                        "common cluster (1: one cluster per level). Seed 000 reads clusters as skills shared "
                        "across levels (Fig. 6).")

    if "core_out" in run.steps[splits[0]] and len(winner) >= 5:
        from sklearn.manifold import TSNE

        latents = np.concatenate([run.steps[s]["core_out"] for s in splits]).astype(np.float32)
        rng = np.random.default_rng(opts.seed)
        chosen = np.sort(rng.choice(len(winner), size=min(opts.tsne_points, len(winner)), replace=False))
        perplexity = float(min(30.0, max(2.0, (len(chosen) - 1) / 3.0)))
        embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=opts.seed).fit_transform(
            latents[chosen])
        figures.tsne_figure(embedding, winner[chosen], out / "clusters_tsne.png",
                            f"t-SNE of core latents, coloured by argmax cluster ({len(chosen)} states)")
        section.figures.append("clusters_tsne.png")
        summary["tsne_points"] = int(len(chosen))
        summary["tsne_perplexity"] = perplexity

    rows: dict[str, list[tuple[np.ndarray, str]]] = {}
    for i in range(n_b):
        candidates = []
        for s in splits:
            frames = run.frames(s)
            for row in np.flatnonzero((winner == i) & (split_of == s)):
                ep = int(episode[row])
                if ep in frames and int(t[row]) < len(frames[ep]):
                    candidates.append(row)
        picked = _pick_examples(alpha[:, i], np.asarray(candidates, dtype=np.int64), opts.frames_per_cluster)
        rows[f"cluster {i}"] = [(run.frames(str(split_of[r]))[int(episode[r])][int(t[r])],
                                 f"{split_of[r]} ep{int(episode[r])} t={int(t[r])}\nα={alpha[r, i]:.2f}")
                                for r in picked]
    if any(rows.values()):
        figures.frame_strips(rows, out / "cluster_frames.png", "Example states per cluster (argmax, most certain)")
        section.figures.append("cluster_frames.png")
        summary["example_frames"] = {k: len(v) for k, v in rows.items()}
    else:
        section.text.append("No rendered frames (eval/final_frames_*.npz) for the argmax states.")
    return section, summary


def correlation_section(run: RunData, out: Path) -> tuple[Section, dict[str, Any]] | None:
    """Pearson r between mean inverse confusion 1/delta per episode and episode return (seed 000 Fig. 3)."""
    if not run.is_dve:
        return None
    section = Section("Inverse confusion and return", [], [], [])
    summary: dict[str, Any] = {}
    points = {}
    for split in SPLITS:
        if split in run.steps and "alpha" in run.steps[split]:
            table = stats.episode_table(run.steps[split])
            assert table.mean_inverse_confusion is not None
            r = stats.pearson(table.mean_inverse_confusion, table.episode_return)
            summary[f"eval_{split}_episodes"] = r
            points[f"eval {split} episodes"] = (table.mean_inverse_confusion, table.episode_return, r)
    # Seed 000 samples during training; the per-update analogue pairs 1/(mean delta) of the rollout with the mean
    # return of the episodes that ended in it.
    xs, ys = [], []
    for record in run.metrics:
        delta, ret = record.get("dve/confusion_mean"), record.get("charts/episodic_return")
        if isinstance(delta, (int, float)) and isinstance(ret, (int, float)) and delta > 0:
            xs.append(1.0 / float(delta))
            ys.append(float(ret))
    if xs:
        r = stats.pearson(xs, ys)
        summary["training_updates"] = r
        points["training updates"] = (np.asarray(xs), np.asarray(ys), r)
    section.tables.append((["samples", "Pearson r", "p-value", "n", "note"],
                           [[k, v.get("r"), v.get("p_value"), v.get("n"), v.get("note", "")] for k, v in summary.items()]))
    section.text.append("Per episode: mean over its steps of 1/δ = N_b Σ α_i², against its undiscounted return "
                        "(scipy.stats.pearsonr). Per update: 1 / mean δ of the rollout against the mean return of "
                        "episodes finished in it.")
    if points:
        figures.correlation_figure(points, out / "confusion_return.png", run.label)
        section.figures.append("confusion_return.png")
    return section, summary


def minigrid_tile_size(env: str, frame: np.ndarray) -> int:
    """Pixels per grid cell of a MiniGrid full-grid render.

    The grid size in the env id (``DoorKey-5x5``) divides the frame exactly when it is the whole grid; otherwise
    the env module's ``RENDER_TILE_SIZE`` (multiscene.envs.minigrid), else minigrid's default of 32 pixels.
    """
    match = re.search(r"-(\d+)x(\d+)", env)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        if frame.shape[1] % width == 0 and frame.shape[0] % height == 0 and frame.shape[1] // width == frame.shape[0] // height:
            return frame.shape[1] // width
    try:
        from multiscene.envs import minigrid as minigrid_env

        tile = getattr(minigrid_env, "RENDER_TILE_SIZE", None)
        if isinstance(tile, int) and tile > 0:
            return tile
    except ImportError:
        pass
    return MINIGRID_DEFAULT_TILE


def episode_rows(steps: dict[str, np.ndarray], episode: int) -> np.ndarray:
    """Row indices of one episode, in time order."""
    rows = np.flatnonzero(np.asarray(steps["episode"]) == episode)
    return rows[np.argsort(np.asarray(steps["t"])[rows], kind="stable")]


def filmstrip(frames: np.ndarray, count: int) -> list[tuple[np.ndarray, str]]:
    """``count`` evenly spaced frames of an episode, captioned with their step."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    return [(frames[i], f"t={i}") for i in idx]


def trajectory_section(run: RunData, out: Path, opts: ReportOptions) -> tuple[Section, dict[str, Any]]:
    """Agent paths over the MiniGrid level, or filmstrips of Procgen episodes, for a few test levels (Fig. 7)."""
    section = Section("Trajectories on test levels", [], [], [])
    split = "test"
    frames = run.frames(split)
    steps = run.steps.get(split)
    summary: dict[str, Any] = {"split": split, "episodes": []}
    if steps is None or not frames:
        section.text.append("No eval/final_frames_test.npz: no trajectories to draw.")
        return section, summary
    chosen = sorted(frames)[: opts.trajectories]
    if run.is_minigrid and "agent_pos" in steps:
        panels = []
        for ep in chosen:
            rows = episode_rows(steps, ep)
            if not len(rows):
                continue
            level = int(steps["level_seed"][rows[0]])
            ret = float(np.asarray(steps["reward"], dtype=np.float64)[rows].sum())
            tile = minigrid_tile_size(run.env, frames[ep][0])
            panels.append((f"level {level}, return {ret:.2f}", frames[ep][0],
                           [(run.method, np.asarray(steps["agent_pos"])[rows])], tile))
            summary["episodes"].append({"episode": ep, "level_seed": level, "return": ret, "steps": int(len(rows)),
                                        "tile_size": tile})
        if panels:
            figures.grid_paths(panels, out / "trajectories.png", f"{run.label}: agent paths (square = start)")
            section.figures.append("trajectories.png")
    else:
        rows_by_episode = {}
        for ep in chosen:
            rows = episode_rows(steps, ep)
            level = int(steps["level_seed"][rows[0]]) if len(rows) else -1
            ret = float(np.asarray(steps["reward"], dtype=np.float64)[rows].sum())
            rows_by_episode[f"level {level}\nreturn {ret:.2f}"] = filmstrip(frames[ep], opts.filmstrip_frames)
            summary["episodes"].append({"episode": ep, "level_seed": level, "return": ret, "steps": int(len(rows)),
                                        "frames": int(len(frames[ep]))})
        figures.frame_strips(rows_by_episode, out / "trajectories.png", f"{run.label}: test episodes")
        section.figures.append("trajectories.png")
    return section, summary


def neg_elbo_series(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """(global_step, -ELBO) per logged update: ``losses/vae_recon + losses/vae_kl`` where both are logged in
    the same record (multiscene/auxloss/vae.py: their sum is -ELBO per frame, unscaled by --vae.coef/beta)."""
    xs, ys = [], []
    for record in run.metrics:
        recon, kl = record.get("losses/vae_recon"), record.get("losses/vae_kl")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (recon, kl)):
            if "global_step" in record:
                xs.append(float(record["global_step"]))
                ys.append(float(recon) + float(kl))  # type: ignore[arg-type]
    return np.asarray(xs), np.asarray(ys)


VAE_SPLIT_NAMES: dict[str, str] = {"train": "training levels", "test": "held-out levels"}


def vae_section(run: RunData, out: Path, opts: ReportOptions) -> tuple[Section, dict[str, Any]] | None:
    """-ELBO over training and frames next to their reconstructions (seed 002 Figs 3 and 5); None unless the
    run has --aux vae or logged VAE terms."""
    from multiscene.auxloss.vae import VAE_FRAMES_FILE

    x, neg_elbo = neg_elbo_series(run)
    if run.aux != "vae" and not len(x):
        return None
    section = Section("VAE: -ELBO and reconstructions (seed 002 Figs 3 and 5)", [], [], [])
    summary: dict[str, Any] = {"neg_elbo": {"points": int(len(x)), "first": float(neg_elbo[0]) if len(x) else None,
                                            "last": float(neg_elbo[-1]) if len(x) else None}}
    if len(x):
        lines = {"-ELBO (reconstruction + KL)": (x, neg_elbo),
                 "reconstruction": run.series("losses/vae_recon"), "KL": run.series("losses/vae_kl")}
        figures.learning_curves({"-ELBO per frame (nats)": lines}, out / "vae_elbo.png", run.label,
                                smooth_window=opts.smooth)
        section.figures.append("vae_elbo.png")
        section.text.append("-ELBO = Bernoulli reconstruction loss summed over pixels + KL to N(0, I) summed over "
                            f"latent dims, mean over the batch's frames, unscaled by --vae.coef/--vae.beta; "
                            f"smoothed over {opts.smooth} updates.")
    else:
        section.text.append("metrics.jsonl holds no losses/vae_recon and losses/vae_kl: no -ELBO curve.")
    path = run.path / "eval" / VAE_FRAMES_FILE
    if path.exists():
        with np.load(path) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
        rows: dict[str, list[tuple[np.ndarray, str]]] = {}
        summary["frames"] = {}
        for split, name in VAE_SPLIT_NAMES.items():
            frames, recon = arrays.get(f"{split}_frames"), arrays.get(f"{split}_recon")
            if frames is None or recon is None or len(frames) == 0:
                continue
            n = min(len(frames), len(recon), opts.filmstrip_frames)
            rows[f"{name}\nframe"] = [(frames[i], f"#{i}") for i in range(n)]
            rows[f"{name}\nreconstruction"] = [(recon[i], f"#{i}") for i in range(n)]
            # Mean absolute pixel error in [0, 255]: one number to compare training and held-out levels by.
            error = np.abs(frames[:n].astype(np.float64) - recon[:n].astype(np.float64)).mean()
            summary["frames"][split] = {"frames": int(len(frames)), "drawn": n, "pixel_mae": float(error)}
        if rows:
            figures.frame_strips(rows, out / "vae_reconstructions.png",
                                 f"{run.label}: frames and reconstructions (decoded from the mean of z)")
            section.figures.append("vae_reconstructions.png")
            section.tables.append((["levels", "frames", "mean |frame - reconstruction| (0-255)"],
                                   [[VAE_SPLIT_NAMES[s], v["frames"], v["pixel_mae"]]
                                    for s, v in summary["frames"].items()]))
    else:
        section.text.append(f"No eval/{VAE_FRAMES_FILE} (written at the end of training): no reconstructions.")
        summary["frames"] = None
    return section, summary


# ----------------------------------------------------------------------------------------------------------
# The page


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def render_html(title: str, header: list[str], sections: list[Section]) -> str:
    """A static page: sections of text, tables and images (file names relative to the page)."""
    parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}img{max-width:100%;margin:0.5em 0}.partial{background:#fff3cd;padding:0.6em;"
             "border:1px solid #e0c068}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += header
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in section.text]
        for columns, rows in section.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows]
            parts.append("</table>")
        parts += [f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>" for name in section.figures]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(run_dir: Path | str, opts: ReportOptions = ReportOptions()) -> dict[str, Any]:
    """Write the report folder of one run; returns the summary also written to summary.json."""
    from multiscene.rundir import atomic_write_bytes

    run = load_run(run_dir)
    out = opts.out_dir or run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FIGURES:
        (out / name).unlink(missing_ok=True)  # a figure of an earlier report that this run may no longer produce
    summary: dict[str, Any] = {
        "run_dir": str(run.path), "env": run.env, "critic": run.critic, "method": run.method, "seed": run.seed,
        "num_clusters": run.num_clusters, "multiscene_version": run.version, "partial": run.partial,
        "problems": run.problems, "eval_tag": run.eval_tag,
        "final_eval": {split: {k: v for k, v in (run.eval_summary or {}).get(split, {}).items() if k != "per_level"}
                       for split in SPLITS} if run.eval_summary else None,
    }
    sections: list[Section] = []
    builders = [
        ("learning_curves", lambda: learning_section(run, out, opts)),
        ("dve_training", lambda: dve_training_section(run, out)),
        ("value_error", lambda: value_error_section(run, out)),
        ("clusters", lambda: cluster_section(run, out, opts)),
        ("inverse_confusion_return", lambda: correlation_section(run, out)),
        ("trajectories", lambda: trajectory_section(run, out, opts)),
        ("vae", lambda: vae_section(run, out, opts)),
    ]
    for key, build in builders:
        built = build()
        if built is None:
            continue
        section, part = built
        sections.append(section)
        summary[key] = part
    summary["figures"] = sorted(name for s in sections for name in s.figures)
    header = [f"<p>{html.escape(run.label)} · critic {html.escape(run.critic)} · "
              f"{html.escape(str(run.path))}</p>"]
    if run.partial:
        header.append("<div class='partial'><b>Partial run.</b><ul>" +
                      "".join(f"<li>{html.escape(p)}</li>" for p in run.problems) + "</ul></div>")
    atomic_write_bytes(out / "index.html", render_html(f"multiscene report: {run.label}", header, sections).encode())
    import json

    atomic_write_bytes(out / "summary.json", (json.dumps(jsonable(summary), indent=2) + "\n").encode())
    return jsonable(summary)


def main(argv: list[str]) -> int:
    """Entry point of ``multiscene report RUN_DIR``; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(prog="multiscene report",
                                     description="Write RUN_DIR/report/index.html and summary.json from a run's files.")
    parser.add_argument("run_dir", type=Path, help="a run directory written by multiscene train")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUN_DIR/report)")
    parser.add_argument("--tsne-points", type=int, default=ReportOptions.tsne_points,
                        help="states embedded with t-SNE (random subset of the argmax states)")
    parser.add_argument("--frames-per-cluster", type=int, default=ReportOptions.frames_per_cluster)
    parser.add_argument("--trajectories", type=int, default=ReportOptions.trajectories,
                        help="test episodes drawn (those with recorded frames)")
    parser.add_argument("--smooth", type=int, default=ReportOptions.smooth,
                        help="moving-average window, in updates, of the training curves")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE subset and embedding")
    ns = parser.parse_args(argv)
    opts = ReportOptions(out_dir=ns.out, tsne_points=ns.tsne_points, frames_per_cluster=ns.frames_per_cluster,
                         trajectories=ns.trajectories, smooth=ns.smooth, seed=ns.seed)
    try:
        summary = build_report(ns.run_dir, opts)
    except RunDataError as e:
        print(f"multiscene report: error: {e}", file=sys.stderr)
        return 2
    out = ns.out or ns.run_dir / "report"
    if summary["partial"]:
        print("multiscene report: partial run: " + "; ".join(summary["problems"]), file=sys.stderr)
    print(f"written: {out / 'index.html'} ({len(summary['figures'])} figures) and {out / 'summary.json'}")
    return 0
