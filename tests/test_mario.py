"""Super Mario Bros (seed 003 §5.1-5.3): level ids, the 12 actions, one short episode's shapes and info."""

from __future__ import annotations

import numpy as np
import pytest

from multiscene.config import ConfigError
from multiscene.envs.base import EnvSpec, LevelSet
from multiscene.envs.mario import (
    ACTION_BYTES,
    LEVEL_SETS,
    MARIO_ACTIONS,
    MarioVecEnv,
    parse_mario_levels,
    to_gray64,
)


def test_level_sets_follow_the_seed() -> None:
    assert parse_mario_levels("mario:E4") == ["3-1", "3-2", "3-3", "3-4"]
    e10 = parse_mario_levels("mario:E10")
    assert len(e10) == 10 and "2-2" not in e10 and "2-3" not in e10  # underwater 2-2 and 2-3 excluded (§5.3)
    assert set(LEVEL_SETS["E4"]) <= set(e10)
    assert parse_mario_levels("mario:transfer") == ["1-1", "1-2", "1-3", "1-4"]
    # the protocol's joint run joins single-level ids (plan_runs: "mario:3-1,mario:3-2")
    assert parse_mario_levels("mario:3-1,mario:3-2") == ["3-1", "3-2"]
    assert not set(LEVEL_SETS["transfer"]) & set(e10)


def test_bad_levels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown Super Mario Bros level '9-1'"):
        parse_mario_levels("mario:9-1")
    with pytest.raises(ConfigError, match="3-1 more than once"):
        parse_mario_levels("mario:3-1,3-2,3-1")
    with pytest.raises(ConfigError, match="more than once"):
        parse_mario_levels("mario:E4,3-2")


def test_action_scheme_matches_the_seed_and_the_package() -> None:
    from gym_super_mario_bros.actions import COMPLEX_MOVEMENT
    from nes_py.wrappers import JoypadSpace

    assert len(MARIO_ACTIONS) == 12
    assert [list(a) or ["NOOP"] for a in MARIO_ACTIONS] == COMPLEX_MOVEMENT
    for combo, byte in zip(MARIO_ACTIONS, ACTION_BYTES):
        assert byte == sum(JoypadSpace._button_map[b] for b in combo)


def test_grayscale_resize() -> None:
    frame = np.zeros((240, 256, 3), np.uint8)
    frame[:, 128:] = 255
    gray = to_gray64(frame)
    assert gray.shape == (64, 64, 1) and gray.dtype == np.uint8
    assert gray[:, :31].max() == 0 and gray[:, 33:].min() == 255


def test_one_short_episode_on_1_1() -> None:
    envs = MarioVecEnv(EnvSpec("mario:1-1", 1, seed=0, levels=LevelSet(0, 1), max_episode_steps=6))
    try:
        start = envs.reset()
        assert start.obs.shape == (1, 64, 64, 1) and start.obs.dtype == np.uint8 and envs.num_actions == 12
        assert start.obs.std() > 0  # a real frame, not a blank
        rewards = []
        step = start
        for t in range(6):
            previous, step = step, envs.step(np.array([4]))  # right + A + B
            rewards.append(float(step.reward[0]))
            assert -15.0 <= step.reward[0] <= 15.0
            assert step.first[0] == (t == 5)
            assert (step.final_obs is not None) == (t == 5)
        assert step.truncated[0] and not step.terminated[0]
        # The cut episode's last frame for --bootstrap-truncation: Mario has moved on from the frame before it,
        # while obs is the new episode's start.
        assert step.final_obs is not None and step.final_obs.shape == (1, 64, 64, 1)
        assert not np.array_equal(step.final_obs, previous.obs) and np.array_equal(step.obs, start.obs)
        (episode,) = step.episodes
        assert episode.length == 6 and episode.episode_return == pytest.approx(sum(rewards)) and episode.truncated
        assert episode.success is False
        (extra,) = envs.pop_episode_extras()
        assert extra["level"] == "1-1" and extra["x_pos"] > 40 and extra["flag_get"] is False
        assert sum(rewards) > 0  # running right pays
        assert not envs.restores_exactly  # the emulator cannot be pickled: a resume restarts the episodes
        envs.set_state(envs.get_state())
    finally:
        envs.close()


def test_short_mario_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A few dozen steps on Mario 1-1 (64x64x1 frames, conv path); the emulator cannot be snapshotted, so the
    checkpoint keeps no env state and a resume restarts the running episodes. (The evaluation is left out here:
    each emulator takes seconds to start; the MiniGrid run test covers it.)"""
    import json

    from conftest import tiny_config

    from multiscene.algos.dreamer import DreamerConfig
    from multiscene.algos.dreamer.loop import train
    from multiscene.checkpoint import load_latest_checkpoint
    from multiscene.logger import read_metrics

    cfg = tiny_config(str(tmp_path / "mario"), env="mario:1-1", critic="scalar", num_envs=1, total_timesteps=40,
                      tensorboard=False, max_episode_steps=10, final_eval=False)
    dreamer = DreamerConfig(size="small", batch_size=2, seq_len=6, train_every=8, prefill=16, horizon=3,
                            log_every=8, checkpoint_every=40, replay_capacity=1000)
    run_dir = train(cfg, dreamer)
    ckpt = load_latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.state["carry"]["envs"] is None and ckpt.state["learner"]["train_steps"] == 3
    assert json.loads((run_dir / "config.json").read_text())["config"]["env"] == "mario:1-1"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert any("charts/x_pos" in r for r in records)
    assert any("dreamer/image_loss" in r for r in records)


def test_dreamer_evaluation_episodes_carry_their_own_extras_on_a_mario_level_set() -> None:
    """The multi-level env passes Mario's extras on, paired with their episodes: each counted episode's extras
    name the level it was played on (``run_policy_episodes``; the fake env of test_eval_extras.py checks the
    numbers that reach eval/<tag>.json)."""
    import torch

    from multiscene.algos.dreamer import DreamerConfig
    from multiscene.algos.dreamer.loop import DreamerAgent, run_policy_episodes
    from multiscene.envs import make_env

    envs = make_env(EnvSpec("mario:1-1,1-2", 2, seed=5, levels=LevelSet(0, 1), max_episode_steps=3))
    try:
        agent = DreamerAgent((64, 64, 1), 12, DreamerConfig(size="small"))
        extras: list = []
        episodes = run_policy_episodes(agent, envs, 4, False, torch.device("cpu"), extras=extras)
        names = envs.level_names
    finally:
        envs.close()
    assert len(episodes) == len(extras) == 4
    assert [f"mario:{x['level']}" for x in extras] == [names[e.level_seed] for e in episodes]
    assert all(x["x_pos"] > 0 and x["flag_get"] is False for x in extras)
