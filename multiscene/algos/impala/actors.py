"""IMPALA actors: each steps its own vectorized envs with a copy of the policy and returns unrolls (SPEC §5).

``ImpalaActor`` is a plain class (tests drive it directly); ``remote_actor_class`` wraps it as a Ray actor
with declared CPU/GPU resources and Ray's automatic restarts. The weights travel through Ray's object store:
the learner ``ray.put``s them once per update and passes the reference, wrapped in a list so that Ray does not
resolve it on every call; the actor fetches it only when the version changed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from torch.distributions import Categorical

from multiscene.algos.impala import ImpalaConfig
from multiscene.algos.impala.learner import Unroll
from multiscene.config import TrainConfig
from multiscene.envs import make_env
from multiscene.models.agent import Agent

__all__ = ["ImpalaActor", "actor_seed_offset", "remote_actor_class"]


def actor_seed_offset(actor_index: int, incarnation: int) -> int:
    """Env seed offset of one actor: distinct per actor and per incarnation (a resumed run, ours), so that
    actors and resumed runs do not replay the same level draws. Eval splits use offsets 101 and 102."""
    return 1000 + 100_003 * incarnation + 1009 * actor_index


class ImpalaActor:
    """Acts in ``impala.envs_per_actor`` envs with the latest weights it was given; one unroll per call."""

    def __init__(self, cfg: TrainConfig, impala: ImpalaConfig, actor_index: int, incarnation: int = 0) -> None:
        from multiscene.trainer import env_spec

        # One thread per actor: actors are many small processes sharing the machine's cores.
        torch.set_num_threads(1)
        self.cfg, self.impala, self.actor_index = cfg, impala, actor_index
        offset = actor_seed_offset(actor_index, incarnation)
        torch.manual_seed(cfg.seed * 1_000_003 + offset)
        self.envs = make_env(env_spec(cfg, "train", impala.envs_per_actor, seed_offset=offset))
        self.agent = Agent(self.envs.obs_shape, self.envs.num_actions, cfg)
        self.agent.eval()
        self.version = -2  # no weights loaded yet (-1 is the learner's initial version)
        start = self.envs.reset()
        B = self.envs.num_envs
        self.obs = torch.as_tensor(start.obs)
        self.first = torch.ones(B, dtype=torch.bool)
        self.prev_action = torch.zeros(B, dtype=torch.long)
        self.prev_reward = torch.zeros(B)
        self.level_seed = torch.as_tensor(start.level_seed, dtype=torch.int64)
        self.core_state = self.agent.initial_state(B, "cpu")
        # The critic's per-env reward transform (--critic multi: A2MC's RunningVWR), None for the others. Like
        # the LSTM state it runs on across unroll boundaries; a restarted actor starts a fresh one.
        self.reward_transform = self.agent.critic.make_reward_transform(B, cfg)

    def ping(self) -> int:
        """The actor's process id, once its envs are built (a restarted actor answers with a new one)."""
        return os.getpid()

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.agent.load_state_dict(state)
        self.version = version

    def unroll(self, weights: list[Any], version: int) -> Unroll:
        """Act for ``unroll_length`` steps. ``weights``: ``[ObjectRef]`` of the learner's state dict (or
        ``[state_dict]`` without Ray); fetched only when ``version`` differs from the one loaded."""
        if version != self.version:
            state = weights[0]
            if not isinstance(state, dict):
                import ray

                state = ray.get(state)
            self.set_weights(state, version)
        return self._collect()

    @torch.no_grad()
    def _collect(self) -> Unroll:
        start_time = time.perf_counter()
        T, B = self.impala.unroll_length, self.envs.num_envs
        obs = torch.empty((T + 1, B, *self.envs.obs_shape), dtype=torch.uint8)
        first = torch.empty((T + 1, B), dtype=torch.bool)
        prev_action = torch.empty((T + 1, B), dtype=torch.long)
        prev_reward = torch.empty((T + 1, B))
        level_seeds = torch.empty((T + 1, B), dtype=torch.int64)
        actions = torch.empty((T, B), dtype=torch.long)
        logps = torch.empty((T, B))
        rewards = torch.empty((T, B))
        dones = torch.empty((T, B), dtype=torch.bool)
        bootstrap = self.cfg.bootstrap_truncation
        truncated = torch.zeros((T, B), dtype=torch.bool) if bootstrap else None
        final_obs: list[list[torch.Tensor]] = [[] for _ in range(B)]  # per column, in time order
        extra = torch.empty((T, B)) if self.reward_transform is not None else None
        episodes = []
        initial_state = tuple(s.clone() for s in self.core_state)
        for t in range(T):
            obs[t], first[t], prev_action[t], prev_reward[t] = self.obs, self.first, self.prev_action, self.prev_reward
            level_seeds[t] = self.level_seed
            out = self.agent(self.obs[None], self.first[None], self.prev_action[None], self.prev_reward[None],
                             self.core_state)
            dist = Categorical(logits=out.logits[0].float())
            action = dist.sample()
            actions[t], logps[t] = action, dist.log_prob(action)
            self.core_state = out.state
            step = self.envs.step(action.numpy().astype(np.int64))
            rewards[t] = torch.as_tensor(step.reward)
            dones[t] = torch.as_tensor(step.first)
            if extra is not None:
                # As the on-policy collector: the raw reward, and the ``first`` of the observation acted on.
                extra[t] = self.reward_transform.step(rewards[t], self.first)
            episodes.extend(step.episodes)
            if truncated is not None and step.final_obs is not None:
                # A time-limit cut (a termination on the same step wins): keep the episode's last observation,
                # whose value the learner bootstraps from with its own weights (issue 16).
                cut = np.flatnonzero(step.truncated & ~step.terminated).tolist()
                for b in cut:
                    truncated[t, b] = True
                    final_obs[b].append(torch.as_tensor(step.final_obs[b]))
            self.obs = torch.as_tensor(step.obs)
            self.first = torch.as_tensor(step.first)
            self.prev_action = torch.where(self.first, 0, action)
            self.prev_reward = torch.where(self.first, 0.0, rewards[t])
            self.level_seed = torch.as_tensor(step.level_seed, dtype=torch.int64)
        # The bootstrap observation (index T); the learner computes its value with its own weights.
        obs[T], first[T], prev_action[T], prev_reward[T] = self.obs, self.first, self.prev_action, self.prev_reward
        level_seeds[T] = self.level_seed
        cut_obs = None
        if truncated is not None:
            # Column by column, in time order within a column: the order of ``Unroll.final_obs``.
            rows = [o for column in final_obs for o in column]
            cut_obs = (torch.stack(rows).to(torch.uint8) if rows
                       else torch.empty((0, *self.envs.obs_shape), dtype=torch.uint8))
        return Unroll(
            obs=obs, first=first, prev_action=prev_action, prev_reward=prev_reward, actions=actions,
            behaviour_logp=logps, rewards=rewards, dones=dones, level_seeds=level_seeds,
            initial_state=initial_state, episodes=tuple(episodes), policy_version=self.version,
            actor_index=self.actor_index, actor_pid=os.getpid(), actor_seconds=time.perf_counter() - start_time,
            truncated=truncated, final_obs=cut_obs, extra_rewards=None if extra is None else extra[..., None],
        )

    def close(self) -> None:
        self.envs.close()


def remote_actor_class(impala: ImpalaConfig) -> Any:
    """``ImpalaActor`` as a Ray actor class with the configured resources; Ray restarts a dead actor (its
    ``__init__`` runs again: fresh envs, zero LSTM state, a fresh reward transform) up to ``max_actor_restarts``
    times."""
    import ray

    return ray.remote(
        num_cpus=impala.actor_num_cpus, num_gpus=impala.actor_num_gpus, max_restarts=impala.max_actor_restarts,
    )(ImpalaActor)
