"""Gymnasium envs behind the VecEnv contract (issue #10 item 5, issue #16 env part): Atari preprocessing and
whole-game scores, MuJoCo continuous actions and truncation, generic ids, seeds, resume, bad input, and the
encoders for their observations."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import multiscene.envs.gymnasium as gym_envs
from multiscene.config import ConfigError
from multiscene.envs import check_env_id, env_family, knows_truncation, make_env
from multiscene.envs.base import ActionSpec, EnvSpec, EnvStep, LevelSet, check_actions
from multiscene.envs.gymnasium import GymnasiumVecEnv, area_resize_weights
from multiscene.models.encoders import MLPEncoder, NatureCNN, encoder_name, make_encoder


def gym_spec(env_id: str, num_envs: int = 2, seed: int = 0, **kwargs: Any) -> EnvSpec:
    return EnvSpec(env_id, num_envs, seed, LevelSet(0, 0), **kwargs)


def ledger_check(env: Any, actions: list[np.ndarray]) -> list[EnvStep]:
    """Step ``env`` from a reset, checking shapes, dtypes, first = terminated | truncated, final_obs present
    exactly when some env was truncated, and every episode's return and length against a hand-kept sum."""
    n = env.num_envs
    start = env.reset()
    assert start.obs.shape == (n, *env.obs_shape) and start.obs.dtype == env.obs_dtype
    assert start.first.all() and start.final_obs is None
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    steps = [start]
    for action in actions:
        step = env.step(action)
        assert step.obs.shape == (n, *env.obs_shape) and step.obs.dtype == env.obs_dtype
        assert step.reward.shape == (n,) and step.reward.dtype == np.float32
        np.testing.assert_array_equal(step.first, step.terminated | step.truncated)
        assert not (step.terminated & step.truncated).any()
        assert (step.final_obs is not None) == bool(step.truncated.any())
        returns += step.reward
        lengths += 1
        assert [e.env_index for e in step.episodes] == np.flatnonzero(step.first).tolist()
        for episode in step.episodes:
            assert episode.episode_return == pytest.approx(returns[episode.env_index], rel=1e-5)
            assert episode.length == lengths[episode.env_index]
            assert episode.truncated == step.truncated[episode.env_index]
        returns[step.first] = 0.0
        lengths[step.first] = 0
        steps.append(step)
    return steps


# ----------------------------------------------------------------------------------------------------------
# Action specs


def test_action_spec_and_continuous_actions_are_clipped_by_the_env() -> None:
    spec = ActionSpec("continuous", 2, np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    clipped = check_actions(np.array([[-3.0, 1.5], [0.5, 9.0]]), 2, True, spec)
    np.testing.assert_array_equal(clipped, np.array([[-1.0, 1.5], [0.5, 2.0]], np.float32))
    assert clipped.dtype == np.float32
    with pytest.raises(ValueError, match="floats of shape"):
        check_actions(np.zeros(2, np.int64), 2, True, spec)
    with pytest.raises(ValueError, match="finite"):
        check_actions(np.full((2, 2), np.nan), 2, True, spec)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        check_actions(np.array([0, 3]), 2, True, ActionSpec.discrete(3))
    with pytest.raises(ValueError, match="low and high"):
        ActionSpec("continuous", 2)
    assert ActionSpec.discrete(3) == ActionSpec("discrete", 3) != spec


# ----------------------------------------------------------------------------------------------------------
# Atari


def test_area_resize_is_the_overlap_weighted_mean_of_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (21, 16)).astype(np.float64)
    rows, cols = area_resize_weights(21, 8), area_resize_weights(16, 6)
    fast = rows.astype(np.float64) @ image @ cols.T.astype(np.float64)
    # Plain loop: integrate the piecewise-constant image over each output pixel's footprint on a fine grid.
    fine = 48  # every footprint edge (multiples of 21/8 and 16/6) falls on this grid
    up = np.kron(image, np.ones((fine, fine)))
    slow = np.empty((8, 6))
    for i in range(8):
        for j in range(6):
            r0, r1 = round(i * 21 / 8 * fine), round((i + 1) * 21 / 8 * fine)
            c0, c1 = round(j * 16 / 6 * fine), round((j + 1) * 16 / 6 * fine)
            slow[i, j] = up[r0:r1, c0:c1].mean()
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
    # An integer factor is a block mean.
    np.testing.assert_allclose(area_resize_weights(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


class FakeAle:
    """The slice of ``ale_py.ALEInterface`` our Atari wrappers use, for a scripted game."""

    def __init__(self, game: FakeAtari) -> None:
        self.game = game

    def lives(self) -> int:
        return self.game.current_lives

    def getScreenGrayscale(self, out: np.ndarray) -> None:  # noqa: N802 (ALE's name)
        out[...] = self.game.frame % 251

    def getScreenRGB(self) -> np.ndarray:  # noqa: N802 (ALE's name)
        return np.full((210, 160, 3), self.game.frame % 251, dtype=np.uint8)


class FakeAtari(gymnasium.Env):  # type: ignore[type-arg]
    """A scripted 3-life game of ``GAME_FRAMES`` emulator frames: frame f pays ``frame_reward(f)``, a life is
    lost at frames 100 and 250, the game ends at frame 400. Actions do nothing, so scores are known."""

    GAME_FRAMES = 400
    LIFE_LOST_AT = (100, 250)
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, frameskip: int = 1, **_: Any) -> None:
        assert frameskip == 1, "our Atari wrappers do the frame skip"
        self.observation_space = spaces.Box(0, 255, (210, 160, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(4)
        self.ale = FakeAle(self)
        self.frame = 0
        self.played: list[int] = []

    @staticmethod
    def frame_reward(frame: int) -> float:
        return 5.0 if frame % 7 == 0 else (-2.0 if frame % 11 == 0 else 0.0)

    @property
    def current_lives(self) -> int:
        if self.frame >= self.GAME_FRAMES:
            return 0
        return 3 - sum(self.frame >= f for f in self.LIFE_LOST_AT)

    def get_action_meanings(self) -> list[str]:
        return ["NOOP", "FIRE", "RIGHT", "LEFT"]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.frame = 0
        self.played.append(-1)  # marks a reset in the log of actions played
        return np.zeros((210, 160, 3), np.uint8), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.frame += 1
        self.played.append(int(action))
        terminated = self.frame >= self.GAME_FRAMES
        return np.zeros((210, 160, 3), np.uint8), self.frame_reward(self.frame), terminated, False, {}


@pytest.fixture
def fake_atari(monkeypatch: pytest.MonkeyPatch) -> str:
    env_id = "multiscene-test/FakeAtari-v0"
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=FakeAtari)
    monkeypatch.setattr(gym_envs, "env_family", lambda _: "atari")
    monkeypatch.setattr(gym_envs, "check_gymnasium_id", lambda _: None)
    return env_id


def play_fake_game(env_id: str, training: bool) -> tuple[list[EnvStep], int]:
    """Play one whole fake game from a reset with NOOPs; returns the steps and the game's frame count."""
    env = GymnasiumVecEnv(gym_spec(env_id, num_envs=1, seed=3, training=training))
    steps = [env.reset()]
    while not steps[-1].episodes:
        steps.append(env.step(np.zeros(1, np.int64)))
        assert len(steps) < 200
    env.close()
    return steps, FakeAtari.GAME_FRAMES


def test_atari_life_loss_ends_training_episodes_but_scores_count_whole_raw_games(fake_atari: str) -> None:
    steps, frames = play_fake_game(fake_atari, training=True)
    game_score = sum(FakeAtari.frame_reward(f) for f in range(1, frames + 1))
    [game] = steps[-1].episodes
    # The raw score of every frame of the game (no-op starts, FIRE and post-death no-ops included), once.
    assert game.episode_return == game_score and not game.truncated
    assert game.length == len(steps) - 1
    assert all(not step.episodes for step in steps[:-1])
    # Two lives lost -> two training-episode ends (terminated, first) before the game-over step.
    ends = [t for t, step in enumerate(steps[1:], 1) if step.first[0]]
    assert len(ends) == 3 and ends[-1] == len(steps) - 1
    assert all(steps[t].terminated[0] and not steps[t].truncated[0] for t in ends)
    # Rewards are clipped to their sign for training (a 4-frame step here sums to up to 10 or 8).
    rewards = np.array([step.reward[0] for step in steps[1:]])
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0} and (rewards == 1.0).any() and (rewards == -1.0).any()
    # Frame skip 4 with max-pool: the newest channel is the brighter of the last two frames (screen = frame).
    last_obs = steps[-2].obs[0]
    assert last_obs.shape == (84, 84, 4) and (last_obs[..., -1] == last_obs[0, 0, -1]).all()


def test_atari_evaluation_plays_whole_games_with_raw_rewards(fake_atari: str) -> None:
    steps, frames = play_fake_game(fake_atari, training=False)
    game_score = sum(FakeAtari.frame_reward(f) for f in range(1, frames + 1))
    [game] = steps[-1].episodes
    assert game.episode_return == game_score
    # No episodic life: the only episode end is the game over.
    assert [t for t, step in enumerate(steps) if t and step.first[0]] == [len(steps) - 1]
    # Raw step rewards: the agent's steps pay the script's 4-frame sums; the frames it did not play are the
    # 1..30 single-frame no-op starts and the two 4-frame FIRE-reset steps.
    rewards = np.array([step.reward[0] for step in steps[1:]])
    assert rewards.max() > 1.0 and rewards.min() < -1.0
    hidden = [
        n
        for n in range(1, 31)
        if rewards.sum() + sum(map(FakeAtari.frame_reward, range(1, n + 9))) == game_score
    ]
    assert hidden, "the agent's raw rewards and the hidden frames must add up to the game score"
    start_frame = hidden[0] + 8
    for t in range(1, len(steps) - 1):
        frame = start_frame + 4 * t
        obs, previous = steps[t].obs[0], steps[t - 1].obs[0]
        # 4-frame skip, max over the last two frames (screen value = frame number), 84x84, stack of 4.
        assert (obs[..., -1] == max((frame - 1) % 251, frame % 251)).all()
        np.testing.assert_array_equal(obs[..., :-1], previous[..., 1:])


def test_atari_sticky_actions_repeat_the_previous_frame_with_probability_a_quarter(fake_atari: str) -> None:
    sticky_id = "multiscene-test/FakeAtariSticky-v0"
    if sticky_id not in gymnasium.registry:
        gymnasium.register(sticky_id, entry_point=FakeAtari, kwargs={"repeat_action_probability": 0.25})
    env = GymnasiumVecEnv(gym_spec(sticky_id, num_envs=1, seed=0, training=False))
    env.reset()
    # RIGHT, LEFT, ...: every new action differs from the last; 80 steps stay inside one 400-frame game.
    requested = [2 + t % 2 for t in range(80)]
    for action in requested:
        env.step(np.array([action]))
    fake: Any = env._vec.envs[0].unwrapped
    played = fake.played[fake.played.index(-1) + 1 :]
    noops = played.index(1)  # the no-op starts end where FIRE (reset) begins
    assert set(played[:noops]) == {0} and set(played[noops : noops + 8]) <= {0, 1, 2}
    agent = played[noops + 8 : noops + 8 + 4 * len(requested)]
    repeats = 0
    for k, action in enumerate(agent):
        wanted, previous = requested[k // 4], agent[k - 1] if k else played[noops + 7]
        # ALE's rule: each frame plays the new action, or (sticky) the previous frame's action again.
        assert action in (wanted, previous)
        repeats += action == previous != wanted
    # Only frames whose new action differs from the last played one can show a repeat.
    switches = sum(requested[k // 4] != (agent[k - 1] if k else played[noops + 7]) for k in range(len(agent)))
    assert switches >= 80 and abs(repeats / switches - 0.25) < 0.12
    env.close()


@pytest.mark.parametrize("env_id, sticky", [("BoxingNoFrameskip-v4", 0.0), ("ALE/Boxing-v5", 0.25)])
def test_atari_ids_of_both_styles_give_stacked_84x84_grayscale(env_id: str, sticky: float) -> None:
    env = make_env(gym_spec(env_id, num_envs=1))
    assert env.family == "atari" and env_family(env_id) == "gymnasium"
    assert env.obs_shape == (84, 84, 4) and env.obs_dtype == np.uint8
    assert env.action_spec == ActionSpec.discrete(18) and env.truncation_known and env.restores_exactly
    unwrapped: Any = env._vec.envs[0].unwrapped
    # v5 ids are built with frameskip=1 and ALE's sticky actions off; the skip and the id's sticky actions are
    # ours (AtariFrames), so that a resume is exact.
    assert unwrapped._frameskip == 1 and unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    assert gym_envs._find_wrapper(env._vec.envs[0], gym_envs.AtariFrames).repeat_action_probability == sticky
    start = env.reset()
    assert start.obs.shape == (1, 84, 84, 4) and start.obs.dtype == np.uint8
    # A reset fills the stack with one frame.
    assert all(np.array_equal(start.obs[0, ..., k], start.obs[0, ..., 0]) for k in range(4))
    previous = start.obs
    for action in np.random.default_rng(0).integers(0, 18, (6, 1)):
        step = env.step(action)
        np.testing.assert_array_equal(step.obs[0, ..., :-1], previous[0, ..., 1:])
        previous = step.obs
    frames = env.render()
    assert frames.shape == (1, 210, 160, 3) and frames.dtype == np.uint8
    env.close()


def test_atari_breakout_lives_give_first_in_training_and_one_game_in_evaluation() -> None:
    # Breakout: 5 lives; with NOOPs the served ball (FIRE on every reset) is lost in about 23 steps.
    train = make_env(gym_spec("BreakoutNoFrameskip-v4", num_envs=1, seed=1))
    steps = ledger_free_play(train, action=0, limit=400)
    ends = [t for t, step in enumerate(steps) if t and step.first[0]]
    assert len(ends) == 5 and len(steps[-1].episodes) == 1 and steps[-1].episodes[0].length == len(steps) - 1
    assert sum(len(step.episodes) for step in steps) == 1
    train.close()
    # Evaluation: no FIRE after a lost life unless the agent presses it, no life-loss episode ends.
    evaluation = make_env(gym_spec("BreakoutNoFrameskip-v4", num_envs=1, seed=1, training=False))
    steps = ledger_free_play(evaluation, action=1, limit=400)
    assert [t for t, step in enumerate(steps) if t and step.first[0]] == [len(steps) - 1]
    evaluation.close()


def ledger_free_play(env: Any, action: int, limit: int) -> list[EnvStep]:
    """One env, the same action until a whole game has been reported (at most ``limit`` steps)."""
    steps = [env.reset()]
    while not steps[-1].episodes:
        steps.append(env.step(np.array([action])))
        assert len(steps) <= limit, "no game over within the step limit"
    return steps


# ----------------------------------------------------------------------------------------------------------
# MuJoCo, generic ids


def test_mujoco_continuous_actions_clipping_and_truncation_with_final_obs() -> None:
    limit = 12
    env = make_env(gym_spec("HalfCheetah-v5", num_envs=2, seed=5, max_episode_steps=limit))
    assert env.family == "mujoco" and env.obs_shape == (17,) and env.obs_dtype == np.float32
    assert env.action_spec.kind == "continuous" and env.action_spec.n == 6
    np.testing.assert_array_equal(env.action_spec.low, -np.ones(6, np.float32))
    np.testing.assert_array_equal(env.action_spec.high, np.ones(6, np.float32))
    rng = np.random.default_rng(0)
    actions = [rng.normal(0.0, 2.0, (2, 6)) for _ in range(limit + 3)]
    steps = ledger_check(env, actions)
    # Plain Gymnasium with the same seed (env i: seed + i) and the clipped actions gives the same stream.
    reference = gymnasium.make("HalfCheetah-v5", max_episode_steps=limit)
    obs, _ = reference.reset(seed=5 + 1)
    np.testing.assert_array_equal(steps[0].obs[1], obs.astype(np.float32))
    for t, action in enumerate(actions, 1):
        obs, reward, terminated, truncated, _ = reference.step(
            np.clip(action[1], -1.0, 1.0).astype(np.float32)
        )
        step = steps[t]
        assert step.reward[1] == np.float32(reward) and not step.terminated.any()
        if t == limit:
            # Truncated at the limit: final_obs holds the episode's last observation, obs the next reset's.
            assert truncated and step.truncated.all() and step.first.all()
            np.testing.assert_array_equal(step.final_obs[1], obs.astype(np.float32))
            assert all(e.truncated and e.length == limit for e in step.episodes)
            obs, _ = reference.reset()
            np.testing.assert_array_equal(step.obs[1], obs.astype(np.float32))
            assert not np.array_equal(step.final_obs[1], step.obs[1])
        else:
            assert step.final_obs is None and not step.first.any()
            np.testing.assert_array_equal(step.obs[1], obs.astype(np.float32))
    # Videos: RGB frames where a GL backend works (EGL here), else a clear EnvError and supports_render False.
    try:
        frames = env.render()
    except gym_envs.EnvError as error:
        assert "MUJOCO_GL" in str(error) and not env.supports_render
    else:
        assert frames.shape[0] == 2 and frames.shape[-1] == 3 and frames.dtype == np.uint8 and frames.any()
    env.close()


def test_cartpole_and_pendulum_work_without_code_changes() -> None:
    cartpole = make_env(gym_spec("CartPole-v1", num_envs=3, seed=0))
    assert cartpole.family == "generic" and cartpole.obs_shape == (4,) and cartpole.obs_dtype == np.float32
    assert cartpole.action_spec == ActionSpec.discrete(2)
    steps = ledger_check(cartpole, [np.random.default_rng(t).integers(0, 2, 3) for t in range(120)])
    episodes = [e for step in steps for e in step.episodes]
    # CartPole ends by falling (a termination) long before its 500-step limit under random actions.
    assert len(episodes) >= 6 and not any(e.truncated for e in episodes)
    assert all(e.episode_return == e.length for e in episodes)  # +1 per step
    cartpole.close()

    pendulum = make_env(gym_spec("Pendulum-v1", num_envs=2, seed=0, max_episode_steps=20))
    assert pendulum.obs_shape == (3,) and pendulum.action_spec.kind == "continuous"
    np.testing.assert_array_equal(pendulum.action_spec.high, [2.0])
    steps = ledger_check(pendulum, [np.random.default_rng(t).normal(size=(2, 1)) for t in range(45)])
    cut = [t for t, step in enumerate(steps) if t and step.first.any()]
    assert cut == [20, 40] and all(steps[t].truncated.all() and steps[t].final_obs is not None for t in cut)
    pendulum.close()


def test_seeds_are_reproducible_and_env_i_uses_seed_plus_i() -> None:
    a, b, c = (make_env(gym_spec("CartPole-v1", num_envs=3, seed=seed)) for seed in (11, 11, 12))
    starts = [env.reset() for env in (a, b, c)]
    np.testing.assert_array_equal(starts[0].obs, starts[1].obs)
    assert not np.array_equal(starts[0].obs, starts[2].obs)
    np.testing.assert_array_equal(starts[0].level_seed, [11, 12, 13])
    for i in range(3):
        obs, _ = gymnasium.make("CartPole-v1").reset(seed=11 + i)
        np.testing.assert_array_equal(starts[0].obs[i], obs)
    for t in range(100):
        action = np.random.default_rng(t).integers(0, 2, 3)
        x, y = a.step(action), b.step(action)
        np.testing.assert_array_equal(x.obs, y.obs)
        assert x.episodes == y.episodes
    # A second reset() continues the envs' random streams: new episodes, not a replay of the first.
    assert not np.array_equal(a.reset().obs, starts[0].obs)


@pytest.mark.parametrize(
    "env_id, kwargs, action_fn",
    [
        ("HalfCheetah-v5", {"max_episode_steps": 15}, lambda rng: rng.uniform(-1, 1, (2, 6))),
        ("ALE/Boxing-v5", {}, lambda rng: rng.integers(0, 18, 2)),
        ("CartPole-v1", {}, lambda rng: rng.integers(0, 2, 2)),
    ],
)
def test_state_restores_bit_identically_into_a_fresh_env(env_id: str, kwargs: dict, action_fn: Any) -> None:
    env = make_env(gym_spec(env_id, seed=2, **kwargs))
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(action_fn(rng))
    state = pickle.loads(pickle.dumps(env.get_state()))
    actions = [action_fn(rng) for _ in range(25)]
    reference = [env.step(action) for action in actions]
    resumed = make_env(gym_spec(env_id, seed=99, **kwargs))
    resumed.reset()
    resumed.set_state(state)
    for action, expected in zip(actions, reference):
        got = resumed.step(action)
        np.testing.assert_array_equal(got.obs, expected.obs)
        np.testing.assert_array_equal(got.reward, expected.reward)
        np.testing.assert_array_equal(got.first, expected.first)
        assert got.episodes == expected.episodes
    if env_id == "HalfCheetah-v5":
        assert any(step.truncated.any() for step in reference), "restore must be checked across a truncation"
    env.close()
    resumed.close()


class NativeCounter(gymnasium.Env, gymnasium.utils.EzPickle):  # type: ignore[type-arg]
    """Stands for a native-simulator env (Box2D-like) that pickles by re-creating itself (EzPickle)."""

    def __init__(self) -> None:
        gymnasium.utils.EzPickle.__init__(self)
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), dtype=np.float64)
        self.action_space = spaces.Discrete(2)
        self.count = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.count = 0
        return np.zeros(1), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.count += 1
        return np.array([float(self.count)]), 1.0, False, False, {}


def test_env_whose_state_cannot_be_copied_restarts_its_episodes_on_restore() -> None:
    env_id = "multiscene-test/NativeCounter-v0"
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=NativeCounter)
    env = make_env(gym_spec(env_id))
    assert env.family == "generic" and not env.restores_exactly
    env.reset()
    for _ in range(5):
        step = env.step(np.zeros(2, np.int64))
    np.testing.assert_array_equal(step.obs[:, 0], [5.0, 5.0])
    state = pickle.loads(pickle.dumps(env.get_state()))
    resumed = make_env(gym_spec(env_id, seed=9))
    resumed.set_state(state)  # before any reset: set_state must cope
    # Documented behaviour: the env set waits for a reset; every env then starts a new episode (the counter
    # is not restored) and reports the run's seeds.
    with pytest.raises(RuntimeError, match="reset"):
        resumed.step(np.zeros(2, np.int64))
    resumed.reset()
    after = resumed.step(np.zeros(2, np.int64))
    np.testing.assert_array_equal(after.obs[:, 0], [1.0, 1.0])
    np.testing.assert_array_equal(after.level_seed, [0, 1])


# ----------------------------------------------------------------------------------------------------------
# Bad input


def test_env_families_and_truncation_knowledge_by_name() -> None:
    assert [env_family(e) for e in ("coinrun,starpilot", "MiniGrid-DoorKey-5x5-v0", "HalfCheetah-v5")] == [
        "procgen",
        "minigrid",
        "gymnasium",
    ]
    # The by-name answer must agree with the env sets' own attribute (Procgen's is a class attribute: building
    # a Procgen env costs seconds).
    from multiscene.envs.procgen import ProcgenVecEnv

    assert knows_truncation("coinrun,starpilot") is ProcgenVecEnv.truncation_known is False
    for env_id in ("MiniGrid-DoorKey-5x5-v0", "CartPole-v1"):
        env = make_env(EnvSpec(env_id, 1, 0, LevelSet(0, 5)))
        assert knows_truncation(env_id) is env.truncation_known is True
        env.close()


def test_bad_ids_and_spaces_raise_config_error_naming_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--env") as unknown:
        check_env_id("CartPol-v1")
    assert "Did you mean" in str(unknown.value) and "CartPole-v1" in str(unknown.value)
    # Spaces no encoder or action head takes: Tuple observations (Blackjack), Discrete ones (FrozenLake).
    for env_id in ("Blackjack-v1", "FrozenLake-v1"):
        with pytest.raises(ConfigError, match="--env.*not supported"):
            make_env(gym_spec(env_id))
    # RAM observations of an ALE game (registered by a user; ale-py registers none).
    ram_id = "multiscene-test/BoxingRam-v0"
    if ram_id not in gymnasium.registry:
        gymnasium.register(
            ram_id, entry_point="ale_py.env:AtariEnv", kwargs={"game": "boxing", "obs_type": "ram"}
        )
    with pytest.raises(ConfigError, match="--env.*RAM"):
        check_env_id(ram_id)
    # A missing Atari ROM.
    from ale_py import roms

    monkeypatch.setattr(roms, "get_rom_path", lambda game: None)
    with pytest.raises(ConfigError, match="--env.*ROM"):
        check_env_id("BoxingNoFrameskip-v4")
    monkeypatch.undo()
    # MuJoCo that fails to load (None in sys.modules makes the import raise ImportError).
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(ConfigError, match="--env.*MuJoCo"):
        check_env_id("Hopper-v5")


# ----------------------------------------------------------------------------------------------------------
# Encoders


def test_make_encoder_dispatches_by_shape_and_refuses_others() -> None:
    assert encoder_name((64, 64, 3)) == "impala"
    assert encoder_name((7, 7, 3)) == "minigrid"
    assert encoder_name((84, 84, 4)) == "nature"
    assert encoder_name((17,), np.float32) == "mlp"
    from multiscene.registry import ENCODERS

    assert set(ENCODERS) == {"impala", "nature", "minigrid", "mlp"}
    assert isinstance(make_encoder((84, 84, 4), 512), NatureCNN)
    assert isinstance(make_encoder((17,), 64, np.float32), MLPEncoder)
    for shape, dtype in [
        ((84, 84), np.uint8),
        ((2, 2, 3), np.uint8),
        ((64, 64, 3), np.float32),
        ((4, 5, 6, 7), np.uint8),
    ]:
        with pytest.raises(ConfigError, match="--env: no encoder"):
            make_encoder(shape, 64, dtype)


def test_nature_cnn_is_the_dqn_network() -> None:
    net = NatureCNN((84, 84, 4), 512)
    convs = [m for m in net.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert net.fc.in_features == 64 * 7 * 7 and net.output_dim == 512
    obs = torch.randint(0, 256, (3, 84, 84, 4), dtype=torch.uint8)
    out = net(obs)
    assert out.shape == (3, 512) and (out >= 0).all()
    # uint8 pixels are scaled by 1/255: the same as feeding the scaled floats through the layers by hand.
    x = obs.permute(0, 3, 1, 2).float() / 255.0
    expected = torch.relu(net.fc(torch.flatten(net.convs(x), 1)))
    torch.testing.assert_close(out, expected)


def test_mlp_encoder_is_two_tanh_layers_of_64() -> None:
    net = MLPEncoder((17,))
    linears = [m for m in net.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(17, 64), (64, 64)] and net.output_dim == 64
    obs = torch.randn(5, 17)
    by_hand = torch.tanh(linears[1](torch.tanh(linears[0](obs))))
    torch.testing.assert_close(net(obs), by_hand)
    assert MLPEncoder((3,), width=32, num_layers=3)(torch.zeros(2, 3)).shape == (2, 32)
