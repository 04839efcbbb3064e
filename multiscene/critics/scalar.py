"""The scalar critic (SPEC §3.1): one head V(s, tau) on the core output, the RL² baseline."""

from __future__ import annotations

import torch
from torch import nn

from multiscene.critics.base import Critic, CriticOutput


class ScalarCritic(Critic):
    """V(s_t, tau_{t-}) = Linear(core_out): one head named ``"value"``, no auxiliary loss.

    Initialized as CleanRL's value head: orthogonal weights with gain 1.0, zero bias.
    """

    head_names: tuple[str, ...] = ("value",)

    def __init__(self, core_dim: int) -> None:
        super().__init__()
        self.value = nn.Linear(core_dim, 1)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.constant_(self.value.bias, 0.0)

    def forward(self, core_out: torch.Tensor, encoder_out: torch.Tensor) -> CriticOutput:
        """core_out [T, B, D_core] -> values [T, B, 1]; encoder_out is not read."""
        assert core_out.dim() == 3, f"core_out must be [T, B, D_core], got {tuple(core_out.shape)}"
        return CriticOutput(values=self.value(core_out), extras={})

    def aux_losses(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """No auxiliary loss. Takes ``first`` like ``DVECritic.aux_losses`` so the trainer calls both alike."""
        return {}
