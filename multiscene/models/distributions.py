"""Action distributions of the agent: categorical (discrete actions) and diagonal Gaussian (continuous).

Both expose the same small surface every algorithm uses, over time-major batches [T, B, ...]:
``sample()``, ``log_prob(action) -> [T, B]``, ``entropy() -> [T, B]`` and ``mode()`` (the action of the
deterministic evaluation). The Gaussian has a state-independent log-std, as in PPO's MuJoCo setting (Schulman
et al. 2017) and CleanRL's ``ppo_continuous_action.py``; its log-probability and entropy sum over action
dimensions.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical

__all__ = ["CategoricalActions", "DiagGaussian"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class CategoricalActions(Categorical):
    """torch's Categorical over the last dim of ``logits`` with ``mode()`` = argmax."""

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


class DiagGaussian:
    """N(mean, diag(exp(log_std))^2) over the last dim; ``mean`` [..., A], ``log_std`` broadcastable to it."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)
        self.std = self.log_std.exp()

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.mean + self.std * torch.randn_like(self.mean)

    def rsample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """[..., A] -> [...]: sum over action dims of the Gaussian log density."""
        z = (action - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """[...]: sum over action dims of 0.5 + 0.5 log(2 pi) + log_std."""
        return (0.5 + _LOG_SQRT_2PI + self.log_std).sum(dim=-1)

    def mode(self) -> torch.Tensor:
        return self.mean
