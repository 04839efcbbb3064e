"""MiniGrid (Gymnasium) made multi-scene, behind ``multiscene.envs.base.VecEnv``.

A MiniGrid level is fully determined by the seed given to ``reset``: each episode of each env starts with
``env.reset(seed=level_seed)``, where ``level_seed`` is drawn uniformly from the spec's ``LevelSet`` by one
``numpy.random.Generator`` seeded with ``spec.seed``. Train and test env sets are the same class over disjoint
level ranges. MiniGrid steps are deterministic, so a level seed plus the actions replays an episode exactly.

Observations are the symbolic partial view ``obs["image"]`` (7x7x3 uint8 for the default agent view), what
``minigrid.wrappers.ImgObsWrapper`` returns; the direction and the mission string are dropped.

The N envs are stepped in a plain Python loop rather than Gymnasium's vector env, so that this class decides
every reset seed (Gymnasium's autoreset would reseed from its own RNG).

Drawing over the grid (reports, SPEC §7 trajectories): ``render()`` returns the full grid at
``RENDER_TILE_SIZE`` pixels per cell, so the cell ``(x, y)`` of ``agent_positions()`` covers the pixels
``frame[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile]`` and its centre is
``((x + 0.5) * tile, (y + 0.5) * tile)`` in (column, row) image coordinates; ``grid_size`` is (width, height)
in cells.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium
import numpy as np

from multiscene.envs.base import (
    ActionSpec,
    EnvError,
    EnvSpec,
    EnvStep,
    EpisodeStats,
    check_actions,
    check_state_matches,
)

RENDER_TILE_SIZE = 8


class MiniGridVecEnv:
    """``num_envs`` MiniGrid envs whose episodes run on level seeds drawn from ``spec.levels``.

    Attributes: ``env_id``, ``num_envs``, ``obs_shape`` (7, 7, 3), ``obs_dtype`` (uint8), ``action_spec`` and
    ``num_actions`` (7 for MiniGrid), ``truncation_known`` (True: MiniGrid's ``max_steps`` limit is reported
    as ``truncated``, with the last observation in ``EnvStep.final_obs``), ``grid_size`` (width, height) in
    cells,
    ``render_tile_size`` (pixels per cell in ``render()``).
    """

    render_tile_size = RENDER_TILE_SIZE
    obs_dtype = np.uint8
    truncation_known = True
    supports_render = True
    restores_exactly = True

    def __init__(self, spec: EnvSpec) -> None:
        import minigrid  # noqa: F401  (side effect: registers the MiniGrid ids with gymnasium)

        if spec.levels.num_levels <= 0:
            raise ValueError("MiniGrid needs a finite level range (num_levels > 0)")
        self.spec = spec
        self.env_id = spec.env_id
        self.num_envs = spec.num_envs
        # The passive env checker only validates spaces on the first calls; skip its wrapper on the hot path.
        self._envs: list[gymnasium.Env[Any, Any]] = [
            gymnasium.make(spec.env_id, disable_env_checker=True) for _ in range(self.num_envs)
        ]
        if spec.max_episode_steps is not None:
            # MiniGrid truncates on its own step counter (MiniGridEnv.step); a TimeLimit wrapper on top would
            # still be cut at the env's own, possibly shorter, limit.
            for env in self._envs:
                env.unwrapped.max_steps = spec.max_episode_steps  # type: ignore[attr-defined]
        first_env = self._envs[0]
        image_space: Any = first_env.observation_space["image"]  # type: ignore[index]
        self.obs_shape: tuple[int, ...] = tuple(image_space.shape)
        self.num_actions = int(first_env.action_space.n)  # type: ignore[attr-defined]
        self.action_spec = ActionSpec.discrete(self.num_actions)
        self._level_low = spec.levels.start_level
        self._level_high = spec.levels.start_level + spec.levels.num_levels
        self._rng = np.random.default_rng(spec.seed)
        self._started = False
        # Per-env counters as Python lists: the step loop touches one env at a time, where numpy scalar access
        # would cost more than the arithmetic.
        self._level_seed: list[int] = [0] * self.num_envs
        self._episode_return: list[float] = [0.0] * self.num_envs
        self._episode_length: list[int] = [0] * self.num_envs
        self._obs = np.zeros((self.num_envs, *self.obs_shape), dtype=np.uint8)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(width, height) of the full grid in cells (fixed per env id)."""
        unwrapped: Any = self._envs[0].unwrapped
        return int(unwrapped.width), int(unwrapped.height)

    def _error(self, index: int, phase: str, exc: BaseException) -> EnvError:
        return EnvError(
            f"MiniGrid env {self.env_id!r} (env {index}, level seed {self._level_seed[index]}) failed during "
            f"{phase}: {type(exc).__name__}: {exc}"
        )

    def _start_episode(self, index: int) -> np.ndarray:
        """Draw a level seed for env ``index``, reset it on that level, return its [7, 7, 3] observation."""
        level_seed = int(self._rng.integers(self._level_low, self._level_high))
        self._level_seed[index] = level_seed
        self._episode_return[index] = 0.0
        self._episode_length[index] = 0
        try:
            obs, _ = self._envs[index].reset(seed=level_seed)
        except Exception as exc:
            raise self._error(index, "reset", exc) from exc
        return obs["image"]

    def reset(self) -> EnvStep:
        """Start every env on a freshly drawn level (env 0 draws first)."""
        obs = np.empty((self.num_envs, *self.obs_shape), dtype=np.uint8)
        for index in range(self.num_envs):
            obs[index] = self._start_episode(index)
        self._started = True
        self._obs = obs
        return EnvStep(
            obs=obs,
            reward=np.zeros(self.num_envs, dtype=np.float32),
            terminated=np.zeros(self.num_envs, dtype=bool),
            truncated=np.zeros(self.num_envs, dtype=bool),
            first=np.ones(self.num_envs, dtype=bool),
            level_seed=np.array(self._level_seed, dtype=np.int64),
        )

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions`` [B] and return the batched result; ended episodes restart on a new level seed."""
        actions = check_actions(actions, self.num_envs, self._started)
        n = self.num_envs
        obs = np.empty((n, *self.obs_shape), dtype=np.uint8)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        episodes: list[EpisodeStats] = []
        final_obs: np.ndarray | None = None
        returns, lengths = self._episode_return, self._episode_length
        for index, (env, action) in enumerate(zip(self._envs, actions.tolist())):
            try:
                env_obs, env_reward, env_terminated, env_truncated, _ = env.step(action)
            except Exception as exc:
                raise self._error(index, "step", exc) from exc
            env_reward = float(env_reward)
            reward[index] = env_reward
            returns[index] += env_reward
            lengths[index] += 1
            if env_terminated or env_truncated:
                # A terminal state reached on the last allowed step is a termination: nothing to bootstrap.
                env_truncated = env_truncated and not env_terminated
                terminated[index] = env_terminated
                truncated[index] = env_truncated
                episodes.append(
                    EpisodeStats(
                        env_index=index,
                        episode_return=returns[index],
                        length=lengths[index],
                        level_seed=self._level_seed[index],
                        # MiniGrid pays a positive reward only for reaching the goal
                        # (1 - 0.9 * t / max_steps); lava and time-outs end with 0.
                        success=bool(env_terminated and env_reward > 0.0),
                        truncated=bool(env_truncated),
                    )
                )
                if env_truncated:
                    # MiniGrid's step limit is a time limit (issue #16): keep the cut episode's last view.
                    if final_obs is None:
                        final_obs = np.empty((n, *self.obs_shape), dtype=np.uint8)
                    final_obs[index] = env_obs["image"]
                obs[index] = self._start_episode(index)
            else:
                obs[index] = env_obs["image"]
        self._obs = obs
        if final_obs is not None:
            # Rows of envs that were not truncated are a copy of obs (EnvStep.final_obs: unspecified there).
            kept = ~truncated
            final_obs[kept] = obs[kept]
        return EnvStep(
            obs=obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            first=terminated | truncated,
            level_seed=np.array(self._level_seed, dtype=np.int64),
            episodes=episodes,
            final_obs=final_obs,
        )

    def get_state(self) -> dict[str, Any]:
        """A picklable deep copy of the envs (grids, agents, their RNGs), the level-seed generator and the
        counters; ``set_state`` of it continues bit-identically (issue #6)."""
        return {
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "envs": copy.deepcopy(self._envs),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "started": self._started,
            "level_seed": list(self._level_seed),
            "episode_return": list(self._episode_return),
            "episode_length": list(self._episode_length),
            "obs": self._obs.copy(),
        }

    def set_state(self, state: Any) -> None:
        """Restore a ``get_state`` snapshot (copied, so the same snapshot can be restored again)."""
        check_state_matches(state, self.env_id, self.num_envs)
        self.close()
        self._envs = copy.deepcopy(state["envs"])
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._started = state["started"]
        self._level_seed = list(state["level_seed"])
        self._episode_return = list(state["episode_return"])
        self._episode_length = list(state["episode_length"])
        self._obs = np.array(state["obs"], dtype=np.uint8)

    def render(self, highlight: bool = True) -> np.ndarray:
        """[B, height * tile, width * tile, 3] uint8 full-grid frames; ``highlight`` shades the agent view."""
        return np.stack(
            [
                env.unwrapped.get_frame(  # type: ignore[attr-defined]
                    highlight=highlight, tile_size=self.render_tile_size, agent_pov=False
                )
                for env in self._envs
            ]
        )

    def agent_positions(self) -> np.ndarray:
        """[B, 2] int64 grid cells (x, y) = (column, row) of the agents."""
        unwrapped: list[Any] = [env.unwrapped for env in self._envs]
        return np.array([tuple(u.agent_pos) for u in unwrapped], dtype=np.int64)

    def close(self) -> None:
        for env in self._envs:
            env.close()
