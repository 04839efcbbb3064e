"""``multiscene compare RUN_DIR... --out DIR``: methods side by side over seeds and games (issue 4; SPEC §7).

Runs are grouped by method (seed 000's names: RL², DVE, Sparse DVE, from ``critic`` in config.json) and game
(``env``). Writes into ``--out``:

- ``table1.md`` and ``table1.csv``: seed 000 Table 1, final return and average episode length per game and
  method (test split of eval/final.json, mean over seeds);
- ``curves_<game>.png``: return and episode length over env steps, mean with a shaded 95% band over seeds
  (seed 000 Fig. 5);
- ``aggregate.png`` and ``summary.json``: Procgen-normalized scores (SPEC §9 easy set; the set used is recorded),
  IQM and mean with stratified-bootstrap 95% CIs, and the probability of improvement of each method over RL²
  (rliable);
- ``trajectories_<game>.png``: two methods on the same test level seeds (seed 000 Fig. 7);
- ``table2_a2mc.md``: seed 004 Table 2's layout, when the runs hold ACKTR/A2MC/PPO/MC-PPO runs on MuJoCo
  (issue 11 item 6; multiscene/analysis/paper_tables.py);
- ``table1_impala.md``: seed 002 Table 1's layout, when the runs hold IMPALA or IMPALA+VAE runs (issue 12 item 6);
- ``index.html``: all of the above on one page.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.analysis import figures, paper_tables, stats
from multiscene.analysis.report import (
    Section,
    episode_rows,
    filmstrip,
    jsonable,
    minigrid_tile_size,
    render_html,
)
from multiscene.analysis.rundata import METHOD_ORDER, RunData, RunDataError, load_run

# Seed 000 Table 1 row order: class-1 games, then class-2 games.
SEED000_GAMES = ("coinrun", "caveflyer", "climber", "jumper", "plunder", "dodgeball", "fruitbot", "starpilot")


class CompareError(RunDataError):
    """Runs that cannot be compared as given; the message names them."""


@dataclass(frozen=True)
class CompareOptions:
    """Knobs of ``multiscene compare`` (tests shrink ``reps``)."""

    reps: int = 2000
    confidence: float = 0.95
    seed: int = 0
    smooth: int = 5
    curve_points: int = 100
    trajectory_methods: tuple[str, str] | None = None
    trajectory_levels: int = 3
    normalize_any_mode: bool = False


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def game_sort_key(game: str) -> tuple[int, str]:
    return (SEED000_GAMES.index(game) if game in SEED000_GAMES else len(SEED000_GAMES), game)


def select_run_dirs(paths: list[Path], warn: Callable[[str], None]) -> list[Path]:
    """The paths that are run directories, in order; one ``warn`` line names each one skipped (issue 16:
    ``multiscene compare runs/*`` where runs/ also holds a stray file or a comparison folder).

    A path that does not exist is an error, not a skip: a shell glob never yields one, so it was typed wrong.
    A folder that looks like a run (config.json, metrics.jsonl, checkpoints/ or model.safetensors) is kept even
    when broken, so that load_run names what is wrong with it. Raises CompareError when nothing is left.
    """
    from multiscene.rundir import is_run_dir

    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise CompareError(f"{', '.join(missing)}: no such file or directory; pass run directories (the --run-dir "
                           "of multiscene train).")
    kept = []
    for path in paths:
        if is_run_dir(Path(path)):
            kept.append(Path(path))
        else:
            what = "a file" if Path(path).is_file() else "a folder without config.json or metrics.jsonl"
            warn(f"multiscene compare: skipping {path}: not a run directory ({what})")
    if not kept:
        raise CompareError(f"none of the {len(paths)} path(s) given is a run directory (a folder with config.json "
                           "and metrics.jsonl, written by multiscene train).")
    return kept


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that is a run directory: the comparison's index.html and summary.json would land among
    the run's files, and a later ``compare runs/*`` would read the folder as a run (issue 16)."""
    from multiscene.rundir import is_run_dir

    if is_run_dir(out_dir):
        raise CompareError(f"--out {out_dir} is a run directory (it holds config.json, metrics.jsonl or "
                           "checkpoints); write the comparison to a folder of its own, e.g. --out comparisons/NAME.")


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_and_group(run_dirs: list[Path]) -> dict[str, dict[str, list[RunData]]]:
    """game -> method -> runs (sorted by seed). Raises CompareError for input that cannot form Table 1."""
    if not run_dirs:
        raise CompareError("no run directories given.")
    resolved = [Path(p).resolve() for p in run_dirs]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise CompareError(f"run directories given more than once: {', '.join(duplicates)}.")
    runs = [load_run(p) for p in run_dirs]
    groups: dict[str, dict[str, list[RunData]]] = {}
    for run in runs:
        if "," in run.env:
            raise CompareError(f"{run.path} trains on several games at once ({run.env}); a Table 1 row holds one "
                               "game. Compare it only with runs on the same game list, or report it alone.")
        groups.setdefault(run.env, {}).setdefault(run.method, []).append(run)
    # A row compares methods under one protocol: mixing distribution modes or level counts would compare
    # different tasks under one game name.
    for game, by_method in groups.items():
        protocols: dict[tuple[str, int], list[str]] = {}
        for run in (r for rs in by_method.values() for r in rs):
            protocols.setdefault((run.distribution_mode, run.num_levels), []).append(str(run.path))
        if len(protocols) > 1:
            listing = "; ".join(f"distribution_mode={m}, num_levels={n}: {', '.join(p)}" for (m, n), p in protocols.items())
            raise CompareError(f"runs of {game} use different protocols and cannot share a Table 1 row ({listing}). "
                               "Compare each protocol separately.")
    return {g: {m: sorted(groups[g][m], key=lambda r: r.seed) for m in sorted(groups[g], key=method_sort_key)}
            for g in sorted(groups, key=game_sort_key)}


def final_numbers(run: RunData, split: str = "test") -> tuple[float, float] | None:
    """(return_mean, length_mean) of the run's evaluation on ``split``, or None without one."""
    if run.eval_summary is None:
        return None
    s = run.eval_summary.get(split) or {}
    if s.get("return_mean") is None:
        return None
    return float(s["return_mean"]), float(s["length_mean"]) if s.get("length_mean") is not None else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Table 1


def table1(groups: dict[str, dict[str, list[RunData]]]) -> list[dict[str, Any]]:
    """One row per (game, method): mean and std over seeds of the final test return and episode length."""
    rows = []
    for game, by_method in groups.items():
        for method, runs in by_method.items():
            values = [(r, final_numbers(r)) for r in runs]
            evaluated = [(r, v) for r, v in values if v is not None]
            returns = np.array([v[0] for _, v in evaluated])
            lengths = np.array([v[1] for _, v in evaluated])
            rows.append({
                "game": game, "method": method, "runs": len(runs), "evaluated_runs": len(evaluated),
                "partial_runs": sum(1 for r in runs if r.partial),
                "return_mean": float(returns.mean()) if len(returns) else None,
                "return_std": float(returns.std(ddof=1)) if len(returns) > 1 else None,
                "length_mean": float(lengths.mean()) if len(lengths) else None,
                "length_std": float(lengths.std(ddof=1)) if len(lengths) > 1 else None,
                "seeds": [r.seed for r, _ in evaluated],
                "not_evaluated": [str(r.path) for r, v in values if v is None],
            })
    return rows


def _fmt(mean: float | None, std: float | None, flag: str) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return text + flag


def table1_markdown(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Seed 000 Table 1 layout: game | return per method | average episode length per method."""
    header = ["game"] + methods + [f"len {m}" for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_game: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_game.setdefault(row["game"], {})[row["method"]] = row
    for game, cells in by_game.items():
        ret, length = [], []
        for m in methods:
            cell = cells.get(m)
            flag = "*" if cell and cell["partial_runs"] else ""
            ret.append(_fmt(cell["return_mean"], cell["return_std"], flag) if cell else "—")
            length.append(_fmt(cell["length_mean"], cell["length_std"], flag) if cell else "—")
        lines.append("| " + " | ".join([game] + ret + length) + " |")
    lines += ["", "Final evaluation on test levels (sampled policy), mean ± sample std over seeds. "
              "\\* a cell includes partial runs (no final evaluation: latest periodic one, or left out)."]
    return "\n".join(lines) + "\n"


def table1_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    columns = ["game", "method", "runs", "evaluated_runs", "partial_runs", "return_mean", "return_std",
               "length_mean", "length_std", "seeds"]
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "seeds": " ".join(str(s) for s in row["seeds"])})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Curves


def curves_over_seeds(runs: list[RunData], key: str, points: int, smooth_window: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Each run's series interpolated on a common step grid (up to the shortest run), mean and 95% band."""
    series = []
    for run in runs:
        x, y = run.series(key)
        if len(x) >= 1:
            series.append((x, figures.smooth(y, smooth_window)))
    if not series:
        return None
    start = max(x[0] for x, _ in series)
    stop = min(x[-1] for x, _ in series)
    grid = np.linspace(start, stop, points) if stop > start else np.array([stop])
    curves = np.stack([np.interp(grid, x, y) for x, y in series])
    mean, low, high = stats.mean_confidence_band(curves)
    return grid, mean, low, high, len(series)


# ----------------------------------------------------------------------------------------------------------
# Normalized scores and rliable aggregates


def aggregates(groups: dict[str, dict[str, list[RunData]]], opts: CompareOptions) -> dict[str, Any]:
    """Normalized final test scores, IQM/mean with stratified-bootstrap CIs, P(method > RL²) (SPEC §7, §9)."""
    scores: dict[str, dict[str, list[float]]] = {}  # game -> method -> per-run score
    kind: dict[str, str] = {}
    for game, by_method in groups.items():
        any_run = next(r for rs in by_method.values() for r in rs)
        bounds = stats.normalization_range(game, any_run.distribution_mode, force_easy=opts.normalize_any_mode)
        kind[game] = "normalized" if bounds else "raw"
        for method, runs in by_method.items():
            values = [final_numbers(r) for r in runs]
            per_run = [stats.normalize(v[0], bounds) if bounds else v[0] for v in values if v is not None]
            if per_run:
                scores.setdefault(game, {})[method] = per_run
    methods = sorted({m for by in scores.values() for m in by}, key=method_sort_key)
    out: dict[str, Any] = {
        "normalization": stats.NORMALIZATION_SET,
        "normalization_note": ("easy-mode constants applied to every Procgen run (--normalize-any-mode)"
                               if opts.normalize_any_mode else
                               "easy-mode constants for easy-mode Procgen runs; other games and modes are raw"),
        "score_kind": kind, "scores": scores, "methods": methods,
    }
    normalized_games = [g for g in scores if kind[g] == "normalized"]
    # Aggregating raw scores of different games would mix scales: use the normalized games when there are any.
    candidate = normalized_games or list(scores)
    tasks = [g for g in candidate if all(m in scores[g] for m in methods)]
    out["tasks"] = tasks
    out["tasks_left_out"] = sorted(set(scores) - set(tasks))
    out["aggregate_kind"] = "normalized" if normalized_games else "raw"
    if not tasks or not methods:
        out["note"] = "no game has an evaluated run of every method: no aggregate"
        return out
    matrices: dict[str, np.ndarray] = {}
    for m in methods:
        runs_per_task = min(len(scores[g][m]) for g in tasks)
        # rliable needs a runs x tasks matrix: keep the first runs (lowest seeds) of each task.
        matrices[m] = np.array([[scores[g][m][i] for g in tasks] for i in range(runs_per_task)])
    out["runs_used"] = {m: int(v.shape[0]) for m, v in matrices.items()}
    out["intervals"] = stats.aggregate_intervals(matrices, reps=opts.reps, seed=opts.seed,
                                                 confidence=opts.confidence)
    if "RL²" in matrices:
        out["probability_of_improvement_over_RL²"] = {
            m: stats.probability_of_improvement(matrices[m], matrices["RL²"], reps=opts.reps, seed=opts.seed,
                                                confidence=opts.confidence)
            for m in methods if m != "RL²"}
    return out


# ----------------------------------------------------------------------------------------------------------
# Side-by-side trajectories


def _levels_with_episodes(run: RunData, with_frames: bool) -> dict[int, int]:
    """level seed -> first test episode id on it (only episodes with frames when ``with_frames``)."""
    steps = run.steps.get("test")
    if steps is None:
        return {}
    frames = run.frames("test")
    out: dict[int, int] = {}
    for ep, level in zip(np.asarray(steps["episode"]).tolist(), np.asarray(steps["level_seed"]).tolist(), strict=True):
        if (not with_frames or ep in frames) and int(level) not in out:
            out[int(level)] = int(ep)
    return out


def trajectories(game: str, by_method: dict[str, list[RunData]], out_dir: Path, opts: CompareOptions
                 ) -> dict[str, Any] | None:
    """Two methods on the same test level seeds (seed 000 Fig. 7): paths over the MiniGrid level, or filmstrips."""
    if opts.trajectory_methods is not None:
        pair = [m for m in opts.trajectory_methods if m in by_method]
    elif "DVE" in by_method and "Sparse DVE" in by_method:
        pair = ["DVE", "Sparse DVE"]  # the pair of seed 000 Fig. 7
    else:
        pair = list(by_method)[:2]
    if len(pair) < 2:
        return None
    a_method, b_method = pair
    minigrid = game.startswith("MiniGrid")
    best: tuple[RunData, RunData, list[int]] | None = None
    for a in by_method[a_method]:
        for b in by_method[b_method]:
            la, lb = _levels_with_episodes(a, not minigrid), _levels_with_episodes(b, not minigrid)
            common = sorted(set(la) & set(lb))
            if minigrid:  # a background frame of the level must exist in one of the two runs
                fa, fb = _levels_with_episodes(a, True), _levels_with_episodes(b, True)
                common = [lv for lv in common if lv in fa or lv in fb]
            if common and (best is None or len(common) > len(best[2])):
                best = (a, b, common)
    if best is None:
        return {"methods": pair, "common_levels": [], "note": "no test level seed recorded (with frames) by both "
                "methods; run both with the same --seed so their evaluations draw the same levels"}
    a, b, common = best
    levels = common[: opts.trajectory_levels]
    name = f"trajectories_{_slug(game)}.png"
    if minigrid:
        panels = []
        for level in levels:
            lines = []
            background = None
            for run in (a, b):
                steps = run.steps["test"]
                ep = _levels_with_episodes(run, False)[level]
                lines.append((run.method, np.asarray(steps["agent_pos"])[episode_rows(steps, ep)]))
                framed = _levels_with_episodes(run, True)
                if background is None and level in framed:
                    background = run.frames("test")[framed[level]][0]
            assert background is not None
            panels.append((f"test level {level}", background, lines, minigrid_tile_size(game, background)))
        figures.grid_paths(panels, out_dir / name, f"{game}: {a.method} (seed {a.seed}) vs {b.method} (seed {b.seed})")
    else:
        rows = {}
        for level in levels:
            for run in (a, b):
                ep = _levels_with_episodes(run, True)[level]
                rows[f"{run.method}\nlevel {level}"] = filmstrip(run.frames("test")[ep], 8)
        figures.frame_strips(rows, out_dir / name, f"{game}: {a.method} vs {b.method} on the same test levels")
    return {"methods": pair, "runs": [str(a.path), str(b.path)], "common_levels": common, "drawn_levels": levels,
            "figure": name}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


# ----------------------------------------------------------------------------------------------------------
# The command


def build_comparison(run_dirs: list[Path], out_dir: Path, opts: CompareOptions = CompareOptions(),
                     warn: Callable[[str], None] = _warn_stderr) -> dict[str, Any]:
    """Write every comparison file into ``out_dir``; returns the summary also written to summary.json.

    Paths that are not run directories are skipped with one ``warn`` line each; an ``out_dir`` that is a run
    directory is refused (CompareError)."""
    from multiscene.rundir import atomic_write_bytes

    check_out_dir(out_dir)
    groups = load_and_group(select_run_dirs(list(run_dirs), warn) if run_dirs else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted({m for by in groups.values() for m in by}, key=method_sort_key)
    rows = table1(groups)
    markdown = table1_markdown(rows, methods)
    atomic_write_bytes(out_dir / "table1.md", markdown.encode())
    atomic_write_bytes(out_dir / "table1.csv", table1_csv(rows).encode())
    sections = [Section("Table 1 (seed 000)", [], [(["game", "method", "runs", "return", "± std", "length",
                                                       "± std", "partial runs"],
                                                      [[r["game"], r["method"], r["runs"], r["return_mean"],
                                                        r["return_std"], r["length_mean"], r["length_std"],
                                                        r["partial_runs"]] for r in rows])], [])]
    summary: dict[str, Any] = {"runs": {str(r.path): {"game": g, "method": m, "seed": r.seed, "partial": r.partial,
                                                       "problems": r.problems}
                                        for g, by in groups.items() for m, rs in by.items() for r in rs},
                               "table1": rows, "figures": []}

    curves_section = Section("Learning curves (mean and 95% band over seeds)", [], [], [])
    for game, by_method in groups.items():
        panels: dict[str, dict[str, Any]] = {"return": {}, "episode length": {}}
        for method, runs in by_method.items():
            for panel, key in (("return", "charts/episodic_return"), ("episode length", "charts/episodic_length")):
                curve = curves_over_seeds(runs, key, opts.curve_points, opts.smooth)
                if curve is not None:
                    panels[panel][method] = curve
        if any(panels.values()):
            name = f"curves_{_slug(game)}.png"
            figures.method_curves(panels, out_dir / name, game)
            curves_section.figures.append(name)
    curves_section.text.append(f"Training episodes, smoothed over {opts.smooth} updates per run, interpolated on "
                               "the steps all seeds reached; the band is a Student-t 95% interval over seeds.")
    sections.append(curves_section)

    agg = aggregates(groups, opts)
    summary["aggregates"] = agg
    agg_section = Section("Aggregates (rliable)", [f"Scores: {agg['aggregate_kind']} ({agg['normalization']}; "
                                                   f"{agg['normalization_note']}). Tasks: {', '.join(agg['tasks']) or 'none'}."
                                                   f" Stratified bootstrap, {opts.reps} reps."], [], [])
    if "intervals" in agg:
        agg_section.tables.append((["method", "IQM", "IQM CI low", "IQM CI high", "mean", "mean CI low",
                                    "mean CI high", "runs", "tasks"],
                                   [[m, v["iqm"], *v["iqm_ci"], v["mean"], *v["mean_ci"], v["runs"], v["tasks"]]
                                    for m, v in agg["intervals"].items()]))
        figures.interval_figure(agg["intervals"], out_dir / "aggregate.png", "Final test score",
                                f"{agg['aggregate_kind']} score")
        agg_section.figures.append("aggregate.png")
    if agg.get("probability_of_improvement_over_RL²"):
        agg_section.tables.append((["P(method > RL²)", "probability", "CI low", "CI high"],
                                   [[m, v["probability"], *v["ci"]]
                                    for m, v in agg["probability_of_improvement_over_RL²"].items()]))
    sections.append(agg_section)

    traj_section = Section("Trajectories of two methods on the same test levels", [], [], [])
    summary["trajectories"] = {}
    for game, by_method in groups.items():
        result = trajectories(game, by_method, out_dir, opts)
        if result is None:
            continue
        summary["trajectories"][game] = result
        if "figure" in result:
            traj_section.figures.append(result["figure"])
        else:
            traj_section.text.append(f"{game}: {result['note']}.")
    sections.append(traj_section)

    paper_markdown = write_paper_tables(groups, out_dir, summary, sections)
    summary["figures"] = sorted(f for s in sections for f in s.figures)
    partial = [p for p, r in summary["runs"].items() if r["partial"]]
    header = [f"<pre>{html.escape(text)}</pre>" for text in (markdown, *paper_markdown)]
    if partial:
        header.append("<div class='partial'><b>Partial runs:</b><ul>" + "".join(
            f"<li>{html.escape(p)}: {html.escape('; '.join(summary['runs'][p]['problems']))}</li>" for p in partial)
            + "</ul></div>")
    atomic_write_bytes(out_dir / "index.html", render_html("multiscene compare", header, sections).encode())
    summary = jsonable(summary)
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


PAPER_TABLE_FILES: tuple[str, ...] = ("table2_a2mc.md", "table1_impala.md")
"""The papers' layouts compare writes when the runs fit them (and prints after Table 1)."""


def write_paper_tables(groups: dict[str, dict[str, list[RunData]]], out_dir: Path, summary: dict[str, Any],
                       sections: list[Section]) -> list[str]:
    """Seed 004 Table 2 and seed 002 Table 1 where the runs hold their methods: the markdown files, a summary
    entry and a page section each; returns the markdown texts written (none when no run fits)."""
    from multiscene.rundir import atomic_write_bytes

    written = []
    for name in PAPER_TABLE_FILES:
        (out_dir / name).unlink(missing_ok=True)  # of an earlier comparison of other runs
    a2mc = paper_tables.a2mc_table2(groups)
    if a2mc is not None:
        text = "Seed 004 Table 2 layout (MuJoCo, final return)\n\n" + paper_tables.a2mc_table2_markdown(a2mc)
        atomic_write_bytes(out_dir / "table2_a2mc.md", text.encode())
        summary["table2_a2mc"] = a2mc
        columns = list(a2mc[0])
        sections.append(Section("Seed 004 Table 2: ACKTR vs A2MC, PPO vs MC-PPO", [], [(columns, [[r[c] for c in columns]
                                                                                              for r in a2mc])], []))
        written.append(text)
    impala = paper_tables.impala_table1(groups)
    if impala is not None:
        text = "Seed 002 Table 1 layout (held-out levels)\n\n" + paper_tables.impala_table1_markdown(impala)
        atomic_write_bytes(out_dir / "table1_impala.md", text.encode())
        summary["table1_impala"] = impala
        table_rows = [[r["game"], r["method"], *[(r["cell"] or {}).get(k) for k in ("mean", "variance", "max", "min",
                                                                                    "episodes")],
                       *(r["seed"] or (None,) * 4)] for r in impala]
        sections.append(Section("Seed 002 Table 1: IMPALA vs IMPALA+VAE", [], [(
            ["game", "method", "mean", "variance", "max", "min", "episodes", "seed mean", "seed variance",
             "seed max", "seed min"], table_rows)], []))
        written.append(text)
    return written


def main(argv: list[str]) -> int:
    """Entry point of ``multiscene compare RUN_DIR... --out DIR``; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(prog="multiscene compare",
                                     description="Compare runs grouped by method and game (Table 1, curves, "
                                                 "rliable aggregates, trajectories).")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories written by multiscene train")
    parser.add_argument("--out", type=Path, required=True, help="folder for the comparison files")
    parser.add_argument("--reps", type=int, default=CompareOptions.reps, help="bootstrap replications")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--smooth", type=int, default=CompareOptions.smooth, help="curve moving-average window (updates)")
    parser.add_argument("--trajectory-methods", nargs=2, metavar=("A", "B"), default=None,
                        help='the two methods drawn side by side, e.g. "DVE" "Sparse DVE" (default: that pair when '
                             "present, else the first two)")
    parser.add_argument("--trajectory-levels", type=int, default=CompareOptions.trajectory_levels)
    parser.add_argument("--normalize-any-mode", action="store_true",
                        help="normalize Procgen runs of any distribution mode with the easy-mode constants")
    ns = parser.parse_args(argv)
    opts = CompareOptions(reps=ns.reps, seed=ns.seed, smooth=ns.smooth,
                          trajectory_methods=tuple(ns.trajectory_methods) if ns.trajectory_methods else None,
                          trajectory_levels=ns.trajectory_levels, normalize_any_mode=ns.normalize_any_mode)
    try:
        summary = build_comparison(ns.run_dirs, ns.out, opts)
    except RunDataError as e:
        print(f"multiscene compare: error: {e}", file=sys.stderr)
        return 2
    partial = [p for p, r in summary["runs"].items() if r["partial"]]
    if partial:
        print(f"multiscene compare: {len(partial)} partial run(s): {', '.join(partial)}", file=sys.stderr)
    print((ns.out / "table1.md").read_text(), end="")
    papers = [name for name in PAPER_TABLE_FILES if (ns.out / name).exists()]
    for name in papers:
        print()
        print((ns.out / name).read_text(), end="")
    print(f"written: {ns.out} (table1.md, table1.csv, {''.join(n + ', ' for n in papers)}summary.json, index.html, "
          f"{len(summary['figures'])} figures)")
    return 0
