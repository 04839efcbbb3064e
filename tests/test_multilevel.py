"""The multi-level env: a uniform pick per episode (seed 003 §4.1), level ids logged, spaces checked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from multiscene.config import ConfigError
from multiscene.envs import make_env
from multiscene.envs.base import EnvSpec, EnvStep, EpisodeStats, LevelSet
from multiscene.envs.multilevel import MultiLevelVecEnv, is_multilevel, split_env_ids

IDS = ["MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-Empty-6x6-v0"]


def spec(env_id: str, num_envs: int = 3, max_steps: int | None = 2, seed: int = 0) -> EnvSpec:
    return EnvSpec(env_id=env_id, num_envs=num_envs, seed=seed, levels=LevelSet(0, 50), max_episode_steps=max_steps)


def test_level_frequencies_are_uniform_over_episodes() -> None:
    envs = make_env(spec(",".join(IDS)))
    assert isinstance(envs, MultiLevelVecEnv) and envs.level_names == IDS
    step = envs.reset()
    starts = list(step.level_seed)
    levels: list[int] = []
    rng = np.random.default_rng(0)
    for _ in range(400):
        step = envs.step(rng.integers(envs.num_actions, size=3))
        for ep in step.episodes:
            levels.append(ep.level_seed)
            assert ep.length <= 2
        starts.extend(step.level_seed[step.first].tolist())
    counts = np.bincount(levels, minlength=3)
    assert counts.sum() >= 500
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.chisquare(np.bincount(starts, minlength=3)).pvalue > 1e-3
    # a level pick sticks for the whole episode: level_seed only changes where an episode starts
    envs.close()


def test_episode_stats_keep_the_sub_envs_time_limit_flag() -> None:
    # Episodes cut by the 2-step limit are truncated, as the sub-env reports them (the flag used to be dropped);
    # an action that ends an episode earlier is not (MiniGrid's "done" on the goal: never reached in 2 steps).
    envs = make_env(spec(",".join(IDS[:2]), num_envs=2, max_steps=2))
    envs.reset()
    seen: list[EpisodeStats] = []
    for _ in range(6):
        step = envs.step(np.zeros(2, dtype=np.int64))
        seen.extend(step.episodes)
        assert [ep.truncated for ep in step.episodes] == [bool(step.truncated[ep.env_index]) for ep in step.episodes]
    assert len(seen) == 6 and all(ep.truncated and ep.length == 2 for ep in seen)
    envs.close()


def test_time_limit_cuts_pass_the_last_observation_on_and_bootstrap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # EnvStep.final_obs holds the sub-env's last observation of a cut episode (the reset one is in obs), so that
    # --bootstrap-truncation evaluates it; before, the multi-level env gave none and every cut silently counted as
    # a termination in the targets.
    import torch
    from conftest import tiny_config

    from multiscene.algos.onpolicy.rollout import RolloutCollector
    from multiscene.runtime import make_agent

    envs = make_env(spec(",".join(IDS[:2]), num_envs=2, max_steps=2, seed=4))
    assert envs.truncation_known
    envs.reset()
    envs.step(np.zeros(2, dtype=np.int64))  # turn left
    before = envs.step(np.full(2, 1, dtype=np.int64))  # turn right: the episode is cut after it
    assert before.truncated.all() and before.final_obs is not None
    assert not np.array_equal(before.final_obs, before.obs)  # last frames of the cut episodes, not the new starts

    cfg = tiny_config(str(tmp_path / "run"), env=",".join(IDS[:2]), num_envs=2, num_steps=8, bootstrap_truncation=True)
    agent = make_agent(cfg, envs)
    rollout = RolloutCollector(envs, agent, cfg, torch.device("cpu")).collect(agent)
    assert rollout.truncated is not None and rollout.final_values is not None
    assert rollout.truncated.sum() == 8  # the collector resets: each slot's 2-step episodes are cut 4 times in 8
    assert bool((rollout.final_values[rollout.truncated] != 0).all())
    envs.close()


def test_level_only_changes_at_episode_starts_and_obs_has_the_shared_shape() -> None:
    envs = make_env(spec(",".join(IDS), num_envs=2, max_steps=4, seed=3))
    step = envs.reset()
    assert step.obs.shape == (2, 7, 7, 3) and envs.num_actions == 7
    prev = step.level_seed.copy()
    for _ in range(60):
        step = envs.step(np.zeros(2, dtype=np.int64))
        changed = step.level_seed != prev
        assert not (changed & ~step.first).any()
        prev = step.level_seed.copy()
    envs.close()


def test_state_roundtrip_replays_the_same_levels() -> None:
    envs = make_env(spec(",".join(IDS[:2]), num_envs=2))
    envs.reset()
    for _ in range(5):
        envs.step(np.ones(2, dtype=np.int64))
    snapshot = envs.get_state()
    a = [envs.step(np.full(2, 2, dtype=np.int64)) for _ in range(10)]
    envs.set_state(snapshot)
    b = [envs.step(np.full(2, 2, dtype=np.int64)) for _ in range(10)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.level_seed, y.level_seed)
    envs.close()


class _FakeEnv:
    """A one-env VecEnv with a chosen observation shape and action count."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int) -> None:
        self.env_id, self.num_envs, self.obs_shape, self.num_actions = "fake", 1, obs_shape, num_actions

    def reset(self) -> EnvStep:
        return EnvStep(np.zeros((1, *self.obs_shape), np.uint8), np.zeros(1, np.float32), np.zeros(1, bool),
                       np.zeros(1, bool), np.ones(1, bool), np.zeros(1, np.int64))

    def step(self, actions: np.ndarray) -> EnvStep:
        return EnvStep(np.zeros((1, *self.obs_shape), np.uint8), np.ones(1, np.float32), np.ones(1, bool),
                       np.zeros(1, bool), np.ones(1, bool), np.zeros(1, np.int64),
                       [EpisodeStats(0, 1.0, 1, 0, None)])

    def close(self) -> None:
        pass


def test_mismatched_spaces_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiscene.envs.multilevel as ml

    shapes: dict[str, Any] = {"a": ((7, 7, 3), 7), "b": ((64, 64, 1), 12)}
    monkeypatch.setattr(ml, "make_single_env", lambda s: _FakeEnv(*shapes[s.env_id]))
    with pytest.raises(ConfigError, match="share observation and action spaces"):
        MultiLevelVecEnv(["a", "b"], spec("a,b"))
    shapes["b"] = ((7, 7, 3), 7)
    envs = MultiLevelVecEnv(["a", "b"], spec("a,b"))
    envs.reset()
    assert envs.step(np.zeros(3, dtype=np.int64)).episodes[0].episode_return == 1.0


def test_ids_and_bad_input() -> None:
    assert split_env_ids("mario:3-1,3-2") == ["mario:3-1", "mario:3-2"]
    assert split_env_ids("mario:E4") == ["mario:3-1", "mario:3-2", "mario:3-3", "mario:3-4"]
    assert is_multilevel("mario:E4") and not is_multilevel("mario:1-1")
    assert is_multilevel("MiniGrid-Empty-5x5-v0,MiniGrid-DoorKey-5x5-v0")
    assert not is_multilevel("coinrun,starpilot")  # Procgen lists keep make_env's fixed share per game
    with pytest.raises(ConfigError, match="more than once"):
        split_env_ids("MiniGrid-Empty-5x5-v0,MiniGrid-Empty-5x5-v0")
    with pytest.raises(ConfigError, match="more than once"):
        split_env_ids("mario:3-1,3-1")
