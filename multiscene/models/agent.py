"""Agent = encoder -> core -> (categorical policy, critic heads) (Sample Factory's decomposition; SPEC §2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from multiscene.config import TrainConfig
from multiscene.critics import make_critic
from multiscene.models.core import CoreState, IdentityCore, LSTMCore
from multiscene.models.encoders import make_encoder


class AgentOutput(NamedTuple):
    logits: torch.Tensor
    """[T, B, A] policy logits."""
    values: torch.Tensor
    """[T, B, H] value per critic head."""
    extras: dict[str, torch.Tensor]
    """Critic extras (DVE: alpha, cluster_values) and ``core_out`` [T, B, D] (for analyses)."""
    state: CoreState


def layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class Agent(nn.Module):
    """``forward(obs, first, prev_action, prev_reward, state) -> AgentOutput``, all time-major [T, B, ...]."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.num_actions = num_actions
        self.encoder = make_encoder(self.obs_shape, cfg.hidden_size)
        enc_dim = self.encoder.output_dim
        self.core: LSTMCore | IdentityCore
        if cfg.core == "lstm":
            self.core = LSTMCore(enc_dim, cfg.hidden_size, num_actions, cfg.prev_action_reward)
        else:
            self.core = IdentityCore(enc_dim)
        self.policy = layer_init(nn.Linear(self.core.output_dim, num_actions), gain=0.01)
        self.critic = make_critic(cfg, core_dim=self.core.output_dim, encoder_dim=enc_dim)

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.critic.head_names

    def initial_state(self, batch_size: int, device: torch.device | str) -> CoreState:
        return self.core.initial_state(batch_size, device)

    def forward(
        self,
        obs: torch.Tensor,
        first: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        state: CoreState,
    ) -> AgentOutput:
        T, B = first.shape
        assert obs.shape[:2] == (T, B) and tuple(obs.shape[2:]) == self.obs_shape, (obs.shape, self.obs_shape)
        features = self.encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
        core_out, state = self.core(features, first, prev_action, prev_reward, state)
        logits = self.policy(core_out)
        critic_out = self.critic(core_out, features)
        extras = dict(critic_out.extras)
        extras["core_out"] = core_out
        return AgentOutput(logits, critic_out.values, extras, state)


def select_state(state: CoreState, index: torch.Tensor | slice) -> CoreState:
    """The core state of a subset of envs (batch dimension 1)."""
    return tuple(s[:, index] for s in state)
