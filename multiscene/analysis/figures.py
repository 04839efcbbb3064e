"""Matplotlib figures of the report and the comparison (seed 000 Fig. 3, 5, 6, 7; SPEC §7).

Every function draws from arrays already read from run directories and writes one PNG; nothing here needs the
agent or the environment. The Agg backend is used, so figures are written on machines without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from multiscene.analysis.stats import compact_steps  # noqa: E402 - re-exported for the figures' callers

DPI = 100
CLUSTER_COLORS = plt.get_cmap("tab10")
METHOD_COLORS = {"RL²": "tab:gray", "DVE": "tab:blue", "Sparse DVE": "tab:red"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def steps_axis(ax: Axes, axis: str = "x") -> None:
    """Compact labels (50k, 1M) and at most six ticks on an axis of environment steps."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    target.set_major_formatter(FuncFormatter(compact_steps))


def method_color(method: str, index: int) -> str:
    return METHOD_COLORS.get(method, f"C{(index + 3) % 10}")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (the first points average what exists so far)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


# ----------------------------------------------------------------------------------------------------------
# One run


def learning_curves(series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: Path,
                    title: str, smooth_window: int = 1) -> Path:
    """Return and episode length over env steps (seed 000 Fig. 5), one panel each.

    series: panel name ("return", "length") -> line label -> (global_step, value). Eval lines are drawn with
    markers; training lines are smoothed over ``smooth_window`` updates.
    """
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
    for ax, (panel, lines) in zip(axes[0], series.items(), strict=True):
        for label, (x, y) in lines.items():
            if len(x) == 0:
                continue
            if label.startswith("eval"):
                ax.plot(x, y, marker="o", label=label)
            else:
                ax.plot(x, smooth(y, smooth_window), label=label, alpha=0.9)
        ax.set_xlabel("environment steps")
        steps_axis(ax)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def confusion_figure(confusion: tuple[np.ndarray, np.ndarray], hist_steps: np.ndarray, hists: np.ndarray,
                     num_clusters: int, path: Path, title: str) -> Path:
    """Mean confusion delta over training, and its histogram (first and last logged) over [1/N_b, 1] (SPEC §3.3)."""
    fig, (ax_line, ax_hist) = plt.subplots(1, 2, figsize=(12, 4))
    x, y = confusion
    ax_line.plot(x, y, color="tab:purple")
    ax_line.axhline(1.0 / num_clusters, ls="--", color="k", lw=0.8, label="one-hot (1/N_b)")
    ax_line.axhline(1.0, ls=":", color="k", lw=0.8, label="uniform")
    ax_line.set_xlabel("environment steps")
    steps_axis(ax_line)
    ax_line.set_ylabel("mean confusion δ")
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    if len(hists):
        bins = hists.shape[1]
        edges = np.linspace(1.0 / num_clusters, 1.0, bins + 1)
        width = edges[1] - edges[0]
        for row, label, color in ((0, "first update", "tab:gray"), (len(hists) - 1, "last update", "tab:purple")):
            share = hists[row] / max(hists[row].sum(), 1.0)
            ax_hist.bar(edges[:-1], share, width=width, align="edge", alpha=0.5, color=color,
                        label=f"{label} (step {int(hist_steps[row]):,})")
        ax_hist.legend(fontsize=8)
    ax_hist.set_xlabel("confusion δ")
    ax_hist.set_ylabel("share of steps")
    fig.suptitle(title)
    return _save(fig, path)


def per_cluster_figure(panels: Mapping[str, Mapping[int, tuple[np.ndarray, np.ndarray]]], path: Path,
                       title: str) -> Path:
    """One panel per quantity (contribution rho_i, argmax share, cluster mean V_i), one line per cluster."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (name, per_cluster) in zip(axes[0], panels.items(), strict=True):
        for i, (x, y) in per_cluster.items():
            ax.plot(x, y, color=CLUSTER_COLORS(i % 10), label=f"cluster {i}")
        ax.set_xlabel("environment steps")
        steps_axis(ax)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if per_cluster:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def value_error_figure(results: Mapping[str, tuple[np.ndarray, np.ndarray, dict[str, dict[str, float]]]],
                       path: Path, title: str, max_levels: int = 20) -> Path:
    """Predicted vs realized discounted return (scatter, one per split) and mean |error| per level (bars).

    results: split -> (predicted [N], realized [N], per-level stats from ValueErrorResult.summary()).
    """
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for col, (split, (predicted, realized, per_level)) in enumerate(results.items()):
        ax = axes[0, col]
        ax.scatter(realized, predicted, s=4, alpha=0.4)
        low = float(min(realized.min(), predicted.min()))
        high = float(max(realized.max(), predicted.max()))
        ax.plot([low, high], [low, high], "k--", lw=0.8, label="V = realized")
        ax.set_xlabel("realized discounted return-to-go")
        ax.set_ylabel("predicted V · reward_scale")
        ax.set_title(f"{split} levels: mean |error| {np.abs(predicted - realized).mean():.3g}")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        levels = sorted(per_level, key=lambda k: -per_level[k]["steps"])[:max_levels]
        ax.bar(range(len(levels)), [per_level[k]["mean_abs_error"] for k in levels], color="tab:orange")
        ax.set_xticks(range(len(levels)), levels, rotation=90, fontsize=7)
        ax.set_xlabel(f"level seed ({len(levels)} most visited of {len(per_level)})")
        ax.set_ylabel("mean |error|")
    fig.suptitle(title)
    return _save(fig, path)


def correlation_figure(points: Mapping[str, tuple[np.ndarray, np.ndarray, dict[str, object]]], path: Path,
                       title: str) -> Path:
    """Episode return against mean inverse confusion 1/delta, with Pearson r (seed 000 Fig. 3)."""
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4), squeeze=False)
    for ax, (name, (x, y, stats)) in zip(axes[0], points.items(), strict=True):
        ax.scatter(x, y, s=12, alpha=0.6)
        r, p = stats.get("r"), stats.get("p_value")
        label = f"r = {r:.3f}, p = {p:.2g}, n = {stats['n']}" if r is not None else f"r undefined ({stats.get('note')})"
        ax.set_title(f"{name}: {label}", fontsize=9)
        ax.set_xlabel("mean inverse confusion 1/δ")
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def tsne_figure(embedding: np.ndarray, cluster: np.ndarray, path: Path, title: str) -> Path:
    """2-D t-SNE of core latents of the states where each cluster wins the argmax (seed 000 Fig. 6)."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for i in np.unique(cluster):
        sel = cluster == i
        ax.scatter(embedding[sel, 0], embedding[sel, 1], s=6, alpha=0.7, color=CLUSTER_COLORS(int(i) % 10),
                   label=f"cluster {int(i)} ({int(sel.sum())})")
    ax.legend(fontsize=8, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return _save(fig, path)


def frame_strips(rows: Mapping[str, Sequence[tuple[np.ndarray, str]]], path: Path, title: str) -> Path:
    """A grid of frames: one row per key (a cluster, a method), each cell (frame, caption)."""
    width = max((len(cells) for cells in rows.values()), default=1) or 1
    fig, axes = plt.subplots(len(rows), width, figsize=(1.8 * width, 2.0 * len(rows) + 0.4), squeeze=False)
    for r, (name, cells) in enumerate(rows.items()):
        for c in range(width):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(cells):
                frame, caption = cells[c]
                ax.imshow(frame, interpolation="nearest")
                ax.set_title(caption, fontsize=7)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def grid_paths(panels: Sequence[tuple[str, np.ndarray, Sequence[tuple[str, np.ndarray]], int]], path: Path,
               title: str) -> Path:
    """Agent paths drawn over the rendered level (seed 000 Fig. 7), one panel per level.

    panels: (caption, background frame [H, W, 3], [(line label, agent positions [T, 2] as grid (x, y))],
    tile size in pixels). Grid cell (x, y) spans pixels [x*tile, (x+1)*tile) horizontally; paths go through
    cell centres, with a small offset per line so two agents on the same cells stay visible.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (caption, frame, lines, tile) in zip(axes[0], panels, strict=True):
        ax.imshow(frame, interpolation="nearest")
        for k, (label, pos) in enumerate(lines):
            offset = (k - (len(lines) - 1) / 2) * tile * 0.15
            px = (pos[:, 0] + 0.5) * tile + offset
            py = (pos[:, 1] + 0.5) * tile + offset
            color = METHOD_COLORS.get(label, f"C{k + 1}")
            ax.plot(px, py, "-o", color=color, ms=3, lw=2, alpha=0.85, label=f"{label} ({len(pos)} steps)")
            ax.plot(px[:1], py[:1], "s", color=color, ms=8)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Several runs


def method_curves(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]],
                  path: Path, title: str) -> Path:
    """Every method on one figure per game: mean over seeds with a shaded confidence band (seed 000 Fig. 5).

    panels: panel name -> method -> (x, mean, low, high, number of seeds).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (panel, methods) in zip(axes[0], panels.items(), strict=True):
        for k, (method, (x, mean, low, high, n)) in enumerate(methods.items()):
            color = method_color(method, k)
            ax.plot(x, mean, color=color, label=f"{method} (n={n})")
            ax.fill_between(x, low, high, color=color, alpha=0.2)
        ax.set_xlabel("environment steps")
        steps_axis(ax)
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def interval_figure(intervals: Mapping[str, Mapping[str, object]], path: Path, title: str, xlabel: str) -> Path:
    """rliable-style interval plot: IQM and mean, point and 95% stratified-bootstrap CI per method."""
    methods = list(intervals)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.6 * len(methods) + 1.6), squeeze=False)
    for col, (ax, metric) in enumerate(zip(axes[0], ("iqm", "mean"), strict=True)):
        for k, method in enumerate(methods):
            stats = intervals[method]
            bounds: Sequence[float] = stats[f"{metric}_ci"]  # type: ignore[assignment]
            low, high = float(bounds[0]), float(bounds[1])
            color = method_color(method, k)
            ax.barh(k, high - low, left=low, height=0.6, color=color, alpha=0.4)
            ax.plot([stats[metric]], [k], "|", color=color, ms=18, mew=2)
        ax.set_yticks(range(len(methods)), methods if col == 0 else [""] * len(methods))
        ax.set_title("IQM" if metric == "iqm" else "Mean")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    return _save(fig, path)
