"""Reward normalization by a running std of the discounted return (SPEC §2; gym's NormalizeReward)."""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Parallel-algorithm running mean and variance (Chan et al.), float64."""

    def __init__(self, epsilon: float = 1e-4) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(np.mean(x)), float(np.var(x)), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(d["mean"]), float(d["var"]), float(d["count"])


class RewardNormalizer:
    """Scales rewards by 1 / std of the per-env discounted return, with the PPO gamma."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool = True, epsilon: float = 1e-8) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.epsilon = epsilon
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.rms = RunningMeanStd()

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """reward [B], done [B] (episode ended after this reward) -> normalized reward [B] float32."""
        if not self.enabled:
            return reward.astype(np.float32)
        self.returns = self.returns * self.gamma + reward
        self.rms.update(self.returns)
        self.returns[done] = 0.0
        return (reward / np.sqrt(self.rms.var + self.epsilon)).astype(np.float32)

    @property
    def scale(self) -> float:
        return float(np.sqrt(self.rms.var + self.epsilon)) if self.enabled else 1.0

    def state_dict(self) -> dict[str, object]:
        return {"returns": self.returns.copy(), "rms": self.rms.state_dict()}

    def load_state_dict(self, d: dict[str, object]) -> None:
        self.returns = np.array(d["returns"], dtype=np.float64)
        self.rms.load_state_dict(d["rms"])  # type: ignore[arg-type]
