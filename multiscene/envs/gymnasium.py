"""Any registered Gymnasium id behind ``multiscene.envs.base.VecEnv``: Atari (ale-py), MuJoCo, and every other
env whose spaces fit (issue #10 item 5).

What fits: observations a ``Box`` image HxWxC of uint8, or a 1-D ``Box`` vector (served as float32);
actions ``Discrete`` (integers from 0) or a 1-D ``Box`` (floats, clipped here to the bounds). Anything else is
a ``ConfigError`` naming ``--env``.

Vectorization: ``gymnasium.vector.SyncVectorEnv`` in ``AutoresetMode.SAME_STEP``: where an episode ends, the
sub-env is reset inside the same ``step`` and Gymnasium hands the last observation over in
``info["final_obs"]``; that is our convention (``obs`` = first of the next episode, ``first`` = True), and
it gives ``EnvStep.final_obs`` for truncations (issue #16). Gymnasium 1.x's default NEXT_STEP mode would
instead spend one extra ``step`` call on the reset. Outside Atari (whose per-env ``info`` we read) ``step``
makes those same calls on ``SyncVectorEnv``'s sub-envs itself (``_step_each``), without merging every info key
of every env, which cost as much as MuJoCo's simulation for one env. Sync rather than Async: on the 2-core dev
machine AsyncVectorEnv was 1.4x to 2.4x slower than SyncVectorEnv for HalfCheetah-v5 at 8 envs (three
measurements, README), and Sync lets ``get_state`` reach the sub-envs directly.

Seeds and levels: Gymnasium envs have no level sets. Env ``i`` is seeded with ``spec.seed + i`` at its first
``reset``; later episodes continue that env's own random streams (Gymnasium's convention), so a run is
reproducible from ``spec.seed``. ``level_seed`` reports that seed for every episode of env ``i`` (logging
only). Train and test env sets differ only by seed (the trainer derives disjoint ``spec.seed`` ranges for the
two splits); ``spec.levels`` is ignored.

Atari (ale-py ids, ``BoxingNoFrameskip-v4`` and ``ALE/Boxing-v5``): the DQN / openai-baselines preprocessing
(Mnih et al. 2015; baselines ``atari_wrappers.wrap_deepmind``):

- 1 to 30 no-op frames at the start of each game;
- each action repeated for 4 frames, the observation the pixel-wise max of the last two;
- 84x84 grayscale by area interpolation (what ``cv2.INTER_AREA`` does, here in numpy, so gray levels may
  differ by one from OpenCV's fixed-point rounding; Gymnasium's ``AtariPreprocessing`` needs opencv-python,
  which the project does not depend on);
- FIRE pressed on reset in games whose action 1 is FIRE;
- the last 4 frames stacked as channels: obs (84, 84, 4) uint8.

Every ALE id is built with ``frameskip=1`` and ALE's sticky actions off; the frame skip of 4 is ours (the
registered ``frameskip`` of ids without ``NoFrameskip`` is replaced), and the id's registered sticky-action
probability (``-v5``: 0.25, Machado et al. 2018; ``NoFrameskip-v4``: 0) is applied per frame by
``AtariFrames`` with ALE's own rule, so that ``--resume`` is exact (ALE's ``cloneState`` does not save the
previous action that rule repeats). For training (``spec.training``) a lost life ends the training episode
(``terminated``, ``first=True``) while the game plays on, and rewards are clipped to their sign; evaluation
sets play whole games with raw rewards. ``EpisodeStats`` always report the RAW score and the agent steps of
WHOLE games (all lives), with or without episodic life, so ``charts/episodic_return`` and evaluation read game
scores.

MuJoCo (``HalfCheetah-v5``, ``Hopper-v5``, ...): float32 vector observations as the env gives them (no
normalization here: the agent normalizes, with its statistics saved in its weights) and raw rewards.

``--resume`` (``get_state`` / ``set_state``): Atari and MuJoCo restore exactly (bit-identical continuation):
Atari through ALE's ``cloneState(include_rng=True)`` plus the env's RNG (no-op starts, sticky actions), the
previous action, our wrappers' screen buffers, frame stack and counters, and the time-limit counter; MuJoCo
through ``mj_getState(mjSTATE_INTEGRATION)`` plus the env's RNG and step counter. Other envs restore exactly
when they are plain Python objects (a deep copy of the wrapped env, e.g. CartPole, Pendulum); envs that
cannot be copied (those built on ``gymnasium.utils.EzPickle``, which re-create themselves from their
constructor arguments, e.g. Box2D) have ``restores_exactly`` False: ``set_state`` restores the seeds only, and
the caller ``reset()``s every env onto a new episode.
"""

from __future__ import annotations

import copy
import difflib
import os
from typing import Any, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from multiscene.config import ConfigError
from multiscene.envs.base import (
    ActionSpec,
    EnvError,
    EnvSpec,
    EnvStep,
    EpisodeStats,
    check_actions,
    check_state_matches,
)

Family = Literal["atari", "mujoco", "generic"]

ATARI_FRAME_SKIP = 4
ATARI_NOOP_MAX = 30
ATARI_SCREEN_SIZE = 84
ATARI_FRAME_STACK = 4
_ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"
_MUJOCO_ENTRY_PREFIX = "gymnasium.envs.mujoco"
_SUPPORTED = (
    "observations: a Box image HxWxC uint8 or a 1-D Box vector; actions: Discrete or a 1-D Box "
    "(e.g. BoxingNoFrameskip-v4, ALE/Boxing-v5, HalfCheetah-v5, CartPole-v1, Pendulum-v1)"
)


def register_atari() -> bool:
    """Register ale-py's ids with Gymnasium; False when ale-py cannot be imported."""
    try:
        import ale_py
    except ImportError:
        return False
    gymnasium.register_envs(ale_py)
    return True


def env_family(env_id: str) -> Family:
    """``"atari"``, ``"mujoco"`` or ``"generic"`` for a registered Gymnasium id (by its entry point)."""
    entry_point = gymnasium.spec(env_id).entry_point
    if isinstance(entry_point, str):
        if entry_point == _ATARI_ENTRY_POINT:
            return "atari"
        if entry_point.startswith(_MUJOCO_ENTRY_PREFIX):
            return "mujoco"
    return "generic"


def _default_mujoco_gl() -> None:
    """MuJoCo renders through GLFW by default, which needs a display; headless, choose EGL (it works on the
    dev machine) unless the user set ``MUJOCO_GL``. Must run before MuJoCo's renderer is first imported."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


def check_gymnasium_id(env_id: str) -> None:
    """Raise ConfigError naming ``--env`` unless ``env_id`` is a registered Gymnasium id whose backend loads.

    Cheap: no env is built. An ALE id whose ROM is missing and a MuJoCo id when ``mujoco`` fails to import are
    refused here with the reason; whether the spaces fit is checked when the env is built.
    """
    register_atari()
    if env_id not in gymnasium.registry:
        candidates = list(gymnasium.registry)
        suggestions = difflib.get_close_matches(env_id, candidates, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        raise ConfigError(f"--env {env_id!r} is not a registered Gymnasium id.{hint}")
    family = env_family(env_id)
    if family == "atari":
        if gymnasium.spec(env_id).kwargs.get("obs_type", "rgb") == "ram":
            raise ConfigError(
                f"--env {env_id!r}: Atari RAM observations are not supported (the Atari preprocessing works "
                "on the screen); use the pixel id, e.g. BoxingNoFrameskip-v4 or ALE/Boxing-v5."
            )
        game = gymnasium.spec(env_id).kwargs.get("game")
        try:
            from ale_py import roms

            rom = roms.get_rom_path(str(game))
        except Exception as exc:  # ale-py raises different errors for an unknown game across versions
            rom = None
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "no ROM file"
        if rom is None or not os.path.exists(rom):
            raise ConfigError(
                f"--env {env_id!r}: the Atari ROM for game {game!r} is missing ({reason}). "
                "ale-py >= 0.9 ships the ROMs; reinstall ale-py, or pick an id whose ROM is installed "
                "(ale_py.roms.get_all_rom_ids())."
            )
    elif family == "mujoco":
        _default_mujoco_gl()
        try:
            import mujoco  # noqa: F401
        except Exception as exc:  # an ImportError, or an OSError from a broken shared library
            raise ConfigError(
                f"--env {env_id!r} needs MuJoCo, which failed to load ({type(exc).__name__}: {exc}). "
                "Install it with `pip install mujoco`, or choose a Procgen game, a MiniGrid id, an Atari id "
                "or another Gymnasium id."
            ) from exc


# ----------------------------------------------------------------------------------------------------------
# Atari wrappers. Gymnasium's AtariPreprocessing needs opencv-python for its resize, which the project does
# not depend on; AtariFrames does the same preprocessing with a numpy area resize. The rest is what Gymnasium
# lacks:
# baselines' episodic life that keeps the game running, FIRE on reset, whole-game score accounting, and a
# channels-last frame stack.


def area_resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] float32 weights of area interpolation (``cv2.INTER_AREA`` when shrinking):
    output pixel i averages the input over [i * s, (i + 1) * s), s = size_in / size_out, each input pixel
    weighted by the length of its overlap with that interval. Rows sum to 1."""
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), size_in)):
            weights[i, j] = max(0.0, min(hi, j + 1) - max(lo, j)) / scale
    return weights.astype(np.float32)


class AtariFrames(gymnasium.Wrapper):  # type: ignore[type-arg]
    """No-op starts, sticky actions, frame skip with max-pool, grayscale, area resize: the DQN preprocessing
    (Mnih et al. 2015, Methods; openai-baselines ``NoopResetEnv``, ``MaxAndSkipEnv``, ``WarpFrame``), on an
    ALE env built with ``frameskip=1`` and ``repeat_action_probability=0``.

    ``reset`` takes 1..``noop_max`` no-op frames, their number drawn from the env's own ``np_random`` (seeded
    by the reset seed). ``step`` repeats the action ``frame_skip`` frames, sums the rewards, and returns the
    pixel-wise max of the last two grayscale screens (Atari sprites flicker between frames) shrunk to
    ``size`` x ``size`` [H, W] uint8. A game that ends inside the skip returns at once (the max is then over
    that frame alone). The reset's info carries the no-op frames' summed reward as ``"noop_reward"``.

    Sticky actions (Machado et al. 2018, §5.2), ALE's own rule: at every frame, with probability
    ``repeat_action_probability`` the previous frame's action is played again instead of the new one; a reset
    makes the previous action NOOP. They are done here rather than inside ALE because ALE's ``cloneState``
    does not save the previous action, so a resumed run would drift (found by the resume test of
    ``ALE/Boxing-v5``);
    here it is ``last_action``, and the draws come from ``np_random``, which ``get_state`` saves.
    """

    def __init__(
        self,
        env: gymnasium.Env[Any, Any],
        noop_max: int,
        frame_skip: int,
        size: int,
        repeat_action_probability: float,
    ) -> None:
        super().__init__(env)
        unwrapped: Any = env.unwrapped
        self.ale = unwrapped.ale
        if unwrapped.get_action_meanings()[0] != "NOOP":
            raise ValueError("AtariFrames expects action 0 to be NOOP")
        self.noop_max = noop_max
        self.frame_skip = frame_skip
        self.repeat_action_probability = repeat_action_probability
        self.last_action = 0
        height, width = unwrapped.observation_space.shape[:2]
        self._rows = area_resize_weights(height, size)
        self._cols = area_resize_weights(width, size).T.copy()
        self.screens = np.zeros((2, height, width), dtype=np.uint8)
        self.observation_space = spaces.Box(0, 255, (size, size), dtype=np.uint8)

    def _observation(self) -> np.ndarray:
        pooled = np.maximum(self.screens[0], self.screens[1]).astype(np.float32)
        return np.rint(self._rows @ pooled @ self._cols).astype(np.uint8)

    def _frame(self, action: int) -> tuple[float, bool, bool, dict[str, Any]]:
        """One emulator frame, with the sticky-action rule."""
        if self.repeat_action_probability > 0.0:
            if self.env.unwrapped.np_random.random() >= self.repeat_action_probability:
                self.last_action = action
        else:
            self.last_action = action
        _, reward, terminated, truncated, info = self.env.step(self.last_action)
        return float(reward), bool(terminated), bool(truncated), info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self.last_action = 0
        noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        noop_reward = 0.0
        for _ in range(noops):
            reward, terminated, truncated, info = self._frame(0)
            noop_reward += reward
            if terminated or truncated:
                noop_reward = 0.0
                _, info = self.env.reset()
                self.last_action = 0
        self.ale.getScreenGrayscale(self.screens[0])
        self.screens[1] = self.screens[0]
        # The no-op frames belong to the game's score (AtariGame adds this); the agent never sees them.
        return self._observation(), {**info, "noop_reward": noop_reward}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        terminated = truncated = False
        info: dict[str, Any] = {}
        for t in range(self.frame_skip):
            reward, terminated, truncated, info = self._frame(int(action))
            total += reward
            if terminated or truncated:
                self.ale.getScreenGrayscale(self.screens[0])
                self.screens[1] = self.screens[0]
                break
            if t >= self.frame_skip - 2:
                self.ale.getScreenGrayscale(self.screens[t - (self.frame_skip - 2)])
        return self._observation(), total, terminated, truncated, info


class AtariGame(gymnasium.Wrapper):  # type: ignore[type-arg]
    """FIRE on reset, episodic life (training), and the raw score of whole games.

    Sits on ``AtariFrames`` (so one ``step`` = 4 emulator frames). With ``episodic_life`` a lost life
    returns ``terminated=True`` while the game goes on; the ``reset`` that follows does not restart the game
    but takes one no-op step (openai-baselines ``EpisodicLifeEnv``). The same reset presses FIRE (action 1,
    then 2) in games whose action 1 is FIRE (baselines ``FireResetEnv``), after every life lost, too.

    Every finished GAME is reported in ``info["games"]`` as a list of ``(raw_return, agent_steps,
    truncated)``: in the info of the ``step`` that ended it, or in the info of the ``reset`` whose own no-op
    or FIRE steps ended it (their rewards count towards the score, though the agent never sees them).
    """

    def __init__(self, env: gymnasium.Env[Any, Any], episodic_life: bool) -> None:
        super().__init__(env)
        unwrapped: Any = env.unwrapped
        self.ale = unwrapped.ale
        meanings = unwrapped.get_action_meanings()
        self.fire_on_reset = len(meanings) >= 3 and meanings[1] == "FIRE"
        self.episodic_life = episodic_life
        self.lives = 0
        self.game_over = True
        self.game_return = 0.0
        self.game_length = 0

    def _restart(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.lives = self.ale.lives()
        self.game_over = False
        self.game_return = float(info.get("noop_reward", 0.0))
        self.game_length = 0
        return obs, info

    def _inner_step(self, action: int, games: list[tuple[float, int, bool]]) -> tuple[Any, dict[str, Any]]:
        """One step the agent does not take (reset's no-op and FIRE); restarts the game if it ends."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_return += float(reward)
        self.lives = self.ale.lives()
        if terminated or truncated:
            games.append((self.game_return, self.game_length, bool(truncated and not terminated)))
            obs, info = self._restart(None, None)
        return obs, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        games: list[tuple[float, int, bool]] = []
        if self.game_over or not self.episodic_life or seed is not None:
            obs, info = self._restart(seed, options)
        else:
            obs, info = self._inner_step(0, games)
        if self.fire_on_reset:
            obs, info = self._inner_step(1, games)
            obs, info = self._inner_step(2, games)
        info = dict(info)
        if games:
            info["games"] = games
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_return += float(reward)
        self.game_length += 1
        lives = self.ale.lives()
        life_lost = 0 < lives < self.lives
        self.lives = lives
        if terminated or truncated:
            self.game_over = True
            info = dict(info)
            info["games"] = [(self.game_return, self.game_length, bool(truncated and not terminated))]
        elif self.episodic_life and life_lost:
            # Baselines' EpisodicLifeEnv: the value target stops at a lost life; the game itself goes on.
            terminated = True
        return obs, float(reward), bool(terminated), bool(truncated), info

    def get_wrapper_state(self) -> dict[str, Any]:
        return {
            "lives": self.lives,
            "game_over": self.game_over,
            "game_return": self.game_return,
            "game_length": self.game_length,
        }

    def set_wrapper_state(self, state: dict[str, Any]) -> None:
        self.lives = state["lives"]
        self.game_over = state["game_over"]
        self.game_return = state["game_return"]
        self.game_length = state["game_length"]


class ChannelsLastFrameStack(gymnasium.Wrapper):  # type: ignore[type-arg]
    """The last ``k`` grayscale frames as channels: [H, W] -> [H, W, k] (oldest first), refilled with the
    reset frame at every reset (baselines ``FrameStack``; Gymnasium's ``FrameStackObservation`` stacks on a
    leading axis)."""

    def __init__(self, env: gymnasium.Env[Any, Any], k: int) -> None:
        super().__init__(env)
        space: Any = env.observation_space
        height, width = space.shape
        self.k = k
        self.observation_space = spaces.Box(0, 255, (height, width, k), dtype=np.uint8)
        self.frames = np.zeros((height, width, k), dtype=np.uint8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.frames = np.repeat(np.asarray(obs, dtype=np.uint8)[..., None], self.k, axis=-1)
        return self.frames.copy(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        # A new array every step: the vector env and the caller may keep the previous one.
        self.frames = np.concatenate(
            [self.frames[..., 1:], np.asarray(obs, dtype=np.uint8)[..., None]], axis=-1
        )
        return self.frames.copy(), reward, terminated, truncated, info


def _find_wrapper(env: gymnasium.Env[Any, Any], kind: type) -> Any:
    while not isinstance(env, kind):
        if not isinstance(env, gymnasium.Wrapper):
            raise TypeError(f"no {kind.__name__} in the wrapper stack")
        env = env.env
    return env


def _make_atari(
    env_id: str, training: bool, max_episode_steps: int | None, render: bool
) -> gymnasium.Env[Any, Any]:
    # The id's registered sticky actions (v5: 0.25, NoFrameskip-v4: 0) are applied by AtariFrames (see there).
    sticky = float(gymnasium.spec(env_id).kwargs.get("repeat_action_probability", 0.0))
    kwargs: dict[str, Any] = {"frameskip": 1, "repeat_action_probability": 0.0, "disable_env_checker": True}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if render:
        kwargs["render_mode"] = "rgb_array"
    env = gymnasium.make(env_id, **kwargs)
    env = AtariFrames(
        env,
        noop_max=ATARI_NOOP_MAX,
        frame_skip=ATARI_FRAME_SKIP,
        size=ATARI_SCREEN_SIZE,
        repeat_action_probability=sticky,
    )
    env = AtariGame(env, episodic_life=training)
    return ChannelsLastFrameStack(env, ATARI_FRAME_STACK)


# ----------------------------------------------------------------------------------------------------------
# Space checks


def _obs_layout(space: Any, env_id: str) -> tuple[tuple[int, ...], type[np.generic]]:
    """(obs_shape, obs_dtype) for a fitting observation space, else ConfigError naming --env."""
    if isinstance(space, spaces.Box):
        if len(space.shape) == 3 and space.dtype == np.uint8:
            return tuple(int(d) for d in space.shape), np.uint8
        if len(space.shape) == 1:
            return (int(space.shape[0]),), np.float32
    raise ConfigError(
        f"--env {env_id!r}: observation space {space} is not supported; supported are {_SUPPORTED}."
    )


def _action_spec(space: Any, env_id: str) -> ActionSpec:
    if isinstance(space, spaces.Discrete):
        return ActionSpec.discrete(int(space.n))
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        low = np.asarray(space.low, dtype=np.float32)
        high = np.asarray(space.high, dtype=np.float32)
        return ActionSpec("continuous", int(space.shape[0]), low, high)
    raise ConfigError(f"--env {env_id!r}: action space {space} is not supported; supported are {_SUPPORTED}.")


# ----------------------------------------------------------------------------------------------------------
# The vectorized env


class GymnasiumVecEnv:
    """``num_envs`` copies of one Gymnasium id (see the module docstring for Atari, MuJoCo and seeds).

    Attributes: ``env_id``, ``num_envs``, ``family`` (``"atari"``, ``"mujoco"``, ``"generic"``),
    ``obs_shape``, ``obs_dtype``, ``action_spec``, ``num_actions`` (= ``action_spec.n``),
    ``truncation_known`` (True), ``restores_exactly`` (whether ``set_state`` continues bit-identically),
    ``supports_render``.
    """

    truncation_known = True

    def __init__(self, spec: EnvSpec) -> None:
        check_gymnasium_id(spec.env_id)
        self.spec = spec
        self.env_id = spec.env_id
        self.num_envs = spec.num_envs
        self.family: Family = env_family(spec.env_id)
        self.training = spec.training
        self._render_mode = self._pick_render_mode()
        try:
            self._vec = SyncVectorEnv(
                [self._env_fn() for _ in range(self.num_envs)],
                copy=False,
                autoreset_mode=AutoresetMode.SAME_STEP,
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"--env {self.env_id!r} could not be built: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self.obs_shape, self.obs_dtype = _obs_layout(self._vec.single_observation_space, self.env_id)
            self.action_spec = _action_spec(self._vec.single_action_space, self.env_id)
        except ConfigError:
            self._vec.close()
            raise
        self.num_actions = self.action_spec.n
        self._discrete_start = int(getattr(self._vec.single_action_space, "start", 0))
        self.restores_exactly = self.family in ("atari", "mujoco") or _copyable(self._vec.envs[0])
        self.supports_render = self._render_mode is not None
        self._env_seeds = np.arange(self.num_envs, dtype=np.int64) + spec.seed
        self._started = False
        self._seeded = False
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self._obs = np.zeros((self.num_envs, *self.obs_shape), dtype=self.obs_dtype)

    # -- construction --------------------------------------------------------------------------------------

    def _pick_render_mode(self) -> str | None:
        """``"rgb_array"`` where the env class offers it (Atari and MuJoCo do), else None (no videos)."""
        env_spec = gymnasium.spec(self.env_id)
        creator = env_spec.entry_point
        try:
            if isinstance(creator, str):
                from gymnasium.envs.registration import load_env_creator

                creator = load_env_creator(creator)
            modes = getattr(creator, "metadata", {}).get("render_modes", [])
        except Exception:
            return None
        return "rgb_array" if "rgb_array" in modes else None

    def _env_fn(self) -> Any:
        env_id, training, limit, render_mode = (
            self.env_id,
            self.training,
            self.spec.max_episode_steps,
            self._render_mode,
        )
        if self.family == "atari":
            return lambda: _make_atari(env_id, training, limit, render_mode is not None)
        kwargs: dict[str, Any] = {"disable_env_checker": True}
        if limit is not None:
            kwargs["max_episode_steps"] = limit
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        return lambda: gymnasium.make(env_id, **kwargs)

    def _error(self, phase: str, exc: BaseException) -> EnvError:
        return EnvError(
            f"Gymnasium env {self.env_id!r} (env seeds {self._env_seeds.tolist()}) failed during {phase}: "
            f"{type(exc).__name__}: {exc}"
        )

    # -- stepping ------------------------------------------------------------------------------------------

    def _batch_obs(self, obs: Any) -> np.ndarray:
        return np.array(obs, dtype=self.obs_dtype)  # a copy: the vector env reuses its buffer (copy=False)

    def reset(self) -> EnvStep:
        """Start every env on a new episode (the first call seeds env i with ``spec.seed + i``; later calls
        continue each env's random streams). Atari: a real reset, a new game."""
        seeds = self._env_seeds.tolist() if not self._seeded else None
        try:
            if self.family == "atari":
                # A VecEnv reset starts new games even where a training episode only lost a life.
                for env in self._vec.envs:
                    _find_wrapper(env, AtariGame).game_over = True
            obs, _ = self._vec.reset(seed=seeds)
        except Exception as exc:
            raise self._error("reset", exc) from exc
        self._seeded = True
        self._started = True
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._obs = self._batch_obs(obs)
        return EnvStep(
            obs=self._obs,
            reward=np.zeros(self.num_envs, dtype=np.float32),
            terminated=np.zeros(self.num_envs, dtype=bool),
            truncated=np.zeros(self.num_envs, dtype=bool),
            first=np.ones(self.num_envs, dtype=bool),
            level_seed=self._env_seeds.copy(),
        )

    def step(self, actions: np.ndarray) -> EnvStep:
        """Apply ``actions`` (int [B] or float [B, n], clipped to the bounds here) and return the result."""
        actions = check_actions(actions, self.num_envs, self._started, self.action_spec)
        if self._discrete_start:
            actions = actions + self._discrete_start
        info: dict[str, Any] = {}
        try:
            if self.family == "atari":
                vec_obs, reward, env_terminated, env_truncated, info = self._vec.step(actions)
                obs = self._batch_obs(vec_obs)
                last_obs = info.get("final_obs")
            else:
                obs, reward, env_terminated, env_truncated, last_obs = self._step_each(actions)
        except Exception as exc:
            raise self._error("step", exc) from exc
        raw_reward = np.asarray(reward, dtype=np.float64)
        # A terminal state reached on the last allowed step is a termination: nothing to bootstrap.
        terminated = np.asarray(env_terminated, dtype=bool)
        truncated = np.asarray(env_truncated, dtype=bool)
        first = terminated | truncated
        # The common case, no episode end, stays cheap below.
        ended = np.flatnonzero(first).tolist() if first.any() else []
        final_obs: np.ndarray | None = None
        if ended:
            truncated &= ~terminated
            if truncated.any():
                final_obs = obs.copy()
                for index in np.flatnonzero(truncated).tolist():
                    final_obs[index] = np.asarray(last_obs[index], dtype=self.obs_dtype)

        episodes: list[EpisodeStats] = []
        if self.family == "atari":
            if ended or "games" in info:
                episodes = self._atari_games(info)
        else:
            self._episode_return += raw_reward
            self._episode_length += 1
            for index in ended:
                episodes.append(
                    EpisodeStats(
                        env_index=index,
                        episode_return=float(self._episode_return[index]),
                        length=int(self._episode_length[index]),
                        level_seed=int(self._env_seeds[index]),
                        success=None,
                        truncated=bool(truncated[index]),
                    )
                )
                self._episode_return[index] = 0.0
                self._episode_length[index] = 0

        if self.family == "atari" and self.training:
            # DQN's reward clipping (Mnih et al. 2015, Methods): sign of the reward, for training only.
            out_reward = np.sign(raw_reward).astype(np.float32)
        else:
            out_reward = raw_reward.astype(np.float32)
        self._obs = obs
        return EnvStep(
            obs=obs,
            reward=out_reward,
            terminated=terminated,
            truncated=truncated,
            first=first,
            level_seed=self._env_seeds.copy(),
            episodes=episodes,
            final_obs=final_obs,
        )

    def _step_each(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, Any]]:
        """``SyncVectorEnv.step`` in ``SAME_STEP`` mode for the families whose ``info`` we do not read (all but
        Atari): the same calls on the same sub-envs (step; where the episode ended, reset), writing straight into
        our arrays instead of merging every info key of every env. With one MuJoCo env that bookkeeping cost
        as much again as the simulation (benchmarks/ppo_mujoco_vs_cleanrl.py). Returns (obs, reward,
        terminated, truncated, {env index: last observation of the episode that ended})."""
        B = self.num_envs
        obs = np.empty((B, *self.obs_shape), dtype=self.obs_dtype)
        reward = np.empty(B, dtype=np.float64)
        terminated = np.empty(B, dtype=bool)
        truncated = np.empty(B, dtype=bool)
        last_obs: dict[int, Any] = {}
        for i, env in enumerate(self._vec.envs):
            env_obs, reward[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                last_obs[i] = env_obs
                env_obs, _ = env.reset()
            obs[i] = env_obs
        return obs, reward, terminated, truncated, last_obs

    def _atari_games(self, info: dict[str, Any]) -> list[EpisodeStats]:
        """Whole games that ended on this step, from ``AtariGame``'s ``info["games"]``: those ended by the
        step (in ``final_info``) and those ended inside the reset that followed (top-level info)."""
        games: list[list[tuple[float, int, bool]]] = [[] for _ in range(self.num_envs)]
        for source in (info.get("final_info", {}), info):
            if "games" in source:
                for index in np.flatnonzero(source["_games"]).tolist():
                    games[index].extend(source["games"][index])
        return [
            EpisodeStats(
                env_index=index,
                episode_return=float(raw_return),
                length=int(length),
                level_seed=int(self._env_seeds[index]),
                success=None,
                truncated=bool(game_truncated),
            )
            for index in range(self.num_envs)
            for raw_return, length, game_truncated in games[index]
        ]

    # -- resume --------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot; see the module docstring for what ``set_state`` restores per family."""
        envs: list[Any]
        if self.family == "atari":
            envs = [_atari_state(env) for env in self._vec.envs]
        elif self.family == "mujoco":
            envs = [_mujoco_state(env) for env in self._vec.envs]
        elif self.restores_exactly:
            envs = [copy.deepcopy(env) for env in self._vec.envs]
        else:
            envs = []
        return {
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "family": self.family,
            "training": self.training,
            "exact": self.restores_exactly,
            "envs": envs,
            "started": self._started,
            "seeded": self._seeded,
            "env_seeds": self._env_seeds.copy(),
            "episode_return": self._episode_return.copy(),
            "episode_length": self._episode_length.copy(),
            "obs": self._obs.copy(),
        }

    def set_state(self, state: Any) -> None:
        """Restore a ``get_state`` snapshot. Where ``restores_exactly`` is False only the seeds are restored and
        the env set waits for a ``reset()`` (``step`` refuses until then): the caller starts every env on a
        new episode and must drop its own carried observation."""
        check_state_matches(state, self.env_id, self.num_envs)
        if state["training"] != self.training:
            raise ValueError("state was taken from a training env set into an evaluation one, or back")
        if not self._seeded:
            # Gymnasium refuses a step before the first reset (OrderEnforcing); the restore overwrites it.
            self._vec.reset(seed=self._env_seeds.tolist())
        self._seeded = state["seeded"]
        # The run's seeds, not this env set's (a resumed run may be built with another seed before restoring).
        self._env_seeds = np.array(state["env_seeds"], dtype=np.int64)
        if not state["exact"]:
            self._started = False
            return
        if self.family == "atari":
            for env, env_state in zip(self._vec.envs, state["envs"], strict=True):
                _set_atari_state(env, env_state)
        elif self.family == "mujoco":
            for env, env_state in zip(self._vec.envs, state["envs"], strict=True):
                _set_mujoco_state(env, env_state)
        else:
            self._vec.envs = [copy.deepcopy(env) for env in state["envs"]]
        self._started = state["started"]
        self._episode_return = np.array(state["episode_return"], dtype=np.float64)
        self._episode_length = np.array(state["episode_length"], dtype=np.int64)
        self._obs = np.array(state["obs"], dtype=self.obs_dtype)

    # -- rendering -----------------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """[B, H, W, 3] uint8 RGB frames (Atari: the emulator screen; MuJoCo: the default camera)."""
        if self._render_mode is None:
            raise EnvError(f"Gymnasium env {self.env_id!r} offers no rgb_array rendering (no videos for it).")
        if self.family == "atari":
            return np.stack([env.unwrapped.ale.getScreenRGB() for env in self._vec.envs])
        try:
            frames = np.stack([np.asarray(env.render(), dtype=np.uint8) for env in self._vec.envs])
        except Exception as exc:
            self.supports_render = False
            raise EnvError(
                f"Gymnasium env {self.env_id!r} failed to render ({type(exc).__name__}: {exc}); for MuJoCo "
                "set MUJOCO_GL=egl or MUJOCO_GL=osmesa, whichever this machine's GL drivers support."
            ) from exc
        return frames

    def agent_positions(self) -> np.ndarray | None:
        """None: Gymnasium envs expose no grid map of the agent."""
        return None

    def close(self) -> None:
        self._vec.close()


# ----------------------------------------------------------------------------------------------------------
# Per-family snapshots (--resume)


def _copyable(env: gymnasium.Env[Any, Any]) -> bool:
    """Whether a deep copy of ``env`` copies its state: EzPickle envs re-create themselves from their
    constructor arguments instead (native simulators: Box2D, MuJoCo, ALE)."""
    return not isinstance(env.unwrapped, gymnasium.utils.EzPickle)


def _time_limit(env: gymnasium.Env[Any, Any]) -> Any:
    from gymnasium.wrappers import TimeLimit

    try:
        return _find_wrapper(env, TimeLimit)
    except TypeError:
        return None


def _atari_state(env: gymnasium.Env[Any, Any]) -> dict[str, Any]:
    unwrapped: Any = env.unwrapped
    limit = _time_limit(env)
    return {
        "ale": unwrapped.ale.cloneState(include_rng=True),
        "np_random": copy.deepcopy(unwrapped.np_random.bit_generator.state),
        "screens": _find_wrapper(env, AtariFrames).screens.copy(),
        "last_action": _find_wrapper(env, AtariFrames).last_action,
        "game": _find_wrapper(env, AtariGame).get_wrapper_state(),
        "frames": _find_wrapper(env, ChannelsLastFrameStack).frames.copy(),
        "elapsed_steps": None if limit is None else limit._elapsed_steps,
    }


def _set_atari_state(env: gymnasium.Env[Any, Any], state: dict[str, Any]) -> None:
    unwrapped: Any = env.unwrapped
    unwrapped.ale.restoreState(state["ale"])
    unwrapped.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
    frames = _find_wrapper(env, AtariFrames)
    frames.screens[...] = state["screens"]
    frames.last_action = state["last_action"]
    _find_wrapper(env, AtariGame).set_wrapper_state(state["game"])
    _find_wrapper(env, ChannelsLastFrameStack).frames = np.array(state["frames"], dtype=np.uint8)
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]


def _mujoco_state(env: gymnasium.Env[Any, Any]) -> dict[str, Any]:
    import mujoco

    unwrapped: Any = env.unwrapped
    signature = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(unwrapped.model, signature), dtype=np.float64)
    mujoco.mj_getState(unwrapped.model, unwrapped.data, physics, signature)
    limit = _time_limit(env)
    return {
        "physics": physics,
        "np_random": copy.deepcopy(unwrapped.np_random.bit_generator.state),
        "elapsed_steps": None if limit is None else limit._elapsed_steps,
    }


def _set_mujoco_state(env: gymnasium.Env[Any, Any], state: dict[str, Any]) -> None:
    import mujoco

    unwrapped: Any = env.unwrapped
    signature = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(
        unwrapped.model, unwrapped.data, np.asarray(state["physics"], dtype=np.float64), signature
    )
    # Derived quantities (positions of bodies, contact forces) that some observations read before a step.
    mujoco.mj_forward(unwrapped.model, unwrapped.data)
    unwrapped.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]
