"""Reward normalization by a running std of the discounted return (SPEC §2; gym's NormalizeReward)."""

from __future__ import annotations

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
        centred = flat - batch_mean
        batch_var = float(np.add.reduce(centred * centred)) / batch_count
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
        """x [N, *shape]: merge the batch's moments (Chan et al.'s parallel update, as RunningMeanStd).

        Called once per env step by the collector: on the CPU the arithmetic runs in numpy on views of the
        buffers (the same float64 operations as ``np.mean``/``np.var``, without their Python layers), which costs
        a fraction of a dozen small torch ops (benchmarks/ppo_mujoco_vs_cleanrl.py)."""
        if self.mean.device.type == "cpu":
            xs = x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy()
            xs = xs.astype(np.float64, copy=False)
            n = xs.shape[0]
            mean, var, count = self.mean.numpy(), self.var.numpy(), float(self.count)
            batch_mean = np.add.reduce(xs, axis=0) / n
            centred = xs - batch_mean
            batch_var = np.add.reduce(centred * centred, axis=0) / n
            delta = batch_mean - mean
            total = count + n
            m2 = var * count + batch_var * n + delta**2 * count * n / total
            mean += delta * n / total
            var[...] = m2 / total
            self.count.fill_(total)
            return
        x = x.to(torch.float64)
        batch_mean, batch_var, n = x.mean(dim=0), x.var(dim=0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.mean.device.type == "cpu" and not torch.is_grad_enabled():
            # The collector's per-step call: the same float64 arithmetic in numpy, a few microseconds.
            xs = x.numpy().astype(np.float64, copy=False)
            out = (xs - self.mean.numpy()) / np.sqrt(self.var.numpy() + self.epsilon)
            return torch.from_numpy(np.clip(out, -self.clip, self.clip).astype(np.float32))
        out = (x.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.epsilon)
        return out.clamp(-self.clip, self.clip).to(torch.float32)
