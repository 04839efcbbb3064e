"""The environment layer: the VecEnv contract on Procgen and MiniGrid (issue #2), state save/restore and
env errors naming the env id and level seed (issue #6), terminated vs truncated with the final observation
(issue #16)."""

from __future__ import annotations

import pickle

import gymnasium
import numpy as np
import pytest

from multiscene.config import ConfigError
from multiscene.envs import PROCGEN_GAMES, check_env_id, is_procgen, make_env
from multiscene.envs.base import ActionSpec, EnvError, EnvSpec, EnvStep, LevelSet

MINIGRID_ID = "MiniGrid-DoorKey-5x5-v0"
# fruitbot ends random-policy episodes often and pays rewards (both signs), so a few hundred steps test both.
SHORT_GAME = "fruitbot"


def procgen_spec(
    env_id: str = SHORT_GAME, num_envs: int = 4, seed: int = 0, levels: LevelSet | None = None
) -> EnvSpec:
    return EnvSpec(env_id, num_envs, seed, levels or LevelSet(0, 5), distribution_mode="easy", num_threads=1)


def minigrid_spec(
    num_envs: int = 4, seed: int = 0, levels: LevelSet | None = None, max_episode_steps: int | None = 12
) -> EnvSpec:
    levels = levels or LevelSet(0, 20)
    return EnvSpec(MINIGRID_ID, num_envs, seed, levels, max_episode_steps=max_episode_steps)


def random_actions(num_steps: int, num_envs: int, num_actions: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_actions, num_envs) for _ in range(num_steps)]


def assert_steps_equal(a: EnvStep, b: EnvStep) -> None:
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.reward, b.reward)
    np.testing.assert_array_equal(a.first, b.first)
    np.testing.assert_array_equal(a.terminated, b.terminated)
    np.testing.assert_array_equal(a.truncated, b.truncated)
    np.testing.assert_array_equal(a.level_seed, b.level_seed)
    assert a.episodes == b.episodes


def check_contract(env, actions: list[np.ndarray]) -> list[EnvStep]:
    """Run ``actions`` from a reset and check the VecEnv contract at every step against a hand-kept ledger:
    shapes and dtypes, first = terminated | truncated, episodes reported exactly where first is set, with the
    return and length summed here and the level seed the episode started on, final_obs given exactly where an
    env was truncated (never where the env cannot tell truncation). Returns every step."""
    n = env.num_envs
    assert env.obs_dtype == np.uint8 and env.action_spec == ActionSpec.discrete(env.num_actions)
    assert env.restores_exactly and env.supports_render
    start = env.reset()
    assert start.obs.shape == (n, *env.obs_shape) and start.obs.dtype == np.uint8
    assert start.final_obs is None
    assert start.first.all() and not start.reward.any() and start.episodes == []
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    episode_level = start.level_seed.copy()
    steps = [start]
    for action in actions:
        previous_obs = steps[-1].obs.copy()
        step = env.step(action)
        # The obs of the previous step must not be overwritten by this one (gym3 buffers are reused).
        np.testing.assert_array_equal(steps[-1].obs, previous_obs)
        assert step.obs.shape == (n, *env.obs_shape) and step.obs.dtype == np.uint8
        assert step.reward.shape == (n,) and step.reward.dtype == np.float32
        for flags in (step.first, step.terminated, step.truncated):
            assert flags.shape == (n,) and flags.dtype == np.bool_
        assert step.level_seed.shape == (n,) and step.level_seed.dtype == np.int64
        np.testing.assert_array_equal(step.first, step.terminated | step.truncated)
        assert not (step.terminated & step.truncated).any()
        if env.truncation_known:
            assert (step.final_obs is not None) == bool(step.truncated.any())
        else:
            assert step.final_obs is None and not step.truncated.any()
        if step.final_obs is not None:
            assert step.final_obs.shape == step.obs.shape and step.final_obs.dtype == step.obs.dtype
        returns += step.reward
        lengths += 1
        ended = np.flatnonzero(step.first)
        assert [e.env_index for e in step.episodes] == ended.tolist()
        for episode in step.episodes:
            i = episode.env_index
            assert episode.length == lengths[i]
            assert episode.episode_return == pytest.approx(returns[i])
            assert episode.level_seed == episode_level[i]
            assert episode.truncated == step.truncated[i]
        returns[ended] = 0.0
        lengths[ended] = 0
        # Within an episode the level never changes; a new one may start only where first is set.
        unchanged = ~step.first
        np.testing.assert_array_equal(step.level_seed[unchanged], episode_level[unchanged])
        episode_level = step.level_seed.copy()
        steps.append(step)
    return steps


def test_procgen_game_list_matches_procgen() -> None:
    import procgen.env

    assert PROCGEN_GAMES == tuple(procgen.env.ENV_NAMES)


def test_env_ids_are_classified_and_bad_ids_name_the_flag() -> None:
    check_env_id("coinrun")
    check_env_id("coinrun,starpilot")
    check_env_id(MINIGRID_ID)
    assert is_procgen("coinrun,starpilot") and not is_procgen(MINIGRID_ID)
    with pytest.raises(ConfigError, match="--env") as bad_game:
        check_env_id("coinrn")
    assert "coinrun" in str(bad_game.value) and "starpilot" in str(bad_game.value)
    with pytest.raises(ConfigError, match="--env") as bad_minigrid:
        check_env_id("MiniGrid-DoorKey-5x5-v9")
    message = str(bad_minigrid.value)
    assert "Did you mean" in message and "MiniGrid-DoorKey-5x5-v0" in message
    with pytest.raises(ConfigError, match="--env") as mixed:
        check_env_id(f"coinrun,{MINIGRID_ID}")
    assert MINIGRID_ID in str(mixed.value)
    with pytest.raises(ConfigError, match="--env"):
        make_env(EnvSpec("MiniGrid-NoSuchThing-v0", 2, 0, LevelSet(0, 10)))


def test_bad_specs_raise_config_error_before_procgen_can_abort() -> None:
    # Procgen's C++ aborts the process for these, so they must be caught up front.
    with pytest.raises(ConfigError, match="--distribution-mode"):
        make_env(EnvSpec("bigfish", 2, 0, LevelSet(0, 10), distribution_mode="memory"))
    with pytest.raises(ConfigError, match="--distribution-mode"):
        make_env(EnvSpec("bigfish", 2, 0, LevelSet(0, 10), distribution_mode="exploration"))
    with pytest.raises(ConfigError, match="--num-envs"):
        make_env(procgen_spec("coinrun,starpilot", num_envs=3))
    with pytest.raises(ConfigError, match="--max-episode-steps"):
        make_env(EnvSpec("coinrun", 2, 0, LevelSet(0, 10), max_episode_steps=10))
    with pytest.raises(ConfigError, match="--num-levels"):
        make_env(EnvSpec(MINIGRID_ID, 2, 0, LevelSet(0, 0)))


def test_procgen_contract_and_level_ranges() -> None:
    train = make_env(procgen_spec(levels=LevelSet(0, 5)))
    test = make_env(procgen_spec(levels=LevelSet(5, 5), seed=1))
    assert train.obs_shape == (64, 64, 3) and train.num_actions == 15 and train.agent_positions() is None
    actions = random_actions(300, train.num_envs, train.num_actions)
    train_steps = check_contract(train, actions)
    test_steps = check_contract(test, actions)
    train_seeds = {int(s) for step in train_steps for s in step.level_seed}
    train_seeds |= {e.level_seed for step in train_steps for e in step.episodes}
    test_seeds = {int(s) for step in test_steps for s in step.level_seed}
    assert sum(len(step.episodes) for step in train_steps) >= 10, "too few episodes to test anything"
    assert any(step.reward.any() for step in train_steps), "too few rewards to test anything"
    assert train_seeds <= set(range(0, 5)) and test_seeds <= set(range(5, 10))
    assert len(train_seeds) >= 3
    assert all(isinstance(e.success, bool) for step in train_steps for e in step.episodes)
    np.testing.assert_array_equal(train.render(), train_steps[-1].obs)
    train.close()
    test.close()


def test_procgen_same_seed_same_stream_other_seed_differs() -> None:
    full = LevelSet(0, 0)
    a, b, c = (make_env(procgen_spec(levels=full, seed=seed)) for seed in (7, 7, 8))
    steps = [env.reset() for env in (a, b, c)]
    assert_steps_equal(steps[0], steps[1])
    assert not np.array_equal(steps[0].level_seed, steps[2].level_seed)
    for action in random_actions(100, 4, 15):
        assert_steps_equal(a.step(action), b.step(action))
        c.step(action)
    for env in (a, b, c):
        env.close()


def test_procgen_state_restores_into_the_same_and_a_fresh_env() -> None:
    env = make_env(procgen_spec(seed=3))
    env.reset()
    for action in random_actions(40, 4, 15, seed=1):
        env.step(action)
    state = pickle.loads(pickle.dumps(env.get_state()))
    actions = random_actions(150, 4, 15, seed=2)
    reference = [env.step(action) for action in actions]
    assert any(step.episodes for step in reference), "restore must be checked across episode ends"

    env.set_state(state)
    np.testing.assert_array_equal(env.render(), state["obs"])
    for action, expected in zip(actions, reference):
        assert_steps_equal(env.step(action), expected)

    # A resumed run builds its envs anew (another seed here) before restoring.
    resumed = make_env(procgen_spec(seed=99))
    resumed.set_state(state)
    for action, expected in zip(actions, reference):
        assert_steps_equal(resumed.step(action), expected)
    env.close()
    resumed.close()


def test_procgen_several_games_concatenate_in_order() -> None:
    levels = LevelSet(0, 10)
    both = make_env(procgen_spec("coinrun,starpilot", num_envs=4, seed=5, levels=levels))
    # Game k of a multi-game set uses rand_seed = seed + k: the single-game sets below must match its halves.
    coinrun = make_env(procgen_spec("coinrun", num_envs=2, seed=5, levels=levels))
    starpilot = make_env(procgen_spec("starpilot", num_envs=2, seed=6, levels=levels))
    assert both.num_actions == 15 and both.obs_shape == (64, 64, 3)
    for joint, left, right in [(both.reset(), coinrun.reset(), starpilot.reset())] + [
        (both.step(action), coinrun.step(action[:2]), starpilot.step(action[2:]))
        for action in random_actions(60, 4, 15)
    ]:
        np.testing.assert_array_equal(joint.obs, np.concatenate([left.obs, right.obs]))
        np.testing.assert_array_equal(joint.reward, np.concatenate([left.reward, right.reward]))
        np.testing.assert_array_equal(joint.level_seed, np.concatenate([left.level_seed, right.level_seed]))
    for env in (both, coinrun, starpilot):
        env.close()


def test_procgen_reset_after_steps_starts_new_episodes() -> None:
    env = make_env(procgen_spec(levels=LevelSet(0, 0)))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.int64))
    env.reset()
    for action in random_actions(30, 4, 15):
        last = env.step(action)
    again = env.reset()
    assert again.first.all() and not again.reward.any()
    # Every env leaves its level for a fresh one (full distribution: a collision is all but impossible).
    assert (again.level_seed != last.level_seed).all()
    assert all(not np.array_equal(again.obs[i], last.obs[i]) for i in range(4))
    # Episode counters restart at the reset.
    steps = check_contract(env, random_actions(200, 4, 15, seed=4))
    assert any(step.episodes for step in steps)
    env.close()


def test_procgen_error_names_env_id_and_level_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(procgen_spec())
    start = env.reset()

    def broken_act(actions: np.ndarray) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(env._envs[0], "act", broken_act)
    with pytest.raises(EnvError) as error:
        env.step(np.zeros(4, dtype=np.int64))
    message = str(error.value)
    assert SHORT_GAME in message and "simulated crash" in message
    assert f"level seeds {start.level_seed.tolist()}" in message
    assert isinstance(error.value.__cause__, RuntimeError)
    env.close()


def test_minigrid_contract_first_obs_is_the_reset_of_its_level() -> None:
    env = make_env(minigrid_spec(max_episode_steps=8))
    assert env.obs_shape == (7, 7, 3) and env.num_actions == 7
    steps = check_contract(env, random_actions(150, env.num_envs, env.num_actions))
    episodes = [e for step in steps for e in step.episodes]
    assert len(episodes) >= 20
    # A time-out ends exactly at the overridden limit; anything shorter must have terminated.
    for step in steps[1:]:
        for e in step.episodes:
            assert e.length <= 8
            assert step.truncated[e.env_index] == (e.length == 8 and not step.terminated[e.env_index])
            assert e.success == (bool(step.terminated[e.env_index]) and step.reward[e.env_index] > 0)
    # Where first is set, obs is the reset observation of the reported level (MiniGrid levels = reset seeds).
    reference = gymnasium.make(MINIGRID_ID, disable_env_checker=True)
    for step in steps[::10]:
        for i in np.flatnonzero(step.first):
            obs, _ = reference.reset(seed=int(step.level_seed[i]))
            np.testing.assert_array_equal(step.obs[i], obs["image"])


def test_minigrid_truncation_keeps_the_last_observation_of_the_cut_episode() -> None:
    limit = 6
    env = make_env(minigrid_spec(num_envs=3, max_episode_steps=limit))
    assert env.truncation_known
    start = env.reset()
    level = start.level_seed.copy()
    episode_actions: list[list[int]] = [[] for _ in range(3)]
    reference = gymnasium.make(MINIGRID_ID, disable_env_checker=True)
    reference.unwrapped.max_steps = limit
    truncations = 0
    for action in random_actions(60, 3, 7, seed=3):
        step = env.step(action)
        for i in range(3):
            episode_actions[i].append(int(action[i]))
            if step.truncated[i]:
                # Replay the cut episode on its level: final_obs is its last view, obs the next level's first.
                obs, _ = reference.reset(seed=int(level[i]))
                for a in episode_actions[i]:
                    obs, _, terminated, truncated, _ = reference.step(a)
                assert truncated and not terminated and len(episode_actions[i]) == limit
                np.testing.assert_array_equal(step.final_obs[i], obs["image"])
                first_obs, _ = reference.reset(seed=int(step.level_seed[i]))
                np.testing.assert_array_equal(step.obs[i], first_obs["image"])
                truncations += 1
            if step.first[i]:
                episode_actions[i] = []
        level = step.level_seed.copy()
    assert truncations >= 10, "too few truncations to test anything"


def test_procgen_cannot_tell_truncation_and_says_so() -> None:
    env = make_env(procgen_spec(num_envs=2))
    assert env.truncation_known is False and env.obs_dtype == np.uint8
    assert env.action_spec == ActionSpec.discrete(15)
    env.close()


def test_minigrid_success_is_a_positive_terminal_reward() -> None:
    # Empty-Random: random walks often reach the goal; LavaGap: they often die in lava (terminal, reward 0).
    outcomes = []
    for env_id in ("MiniGrid-Empty-Random-5x5-v0", "MiniGrid-LavaGapS5-v0"):
        env = make_env(EnvSpec(env_id, 4, 0, LevelSet(0, 50), max_episode_steps=30))
        env.reset()
        for action in random_actions(150, 4, 3):
            step = env.step(action)
            for e in step.episodes:
                i = e.env_index
                assert e.success == (bool(step.terminated[i]) and step.reward[i] > 0)
                outcomes.append((e.success, bool(step.terminated[i]), bool(step.truncated[i])))
    assert (True, True, False) in outcomes  # reached the goal
    assert (False, True, False) in outcomes  # died in lava
    assert (False, False, True) in outcomes  # timed out


def test_minigrid_train_and_test_levels_stay_in_their_ranges() -> None:
    train = make_env(minigrid_spec(levels=LevelSet(0, 20), max_episode_steps=4))
    test = make_env(minigrid_spec(levels=LevelSet(20, 20), max_episode_steps=4, seed=1))
    actions = random_actions(300, 4, 7)
    seen = {}
    for name, env in (("train", train), ("test", test)):
        steps = [env.reset()] + [env.step(action) for action in actions]
        seen[name] = {int(s) for step in steps for s in step.level_seed}
        seen[name] |= {e.level_seed for step in steps for e in step.episodes}
    assert seen["train"] <= set(range(0, 20)) and seen["test"] <= set(range(20, 40))
    # Uniform draws over 300 episode starts cover (nearly) all 20 levels.
    assert len(seen["train"]) >= 18 and len(seen["test"]) >= 18


def test_minigrid_same_seed_same_stream_other_seed_differs() -> None:
    a, b, c = (make_env(minigrid_spec(seed=seed, levels=LevelSet(0, 1000))) for seed in (4, 4, 5))
    starts = [env.reset() for env in (a, b, c)]
    assert_steps_equal(starts[0], starts[1])
    assert not np.array_equal(starts[0].level_seed, starts[2].level_seed)
    for action in random_actions(100, 4, 7):
        assert_steps_equal(a.step(action), b.step(action))


def test_minigrid_state_restores_exactly() -> None:
    env = make_env(minigrid_spec(seed=2))
    env.reset()
    for action in random_actions(30, 4, 7, seed=1):
        env.step(action)
    # The snapshot kept in memory must not follow the envs as they step on.
    live_state = env.get_state()
    state = pickle.loads(pickle.dumps(live_state))
    positions = env.agent_positions()
    actions = random_actions(80, 4, 7, seed=2)
    reference = [env.step(action) for action in actions]
    assert sum(len(step.episodes) for step in reference) >= 4, "restore must be checked across episode ends"

    env.set_state(live_state)
    np.testing.assert_array_equal(env.agent_positions(), positions)
    for action, expected in zip(actions, reference):
        assert_steps_equal(env.step(action), expected)

    # Into a fresh env set built with another seed (a resumed run), and a second time from the same snapshot.
    for _ in range(2):
        resumed = make_env(minigrid_spec(seed=123))
        resumed.set_state(state)
        for action, expected in zip(actions, reference):
            assert_steps_equal(resumed.step(action), expected)


def test_minigrid_render_and_agent_positions_share_coordinates() -> None:
    env = make_env(minigrid_spec(num_envs=3))
    env.reset()
    for action in random_actions(5, 3, 7):
        env.step(action)
    width, height = env.grid_size
    tile = env.render_tile_size
    frames = env.render(highlight=False)
    assert frames.shape == (3, height * tile, width * tile, 3) and frames.dtype == np.uint8
    positions = env.agent_positions()
    assert positions.shape == (3, 2)
    for frame, (x, y) in zip(frames, positions):
        # The agent is the only pure-red object in DoorKey: all its pixels lie in the cell (x, y).
        red = np.all(frame == (255, 0, 0), axis=-1)
        assert red.any() and red[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile].sum() == red.sum()


def test_minigrid_error_names_env_id_and_level_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(minigrid_spec(levels=LevelSet(500, 100)))
    start = env.reset()

    def broken_step(action: int) -> None:
        raise ValueError("simulated crash")

    monkeypatch.setattr(env._envs[2], "step", broken_step)
    with pytest.raises(EnvError) as error:
        env.step(np.zeros(4, dtype=np.int64))
    message = str(error.value)
    assert MINIGRID_ID in message and f"level seed {start.level_seed[2]}" in message
    assert "simulated crash" in message and isinstance(error.value.__cause__, ValueError)

    monkeypatch.undo()
    monkeypatch.setattr(env._envs[1], "reset", lambda seed=None: (_ for _ in ()).throw(OSError("bad level")))
    with pytest.raises(EnvError) as reset_error:
        env.reset()
    # The level seed named is the one env 1 was being reset onto.
    assert MINIGRID_ID in str(reset_error.value) and "bad level" in str(reset_error.value)
    assert f"level seed {env._level_seed[1]}" in str(reset_error.value)
