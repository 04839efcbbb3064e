"""Generalized Advantage Estimation as a pure function over time-major tensors with trailing head dims.

Convention (gym3's): ``dones[t]`` is True when the episode ended right after the action at step t, i.e. the
next observation is the ``first`` of a new episode. Time-limit truncation is treated like termination (no
bootstrap through it), as CleanRL and openai/train-procgen do.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda).

    rewards, values: [T, B, *H]; dones: [T, B] (broadcast over head dims); next_value: [B, *H], the value of
    the observation after the last step. Returns (advantages, returns), each [T, B, *H], returns = adv + values.
    """
    T = rewards.shape[0]
    assert values.shape == rewards.shape, (values.shape, rewards.shape)
    assert dones.shape == rewards.shape[:2], (dones.shape, rewards.shape)
    assert next_value.shape == rewards.shape[1:], (next_value.shape, rewards.shape)
    head_dims = rewards.dim() - 2
    nonterminal = (1.0 - dones.to(rewards.dtype)).reshape(*dones.shape, *([1] * head_dims))
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        following = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal[t] - values[t]
        last = delta + gamma * gae_lambda * nonterminal[t] * last
        advantages[t] = last
    return advantages, advantages + values


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Realized discounted return-to-go inside each episode (no bootstrap): [T, B] -> [T, B]."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (1.0 - dones[t].to(rewards.dtype))
        out[t] = running
    return out
