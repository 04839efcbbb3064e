"""A small multi-scene MiniGrid task whose levels look the same at the start but are worth different amounts.

``MiniGrid-HiddenPayoff-v0`` (class ``HiddenPayoffEnv``) is the benchmark task of issue 3 for the DVE critic
(``benchmarks/dve_value_error.py``, ``docs/dve_benchmark.md``).

Layout (a 5x5 room; ``#`` wall, ``^`` the agent facing north, ``c`` the floor cue, ``G`` the goal)::

    #######
    #.....#
    #..^..#
    #..c..#
    #.....#
    #..G..#
    #######

- The agent always starts at (3, 2) facing north. Its 7x7 view looks only ahead and sideways, so at the start it
  sees the empty top of the room and nothing of the cue or the goal: the first observation is identical in every
  level (a test checks it).
- The level seed draws a *scene* k in {0, 1, 2}; it decides the colour of the floor cue (red, yellow, blue) and
  the payoff of the goal, ``SCENE_PAYOFFS[k]`` = 0.2, 0.5 or 1.0, times a per-level factor in
  [1 - ``PAYOFF_JITTER``, 1 + ``PAYOFF_JITTER``]. The goal is the usual green square in every scene.
- The cue comes into view after the first turn (left or right). The shortest path (turn, turn, three moves
  south) walks over the cue; standing on it or past it, the agent no longer sees it, so from then on the scene is
  known only from the trajectory and the recurrent core must remember it.
- Reaching the goal ends the episode with the payoff as reward (no MiniGrid time discount: ``gamma`` already
  rewards speed); every other step pays 0; the episode is cut after ``max_steps`` = 64 steps. The optimal policy
  is the same in every scene, so only the value depends on the scene.
- A uniformly random policy reaches the goal in about 8% of its episodes, enough for PPO to find it within a few
  tens of thousands of steps on a CPU. (A one-cell corridor with the cue far ahead, the first design, was found
  by random actions in under 1% of episodes and did not train in minutes.)

Why this exercises DVE (seeds 000, 001; SPEC §3.2): the value of a state is ``V(s, M) = p_M * gamma^d(s)`` with
``d`` the remaining moves, so across levels it forms three well-separated clusters (the seeds' Gaussian-mixture
picture, each cluster slightly widened by the per-level jitter). At the start no critic can know the cluster:
the best estimate is the mean over scenes and its error is irreducible and the same for every critic. Once the
cue has been seen, the critic must switch to the right cluster from the trajectory, which is what DVE's
attention weights ``alpha(s, tau)`` over ``N_b = 3`` cluster means are built for, while a scalar critic has to
produce the same three-way split with one linear head on the core output. DVE's confusion ``delta`` should fall
from 1 (uniform alpha) at the start towards ``1/N_b`` after the cue.

The scene of a level seed, without building the env, is ``level_scene(seed)`` and its payoff
``level_payoff(seed)``: both replay the draws ``_gen_grid`` makes from the generator that
``reset(seed=level_seed)`` seeds (``numpy.random.default_rng(seed)``, as gymnasium's ``np_random``).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Floor, Goal
from minigrid.minigrid_env import MiniGridEnv

__all__ = [
    "HIDDEN_PAYOFF_ID",
    "PAYOFF_JITTER",
    "SCENE_COLORS",
    "SCENE_PAYOFFS",
    "HiddenPayoffEnv",
    "level_payoff",
    "level_scene",
    "register_scene_envs",
]

HIDDEN_PAYOFF_ID = "MiniGrid-HiddenPayoff-v0"

SCENE_PAYOFFS: tuple[float, ...] = (0.2, 0.5, 1.0)
"""Goal payoff per scene: three clusters far apart relative to the jitter, so the value distribution over
levels is a clear mixture."""
SCENE_COLORS: tuple[str, ...] = ("red", "yellow", "blue")
"""Colour of the floor cue per scene (MiniGrid colour names; none is green, the goal's colour)."""
PAYOFF_JITTER = 0.05
"""Per-level relative spread of the payoff around its scene's value: it widens each cluster a little, as in the
seeds' GMM picture, and cannot be inferred by any critic (it is part of the irreducible error)."""


def _draw_scene(rng: np.random.Generator) -> tuple[int, float]:
    """The scene index and payoff of a level, drawn in this order from ``rng`` (shared by the env and the
    seed-only helpers, so the two cannot drift apart)."""
    scene = int(rng.integers(len(SCENE_PAYOFFS)))
    factor = 1.0 + PAYOFF_JITTER * float(rng.uniform(-1.0, 1.0))
    return scene, SCENE_PAYOFFS[scene] * factor


def level_scene(level_seed: int) -> int:
    """The scene index (0, 1, 2) that ``reset(seed=level_seed)`` builds."""
    return _draw_scene(np.random.default_rng(level_seed))[0]


def level_payoff(level_seed: int) -> float:
    """The goal payoff that ``reset(seed=level_seed)`` builds."""
    return _draw_scene(np.random.default_rng(level_seed))[1]


class HiddenPayoffEnv(MiniGridEnv):
    """A 5x5 room; a floor cue behind the agent's start reveals which of three goal payoffs this level pays
    (see the module docstring for the design).

    The agent starts at ``START`` facing north; the cue lies at ``CUE`` and the goal at ``GOAL``, both south of
    it, outside the 7x7 view (which only looks ahead and sideways). Extra keyword arguments go to
    ``MiniGridEnv`` (``render_mode``, ``agent_view_size``...).
    """

    SIZE = 7
    START = (3, 2)
    CUE = (3, 3)
    GOAL = (3, 5)

    def __init__(self, max_steps: int = 64, **kwargs: Any) -> None:
        self.scene = 0
        self.payoff = SCENE_PAYOFFS[0]
        super().__init__(
            mission_space=MissionSpace(mission_func=self._gen_mission),
            grid_size=self.SIZE,
            max_steps=max_steps,
            **kwargs,
        )

    @staticmethod
    def _gen_mission() -> str:
        return "reach the goal; the floor cue tells what it pays"

    def _gen_grid(self, width: int, height: int) -> None:
        # The scene is the first draw after reset(seed=...) seeds np_random, so level_scene(seed) replays it.
        self.scene, self.payoff = _draw_scene(self.np_random)
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.put_obj(Floor(SCENE_COLORS[self.scene]), *self.CUE)
        self.put_obj(Goal(), *self.GOAL)
        self.agent_pos = self.START
        self.agent_dir = 3  # north: the cue and the goal are behind the agent
        self.mission = self._gen_mission()

    def _reward(self) -> float:
        """The level's payoff, paid on reaching the goal (replaces MiniGrid's ``1 - 0.9 * t / max_steps``)."""
        return float(self.payoff)


def register_scene_envs() -> None:
    """Register the ids of this module with gymnasium (idempotent: a second import registers nothing)."""
    if HIDDEN_PAYOFF_ID not in gymnasium.registry:
        gymnasium.register(id=HIDDEN_PAYOFF_ID, entry_point="multiscene.envs.scenes:HiddenPayoffEnv")


register_scene_envs()
