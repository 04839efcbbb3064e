"""Procgen through procgen-mirror's gym3 ``ProcgenGym3Env``, behind ``multiscene.envs.base.VecEnv``.

Several comma-separated games (``coinrun,starpilot``) split ``num_envs`` evenly, one ``ProcgenGym3Env`` per
game, concatenated in the order given: envs ``[k * n, (k + 1) * n)`` play game k. Every game has the same 15
actions and 64x64x3 RGB observations.

gym3 semantics carry over unchanged: the reward returned with ``first=True`` is the last reward of the episode
that just ended, and ``prev_level_seed`` / ``prev_level_complete`` in the info describe that episode.

Procgen does not tell time-outs from terminal states (gym3 reports one ``first`` flag), so every episode end is
reported as ``terminated``, ``truncated`` is always False, ``EnvStep.final_obs`` is always None and
``truncation_known`` is False: returns never bootstrap through a Procgen time-out (the convention of the Procgen
paper and CleanRL's ppo_procgen; issue #16 keeps it for lack of the information).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from multiscene.envs import procgen_games
from multiscene.envs.base import (
    ActionSpec,
    EnvError,
    EnvSpec,
    EnvStep,
    EpisodeStats,
    check_actions,
    check_state_matches,
)

NUM_ACTIONS = 15
OBS_SHAPE = (64, 64, 3)
# Each reset() after the first builds fresh gym3 envs (gym3 has no reset); their rand_seed moves by this
# stride per rebuild so that each reset plays new levels, deterministically derived from spec.seed.
_RESET_SEED_STRIDE = 1_000_003


def _procgen_env_class() -> Any:
    """procgen's ``ProcgenGym3Env``. Importing procgen imports gym (for procgen's gym registration, unused
    here), which prints a deprecation notice to stderr; it would greet every run, so it is swallowed."""
    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env


def _rand_seed(seed: int, game_index: int, generation: int) -> int:
    """Procgen's ``rand_seed`` for one game's env; equals ``seed`` for the first game before any rebuild."""
    return (seed + game_index + _RESET_SEED_STRIDE * generation) % 2**31


def _info_arrays(env: Any) -> dict[str, np.ndarray]:
    """The info of every env of one gym3 env as arrays ``{key: [n]}``, copied.

    gym3's ``get_info()`` builds a list of per-env dicts in a Python loop; the rollout hot path reads the same
    numbers straight from the CEnv info buffers, which ``observe()`` has just filled. Falls back to
    ``get_info()`` for an env without those buffers.
    """
    buffers = getattr(env, "_info", None)
    if isinstance(buffers, dict) and "level_seed" in buffers:
        return {key: np.array(value) for key, value in buffers.items()}
    infos = env.get_info()
    return {key: np.array([info[key] for info in infos]) for key in infos[0]}


class ProcgenVecEnv:
    """``num_envs`` Procgen envs over the level range ``spec.levels``.

    Attributes: ``env_id``, ``num_envs``, ``obs_shape`` (64, 64, 3), ``obs_dtype`` (uint8), ``action_spec``
    (discrete, 15), ``num_actions`` (15), ``truncation_known`` (False), ``games`` (one name per gym3 env),
    ``envs_per_game``.
    """

    obs_dtype = np.uint8
    action_spec = ActionSpec.discrete(NUM_ACTIONS)
    truncation_known = False
    supports_render = True
    restores_exactly = True

    def __init__(self, spec: EnvSpec) -> None:
        self.spec = spec
        self.env_id = spec.env_id
        self.num_envs = spec.num_envs
        self.obs_shape: tuple[int, ...] = OBS_SHAPE
        self.num_actions = NUM_ACTIONS
        self.games = procgen_games(spec.env_id)
        if self.num_envs % len(self.games) != 0:
            raise ValueError(f"num_envs ({self.num_envs}) is not divisible by the games {self.games}")
        self.envs_per_game = self.num_envs // len(self.games)
        self._generation = 0
        self._envs: list[Any] = self._build(self._generation)
        # Whether the current gym3 envs have been stepped; a reset() after that needs fresh envs.
        self._stepped = False
        self._started = False
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self._level_seed = np.zeros(self.num_envs, dtype=np.int64)
        self._obs = np.zeros((self.num_envs, *OBS_SHAPE), dtype=np.uint8)

    def _build(self, generation: int) -> list[Any]:
        env_class = _procgen_env_class()
        levels = self.spec.levels
        return [
            env_class(
                num=self.envs_per_game,
                env_name=game,
                distribution_mode=self.spec.distribution_mode,
                num_levels=levels.num_levels,
                start_level=levels.start_level,
                rand_seed=_rand_seed(self.spec.seed, index, generation),
                num_threads=self.spec.num_threads,
            )
            for index, game in enumerate(self.games)
        ]

    def _error(self, game_index: int, phase: str, exc: BaseException) -> EnvError:
        # gym3 steps a whole batch in C++, so the failing env cannot be singled out: name every level of
        # the game's envs.
        lo, hi = game_index * self.envs_per_game, (game_index + 1) * self.envs_per_game
        seeds = self._level_seed[lo:hi].tolist()
        return EnvError(
            f"Procgen env {self.env_id!r} (game {self.games[game_index]!r}, envs {lo}..{hi - 1}, "
            f"level seeds {seeds}) failed during {phase}: {type(exc).__name__}: {exc}"
        )

    def _observe(self, phase: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """reward [B] float32, obs [B, 64, 64, 3] uint8, first [B] bool, info {key: [B]} of every game."""
        parts = []
        for index, env in enumerate(self._envs):
            try:
                # gym3's CEnv copies its buffers on observe() (reuse_arrays=False, the default), so these
                # arrays are ours to keep.
                reward, obs, first = env.observe()
                info = _info_arrays(env)
            except Exception as exc:
                raise self._error(index, phase, exc) from exc
            parts.append((reward, obs["rgb"], first, info))
        if len(parts) == 1:
            return parts[0]
        info_keys = parts[0][3].keys()
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            {key: np.concatenate([p[3][key] for p in parts]) for key in info_keys},
        )

    def reset(self) -> EnvStep:
        """Start every env on a new episode (fresh levels after the first call)."""
        if self._stepped:
            self.close()
            self._generation += 1
            self._envs = self._build(self._generation)
            self._stepped = False
        _, obs, _, info = self._observe("reset")
        self._started = True
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._level_seed = info["level_seed"].astype(np.int64)
        self._obs = obs
        return EnvStep(
            obs=obs,
            reward=np.zeros(self.num_envs, dtype=np.float32),
            terminated=np.zeros(self.num_envs, dtype=bool),
            truncated=np.zeros(self.num_envs, dtype=bool),
            first=np.ones(self.num_envs, dtype=bool),
            level_seed=self._level_seed.copy(),
        )

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions`` [B] (integers in [0, 15)) and return the batched result (auto-reset)."""
        actions = check_actions(actions, self.num_envs, self._started)
        # An out-of-range action is undefined behaviour inside Procgen's C++; refuse it here.
        if actions.size and (actions.min() < 0 or actions.max() >= NUM_ACTIONS):
            raise ValueError(f"actions must lie in [0, {NUM_ACTIONS}), got {actions.min()}..{actions.max()}")
        actions32 = actions.astype(np.int32)
        self._stepped = True
        n = self.envs_per_game
        for index, env in enumerate(self._envs):
            try:
                env.act(actions32[index * n : (index + 1) * n])
            except Exception as exc:
                raise self._error(index, "step", exc) from exc
        reward, obs, first, info = self._observe("step")

        self._episode_return += reward
        self._episode_length += 1
        episodes: list[EpisodeStats] = []
        ended = np.flatnonzero(first)
        if ended.size:
            prev_seed = info["prev_level_seed"][ended].tolist()
            prev_complete = info["prev_level_complete"][ended].tolist()
            returns = self._episode_return[ended].tolist()
            lengths = self._episode_length[ended].tolist()
            episodes = [
                EpisodeStats(
                    env_index=int(i),
                    episode_return=float(returns[k]),
                    length=int(lengths[k]),
                    level_seed=int(prev_seed[k]),
                    success=bool(prev_complete[k]),
                )
                for k, i in enumerate(ended.tolist())
            ]
            self._episode_return[ended] = 0.0
            self._episode_length[ended] = 0
        self._level_seed = info["level_seed"].astype(np.int64)
        self._obs = obs
        return EnvStep(
            obs=obs,
            reward=reward.astype(np.float32, copy=False),
            terminated=first.copy(),
            truncated=np.zeros(self.num_envs, dtype=bool),
            first=first,
            level_seed=self._level_seed.copy(),
            episodes=episodes,
        )

    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot: Procgen's serialized env states (levels, RNGs, positions), our counters."""
        states = []
        for index, env in enumerate(self._envs):
            try:
                states.append(list(env.callmethod("get_state")))
            except Exception as exc:
                raise self._error(index, "get_state", exc) from exc
        return {
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "procgen_states": states,
            "generation": self._generation,
            "stepped": self._stepped,
            "started": self._started,
            "episode_return": self._episode_return.copy(),
            "episode_length": self._episode_length.copy(),
            "level_seed": self._level_seed.copy(),
            "obs": self._obs.copy(),
        }

    def set_state(self, state: Any) -> None:
        """Restore a ``get_state`` snapshot taken from an env set built from the same env id and num_envs."""
        check_state_matches(state, self.env_id, self.num_envs)
        if state["generation"] != self._generation:
            # Later reset() calls must derive the same rand_seeds as the run the state came from.
            self.close()
            self._generation = state["generation"]
            self._envs = self._build(self._generation)
        for index, (env, env_states) in enumerate(zip(self._envs, state["procgen_states"], strict=True)):
            try:
                env.callmethod("set_state", list(env_states))
            except Exception as exc:
                raise self._error(index, "set_state", exc) from exc
        self._stepped = state["stepped"]
        self._started = state["started"]
        self._episode_return = np.array(state["episode_return"], dtype=np.float64)
        self._episode_length = np.array(state["episode_length"], dtype=np.int64)
        self._level_seed = np.array(state["level_seed"], dtype=np.int64)
        self._obs = np.array(state["obs"], dtype=np.uint8)

    def render(self) -> np.ndarray:
        """[B, 64, 64, 3] uint8: the current observations (Procgen's agent view is the frame)."""
        return self._obs.copy()

    def agent_positions(self) -> np.ndarray | None:
        """None: Procgen exposes no map coordinates of the agent."""
        return None

    def close(self) -> None:
        for env in self._envs:
            close = getattr(env, "close", None)
            if close is not None:
                close()
