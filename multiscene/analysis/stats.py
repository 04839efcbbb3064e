"""Numbers behind the report and the comparison (issue 4; SPEC §7, §9).

Every function here is pure numpy/scipy/rliable on arrays read from a run directory, so the tests can check
each number against an independent computation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Procgen paper (Cobbe et al. 2020), easy-mode (R_min, R_max) per game, as listed in SPEC §9. Hard-mode values
# differ and are not in the SPEC, so hard-mode runs are normalized only when the user asks for the easy set.
PROCGEN_EASY_RANGES: dict[str, tuple[float, float]] = {
    "coinrun": (5.0, 10.0),
    "starpilot": (2.5, 64.0),
    "caveflyer": (3.5, 12.0),
    "dodgeball": (1.5, 19.0),
    "fruitbot": (-1.5, 32.4),
    "jumper": (3.0, 10.0),
    "climber": (2.0, 12.6),
    "plunder": (4.5, 30.0),
    "bigfish": (1.0, 40.0),
    "chaser": (0.5, 13.0),
    "maze": (5.0, 10.0),
    "heist": (3.5, 10.0),
}
NORMALIZATION_SET = "procgen-easy (Cobbe et al. 2020, SPEC §9)"


def compact_steps(value: float, _position: object = None) -> str:
    """A step count as a short label: 0, 500, 1.5k, 50k, 1M, 1.25M, 2B (issue 16: plain numbers such as 100000
    run together on the report's narrow panels). Up to three significant digits, trailing zeros dropped; the
    second argument lets matplotlib's FuncFormatter call it as a tick formatter."""
    value = float(f"{float(value):.3g}")  # round first, so 999_999 is "1M", not "1e+03k"
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


# ----------------------------------------------------------------------------------------------------------
# Episodes inside a steps file


def episode_slices(episode: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices of each episode id, in row order (the evaluator writes an episode's rows in time order)."""
    order: dict[int, list[int]] = {}
    for row, ep in enumerate(np.asarray(episode).tolist()):
        order.setdefault(int(ep), []).append(row)
    return {ep: np.asarray(rows, dtype=np.int64) for ep, rows in order.items()}


def discounted_return_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1}, with G after the last step = 0 (the episode ended there). rewards [T] -> [T]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def inverse_confusion(alpha: np.ndarray) -> np.ndarray:
    """1 / delta = N_b * sum_i alpha_i^2 (SPEC §3.3), in [1, N_b]; 1 is uniform, N_b one-hot. alpha [N, N_b] -> [N]."""
    alpha = np.asarray(alpha, dtype=np.float64)
    return alpha.shape[-1] * np.square(alpha).sum(axis=-1)


@dataclass(frozen=True)
class EpisodeTable:
    """One row per complete episode of a steps file."""

    episode: np.ndarray  # [E] episode id
    level_seed: np.ndarray  # [E]
    episode_return: np.ndarray  # [E] undiscounted sum of raw rewards
    length: np.ndarray  # [E]
    mean_inverse_confusion: np.ndarray | None  # [E] mean over the episode of 1/delta (DVE only)
    incomplete: int  # episodes whose last recorded row is not an episode end (left out)


def episode_table(steps: Mapping[str, np.ndarray]) -> EpisodeTable:
    """Per-episode return, length, level and mean inverse confusion of a final_steps_<split>.npz."""
    slices = episode_slices(steps["episode"])
    alpha = steps.get("alpha")
    ids, levels, returns, lengths, inv = [], [], [], [], []
    incomplete = 0
    for ep, rows in slices.items():
        if not bool(np.asarray(steps["done"])[rows[-1]]):
            incomplete += 1
            continue
        ids.append(ep)
        levels.append(int(np.asarray(steps["level_seed"])[rows[0]]))
        returns.append(float(np.asarray(steps["reward"], dtype=np.float64)[rows].sum()))
        lengths.append(len(rows))
        if alpha is not None:
            inv.append(float(inverse_confusion(np.asarray(alpha)[rows]).mean()))
    return EpisodeTable(
        episode=np.asarray(ids, dtype=np.int64),
        level_seed=np.asarray(levels, dtype=np.int64),
        episode_return=np.asarray(returns, dtype=np.float64),
        length=np.asarray(lengths, dtype=np.int64),
        mean_inverse_confusion=np.asarray(inv, dtype=np.float64) if alpha is not None else None,
        incomplete=incomplete,
    )


# ----------------------------------------------------------------------------------------------------------
# Value-prediction error (SPEC §7): |V(s, M) * reward_scale - realized discounted return-to-go|

TRUNCATION_TAIL_TOLERANCE = 0.05
"""A step of an episode cut by a time limit is compared only where the unseen tail of its return weighs at most
this much: gamma ** (steps to the cut) <= 0.05, so the realized return misses at most 5% of V(final obs)."""


@dataclass(frozen=True)
class ValueErrorResult:
    predicted: np.ndarray  # [N] V * reward_scale, raw reward units
    realized: np.ndarray  # [N] discounted return-to-go of raw rewards
    level_seed: np.ndarray  # [N]
    incomplete_episodes: int
    truncated_episodes: int = 0  # episodes the env cut at a time limit (issue 16)
    truncated_steps_left_out: int = 0  # their last steps, whose realized return misses a tail
    truncation: str = "unrecorded"  # "unrecorded" (no flag in the file), "none", "excluded" or "bootstrapped"

    @property
    def abs_error(self) -> np.ndarray:
        return np.abs(self.predicted - self.realized)

    def summary(self) -> dict[str, Any]:
        """Overall and per-level mean absolute error, RMSE and bias (predicted - realized)."""
        return {"overall": _error_stats(self.predicted, self.realized),
                "per_level": {str(level): _error_stats(self.predicted[self.level_seed == level],
                                                       self.realized[self.level_seed == level])
                              for level in sorted(set(self.level_seed.tolist()))},
                "incomplete_episodes_left_out": self.incomplete_episodes,
                "truncated_episodes": self.truncated_episodes,
                "truncated_steps_left_out": self.truncated_steps_left_out,
                "truncation": self.truncation}


def _error_stats(predicted: np.ndarray, realized: np.ndarray) -> dict[str, float | int]:
    diff = predicted - realized
    return {"mean_abs_error": float(np.abs(diff).mean()), "rmse": float(np.sqrt(np.square(diff).mean())),
            "bias": float(diff.mean()), "mean_realized": float(realized.mean()), "steps": int(len(diff))}


def value_error(steps: Mapping[str, np.ndarray], gamma: float | None = None,
                reward_scale: float | None = None, head: int = 0,
                tail_tolerance: float = TRUNCATION_TAIL_TOLERANCE) -> ValueErrorResult | None:
    """Predicted value (head ``head``, de-normalized by ``reward_scale``) against the realized discounted
    return-to-go of each complete evaluation episode. gamma and reward_scale default to the npz's scalars.

    Returns None when no step can be compared. The critic learns on rewards divided by the running return std
    (SPEC §2), so V * reward_scale is in raw reward units; the first head is the env-reward value for every
    critic (the multi-critic's second head predicts another reward and is not compared here).

    Time limits (issue 16). An episode whose last row has ``truncated`` True was cut by a time limit, not
    ended by the MDP: its realized return-to-go at step t misses gamma ** (L - t) * V(final observation),
    L = its length. Where the steps file holds ``final_value`` (that value, normalized like ``value``, on the
    cut row) the realized return is bootstrapped with it ("bootstrapped"); otherwise the episode's last steps,
    those with gamma ** (L - t) > ``tail_tolerance``, are left out of the error ("excluded"). Files written
    before the column existed have no ``truncated``: every episode end counts as a termination, as before.
    """
    gamma = float(steps["gamma"]) if gamma is None else gamma
    reward_scale = float(steps["reward_scale"]) if reward_scale is None else reward_scale
    value = np.asarray(steps["value"], dtype=np.float64)
    if value.ndim == 2:
        value = value[:, head]
    rewards = np.asarray(steps["reward"], dtype=np.float64)
    done = np.asarray(steps["done"])
    truncated = np.asarray(steps["truncated"], dtype=bool) if "truncated" in steps else np.zeros(len(done), bool)
    final_value = None
    if "final_value" in steps:
        final_value = np.asarray(steps["final_value"], dtype=np.float64)
        if final_value.ndim == 2:
            final_value = final_value[:, head]
    levels = np.asarray(steps["level_seed"])
    predicted, realized, level_out = [], [], []
    incomplete = truncated_episodes = left_out = 0
    for rows in episode_slices(steps["episode"]).values():
        last = rows[-1]
        if not bool(done[last]):
            incomplete += 1  # return-to-go of a cut episode is unknown
            continue
        returns = discounted_return_to_go(rewards[rows], gamma)
        keep = np.ones(len(rows), dtype=bool)
        if bool(truncated[last]):
            truncated_episodes += 1
            tail_weight = gamma ** np.arange(len(rows), 0, -1, dtype=np.float64)  # gamma ** (L - t)
            if final_value is not None and np.isfinite(final_value[last]):
                returns = returns + tail_weight * final_value[last] * reward_scale
            else:
                keep = tail_weight <= tail_tolerance
                left_out += int((~keep).sum())
        predicted.append(value[rows][keep] * reward_scale)
        realized.append(returns[keep])
        level_out.append(levels[rows][keep])
    if not predicted or not sum(len(p) for p in predicted):
        return None
    mode = "none" if "truncated" in steps else "unrecorded"
    if truncated_episodes:
        mode = "bootstrapped" if final_value is not None and left_out == 0 else "excluded"
    return ValueErrorResult(np.concatenate(predicted), np.concatenate(realized), np.concatenate(level_out),
                            incomplete, truncated_episodes, left_out, mode)


# ----------------------------------------------------------------------------------------------------------
# Correlation and clusters


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """scipy.stats.pearsonr with its p-value, or the reason it is undefined (fewer than 3 points, a constant)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return {"r": None, "p_value": None, "n": int(len(x)), "note": "fewer than 3 samples"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": None, "p_value": None, "n": int(len(x)), "note": "one of the variables is constant"}
    result = stats.pearsonr(x, y)
    return {"r": float(result.statistic), "p_value": float(result.pvalue), "n": int(len(x))}


def mean_abs_to_group_median(values: np.ndarray, groups: np.ndarray) -> float:
    """Mean over rows of |value - median of its group|: the best mean absolute error of a predictor that only
    knows the group. values [N]; groups [N] or [N, K] (rows with equal keys form a group)."""
    error = np.empty_like(values, dtype=np.float64)
    for key in np.unique(groups, axis=0):
        rows = np.all(groups == key, axis=1) if groups.ndim > 1 else groups == key
        error[rows] = np.abs(values[rows] - np.median(values[rows]))
    return float(error.mean())


def cluster_level_purity(cluster: np.ndarray, level: np.ndarray) -> dict[str, Any]:
    """How clusters (argmax of alpha) and levels line up, over the given states.

    cluster purity: sum over clusters of the count of its most frequent level, divided by the number of states
    (1: each cluster lives in one level). level purity: the same with roles swapped (1: each level is served by
    one cluster). NMI: scikit-learn's normalized mutual information (0: independent). Seed 000 argues clusters
    are skills shared across levels (Fig. 6), so low cluster purity with high level coverage is expected there.
    """
    from sklearn.metrics import normalized_mutual_info_score

    cluster, level = np.asarray(cluster), np.asarray(level)
    n = len(cluster)
    if n == 0:
        return {"states": 0, "cluster_purity": None, "level_purity": None, "nmi": None}

    def purity(a: np.ndarray, b: np.ndarray) -> float:
        total = 0
        for value in np.unique(a):
            _, counts = np.unique(b[a == value], return_counts=True)
            total += int(counts.max())
        return total / n

    return {"states": int(n), "cluster_purity": purity(cluster, level), "level_purity": purity(level, cluster),
            "nmi": float(normalized_mutual_info_score(level, cluster)),
            "levels": int(len(np.unique(level))), "clusters_used": int(len(np.unique(cluster)))}


# ----------------------------------------------------------------------------------------------------------
# Aggregates over seeds and games (SPEC §7, §9; rliable)


def procgen_game(env: str) -> str | None:
    """The Procgen game of an env id ("coinrun" -> "coinrun"; MiniGrid ids and game lists -> None)."""
    from multiscene.envs import PROCGEN_GAMES

    name = env.strip().lower()
    return name if name in PROCGEN_GAMES else None


def normalization_range(env: str, distribution_mode: str, force_easy: bool = False) -> tuple[float, float] | None:
    """(R_min, R_max) of the easy set for an easy-mode Procgen game (or any mode with ``force_easy``), else None."""
    game = procgen_game(env)
    if game is None or game not in PROCGEN_EASY_RANGES:
        return None
    if distribution_mode != "easy" and not force_easy:
        return None
    return PROCGEN_EASY_RANGES[game]


def normalize(score: float, bounds: tuple[float, float]) -> float:
    """(R - R_min) / (R_max - R_min), the Procgen paper's normalized score."""
    low, high = bounds
    return (score - low) / (high - low)


def mean_confidence_band(curves: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t confidence band over seeds. curves [S, X] -> (mean, low, high), each [X].

    With one seed the band collapses onto the mean (no spread to show).
    """
    from scipy import stats

    curves = np.asarray(curves, dtype=np.float64)
    mean = np.nanmean(curves, axis=0)
    n = np.sum(np.isfinite(curves), axis=0)
    if curves.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    std = np.nanstd(curves, axis=0, ddof=1)
    half = np.where(n > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all runs x tasks (rliable's aggregate_iqm: 25% trimmed mean of the flattened scores)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=np.float64)))


def aggregate_intervals(score_dict: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """IQM and mean with stratified-bootstrap CIs (rliable). score_dict: method -> [runs, tasks]."""
    from rliable import library as rly
    from rliable import metrics

    def both(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])

    data = {k: np.asarray(v, dtype=np.float64) for k, v in score_dict.items()}
    points, intervals = rly.get_interval_estimates(data, both, reps=reps, confidence_interval_size=confidence,
                                                   random_state=np.random.RandomState(seed))
    out = {}
    for key in data:
        out[key] = {
            "iqm": float(points[key][0]), "iqm_ci": [float(intervals[key][0, 0]), float(intervals[key][1, 0])],
            "mean": float(points[key][1]), "mean_ci": [float(intervals[key][0, 1]), float(intervals[key][1, 1])],
            "runs": int(data[key].shape[0]), "tasks": int(data[key].shape[1]),
        }
    return out


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0,
                               confidence: float = 0.95) -> dict[str, Any]:
    """P(X > Y) of rliable (Mann-Whitney per task, averaged over tasks) with a stratified-bootstrap CI.

    x [runs_x, tasks], y [runs_y, tasks] over the same tasks in the same order.
    """
    from rliable import library as rly
    from rliable import metrics

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    assert x.shape[1] == y.shape[1], f"tasks differ: {x.shape} vs {y.shape}"
    points, intervals = rly.get_interval_estimates(
        {"pair": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps,
        confidence_interval_size=confidence, random_state=np.random.RandomState(seed))
    return {"probability": float(points["pair"][0]),
            "ci": [float(intervals["pair"][0, 0]), float(intervals["pair"][1, 0])]}


def finite_or_none(value: Any) -> Any:
    """JSON-safe float: NaN and inf become None."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value
