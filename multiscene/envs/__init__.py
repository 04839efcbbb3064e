"""Environments behind one small vectorized interface (``multiscene.envs.base.VecEnv``).

``make_env(spec)`` builds a train or test env set from an ``EnvSpec``:

- a Procgen game name (``coinrun``), or several comma-separated (``coinrun,starpilot``), runs on
  procgen-mirror's gym3 ``ProcgenGym3Env`` (``multiscene.envs.procgen``);
- a registered MiniGrid id (``MiniGrid-DoorKey-5x5-v0``) runs as a multi-scene set whose resets draw level
  seeds from the spec's ``LevelSet`` (``multiscene.envs.minigrid``);
- any other registered Gymnasium id (Atari through ale-py: ``BoxingNoFrameskip-v4``, ``ALE/Boxing-v5``;
  MuJoCo: ``HalfCheetah-v5``; ``CartPole-v1``, ``Pendulum-v1``, a user's own registered env) runs on
  ``multiscene.envs.gymnasium.GymnasiumVecEnv``. These have no level sets: train and test differ by seed only.

Bad input is reported as ``ConfigError`` naming the command-line flag (issue #2, "Bad input"), before any env
is built: some Procgen misconfigurations abort the whole process from C++ instead of raising.
"""

from __future__ import annotations

import difflib
from typing import Literal

from multiscene.config import ConfigError
from multiscene.envs import scenes  # noqa: F401  (side effect: registers MiniGrid-HiddenPayoff-v0)
from multiscene.envs.base import ActionSpec, EnvError, EnvSpec, EnvStep, EpisodeStats, LevelSet, VecEnv

EnvFamily = Literal["procgen", "minigrid", "gymnasium"]

# The 16 Procgen games (procgen.env.ENV_NAMES). Kept here so that checking an env id does not import procgen
# (slow, and its gym dependency prints a deprecation notice); a test asserts the two lists are equal.
PROCGEN_GAMES: tuple[str, ...] = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)

# Procgen's C++ side calls fassert (process abort, not an exception) for a mode a game does not implement
# (procgen/src/game.cpp), so the pairs are checked here. "exploration" is left out: it overrides the level
# range with one fixed level, which would silently break the train/test split.
PROCGEN_DISTRIBUTION_MODES: dict[str, frozenset[str] | None] = {
    "easy": None,  # None: every game
    "hard": None,
    "extreme": frozenset({"chaser", "dodgeball", "leaper", "starpilot"}),
    "memory": frozenset({"caveflyer", "dodgeball", "heist", "jumper", "maze", "miner"}),
}

_EXAMPLE_MINIGRID_ID = "MiniGrid-DoorKey-5x5-v0"
# Procgen stores level seeds in a C int; MiniGrid shares the bound for simplicity.
_MAX_LEVEL_SEED = 2**31 - 1

__all__ = [
    "PROCGEN_DISTRIBUTION_MODES",
    "ActionSpec",
    "EnvFamily",
    "PROCGEN_GAMES",
    "EnvError",
    "EnvSpec",
    "EnvStep",
    "EpisodeStats",
    "LevelSet",
    "VecEnv",
    "check_env_id",
    "check_env_spec",
    "env_family",
    "is_procgen",
    "knows_truncation",
    "make_env",
    "minigrid_ids",
    "procgen_games",
]


def procgen_games(env_id: str) -> list[str]:
    """The comma-separated parts of ``env_id`` (``"coinrun,starpilot"`` -> ``["coinrun", "starpilot"]``)."""
    return [part.strip() for part in env_id.split(",")]


def is_procgen(env_id: str) -> bool:
    """True when every comma-separated part of ``env_id`` is a Procgen game."""
    return all(game in PROCGEN_GAMES for game in procgen_games(env_id))


def minigrid_ids() -> list[str]:
    """Every registered MiniGrid id (``MiniGrid-*``), sorted. Importing minigrid registers them."""
    import gymnasium
    import minigrid  # noqa: F401  (side effect: registers the MiniGrid ids with gymnasium)

    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith("MiniGrid-"))


def env_family(env_id: str) -> EnvFamily:
    """Which env class runs ``env_id``: Procgen game(s), a ``MiniGrid-*`` id, or any other (Gymnasium) id.

    By name only (nothing is imported or built); ``check_env_id`` says whether the id exists.
    """
    from multiscene.envs.mario import is_mario
    from multiscene.envs.multilevel import is_multilevel

    if is_procgen(env_id):
        return "procgen"
    if is_multilevel(env_id):
        return "multilevel"
    if is_mario(env_id):
        return "mario"
    if env_id.startswith("MiniGrid-"):
        return "minigrid"
    return "gymnasium"


def knows_truncation(env_id: str) -> bool:
    """Whether the env set of ``env_id`` reports time-limit truncations apart from terminations (its
    ``truncation_known``), by name: False for Procgen (gym3 has one ``first`` flag), True otherwise. For the
    config's check of ``--bootstrap-truncation`` (issue #16, "Bad input"), without building an env."""
    return env_family(env_id) != "procgen"


def check_env_id(env_id: str) -> None:
    """Raise ConfigError naming ``--env`` unless ``env_id`` is Procgen game(s), a registered MiniGrid id, or a
    registered Gymnasium id whose backend loads (ale-py ids register on import; a missing Atari ROM or a
    MuJoCo that fails to load is refused with the reason). Builds no env.

    Only ``MiniGrid-*`` ids count as MiniGrid (the config tells the families apart by that prefix). Super
    Mario Bros levels are ``mario:W-S`` (or a level set, ``mario:E4``); a comma-separated list of other ids is
    a multi-level env that picks one of them per episode (seed 003; all-Procgen lists keep Procgen's fixed
    share of envs per game).
    """
    if is_procgen(env_id):
        return
    family = env_family(env_id)
    if family == "multilevel":
        from multiscene.envs.multilevel import split_env_ids

        parts = split_env_ids(env_id)
        for part in parts:
            check_env_id(part)
        families = {part: env_family(part) for part in parts}
        if len(set(families.values())) > 1:
            raise ConfigError(
                f"--env {env_id!r}: the levels of a multi-level env must share observation and action spaces, "
                f"so one env family; here: {', '.join(f'{p} ({f})' for p, f in families.items())}."
            )
        return
    if family == "mario":
        from multiscene.envs.mario import parse_mario_levels

        parse_mario_levels(env_id)
        return
    parts = procgen_games(env_id)
    if len(parts) > 1:
        unknown = [part for part in parts if part not in PROCGEN_GAMES]
        suggestions = sorted(
            {match for part in unknown for match in difflib.get_close_matches(part, PROCGEN_GAMES, n=2)}
        )
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        raise ConfigError(
            f"--env {env_id!r}: several comma-separated envs must all be Procgen games; "
            f"not Procgen games: {', '.join(repr(u) for u in unknown)}.{hint} "
            f"Allowed games: {', '.join(PROCGEN_GAMES)}."
        )
    registered = minigrid_ids()
    if env_id in registered:
        return
    import gymnasium

    from multiscene.envs.gymnasium import check_gymnasium_id, register_atari

    register_atari()
    if env_id in gymnasium.registry and not env_id.startswith("MiniGrid-"):
        check_gymnasium_id(env_id)
        return
    others = [name for name in gymnasium.registry if not name.startswith("MiniGrid-")]
    candidates = list(PROCGEN_GAMES) + registered + others
    suggestions = difflib.get_close_matches(env_id, candidates, n=3, cutoff=0.6)
    if not suggestions:
        # Procgen names are short and lowercase: a capitalized game ("CoinRun") is closer after lowering.
        suggestions = difflib.get_close_matches(env_id.lower(), PROCGEN_GAMES, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ConfigError(
        f"--env {env_id!r} is not a Procgen game, a registered MiniGrid id or a registered Gymnasium id."
        f"{hint} "
        f"Allowed: a Procgen game ({', '.join(PROCGEN_GAMES)}; comma-separated for several), "
        f"a registered MiniGrid id such as {_EXAMPLE_MINIGRID_ID}, an Atari id (BoxingNoFrameskip-v4, "
        "ALE/Boxing-v5), a MuJoCo id (HalfCheetah-v5) or any registered Gymnasium id with image or vector "
        "Box observations and Discrete or Box actions (CartPole-v1, Pendulum-v1)."
    )


def check_env_spec(spec: EnvSpec) -> None:
    """Raise ConfigError, naming the flag and what is allowed, for anything ``make_env`` cannot build."""
    check_env_id(spec.env_id)
    if spec.num_envs <= 0:
        raise ConfigError(f"--num-envs must be positive, got {spec.num_envs}.")
    levels = spec.levels
    if levels.start_level < 0 or levels.num_levels < 0:
        raise ConfigError(
            f"--start-level and --num-levels must be >= 0, got start_level={levels.start_level}, "
            f"num_levels={levels.num_levels}."
        )
    if levels.start_level + levels.num_levels > _MAX_LEVEL_SEED:
        raise ConfigError(
            f"level seeds must stay below 2**31 - 1: start_level ({levels.start_level}) + num_levels "
            f"({levels.num_levels}) is too large."
        )
    if is_procgen(spec.env_id):
        games = procgen_games(spec.env_id)
        if spec.num_envs % len(games) != 0:
            raise ConfigError(
                f"--num-envs ({spec.num_envs}) must be divisible by the number of games in --env "
                f"({len(games)}: {', '.join(games)}): each game gets the same share of envs."
            )
        if spec.distribution_mode not in PROCGEN_DISTRIBUTION_MODES:
            raise ConfigError(
                f"--distribution-mode must be one of {', '.join(PROCGEN_DISTRIBUTION_MODES)}; "
                f"got {spec.distribution_mode!r}."
            )
        supported = PROCGEN_DISTRIBUTION_MODES[spec.distribution_mode]
        if supported is not None and any(game not in supported for game in games):
            raise ConfigError(
                f"--distribution-mode {spec.distribution_mode} exists only for "
                f"{', '.join(sorted(supported))}; --env is {spec.env_id!r}."
            )
        if spec.num_threads < 0:
            raise ConfigError(f"--num-threads must be >= 0, got {spec.num_threads}.")
        if spec.max_episode_steps is not None:
            raise ConfigError(
                "--max-episode-steps applies to MiniGrid only; Procgen games have their own time limits."
            )
    else:
        # Gymnasium ids have no level sets (train and test differ by seed): the level range is not used.
        if env_family(spec.env_id) == "minigrid" and levels.num_levels == 0:
            raise ConfigError("--num-levels must be > 0 for MiniGrid (a fixed set of level seeds to draw).")
        if spec.max_episode_steps is not None and spec.max_episode_steps <= 0:
            raise ConfigError(f"--max-episode-steps must be positive, got {spec.max_episode_steps}.")


def make_env(spec: EnvSpec) -> VecEnv:
    """Build the vectorized env set described by ``spec`` (call ``reset()`` before the first ``step``)."""
    check_env_spec(spec)
    family = env_family(spec.env_id)
    if family == "multilevel":
        from multiscene.envs.multilevel import MultiLevelVecEnv, split_env_ids

        return MultiLevelVecEnv(split_env_ids(spec.env_id), spec)
    if family == "mario":
        from multiscene.envs.mario import MarioVecEnv

        return MarioVecEnv(spec)
    if family == "procgen":
        from multiscene.envs.procgen import ProcgenVecEnv

        return ProcgenVecEnv(spec)
    if family == "minigrid":
        from multiscene.envs.minigrid import MiniGridVecEnv

        return MiniGridVecEnv(spec)
    from multiscene.envs.gymnasium import GymnasiumVecEnv

    return GymnasiumVecEnv(spec)
