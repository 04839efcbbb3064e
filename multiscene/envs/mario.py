"""Super Mario Bros levels behind ``multiscene.envs.base.VecEnv`` (seed 003 §5.1-5.3; issue 13).

Built on gym-super-mario-bros 7.4.0 / nes-py 8.2.1. Both speak the old gym API (``step`` returns 4 values), so
the env class is constructed directly, ``SuperMarioBrosEnv(target=(world, stage))``: a single-stage env whose
episode ends when Mario dies or reaches the flag. No gym wrapper is used; the preprocessing is ours:

- actions: the 12 button combinations listed in seed 003 §5.1 (gym-super-mario-bros' ``COMPLEX_MOVEMENT``):
  None, Right, Right+A, Right+B, Right+A+B, A, Left, Left+A, Left+B, Left+A+B, Down, Up, mapped to the NES
  controller bitmap as nes-py's ``JoypadSpace`` does;
- action repeat 4 and sticky actions 0.2 (seed 003 §5.2): on each emulator frame, with probability 0.2 the
  previous frame's buttons are pressed again instead of the chosen ones (per frame, as ALE's
  ``repeat_action_probability``, Machado et al. 2018; our reading of "repeating the previous action");
- reward: the package's reward (x progress, minus the clock, -15 on death) summed over the 4 frames, then
  clipped to [-15, 15] (seed 003 §5.1);
- observation: the last frame in grayscale (ITU-R 601 luma, PIL's ``L``), area-resized to 64x64, uint8
  ``(64, 64, 1)``.

Each finished episode's last ``x_pos`` and ``flag_get`` are kept and handed out by ``pop_episode_extras()``
(the loop logs them as ``charts/x_pos``, ``charts/flag_get``; the evaluations report ``x_pos_mean``, ``x_pos_std``
and ``flag_rate`` per pass, ``multiscene.evaluate.summarize``). ``EpisodeStats.success`` is ``flag_get``.

Level ids: ``mario:W-S`` (worlds 1-8, stages 1-4); a comma list or a named set (``mario:E4``, ``mario:E10``,
``mario:transfer``) is a multi-level env (``multiscene.envs.multilevel``). The emulator state cannot be
pickled, so ``get_state`` raises ``NotImplementedError``: a resumed run restarts the running episodes.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from multiscene.config import ConfigError
from multiscene.envs.base import EnvError, EnvSpec, EnvStep, EpisodeStats, check_actions

MARIO_PREFIX = "mario:"
# Seed 003 §5.1: the twelve button combinations (gym-super-mario-bros actions.COMPLEX_MOVEMENT).
MARIO_ACTIONS: tuple[tuple[str, ...], ...] = (
    (), ("right",), ("right", "A"), ("right", "B"), ("right", "A", "B"), ("A",), ("left",), ("left", "A"),
    ("left", "B"), ("left", "A", "B"), ("down",), ("up",),
)
# The NES controller bitmap (nes_py.wrappers.JoypadSpace._button_map).
_BUTTON_BITS = {"right": 0x80, "left": 0x40, "down": 0x20, "up": 0x10, "start": 0x08, "select": 0x04, "B": 0x02,
                "A": 0x01}
ACTION_BYTES: tuple[int, ...] = tuple(sum(_BUTTON_BITS[b] for b in combo) for combo in MARIO_ACTIONS)

ACTION_REPEAT = 4
STICKY_PROBABILITY = 0.2
REWARD_CLIP = 15.0
OBS_SIZE = 64

# Seed 003 §5.3. E10 is "the first ten levels after world one", without the underwater level 2-2 and 2-3.
LEVEL_SETS: dict[str, tuple[str, ...]] = {
    "E4": ("3-1", "3-2", "3-3", "3-4"),
    "E10": ("2-1", "2-4", "3-1", "3-2", "3-3", "3-4", "4-1", "4-2", "4-3", "4-4"),
    "transfer": ("1-1", "1-2", "1-3", "1-4"),
}
_LEVEL_RE = re.compile(r"^([1-8])-([1-4])$")


def is_mario(env_id: str) -> bool:
    return env_id.startswith(MARIO_PREFIX)


def parse_mario_levels(env_id: str, flag: str = "--env") -> list[str]:
    """``mario:3-1,3-2`` or ``mario:E4`` -> ``["3-1", "3-2", ...]``; ConfigError for unknown or repeated levels.

    Each part may repeat the prefix (``mario:3-1,mario:3-2``): that is how the protocol's joint run and
    ``MultiLevelVecEnv.env_id`` join the ids of single levels."""
    if not is_mario(env_id):
        raise ConfigError(f"{flag} {env_id!r}: a Mario env id starts with {MARIO_PREFIX!r}, e.g. mario:1-1.")
    body = env_id[len(MARIO_PREFIX):]
    levels: list[str] = []
    for part in (p.strip() for p in body.split(",")):
        part = part[len(MARIO_PREFIX):] if part.startswith(MARIO_PREFIX) else part
        if part in LEVEL_SETS:
            levels.extend(LEVEL_SETS[part])
        elif _LEVEL_RE.match(part):
            levels.append(part)
        else:
            sets = "; ".join(f"{name} = {' '.join(members)}" for name, members in LEVEL_SETS.items())
            raise ConfigError(
                f"{flag} {env_id!r}: unknown Super Mario Bros level {part!r}. Allowed: W-S with world W in 1-8 and "
                f"stage S in 1-4 (e.g. mario:3-1), comma-separated for several, or a level set ({sets})."
            )
    repeated = sorted({lv for lv in levels if levels.count(lv) > 1})
    if repeated:
        raise ConfigError(f"{flag} {env_id!r} lists level(s) {', '.join(repeated)} more than once; list each once.")
    return levels


def to_gray64(frame: np.ndarray) -> np.ndarray:
    """[240, 256, 3] RGB -> [64, 64, 1] uint8 grayscale (PIL luma, box-filtered resize)."""
    from PIL import Image

    image = Image.fromarray(frame).convert("L").resize((OBS_SIZE, OBS_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)[:, :, None]


class MarioVecEnv:
    """``spec.num_envs`` emulators on one level ``mario:W-S``. Observations (64, 64, 1) uint8, 12 actions."""

    def __init__(self, spec: EnvSpec) -> None:
        levels = parse_mario_levels(spec.env_id)
        if len(levels) != 1:
            raise ConfigError(f"MarioVecEnv runs one level; {spec.env_id!r} is a multi-level env (make_env).")
        self.level = levels[0]
        world, stage = (int(x) for x in self.level.split("-"))
        self.env_id = f"{MARIO_PREFIX}{self.level}"
        self.num_envs = spec.num_envs
        self.obs_shape: tuple[int, ...] = (OBS_SIZE, OBS_SIZE, 1)
        self.num_actions = len(MARIO_ACTIONS)
        self.max_episode_steps = spec.max_episode_steps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gym 0.26's deprecation notice on import
            from gym_super_mario_bros import SuperMarioBrosEnv

            self._envs = [SuperMarioBrosEnv(target=(world, stage)) for _ in range(self.num_envs)]
        self._rng = np.random.default_rng(spec.seed)
        self._last_byte = [0] * self.num_envs
        self._return = [0.0] * self.num_envs
        self._length = [0] * self.num_envs
        self._started = False
        self._extras: list[dict[str, Any]] = []
        # 0-based level index (W - 1) * 4 + (S - 1) as the "level seed" (logging only, never given to the agent)
        self.level_id = (world - 1) * 4 + (stage - 1)

    def _reset_one(self, index: int) -> np.ndarray:
        self._last_byte[index] = 0
        self._return[index] = 0.0
        self._length[index] = 0
        try:
            frame = self._envs[index].reset()
        except Exception as exc:
            raise EnvError(f"Mario env {self.env_id!r} (env {index}) failed during reset: {exc}") from exc
        return to_gray64(frame)

    def reset(self) -> EnvStep:
        obs = np.stack([self._reset_one(i) for i in range(self.num_envs)])
        self._started = True
        n = self.num_envs
        return EnvStep(obs=obs, reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                       truncated=np.zeros(n, bool), first=np.ones(n, bool),
                       level_seed=np.full(n, self.level_id, np.int64))

    def step(self, actions: np.ndarray) -> EnvStep:
        actions = check_actions(actions, self.num_envs, self._started)
        n = self.num_envs
        obs = np.empty((n, *self.obs_shape), np.uint8)
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        final_obs: np.ndarray | None = None
        episodes: list[EpisodeStats] = []
        for i, (env, action) in enumerate(zip(self._envs, actions.tolist())):
            chosen = ACTION_BYTES[action]
            total, done, frame, info = 0.0, False, None, {}
            try:
                for _ in range(ACTION_REPEAT):
                    byte = self._last_byte[i] if self._rng.random() < STICKY_PROBABILITY else chosen
                    self._last_byte[i] = byte
                    frame, r, done, info = env.step(byte)
                    total += float(r)
                    if done:
                        break
            except Exception as exc:
                raise EnvError(f"Mario env {self.env_id!r} (env {i}) failed during step: {exc}") from exc
            r = float(np.clip(total, -REWARD_CLIP, REWARD_CLIP))
            reward[i] = r
            self._return[i] += r
            self._length[i] += 1
            cut = self.max_episode_steps is not None and self._length[i] >= self.max_episode_steps
            if done or cut:
                terminated[i], truncated[i] = done, cut and not done
                flag = bool(info.get("flag_get", False))
                episodes.append(EpisodeStats(i, self._return[i], self._length[i], self.level_id, flag,
                                             truncated=bool(truncated[i])))
                self._extras.append({"level": self.level, "x_pos": int(info.get("x_pos", 0)), "flag_get": flag})
                if truncated[i]:
                    # The last frame of the cut episode: what --bootstrap-truncation evaluates (issue 16).
                    assert frame is not None
                    if final_obs is None:
                        final_obs = np.empty((n, *self.obs_shape), np.uint8)
                    final_obs[i] = to_gray64(frame)
                obs[i] = self._reset_one(i)
            else:
                assert frame is not None
                obs[i] = to_gray64(frame)
        if final_obs is not None:
            kept = ~truncated  # rows without a time-limit cut: a copy of obs (EnvStep.final_obs: unspecified there)
            final_obs[kept] = obs[kept]
        return EnvStep(obs=obs, reward=reward, terminated=terminated, truncated=truncated,
                       first=terminated | truncated, level_seed=np.full(n, self.level_id, np.int64),
                       episodes=episodes, final_obs=final_obs)

    def pop_episode_extras(self) -> list[dict[str, Any]]:
        """``{"level", "x_pos", "flag_get"}`` of each episode finished since the last call."""
        out, self._extras = self._extras, []
        return out

    restores_exactly = False
    """The NES emulator's state cannot be pickled: ``--resume`` restarts every env on a new episode."""

    def get_state(self) -> Any:
        """What can be saved: the id and size (the emulator's state cannot be pickled; see restores_exactly)."""
        return {"env_id": self.env_id, "num_envs": self.num_envs}

    def set_state(self, state: Any) -> None:
        """Checks the snapshot belongs to this env set; the caller then resets (``restores_exactly`` is False)."""
        from multiscene.envs.base import check_state_matches

        check_state_matches(state, self.env_id, self.num_envs)

    def render(self) -> np.ndarray:
        """[B, 240, 256, 3] RGB screens."""
        return np.stack([np.asarray(env.screen) for env in self._envs])

    def agent_positions(self) -> np.ndarray | None:
        return None

    def close(self) -> None:
        for env in self._envs:
            env.close()
