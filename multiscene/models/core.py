"""Cores: per-frame features [T, B, D] -> trajectory latents [T, B, hidden], carrying a recurrent state.

The LSTM core is the RL² memory (SPEC §2): its state is zeroed wherever ``first`` marks an episode start, and
it may also read the previous action (one-hot) and reward, which are zeroed at episode starts too.
"""

from __future__ import annotations

import torch
from torch import nn

CoreState = tuple[torch.Tensor, ...]
"""(h, c) each [1, B, hidden] for the LSTM core; () for the feed-forward core."""


class LSTMCore(nn.Module):
    def __init__(self, input_dim: int, hidden_size: int, num_actions: int, prev_action_reward: bool,
                 continuous: bool = False) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.continuous = continuous
        self.prev_action_reward = prev_action_reward
        extra = num_actions + 1 if prev_action_reward else 0
        self.lstm = nn.LSTM(input_dim + extra, hidden_size)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.hidden_size = hidden_size
        self.output_dim = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str) -> CoreState:
        zeros = torch.zeros(1, batch_size, self.hidden_size, device=device)
        return (zeros, zeros.clone())

    def forward(
        self,
        features: torch.Tensor,
        first: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        state: CoreState,
    ) -> tuple[torch.Tensor, CoreState]:
        """features [T, B, D], first [T, B] bool, prev_action [T, B] int (discrete: one-hot encoded here) or
        [T, B, A] float (continuous: read as is), prev_reward [T, B] -> ([T, B, H], state)."""
        T, B = first.shape
        assert features.shape[:2] == (T, B), (features.shape, first.shape)
        keep = (~first).to(features.dtype)  # [T, B]; 0 where an episode starts
        if self.prev_action_reward:
            if self.continuous:
                one_hot = prev_action.to(features.dtype)
            else:
                one_hot = nn.functional.one_hot(prev_action.long(), self.num_actions).to(features.dtype)
            reward = prev_reward.to(features.dtype).unsqueeze(-1)
            inputs = torch.cat([features, one_hot * keep.unsqueeze(-1), reward * keep.unsqueeze(-1)], dim=-1)
        else:
            inputs = features
        h, c = state
        if not bool(first[1:].any()):
            # No episode starts inside the sequence: one fused call (resets at t = 0 only).
            k = keep[0].view(1, B, 1)
            out, (h, c) = self.lstm(inputs, (h * k, c * k))
            return out, (h, c)
        outputs = []
        for t in range(T):
            k = keep[t].view(1, B, 1)
            out, (h, c) = self.lstm(inputs[t : t + 1], (h * k, c * k))
            outputs.append(out)
        return torch.cat(outputs, dim=0), (h, c)


class IdentityCore(nn.Module):
    """No memory: the feed-forward agent (CleanRL ppo_procgen)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.output_dim = input_dim

    def initial_state(self, batch_size: int, device: torch.device | str) -> CoreState:
        return ()

    def forward(
        self,
        features: torch.Tensor,
        first: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        state: CoreState,
    ) -> tuple[torch.Tensor, CoreState]:
        return features, state
