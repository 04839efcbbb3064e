"""The Critic interface (SPEC §3): core output -> named value heads ``[T, B, H]``.

A critic also says how its heads combine into the one advantage the policy loss uses, which auxiliary loss
terms it adds (unscaled; the trainer multiplies each by the scale its schedule gives, see
``multiscene.critics.schedule``), and which diagnostics it logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from multiscene.config import TrainConfig


class CriticOutput(NamedTuple):
    values: torch.Tensor
    """[T, B, H] value per head; head h is named ``critic.head_names[h]``."""
    extras: dict[str, torch.Tensor]
    """Critic-specific tensors, e.g. DVE's ``alpha`` [T, B, N_b] and ``cluster_values`` [T, B, N_b]."""


class Critic(nn.Module, ABC):
    """Base class with the defaults of a plain critic: one or more heads, summed advantages, no aux loss."""

    head_names: tuple[str, ...] = ("value",)
    config_group: tuple[str, type] | None = None
    """``("name", Dataclass)`` when the critic has options of its own (``--name.*``; see multiscene/registry.py)."""

    @classmethod
    def from_config(cls, cfg: TrainConfig, core_dim: int, encoder_dim: int) -> Critic:
        """Build from the training config; the default takes no options (``cls(core_dim)``)."""
        return cls(core_dim)  # type: ignore[call-arg]

    @property
    def num_heads(self) -> int:
        return len(self.head_names)

    def make_reward_transform(self, num_envs: int, cfg: TrainConfig) -> Any:
        """A per-env running transform whose ``step(raw_reward [B], first [B]) -> [B]`` extra reward the
        collector stores for heads that learn from something other than the env reward (A2MC's VWR head);
        None (the default) when every head reads the env reward."""
        return None

    @abstractmethod
    def forward(self, core_out: torch.Tensor, encoder_out: torch.Tensor) -> CriticOutput:
        """core_out [T, B, D_core], encoder_out [T, B, D_enc] -> CriticOutput with values [T, B, H]."""

    def head_rewards(self, reward: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """[T, B] env reward (and [T, B, E] extra rewards of ``make_reward_transform``) -> [T, B, H] reward per
        head. Default: the env reward for every head."""
        return reward.unsqueeze(-1).expand(*reward.shape, self.num_heads)

    def combine_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """[T, B, H] per-head advantages -> [T, B] advantage for the policy loss. Default: their sum."""
        return advantages.sum(dim=-1)

    def aux_losses(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Unscaled auxiliary loss terms (scalar tensors) over the valid steps ``mask`` [T, B]; ``first``
        [T, B] marks episode starts for losses defined per episode."""
        return {}

    @torch.no_grad()
    def diagnostics(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Scalars to log every update (averaged over minibatches by the trainer)."""
        return {}
