"""The one small vectorized-environment interface every trainer in multiscene talks to.

Conventions (gym3's, see STYLE.md):
- Observations are uint8 arrays ``[B, *obs_shape]`` (Procgen: 64x64x3 RGB; MiniGrid: 7x7x3 symbolic).
- ``step`` auto-resets: where an episode ended, the returned observation is the first one of the next
  episode and ``first`` is True for that env.
- ``level_seed`` is the true level of the returned observation. It exists for logging and analysis only
  (SPEC §1) and must never be fed to the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Split = Literal["train", "test"]


@dataclass(frozen=True)
class EpisodeStats:
    """One finished episode."""

    env_index: int
    episode_return: float
    length: int
    level_seed: int
    success: bool | None
    """Whether the level was completed, where the env says (Procgen ``prev_level_complete``,
    MiniGrid: positive terminal reward); None where it cannot tell."""


@dataclass
class EnvStep:
    """The batched result of one ``step``; every array has leading dimension B = num_envs."""

    obs: np.ndarray
    """[B, *obs_shape] uint8, the observation after the step (first of a new episode where one ended)."""
    reward: np.ndarray
    """[B] float32, reward for the action just taken."""
    terminated: np.ndarray
    """[B] bool, the episode ended in a terminal state of the MDP."""
    truncated: np.ndarray
    """[B] bool, the episode was cut by a time limit."""
    first: np.ndarray
    """[B] bool, ``obs`` is the first observation of an episode (= terminated | truncated)."""
    level_seed: np.ndarray
    """[B] int64, the level of ``obs`` (logging only)."""
    episodes: list[EpisodeStats] = field(default_factory=list)
    """Episodes that ended on this step."""


@dataclass(frozen=True)
class LevelSet:
    """A range of level seeds: ``[start_level, start_level + num_levels)``; num_levels == 0 means the
    env's full distribution (Procgen only)."""

    start_level: int
    num_levels: int

    def contains(self, level_seed: int) -> bool:
        if self.num_levels == 0:
            return True
        return self.start_level <= level_seed < self.start_level + self.num_levels


@dataclass(frozen=True)
class EnvSpec:
    """Everything needed to build one vectorized env set (train or test)."""

    env_id: str
    """A Procgen game (``coinrun``), several comma-separated, or a MiniGrid id (``MiniGrid-DoorKey-5x5-v0``)."""
    num_envs: int
    seed: int
    """Seeds Procgen's ``rand_seed`` and MiniGrid's level draws; derive it from the run seed."""
    levels: LevelSet
    distribution_mode: str = "easy"
    num_threads: int = 4
    max_episode_steps: int | None = None
    """MiniGrid only: overrides the env's own step limit."""


class VecEnv(Protocol):
    """What a trainer needs from a batch of environments."""

    env_id: str
    num_envs: int
    obs_shape: tuple[int, ...]
    num_actions: int

    def reset(self) -> EnvStep:
        """Start every env on a new episode; ``first`` is all True, rewards are 0."""
        ...

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions`` ([B] int64) and return the batched result (auto-reset)."""
        ...

    def get_state(self) -> Any:
        """A picklable snapshot from which ``set_state`` restores the envs exactly (for --resume)."""
        ...

    def set_state(self, state: Any) -> None: ...

    def render(self) -> np.ndarray:
        """[B, H, W, 3] uint8 RGB frames of the current state of every env (videos, filmstrips)."""
        ...

    def agent_positions(self) -> np.ndarray | None:
        """[B, 2] int grid positions (x, y) of the agent where the env has a map (MiniGrid), else None."""
        ...

    def close(self) -> None: ...


def check_actions(actions: np.ndarray, num_envs: int, started: bool) -> np.ndarray:
    """The actions of one ``step`` as an integer array [num_envs]; a clear error for a misuse."""
    if not started:
        raise RuntimeError("call reset() before the first step()")
    actions = np.asarray(actions)
    if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"actions must be integers of shape ({num_envs},), got {actions.dtype} {actions.shape}")
    return actions


def check_state_matches(state: dict[str, Any], env_id: str, num_envs: int) -> None:
    """Refuse to restore a ``get_state`` snapshot into an env set of another id or size."""
    if state["env_id"] != env_id or state["num_envs"] != num_envs:
        raise ValueError(
            f"state was taken from env {state['env_id']!r} x {state['num_envs']}, not {env_id!r} x {num_envs}"
        )


class EnvError(RuntimeError):
    """An environment failed; the message names the env id and the level seed (issue #6)."""
