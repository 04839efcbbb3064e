"""Reward normalization by a running std of the discounted return (SPEC §2; gym's NormalizeReward)."""

from __future__ import annotations

import math

import numpy as np
import torch


class RunningMeanStd:
    """Parallel-algorithm running mean and variance (Chan et al.), float64."""

    def __init__(self, epsilon: float = 1e-4) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        # np.mean / np.var's arithmetic (sum / n; mean of squared deviations) without their Python layers:
        # called once per env step.
        flat = x.reshape(-1)
        batch_count = flat.size
        batch_mean = float(np.add.reduce(flat)) / batch_count
        if batch_count > 1:
            centred = flat - batch_mean
            batch_var = float(np.add.reduce(centred * centred)) / batch_count
        else:  # one env: no spread, exactly
            batch_var = 0.0
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
        return (reward / math.sqrt(self.rms.var + self.epsilon)).astype(np.float32)

    @property
    def scale(self) -> float:
        return float(np.sqrt(self.rms.var + self.epsilon)) if self.enabled else 1.0

    def state_dict(self) -> dict[str, object]:
        return {"returns": self.returns.copy(), "rms": self.rms.state_dict()}

    def load_state_dict(self, d: dict[str, object]) -> None:
        self.returns = np.array(d["returns"], dtype=np.float64)
        self.rms.load_state_dict(d["rms"])  # type: ignore[arg-type]


class RunningObsNorm(torch.nn.Module):
    """Running mean/std normalization of float observations, clipped to [-clip, clip] (CleanRL's
    ``ppo_continuous_action`` uses gym's NormalizeObservation then clips to 10). The statistics are buffers, so
    they are saved with the agent's weights and evaluation uses the training statistics, frozen."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8) -> None:
        super().__init__()
        self.clip = clip
        self.epsilon = epsilon
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """x [N, *shape]: merge the batch's moments (Chan et al.'s parallel update, as RunningMeanStd)."""
        if self.mean.device.type == "cpu":
            self._update_numpy(x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy())
            return
        x = x.to(self.mean.device, torch.float64)  # the env's observations arrive on the CPU
        batch_mean, batch_var, n = x.mean(dim=0), x.var(dim=0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.fill_(float(total))

    def _update_numpy(self, x: np.ndarray) -> None:
        """The CPU update on numpy views of the buffers: the same float64 operations as ``np.mean``/``np.var``
        without their Python layers, a fraction of the cost of a dozen small torch ops. Called once per env
        step by the collector (benchmarks/ppo_mujoco_vs_cleanrl.py)."""
        xs = x.astype(np.float64, copy=False)
        n = xs.shape[0]
        mean, var, count_view = self._numpy_views()
        count = float(count_view)
        batch_mean = np.add.reduce(xs, axis=0) / n
        delta = batch_mean - mean
        total = count + n
        if n > 1:
            centred = xs - batch_mean
            m2 = var * count + np.add.reduce(centred * centred, axis=0) / n * n + delta**2 * count * n / total
        else:  # one sample has no spread: its variance term is exactly 0, and adding 0.0 changes nothing
            m2 = var * count + delta**2 * count * n / total
        mean += delta * n / total
        var[...] = m2 / total
        count_view[...] = total

    def _numpy_views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views sharing memory with the CPU buffers (mean, var, count), kept while the buffers are the same
        tensors: ``load_state_dict`` and ``copy_`` write into them in place; ``.to()`` replaces them, and then the
        views are taken anew."""
        cache = self.__dict__.get("_views")
        if cache is None or cache[0] is not self.mean or cache[1] is not self.var or cache[2] is not self.count:
            cache = (self.mean, self.var, self.count, self.mean.numpy(), self.var.numpy(), self.count.numpy())
            self.__dict__["_views"] = cache
        return cache[3], cache[4], cache[5]

    def __getstate__(self) -> dict[str, object]:
        # A copy (deepcopy, pickle) gets new buffers: it must take its own views, not keep copies of these.
        state = super().__getstate__()
        state = dict(state)
        state.pop("_views", None)
        return state

    def normalize_numpy(self, x: np.ndarray, update: bool) -> np.ndarray:
        """The collector's per-step path on the CPU: float observations [N, *shape] (any float dtype) ->
        float32, the statistics updated first when ``update``; the arithmetic of ``update`` then ``forward``."""
        if update:
            self._update_numpy(x)
        mean, var, _ = self._numpy_views()
        out = (x.astype(np.float64, copy=False) - mean) / np.sqrt(var + self.epsilon)
        return np.minimum(np.maximum(out, -self.clip), self.clip).astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.mean.device.type == "cpu" and not torch.is_grad_enabled():
            # The same float64 arithmetic in numpy, a few microseconds.
            return torch.from_numpy(self.normalize_numpy(x.numpy(), update=False))
        out = (x.to(self.mean.device, torch.float64) - self.mean) / torch.sqrt(self.var + self.epsilon)
        return out.clamp(-self.clip, self.clip).to(torch.float32)
