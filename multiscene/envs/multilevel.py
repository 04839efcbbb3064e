"""A multi-level env for any env family (seed 003 §4.1; SPEC §6; issue 13 item 3).

``MultiLevelVecEnv(sub_env_ids, spec)``: each of the ``spec.num_envs`` slots picks one sub-environment uniformly
at random at the start of every episode. The index of the picked sub-env is the episode's level id
(``EnvStep.level_seed`` and ``EpisodeStats.level_seed``; ``level_names[i]`` is its id). It is logged and
never given to the agent: observations carry no trace of it beyond what the frames show.

Each slot builds its instance of a sub-env when it first picks it (a one-env ``VecEnv`` from the family's
own class), so every slot can hold one instance per sub-env: memory grows as slots x sub-envs (for Mario about
40 MB per emulator). All sub-envs must share observation shape and action count (else ConfigError); slot 0
builds every sub-env up front to check that.

Seeding: the level picks come from ``numpy.random.default_rng(spec.seed)``; the sub-env of slot s and level j
gets ``spec.seed * 1000 + s * len(sub_env_ids) + j`` as its own seed.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from multiscene.config import ConfigError
from multiscene.envs.base import EnvSpec, EnvStep, EpisodeStats, VecEnv, check_actions, check_state_matches
from multiscene.envs.mario import MARIO_PREFIX, is_mario, parse_mario_levels


def split_env_ids(env_id: str) -> list[str]:
    """The sub-env ids of a multi-level ``--env``: ``mario:3-1,3-2`` -> ``["mario:3-1", "mario:3-2"]``,
    ``mario:E4`` -> its four levels, ``a,b`` -> ``["a", "b"]``; ConfigError for a repeated id."""
    if is_mario(env_id):
        return [f"{MARIO_PREFIX}{level}" for level in parse_mario_levels(env_id)]
    parts = [p.strip() for p in env_id.split(",")]
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ConfigError(f"--env {env_id!r} lists {', '.join(repeated)} more than once; list each env once.")
    if any(not p for p in parts):
        raise ConfigError(f"--env {env_id!r} has an empty entry between commas.")
    return parts


def is_multilevel(env_id: str) -> bool:
    """True for a list of several envs that ``multiscene.envs.make_env`` does not already handle as one set
    (it runs all-Procgen lists with a fixed share of slots per game, not a pick per episode)."""
    from multiscene.envs import is_procgen

    if is_mario(env_id):
        return len(split_env_ids(env_id)) > 1
    return "," in env_id and not is_procgen(env_id)


def make_single_env(spec: EnvSpec) -> VecEnv:
    """One family's VecEnv: Mario here, everything else through ``multiscene.envs.make_env``."""
    if is_mario(spec.env_id):
        from multiscene.envs.mario import MarioVecEnv

        return MarioVecEnv(spec)
    from multiscene.envs import make_env

    return make_env(spec)


class MultiLevelVecEnv:
    """``spec.num_envs`` slots, each running episodes of a sub-env picked uniformly per episode."""

    def __init__(self, sub_env_ids: list[str], spec: EnvSpec) -> None:
        if len(sub_env_ids) < 2:
            raise ConfigError(f"a multi-level --env needs at least two envs, got {sub_env_ids}.")
        repeated = sorted({s for s in sub_env_ids if sub_env_ids.count(s) > 1})
        if repeated:
            raise ConfigError(f"--env lists {', '.join(repeated)} more than once; list each env once.")
        self.spec = spec
        self.level_names = list(sub_env_ids)
        self.env_id = ",".join(sub_env_ids)
        self.num_envs = spec.num_envs
        self._rng = np.random.default_rng(spec.seed)
        self._instances: list[dict[int, VecEnv]] = [{} for _ in range(self.num_envs)]
        for j in range(len(sub_env_ids)):
            self._instance(0, j)
        first = self._instances[0][0]
        self.obs_shape: tuple[int, ...] = tuple(first.obs_shape)
        self.num_actions = int(first.num_actions)
        for j, env in self._instances[0].items():
            if tuple(env.obs_shape) != self.obs_shape or int(env.num_actions) != self.num_actions:
                raise ConfigError(
                    f"--env {self.env_id!r}: every env of a multi-level set must share observation and action "
                    f"spaces; {sub_env_ids[0]} has obs {self.obs_shape} and {self.num_actions} actions, "
                    f"{sub_env_ids[j]} has obs {tuple(env.obs_shape)} and {env.num_actions} actions."
                )
        # A time limit is known where every sub-env tells it apart; the cut episode's last observation is passed on
        # in EnvStep.final_obs (--bootstrap-truncation, issue 16).
        self.truncation_known = all(getattr(env, "truncation_known", True) for env in self._instances[0].values())
        self._current = np.zeros(self.num_envs, dtype=np.int64)
        self._started = False
        self._extras: list[dict[str, Any]] = []

    def _instance(self, slot: int, level: int) -> VecEnv:
        envs = self._instances[slot]
        if level not in envs:
            sub_spec = EnvSpec(
                env_id=self.level_names[level], num_envs=1,
                seed=self.spec.seed * 1000 + slot * len(self.level_names) + level, levels=self.spec.levels,
                distribution_mode=self.spec.distribution_mode, num_threads=1,
                max_episode_steps=self.spec.max_episode_steps,
            )
            envs[level] = make_single_env(sub_spec)
        return envs[level]

    def _pick(self, slot: int) -> np.ndarray:
        """Pick a level for ``slot``'s next episode and reset that instance; its first observation."""
        level = int(self._rng.integers(len(self.level_names)))
        self._current[slot] = level
        return self._instance(slot, level).reset().obs[0]

    def reset(self) -> EnvStep:
        obs = np.stack([self._pick(slot) for slot in range(self.num_envs)])
        self._started = True
        n = self.num_envs
        return EnvStep(obs=obs, reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                       truncated=np.zeros(n, bool), first=np.ones(n, bool), level_seed=self._current.copy())

    def step(self, actions: np.ndarray) -> EnvStep:
        actions = check_actions(actions, self.num_envs, self._started)
        n = self.num_envs
        obs = np.empty((n, *self.obs_shape), np.uint8)
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        final_obs: np.ndarray | None = None
        episodes: list[EpisodeStats] = []
        for slot in range(n):
            level = int(self._current[slot])
            env = self._instance(slot, level)
            result = env.step(actions[slot : slot + 1])
            reward[slot] = result.reward[0]
            terminated[slot], truncated[slot] = result.terminated[0], result.truncated[0]
            pop = getattr(env, "pop_episode_extras", None)
            if pop is not None:
                self._extras.extend(pop())
            if result.first[0]:
                if truncated[slot] and result.final_obs is not None:
                    # The sub-env's last observation of the cut episode (before this slot picks a new level).
                    if final_obs is None:
                        final_obs = np.empty((n, *self.obs_shape), np.uint8)
                    final_obs[slot] = result.final_obs[0]
                for ep in result.episodes:
                    # The sub-env's own level seed is replaced by the sub-env index (the level of this set).
                    episodes.append(EpisodeStats(slot, ep.episode_return, ep.length, level, ep.success, ep.truncated))
                obs[slot] = self._pick(slot)  # a fresh pick, even if the same level: reset() starts anew
            else:
                obs[slot] = result.obs[0]
        if final_obs is not None:
            kept = ~truncated  # rows without a time-limit cut: a copy of obs (EnvStep.final_obs: unspecified there)
            final_obs[kept] = obs[kept]
        return EnvStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated,
                       first=terminated | truncated, level_seed=self._current.copy(), episodes=episodes,
                       final_obs=final_obs)

    def pop_episode_extras(self) -> list[dict[str, Any]]:
        out, self._extras = self._extras, []
        return out

    @property
    def restores_exactly(self) -> bool:
        """False when a sub-env cannot snapshot its state (Mario's emulator): a resume then restarts episodes."""
        return not any(name.startswith("mario:") for name in self.level_names)

    def get_state(self) -> dict[str, Any]:
        """Every built instance's own snapshot (NotImplementedError where one cannot, e.g. Mario), the picks."""
        return {
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "instances": [{j: env.get_state() for j, env in envs.items()} for envs in self._instances],
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "current": self._current.copy(),
            "started": self._started,
        }

    def set_state(self, state: Any) -> None:
        check_state_matches(state, self.env_id, self.num_envs)
        for slot, saved in enumerate(state["instances"]):
            for j, env_state in saved.items():
                self._instance(slot, int(j)).set_state(env_state)
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._current = np.array(state["current"], dtype=np.int64)
        self._started = bool(state["started"])

    def render(self) -> np.ndarray:
        return np.stack([self._instance(s, int(self._current[s])).render()[0] for s in range(self.num_envs)])

    def agent_positions(self) -> np.ndarray | None:
        positions = [self._instance(s, int(self._current[s])).agent_positions() for s in range(self.num_envs)]
        if any(p is None for p in positions):
            return None
        return np.stack([np.asarray(p)[0] for p in positions])

    def close(self) -> None:
        for envs in self._instances:
            for env in envs.values():
                env.close()
