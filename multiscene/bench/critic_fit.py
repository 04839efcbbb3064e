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

import functools
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
from multiscene.critics.dve import (
    attention_grad_norms,
    attention_param_groups,
    cc_grad_cap,
    cluster_spread,
    confusion,
)
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
    """The agent's value [T, E] (and DVE's alpha and cluster_values [T, E, N_b]) on every step of ``data``."""
    with torch.no_grad():
        obs, first, prev_action, prev_reward = _agent_inputs(data, device)
        out = agent(obs, first, prev_action, prev_reward, agent.initial_state(data.num_episodes, device))
    result = {"value": out.values[..., 0].float().cpu().numpy()}
    if "alpha" in out.extras:
        result["alpha"] = out.extras["alpha"].float().cpu().numpy()
        result["cluster_values"] = out.extras["cluster_values"].float().cpu().numpy()
    return result


@dataclass
class FitResult:
    """What ``fit_critic`` measured; errors are mean |V - G| over valid steps of the evaluation episodes."""

    critic: str
    curve: list[dict[str, float]] = field(default_factory=list)
    """One entry per evaluation: ``step``, ``error`` (all steps), ``error_t0``, ``error_after`` (t > 0),
    ``loss`` (of the last training step), and for DVE critics ``confusion``, ``cluster_spread`` and
    ``argmax_share/i`` (share of valid steps whose largest weight is cluster i)."""
    gradients: list[dict[str, float]] = field(default_factory=list)
    """DVE critics, every ``grad_every`` fit steps (issue 14, lead 1): ``step``; the gradient norms on the
    attention layer of the value loss (``grad_norm_value``, vf_coef * MSE) and of each L_CC term at its full
    configured weight (``grad_norm_cc_confusion`` = k1 * term, ``grad_norm_cc_contribution`` = k2 * term),
    whether or not the schedule has switched L_CC on; ``cc_factor`` (the fraction of L_CC in force: schedule
    times the --dve.cc-grad-ratio cap); ``cluster_spread`` and ``confusion`` of the training minibatch."""
    cc_fired_step: int | None = None
    """post-boost-auto / spread schedules: the fit step at which L_CC switched on (None: never)."""
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
    grad_every: int | None = None,
    on_eval: Callable[[list[dict[str, float]]], None] | None = None,
) -> FitResult:
    """Train the critic of ``cfg`` (with ``cfg``'s encoder and core) on ``train``; evaluate on ``evaluate``.

    Adam at ``cfg.learning_rate``, gradient norm clipped at ``cfg.max_grad_norm``, ``batch_episodes`` episodes
    per step drawn by a generator seeded with ``seed`` (the same draws for every critic). The loss is
    ``cfg.vf_coef`` * masked MSE(V, G) plus, for Sparse DVE, the L_CC terms scaled by the schedule of
    ``cfg.dve``. The schedule's clock is the fit step, so set ``cfg.total_timesteps = steps`` for a pre-boost
    ramp over ``preboost_fraction`` of the fit (``post-boost-auto`` never fires here: there is no episode
    length to watch; ``spread`` fires on the training minibatch's ``cluster_spread``). Evaluations run at step 0,
    every ``eval_every`` steps and after the last step; DVE gradient norms are recorded every ``grad_every``
    steps (default ``eval_every``). ``cfg.dve.attention_lr_scale`` gives the attention layer its own learning
    rate and ``cfg.dve.cc_grad_ratio`` caps L_CC's gradient on it relative to the value loss's (issue 14).
    ``on_eval(curve)`` is called after each evaluation with the curve so far (a sweep reports it to its
    scheduler).
    """
    device = torch.device(device)
    if steps < 1 or batch_episodes < 1 or eval_every < 1:
        raise ValueError(f"steps, batch_episodes and eval_every must be >= 1, got {steps}, {batch_episodes}, {eval_every}")
    if batch_episodes > train.num_episodes:
        raise ValueError(f"batch_episodes ({batch_episodes}) exceeds the {train.num_episodes} training episodes")
    grad_every = eval_every if grad_every is None else grad_every
    if grad_every < 1:
        raise ValueError(f"grad_every must be >= 1, got {grad_every}")
    torch.manual_seed(seed)
    agent = Agent(tuple(train.obs.shape[2:]), train.num_actions, cfg).to(device)
    groups = attention_param_groups(agent, agent.critic, cfg.learning_rate, cfg.dve.attention_lr_scale)
    optimizer = torch.optim.Adam(groups, lr=cfg.learning_rate, eps=1e-5)
    attention = getattr(agent.critic, "attention", None)
    is_dve = attention is not None
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
            entry["cluster_spread"] = float(cluster_spread(torch.from_numpy(pred["cluster_values"]),
                                                           torch.from_numpy(evaluate.valid)))
            winner = alpha.argmax(axis=-1)[evaluate.valid]
            for i in range(alpha.shape[-1]):
                entry[f"argmax_share/{i}"] = float((winner == i).mean())
        result.curve.append(entry)
        if on_eval is not None:
            on_eval(result.curve)

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
        value_loss = cfg.vf_coef * mse
        loss = value_loss
        scales = schedule.scales(step)
        log_gradients = is_dve and step % grad_every == 0
        if scales:
            critic_out = CriticOutput(values=out.values, extras=out.extras)
            terms = agent.critic.aux_losses(critic_out, valid, first=first)  # one episode per column
            weights = {"cc_confusion": cfg.dve.k1, "cc_contribution": cfg.dve.k2}
            factor = schedule.factor(step)
            norms: dict[str, float] = {}
            if log_gradients or (cfg.dve.cc_grad_ratio > 0 and factor > 0):
                assert attention is not None
                norms = attention_grad_norms(attention, {
                    "value": value_loss,
                    **{name: weights[name] * term for name, term in terms.items()},
                })
            if cfg.dve.cc_grad_ratio > 0 and factor > 0:
                # Cap ||grad L_CC|| on the attention layer at cc_grad_ratio * ||grad value loss|| there: with Adam,
                # only the ratio of the two gradients decides how far L_CC moves alpha (issue 14, lead 1). The
                # norm of the sum bounds the norm of L_CC's gradient by the triangle inequality.
                cc_norm = factor * (norms["cc_confusion"] + norms["cc_contribution"])
                factor *= cc_grad_cap(norms["value"], cc_norm, cfg.dve.cc_grad_ratio)
            for name, term in terms.items():
                loss = loss + factor * weights[name] * term
            if log_gradients:
                result.gradients.append({
                    "step": float(step),
                    "grad_norm_value": norms["value"],
                    "grad_norm_cc_confusion": norms["cc_confusion"],
                    "grad_norm_cc_contribution": norms["cc_contribution"],
                    "cc_factor": factor,
                    "cluster_spread": float(cluster_spread(out.extras["cluster_values"].detach(), valid)),
                    "confusion": float((confusion(out.extras["alpha"].detach())[valid]).mean()),
                })
        elif log_gradients:
            assert attention is not None
            norms = attention_grad_norms(attention, {"value": value_loss})
            result.gradients.append({
                "step": float(step), "grad_norm_value": norms["value"], "cc_factor": 0.0,
                "cluster_spread": float(cluster_spread(out.extras["cluster_values"].detach(), valid)),
                "confusion": float((confusion(out.extras["alpha"].detach())[valid]).mean()),
            })
        if is_dve and schedule.kind == "spread":
            schedule.observe_spread(step, float(cluster_spread(out.extras["cluster_values"].detach(), valid)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
        optimizer.step()
        loss_value = float(loss.detach())
    record(steps, loss_value)
    final = predict(agent, evaluate, device)
    result.value = final["value"]
    result.alpha = final.get("alpha")
    result.cc_fired_step = schedule.fired_step
    result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class FitSettings:
    """Data and fit settings of one critic-fit trial (``benchmarks/dve_critic_fit.py``, ``multiscene sweep
    --task critic-fit``): everything but the critic's config and the seed."""

    epsilon: float = 0.3
    """Share of random actions of the behaviour policy."""
    train_levels: int = 200
    """Training level seeds 0 .. train_levels - 1."""
    episodes_per_level: int = 10
    """Training episodes recorded on each training level."""
    test_levels: int = 400
    """Held-out levels, one episode each."""
    test_level_start: int = 10_000
    """First held-out level seed (tuning uses another range than the reported comparison)."""
    gamma: float = 0.99
    """Discount of the return-to-go G_t."""
    steps: int = 3000
    """Fit steps (minibatches)."""
    batch_episodes: int = 32
    """Episodes per minibatch."""
    eval_every: int = 250
    """Evaluate on the held-out episodes every this many fit steps."""
    grad_every: int = 50
    """Record the attention layer's gradient norms every this many fit steps (DVE critics)."""


@functools.lru_cache(maxsize=2)
def fit_data(settings: FitSettings) -> tuple[Episodes, Episodes]:
    """Training and held-out episodes of ``hidden_payoff_policy`` (recorded once per process and settings)."""
    from multiscene.envs.scenes import HIDDEN_PAYOFF_ID

    policy = hidden_payoff_policy(settings.epsilon)
    train_seeds = np.repeat(np.arange(settings.train_levels), settings.episodes_per_level)
    test_seeds = np.arange(settings.test_level_start, settings.test_level_start + settings.test_levels)
    train = collect_episodes(HIDDEN_PAYOFF_ID, train_seeds, policy, settings.gamma, seed=0)
    test = collect_episodes(HIDDEN_PAYOFF_ID, test_seeds, policy, settings.gamma, seed=1)
    return train, test


def scene_of_steps(data: Episodes) -> tuple[np.ndarray, np.ndarray]:
    """(mask [T, E] of the valid steps t > 0, scene id [T, E] of each step's level)."""
    from multiscene.envs.scenes import level_scene

    after = data.valid.copy()
    after[0] = False
    scene = np.broadcast_to(np.array([level_scene(int(s)) for s in data.level_seed]), after.shape)
    return after, scene


def fit_record(
    cfg: TrainConfig,
    settings: FitSettings,
    seed: int,
    on_eval: Callable[[list[dict[str, float]]], None] | None = None,
) -> dict[str, Any]:
    """Fit ``cfg``'s critic for one seed and summarize it (JSON-safe), on held-out steps t > 0.

    Keys: ``auc_error_after`` (mean of the held-out error over the evaluations: area under the error curve),
    ``final_error_after``, ``final_confusion``, ``cluster_spread``, ``argmax_shares`` (share of held-out steps
    t > 0 each cluster wins), ``clusters_in_use`` (clusters winning >= 10% of them; issue 14's criterion),
    ``scene_nmi``, ``cc_fired_step``, ``curve``, ``gradients``, ``seconds``. DVE-only keys are None for scalar.
    ``on_eval`` as in ``fit_critic``.
    """
    from multiscene.analysis.stats import cluster_level_purity

    train, test = fit_data(settings)
    result = fit_critic(cfg, train, test, settings.steps, settings.batch_episodes, settings.eval_every, seed,
                        grad_every=settings.grad_every, on_eval=on_eval)
    after_errors = np.array([entry["error_after"] for entry in result.curve])
    record: dict[str, Any] = {
        "critic": cfg.critic,
        "seed": seed,
        "auc_error_after": float(after_errors.mean()),
        "final_error_after": float(after_errors[-1]),
        "final_confusion": result.curve[-1].get("confusion"),
        "cluster_spread": result.curve[-1].get("cluster_spread"),
        "argmax_shares": None,
        "clusters_in_use": None,
        "scene_nmi": None,
        "cc_fired_step": result.cc_fired_step,
        "curve": result.curve,
        "gradients": result.gradients,
        "seconds": result.seconds,
    }
    if result.alpha is not None:
        after, scene = scene_of_steps(test)
        winner = result.alpha.argmax(axis=-1)[after]
        shares = np.bincount(winner, minlength=result.alpha.shape[-1]) / max(len(winner), 1)
        record["argmax_shares"] = [float(x) for x in shares]
        record["clusters_in_use"] = int((shares >= 0.1).sum())
        record["scene_nmi"] = cluster_level_purity(winner, scene[after])["nmi"]
    return record
