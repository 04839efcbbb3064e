"""The one small vectorized-environment interface every trainer in multiscene talks to.

Conventions (gym3's, see STYLE.md):
- Observations are arrays ``[B, *obs_shape]`` of ``obs_dtype``: uint8 images (Procgen 64x64x3 RGB, MiniGrid
  7x7x3 symbolic, Atari 84x84x4 stacked grayscale) or float32 vectors (MuJoCo, classic control).
- Actions are described by ``action_spec``: integers [B] for a discrete env, floats [B, n] for a continuous
  one (the env clips them to its bounds; the agent keeps the unclipped sample for its log-probabilities).
- ``step`` auto-resets: where an episode ended, the returned observation is the first one of the next
  episode and ``first`` is True for that env. Where the end was a time-limit truncation and the env can tell
  (``truncation_known``), ``EnvStep.final_obs`` keeps the last observation of the ended episode, so that
  returns can bootstrap from it (issue #16).
- ``level_seed`` is the true level of the returned observation. It exists for logging and analysis only
  (SPEC §1) and must never be fed to the agent.
"""

from __future__ import annotations

import math
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
    truncated: bool = False
    """The episode was cut by a time limit rather than ending in a terminal state (always False where the
    env cannot tell, see ``VecEnv.truncation_known``)."""


@dataclass(frozen=True)
class ActionSpec:
    """What ``VecEnv.step`` accepts.

    Discrete: integers in ``[0, n)``, shape [B]. Continuous: floats, shape [B, n], clipped by the env to
    ``[low, high]`` (Gymnasium's ``Box`` bounds, which may be infinite).
    """

    kind: Literal["discrete", "continuous"]
    """``"discrete"`` (a categorical policy) or ``"continuous"`` (a Gaussian policy)."""
    n: int
    """Number of actions (discrete) or of action dimensions (continuous)."""
    low: np.ndarray | None = None
    """[n] float32 lower bounds of a continuous action; None for a discrete one."""
    high: np.ndarray | None = None
    """[n] float32 upper bounds of a continuous action; None for a discrete one."""

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"ActionSpec.kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.n <= 0:
            raise ValueError(f"ActionSpec.n must be positive, got {self.n}")
        bounded = self.low is not None and self.high is not None
        if (self.kind == "continuous") != bounded:
            raise ValueError("a continuous ActionSpec needs low and high; a discrete one takes neither")
        if bounded and (np.shape(self.low) != (self.n,) or np.shape(self.high) != (self.n,)):
            raise ValueError(f"ActionSpec low/high must have shape ({self.n},)")

    @classmethod
    def discrete(cls, n: int) -> ActionSpec:
        """``n`` discrete actions."""
        return cls("discrete", int(n))

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare the bound arrays with ``==`` (ambiguous truth value).
        if not isinstance(other, ActionSpec):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.n == other.n
            and _same_bounds(self.low, other.low)
            and _same_bounds(self.high, other.high)
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.n))


def _same_bounds(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b))


@dataclass
class EnvStep:
    """The batched result of one ``step``; every array has leading dimension B = num_envs."""

    obs: np.ndarray
    """[B, *obs_shape] of the env's ``obs_dtype``, the observation after the step (first of a new episode
    where one ended)."""
    reward: np.ndarray
    """[B] float32, reward for the action just taken."""
    terminated: np.ndarray
    """[B] bool, the episode ended in a terminal state of the MDP."""
    truncated: np.ndarray
    """[B] bool, the episode was cut by a time limit (all False where the env cannot tell, see
    ``VecEnv.truncation_known``)."""
    first: np.ndarray
    """[B] bool, ``obs`` is the first observation of an episode (= terminated | truncated)."""
    level_seed: np.ndarray
    """[B] int64, the level of ``obs`` (logging only)."""
    episodes: list[EpisodeStats] = field(default_factory=list)
    """Episodes that ended on this step."""
    final_obs: np.ndarray | None = None
    """None when no env was truncated on this step; else [B, *obs_shape] whose rows where ``truncated`` is set
    hold the LAST observation of the episode that was cut (``obs`` holds the first of the next one). Other
    rows are unspecified (a copy of ``obs``); read only the truncated rows."""


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
    """A Procgen game (``coinrun``), several comma-separated, a MiniGrid id (``MiniGrid-DoorKey-5x5-v0``), or
    any registered Gymnasium id (``BoxingNoFrameskip-v4``, ``HalfCheetah-v5``, ``CartPole-v1``)."""
    num_envs: int
    seed: int
    """Seeds Procgen's ``rand_seed``, MiniGrid's level draws, and Gymnasium env i (``seed + i`` at its first
    reset); derive it from the run seed."""
    levels: LevelSet
    distribution_mode: str = "easy"
    num_threads: int = 4
    max_episode_steps: int | None = None
    """MiniGrid and Gymnasium ids: overrides the env's own step limit (a truncation); Atari counts emulator
    frames here, as ale-py's ``max_num_frames_per_episode`` does."""
    training: bool = True
    """False for evaluation env sets: Atari then plays whole games (no episodic life) with raw rewards."""


class VecEnv(Protocol):
    """What a trainer needs from a batch of environments."""

    env_id: str
    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: type[np.generic]
    """np.uint8 for images, np.float32 for vectors."""
    action_spec: ActionSpec
    num_actions: int
    """= ``action_spec.n``."""
    truncation_known: bool
    """Whether ``truncated`` tells time limits from terminal states (Gymnasium, MiniGrid) or is always False
    with every end reported as ``terminated`` (Procgen through gym3)."""
    restores_exactly: bool
    """Whether ``set_state`` continues bit-identically. Where False, it restores seeds only and the caller must
    ``reset()`` (every env starts a new episode) and drop its carried observation."""
    supports_render: bool
    """Whether ``render()`` can give frames (False once a render failed, e.g. no GL backend for MuJoCo)."""

    def reset(self) -> EnvStep:
        """Start every env on a new episode; ``first`` is all True, rewards are 0."""
        ...

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions`` (int [B] or float [B, n], see ``action_spec``); the result (auto-reset)."""
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


def check_actions(
    actions: np.ndarray, num_envs: int, started: bool, spec: ActionSpec | None = None
) -> np.ndarray:
    """The actions of one ``step``: an integer array [num_envs] (discrete, the default), or for a continuous
    ``spec`` a float32 array [num_envs, n] clipped to the bounds; a clear error for a misuse."""
    if not started:
        raise RuntimeError("call reset() before the first step()")
    actions = np.asarray(actions)
    if spec is None or spec.kind == "discrete":
        if actions.shape != (num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"actions must be integers of shape ({num_envs},), got {actions.dtype} {actions.shape}"
            )
        if spec is not None and actions.size and (actions.min() < 0 or actions.max() >= spec.n):
            raise ValueError(f"actions must lie in [0, {spec.n}), got {actions.min()}..{actions.max()}")
        return actions
    if actions.shape != (num_envs, spec.n) or actions.dtype.kind != "f":
        raise ValueError(
            f"actions must be floats of shape ({num_envs}, {spec.n}), got {actions.dtype} {actions.shape}"
        )
    # One reduction instead of isfinite(...).all(): NaN and inf propagate into the sum (so may a huge finite
    # value, which is as wrong for an action).
    if not math.isfinite(actions.sum()):
        raise ValueError("actions must be finite (got NaN or inf): the policy has diverged")
    # The env clips, the agent keeps its unclipped sample (CleanRL ppo_continuous_action's ClipAction).
    # minimum/maximum rather than np.clip, whose Python-level wrapper costs more than the work at this size.
    return np.minimum(np.maximum(actions, spec.low), spec.high).astype(np.float32, copy=False)


def check_state_matches(state: dict[str, Any], env_id: str, num_envs: int) -> None:
    """Refuse to restore a ``get_state`` snapshot into an env set of another id or size."""
    if state["env_id"] != env_id or state["num_envs"] != num_envs:
        raise ValueError(
            f"state was taken from env {state['env_id']!r} x {state['num_envs']}, not {env_id!r} x {num_envs}"
        )


class EnvError(RuntimeError):
    """An environment failed; the message names the env id and the level seed (issue #6)."""
