"""Critic isolation: fit critics to the returns of a frozen behaviour policy (issue 3).

In a PPO run the critic's error depends on how long the policy left it to learn and on what the policy gradient
made the shared trunk represent. This module takes both out of the comparison: it records episodes of one fixed
behaviour policy once, then trains each critic (with the library's own encoder, LSTM core and critic modules,
built by ``multiscene.models.Agent`` from a ``TrainConfig``) to predict the realized discounted return-to-go

    G_t = sum_{k >= t} gamma^(k - t) r_k        (within the episode)

by masked mean squared error, plus L_CC for Sparse DVE under its schedule. Every critic sees the same episodes
in the same order, so the only difference between runs of one seed is the critic. The value error on
held-out levels is then a property of the critic, not of the policy's learning progress.

The behaviour policy of ``MiniGrid-HiddenPayoff-v0`` is ``hidden_payoff_policy``: the shortest way to the goal,
with a uniformly random action (left, right, forward) in a share ``epsilon`` of the steps, so that episodes
differ in length and the value of a state depends on both the scene and the distance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
import torch

from multiscene.config import TrainConfig
from multiscene.critics.base import CriticOutput
from multiscene.critics.dve import confusion
from multiscene.critics.schedule import make_cc_schedule
from multiscene.models.agent import Agent

Policy = Callable[[Any, np.random.Generator], int]
"""(unwrapped MiniGrid env, rng) -> action."""

# MiniGrid: actions 0 = turn left, 1 = turn right, 2 = forward; directions 0 = east, 1 = south, 2 = west, 3 = north.
_LEFT, _RIGHT, _FORWARD = 0, 1, 2
_MOVES = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}


def shortest_path_action(env: Any, goal: tuple[int, int]) -> int:
    """The action that brings a MiniGrid agent in an open room closest to ``goal``: face a direction that
    reduces the distance, then move forward (rows first, then columns)."""
    x, y = (int(v) for v in env.agent_pos)
    gx, gy = goal
    if y != gy:
        wanted = 1 if gy > y else 3
    elif x != gx:
        wanted = 0 if gx > x else 2
    else:
        return _FORWARD
    heading = int(env.agent_dir)
    if heading == wanted:
        return _FORWARD
    return _RIGHT if (heading + 1) % 4 == wanted else _LEFT


def hidden_payoff_policy(epsilon: float) -> Policy:
    """The behaviour policy for ``MiniGrid-HiddenPayoff-v0``: shortest path to the goal, a random action
    (left, right or forward) with probability ``epsilon``."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")

    def act(env: Any, rng: np.random.Generator) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(3))
        return shortest_path_action(env, tuple(env.GOAL))

    return act


@dataclass(frozen=True)
class Episodes:
    """Padded, time-major episodes of one policy: [T, E, ...] with T the longest episode."""

    obs: np.ndarray
    """[T, E, *obs_shape] uint8 (zeros after an episode's end)."""
    action: np.ndarray
    """[T, E] int64, the action taken at step t."""
    reward: np.ndarray
    """[T, E] float32, the reward of that action."""
    valid: np.ndarray
    """[T, E] bool, step t belongs to episode e."""
    returns: np.ndarray
    """[T, E] float32, realized discounted return-to-go G_t (0 on padding)."""
    level_seed: np.ndarray
    """[E] int64."""
    num_actions: int
    """Size of the env's discrete action space (the agent's one-hot previous action)."""

    @property
    def num_episodes(self) -> int:
        return int(self.valid.shape[1])

    def columns(self, index: np.ndarray) -> Episodes:
        """The episodes ``index`` (trimmed to their longest)."""
        valid = self.valid[:, index]
        length = int(valid.sum(axis=0).max())
        return Episodes(
            obs=self.obs[:length, index],
            action=self.action[:length, index],
            reward=self.reward[:length, index],
            valid=valid[:length],
            returns=self.returns[:length, index],
            level_seed=self.level_seed[index],
            num_actions=self.num_actions,
        )


def discounted_returns(reward: np.ndarray, valid: np.ndarray, gamma: float) -> np.ndarray:
    """[T, E] rewards and validity -> [T, E] in-episode discounted return-to-go (0 where not valid)."""
    out = np.zeros_like(reward, dtype=np.float64)
    running = np.zeros(reward.shape[1], dtype=np.float64)
    for t in range(reward.shape[0] - 1, -1, -1):
        running = np.where(valid[t], reward[t] + gamma * running, 0.0)
        out[t] = running
    return out.astype(np.float32)


def collect_episodes(
    env_id: str,
    level_seeds: np.ndarray,
    policy: Policy,
    gamma: float,
    seed: int,
    max_steps: int | None = None,
) -> Episodes:
    """One episode of ``policy`` per entry of ``level_seeds`` (repeat a seed for several episodes on a level)."""
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    env = gymnasium.make(env_id, disable_env_checker=True)
    unwrapped: Any = env.unwrapped
    if max_steps is not None:
        unwrapped.max_steps = max_steps
    num_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    episodes: list[tuple[np.ndarray, list[int], list[float]]] = []
    for level_seed in level_seeds.tolist():
        obs, _ = env.reset(seed=int(level_seed))
        frames, actions, rewards = [obs["image"]], [], []
        while True:
            action = policy(unwrapped, rng)
            obs, reward, terminated, truncated, _ = env.step(action)
            actions.append(action)
            rewards.append(float(reward))
            if terminated or truncated:
                break
            frames.append(obs["image"])
        episodes.append((np.stack(frames), actions, rewards))
    env.close()

    length = max(len(actions) for _, actions, _ in episodes)
    n = len(episodes)
    obs_shape = episodes[0][0].shape[1:]
    obs_out = np.zeros((length, n, *obs_shape), dtype=np.uint8)
    action_out = np.zeros((length, n), dtype=np.int64)
    reward_out = np.zeros((length, n), dtype=np.float32)
    valid = np.zeros((length, n), dtype=bool)
    for e, (frames, actions, rewards) in enumerate(episodes):
        steps = len(actions)
        obs_out[:steps, e] = frames
        action_out[:steps, e] = actions
        reward_out[:steps, e] = rewards
        valid[:steps, e] = True
    return Episodes(
        obs=obs_out,
        action=action_out,
        reward=reward_out,
        valid=valid,
        returns=discounted_returns(reward_out, valid, gamma),
        level_seed=np.asarray(level_seeds, dtype=np.int64),
        num_actions=num_actions,
    )


def _agent_inputs(data: Episodes, device: torch.device) -> tuple[torch.Tensor, ...]:
    obs = torch.from_numpy(data.obs).to(device)
    first = torch.zeros(data.valid.shape, dtype=torch.bool, device=device)
    first[0] = True
    action = torch.from_numpy(data.action).to(device)
    prev_action = torch.zeros_like(action)
    prev_action[1:] = action[:-1]
    reward = torch.from_numpy(data.reward).to(device)
    prev_reward = torch.zeros_like(reward)
    prev_reward[1:] = reward[:-1]
    return obs, first, prev_action, prev_reward


def predict(agent: Agent, data: Episodes, device: torch.device) -> dict[str, np.ndarray]:
    """The agent's value [T, E] (and DVE's alpha [T, E, N_b]) on every step of ``data``."""
    with torch.no_grad():
        obs, first, prev_action, prev_reward = _agent_inputs(data, device)
        out = agent(obs, first, prev_action, prev_reward, agent.initial_state(data.num_episodes, device))
    result = {"value": out.values[..., 0].float().cpu().numpy()}
    if "alpha" in out.extras:
        result["alpha"] = out.extras["alpha"].float().cpu().numpy()
    return result


@dataclass
class FitResult:
    """What ``fit_critic`` measured; errors are mean |V - G| over valid steps of the evaluation episodes."""

    critic: str
    curve: list[dict[str, float]] = field(default_factory=list)
    """One entry per evaluation: ``step``, ``error`` (all steps), ``error_t0``, ``error_after`` (t > 0),
    ``loss`` (of the last training step), and for DVE critics ``confusion`` and ``argmax_share/i`` (share of
    valid steps whose largest weight is cluster i)."""
    value: np.ndarray | None = None
    """[T, E] final predictions on the evaluation episodes."""
    alpha: np.ndarray | None = None
    """[T, E, N_b] final DVE weights on the evaluation episodes (DVE critics)."""
    seconds: float = 0.0


def value_errors(value: np.ndarray, data: Episodes) -> dict[str, float]:
    """Mean |V - G| over all valid steps, over t = 0 and over t > 0."""
    error = np.abs(value - data.returns)
    valid = data.valid
    after = valid.copy()
    after[0] = False
    return {
        "error": float(error[valid].mean()),
        "error_t0": float(error[0][valid[0]].mean()),
        "error_after": float(error[after].mean()) if after.any() else math.nan,
    }


def fit_critic(
    cfg: TrainConfig,
    train: Episodes,
    evaluate: Episodes,
    steps: int,
    batch_episodes: int,
    eval_every: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Train the critic of ``cfg`` (with ``cfg``'s encoder and core) on ``train``; evaluate on ``evaluate``.

    Adam at ``cfg.learning_rate``, gradient norm clipped at ``cfg.max_grad_norm``, ``batch_episodes`` episodes
    per step drawn by a generator seeded with ``seed`` (the same draws for every critic). The loss is
    ``cfg.vf_coef`` * masked MSE(V, G) plus, for Sparse DVE, the L_CC terms scaled by the schedule of
    ``cfg.dve``. The schedule's clock is the fit step, so set ``cfg.total_timesteps = steps`` for a pre-boost
    ramp over ``preboost_fraction`` of the fit (``post-boost-auto`` never fires here: there is no episode
    length to watch). Evaluations run at step 0, every ``eval_every`` steps and after the last step.
    """
    device = torch.device(device)
    if steps < 1 or batch_episodes < 1 or eval_every < 1:
        raise ValueError(f"steps, batch_episodes and eval_every must be >= 1, got {steps}, {batch_episodes}, {eval_every}")
    if batch_episodes > train.num_episodes:
        raise ValueError(f"batch_episodes ({batch_episodes}) exceeds the {train.num_episodes} training episodes")
    torch.manual_seed(seed)
    agent = Agent(tuple(train.obs.shape[2:]), train.num_actions, cfg).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    schedule = make_cc_schedule(cfg)
    rng = np.random.default_rng(seed)
    result = FitResult(critic=cfg.critic)
    start = time.perf_counter()

    def record(step: int, loss: float) -> None:
        pred = predict(agent, evaluate, device)
        entry: dict[str, float] = {"step": float(step), "loss": loss, **value_errors(pred["value"], evaluate)}
        if "alpha" in pred:
            alpha = pred["alpha"]
            delta = confusion(torch.from_numpy(alpha)).numpy()
            entry["confusion"] = float(delta[evaluate.valid].mean())
            winner = alpha.argmax(axis=-1)[evaluate.valid]
            for i in range(alpha.shape[-1]):
                entry[f"argmax_share/{i}"] = float((winner == i).mean())
        result.curve.append(entry)

    loss_value = math.nan
    for step in range(steps):
        if step % eval_every == 0:
            record(step, loss_value)
        batch = train.columns(rng.choice(train.num_episodes, size=batch_episodes, replace=False))
        obs, first, prev_action, prev_reward = _agent_inputs(batch, device)
        out = agent(obs, first, prev_action, prev_reward, agent.initial_state(batch.num_episodes, device))
        valid = torch.from_numpy(batch.valid).to(device)
        target = torch.from_numpy(batch.returns).to(device)
        weight = valid.float()
        mse = (((out.values[..., 0] - target) ** 2) * weight).sum() / weight.sum()
        loss = cfg.vf_coef * mse
        scales = schedule.scales(step)
        if scales:
            critic_out = CriticOutput(values=out.values, extras=out.extras)
            terms = agent.critic.aux_losses(critic_out, valid, first=first)  # one episode per column
            for name, term in terms.items():
                loss = loss + scales[name] * term
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
        optimizer.step()
        loss_value = float(loss.detach())
    record(steps, loss_value)
    final = predict(agent, evaluate, device)
    result.value = final["value"]
    result.alpha = final.get("alpha")
    result.seconds = time.perf_counter() - start
    return result
