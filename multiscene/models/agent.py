"""Agent = (observation normalizer) -> encoder -> core -> (action distribution, critic heads), after Sample
Factory's decomposition (SPEC §2). The action distribution is part of the agent: categorical for discrete
actions, a diagonal Gaussian with state-independent log-std for continuous ones, so every algorithm and critic
works with both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from multiscene.critics import make_critic
from multiscene.models.core import CoreState, IdentityCore, LSTMCore
from multiscene.models.distributions import CategoricalActions, DiagGaussian
from multiscene.models.encoders import make_encoder
from multiscene.normalize import RunningObsNorm

if TYPE_CHECKING:
    from multiscene.config import TrainConfig
    from multiscene.envs.base import VecEnv


class AgentOutput(NamedTuple):
    logits: torch.Tensor
    """[T, B, A] policy parameters: categorical logits, or the Gaussian's mean."""
    values: torch.Tensor
    """[T, B, H] value per critic head."""
    extras: dict[str, torch.Tensor]
    """Critic extras (DVE: alpha, cluster_values), ``core_out`` [T, B, D] and ``features`` [T, B, D_enc]."""
    state: CoreState


def layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class Agent(nn.Module):
    """``forward(obs, first, prev_action, prev_reward, state) -> AgentOutput``, all time-major [T, B, ...].

    ``num_actions`` is the number of discrete actions, or with ``continuous=True`` the action dimension.
    With ``--aux NAME`` the auxiliary loss's module lives in ``self.aux``. Float (vector) observations pass through a running mean/std normalizer whose statistics are buffers (saved
    with the weights, frozen outside training); uint8 observations are scaled inside the encoder.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: TrainConfig, *,
                 continuous: bool = False, obs_dtype: Any = np.uint8) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.num_actions = num_actions
        self.continuous = continuous
        self.float_obs = np.dtype(obs_dtype).kind == "f"
        self.encoder = make_encoder(self.obs_shape, cfg.hidden_size, obs_dtype, name=cfg.encoder)
        enc_dim = self.encoder.output_dim
        self.core: LSTMCore | IdentityCore
        if cfg.core == "lstm":
            self.core = LSTMCore(enc_dim, cfg.hidden_size, num_actions, cfg.prev_action_reward, continuous=continuous)
        else:
            self.core = IdentityCore(enc_dim)
        # Gain 0.01 keeps the first policy close to uniform (categorical) or centred on 0 (Gaussian mean), as
        # CleanRL's actor heads.
        self.policy = layer_init(nn.Linear(self.core.output_dim, num_actions), gain=0.01)
        self.critic = make_critic(cfg, core_dim=self.core.output_dim, encoder_dim=enc_dim)
        # --value-net separate: the critic heads read an encoder of their own (the core is the identity then).
        self.value_encoder = (make_encoder(self.obs_shape, cfg.hidden_size, obs_dtype, name=cfg.encoder)
                              if getattr(cfg, "value_net", "shared") == "separate" else None)
        # --value-net detached: the heads read the shared trunk without training it.
        self.detach_critic = getattr(cfg, "value_net", "shared") == "detached"
        if continuous:
            self.log_std = nn.Parameter(torch.zeros(num_actions))
        if self.float_obs:
            self.obs_norm = RunningObsNorm(self.obs_shape)
        if cfg.aux != "none":
            from multiscene import registry

            # The auxiliary loss's module (seed 002's VAE) reads the encoder's features: its weights are part
            # of the agent, so they are optimized, checkpointed and restored with it.
            self.aux = registry.load("aux", cfg.aux).from_config(cfg, self.obs_shape, enc_dim)

    @classmethod
    def for_env(cls, envs: VecEnv, cfg: TrainConfig) -> Agent:
        spec = getattr(envs, "action_spec", None)
        continuous = spec is not None and spec.kind == "continuous"
        return cls(envs.obs_shape, envs.num_actions, cfg, continuous=continuous,
                   obs_dtype=getattr(envs, "obs_dtype", np.uint8))

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.critic.head_names

    def initial_state(self, batch_size: int, device: torch.device | str) -> CoreState:
        return self.core.initial_state(batch_size, device)

    def distribution(self, logits: torch.Tensor) -> CategoricalActions | DiagGaussian:
        """The action distribution of ``AgentOutput.logits`` [..., A]."""
        if self.continuous:
            return DiagGaussian(logits, self.log_std)
        return CategoricalActions(logits=logits)

    def normalize_obs(self, obs: torch.Tensor | np.ndarray, update: bool) -> torch.Tensor:
        """Float observations -> normalized (statistics updated first when ``update``); others unchanged.

        The on-policy collector stores the normalized observations it acted on, so an update sees exactly
        the inputs the behaviour policy saw (CleanRL normalizes inside the env for the same reason). It passes
        the env's numpy array, which on the CPU is normalized in numpy without a round trip through torch."""
        if not self.float_obs:
            return torch.as_tensor(obs)
        if isinstance(obs, np.ndarray):
            if self.obs_norm.mean.device.type == "cpu":
                flat = obs.reshape(-1, *self.obs_shape)
                return torch.from_numpy(self.obs_norm.normalize_numpy(flat, update).reshape(obs.shape))
            # Statistics on an accelerator: normalized there, handed back on the CPU like the env's arrays (the
            # collector keeps its carried observation and rollout on the CPU and moves inputs to the device).
            x = torch.as_tensor(obs)
            if update:
                self.obs_norm.update(x.reshape(-1, *self.obs_shape))
            return self.obs_norm(x).cpu()
        if update:
            self.obs_norm.update(obs.reshape(-1, *self.obs_shape))
        return self.obs_norm(obs)

    def forward(
        self,
        obs: torch.Tensor,
        first: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        state: CoreState,
        *,
        normalized: bool = False,
    ) -> AgentOutput:
        """``normalized=True``: float observations were already passed through ``normalize_obs``."""
        T, B = first.shape
        assert obs.shape[:2] == (T, B) and tuple(obs.shape[2:]) == self.obs_shape, (obs.shape, self.obs_shape)
        if self.float_obs and not normalized:
            obs = self.obs_norm(obs)
        features = self.encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
        core_out, state = self.core(features, first, prev_action, prev_reward, state)
        logits = self.policy(core_out)
        if self.value_encoder is None and self.detach_critic:
            critic_out = self.critic(core_out.detach(), features.detach())
        elif self.value_encoder is None:
            critic_out = self.critic(core_out, features)
        else:
            value_features = self.value_encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
            critic_out = self.critic(value_features, value_features)
        extras = dict(critic_out.extras)
        extras["core_out"] = core_out
        extras["features"] = features
        return AgentOutput(logits, critic_out.values, extras, state)


def select_state(state: CoreState, index: torch.Tensor | slice) -> CoreState:
    """The core state of a subset of envs (batch dimension 1)."""
    return tuple(s[:, index] for s in state)
