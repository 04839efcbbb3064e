"""Advantage and return targets as pure functions over time-major tensors with trailing head dims.

Convention (gym3's): ``dones[t]`` is True when the episode ended right after the action at step t, i.e. the
next observation is the ``first`` of a new episode. By default a time-limit truncation is treated like a
termination (no bootstrap through it), as CleanRL and openai/train-procgen do.

Time limits (issue 16): pass ``truncated`` ([T, B], a subset of ``dones``) and ``final_values`` ([T, B, *H],
the value of the *final* observation of the episode that was cut after step t, not of the reset observation
that follows it) and the targets bootstrap from ``final_values[t]`` at a truncation, as Stable-Baselines3 does
(Pardo et al. 2018, "Time Limits in Reinforcement Learning"). A termination never bootstraps. Where an episode
both terminates and reaches its limit on the same step, the termination wins (Gymnasium's convention): the
caller passes ``truncated = truncated & ~terminated``. With ``truncated=None`` every function returns
bit-for-bit what it returned before the option existed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _check_truncation(
    truncated: torch.Tensor | None,
    final_values: torch.Tensor | None,
    dones: torch.Tensor,
    target_shape: torch.Size,
) -> None:
    """Shapes and the subset rule; raises ValueError naming the argument that is wrong."""
    if truncated is None and final_values is None:
        return
    if truncated is None or final_values is None:
        raise ValueError("truncated and final_values go together: pass both (bootstrap at time limits) or neither.")
    if truncated.shape != dones.shape:
        raise ValueError(f"truncated has shape {tuple(truncated.shape)}, dones {tuple(dones.shape)}; they must match.")
    if final_values.shape != target_shape:
        raise ValueError(f"final_values has shape {tuple(final_values.shape)}; expected {tuple(target_shape)} "
                         "(one value of the final observation per step, with the head dims of values).")
    if bool((truncated.bool() & ~dones.bool()).any()):
        raise ValueError("truncated must be a subset of dones: a time-limit cut also ends the episode.")


def _truncation_bootstrap(
    truncated: torch.Tensor, final_values: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """[T, B, *H] final value where truncated, else 0. ``where`` (not a product) so that callers may leave
    anything, even NaN, in ``final_values`` at steps without a truncation."""
    mask = truncated.bool().reshape(*truncated.shape, *([1] * (like.dim() - 2)))
    return torch.where(mask, final_values.to(like.dtype), torch.zeros((), dtype=like.dtype, device=like.device))


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    truncated: torch.Tensor | None = None,
    final_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda).

    rewards, values: [T, B, *H]; dones: [T, B] (broadcast over head dims); next_value: [B, *H], the value of
    the observation after the last step. truncated: [T, B] bool, a subset of dones (the episode was cut by a
    time limit after the action at t); final_values: [T, B, *H], the value of that episode's final observation
    (read only where truncated). Returns (advantages, returns), each [T, B, *H], returns = adv + values.

    At a truncation the one-step error is delta_t = r_t + gamma * final_values[t] - V_t, and the lambda-sum
    stops there (the next step belongs to another episode); at a termination delta_t = r_t - V_t.
    """
    assert values.shape == rewards.shape, (values.shape, rewards.shape)
    assert dones.shape == rewards.shape[:2], (dones.shape, rewards.shape)
    assert next_value.shape == rewards.shape[1:], (next_value.shape, rewards.shape)
    _check_truncation(truncated, final_values, dones, rewards.shape)
    head_dims = rewards.dim() - 2
    nonterminal = (1.0 - dones.to(rewards.dtype)).reshape(*dones.shape, *([1] * head_dims))
    bootstrap = None
    if truncated is not None and final_values is not None:
        bootstrap = _truncation_bootstrap(truncated, final_values, rewards)
    advantages = torch.zeros_like(rewards)
    if _numpy_ok(rewards, values, next_value, nonterminal, bootstrap):
        # The same recursion on numpy views of the same float32 memory, with float32 scalars: the same IEEE
        # operations in the same order (bit-equal; tests/test_gae.py), at a fraction of torch's per-op cost over
        # T small steps (2,048 with one MuJoCo env).
        _gae_recursion(rewards.numpy(), values.numpy(), next_value.numpy(), nonterminal.numpy(),
                       None if bootstrap is None else bootstrap.numpy(), np.float32(gamma),
                       np.float32(gamma * gae_lambda), advantages.numpy(), np.zeros_like(next_value.numpy()))
    else:
        _gae_recursion(rewards, values, next_value, nonterminal, bootstrap, gamma, gamma * gae_lambda, advantages,
                       torch.zeros_like(next_value))
    return advantages, advantages + values


def _numpy_ok(*tensors: torch.Tensor | None) -> bool:
    return all(x is None or (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad)
               for x in tensors)


def _gae_recursion(rewards: Any, values: Any, next_value: Any, nonterminal: Any, bootstrap: Any, gamma: Any,
                   gamma_lambda: Any, advantages: Any, last: Any) -> None:
    """GAE's backward recursion into ``advantages``, for torch tensors or numpy arrays alike."""
    T = rewards.shape[0]
    for t in reversed(range(T)):
        following = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal[t] - values[t]
        if bootstrap is not None:
            delta = delta + gamma * bootstrap[t]
        last = delta + gamma_lambda * nonterminal[t] * last
        advantages[t] = last


def nstep_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    truncated: torch.Tensor | None = None,
    final_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A2C's n-step returns: the discounted rewards up to the end of the rollout, bootstrapped from
    ``next_value`` there (Mnih et al. 2016, Algorithm S3), from ``final_values`` at a truncation, and not at
    a termination. Equal to GAE with lambda = 1.

    rewards, values: [T, B, *H]; dones, truncated: [T, B]; next_value: [B, *H]; final_values: [T, B, *H].
    Returns (advantages, returns), each [T, B, *H], advantages = returns - values (the same pair as
    ``compute_gae``, so the two are interchangeable in a loop).
    """
    assert values.shape == rewards.shape, (values.shape, rewards.shape)
    assert dones.shape == rewards.shape[:2], (dones.shape, rewards.shape)
    assert next_value.shape == rewards.shape[1:], (next_value.shape, rewards.shape)
    _check_truncation(truncated, final_values, dones, rewards.shape)
    nonterminal = (1.0 - dones.to(rewards.dtype)).reshape(*dones.shape, *([1] * (rewards.dim() - 2)))
    bootstrap = None
    if truncated is not None and final_values is not None:
        bootstrap = _truncation_bootstrap(truncated, final_values, rewards)
    returns = torch.zeros_like(rewards)
    running = next_value.to(rewards.dtype)
    for t in reversed(range(rewards.shape[0])):
        following = running * nonterminal[t]
        if bootstrap is not None:
            following = following + bootstrap[t]
        running = rewards[t] + gamma * following
        returns[t] = running
    return returns - values, returns


def discounted_returns(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    truncated: torch.Tensor | None = None,
    final_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Realized discounted return-to-go inside each episode: [T, B, *H] -> [T, B, *H] (dones [T, B]).

    Without ``truncated`` nothing is bootstrapped: after the last step of the rollout and at every episode end
    the tail is 0. With ``truncated`` and ``final_values`` ([T, B, *H]) a time-limit cut adds
    gamma * final_values[t], the value of the cut episode's final observation: the target a value-error
    analysis compares with when the episode did not really end there (issue 16).
    """
    assert dones.shape == rewards.shape[:2], (dones.shape, rewards.shape)
    _check_truncation(truncated, final_values, dones, rewards.shape)
    nonterminal = (1.0 - dones.to(rewards.dtype)).reshape(*dones.shape, *([1] * (rewards.dim() - 2)))
    bootstrap = None
    if truncated is not None and final_values is not None:
        bootstrap = _truncation_bootstrap(truncated, final_values, rewards)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * nonterminal[t]
        if bootstrap is not None:
            running = running + gamma * bootstrap[t]
        out[t] = running
    return out
