"""Episode replay: absorbing padding (seed 003 §5.2), episode-first sampling (§4.1), capacity, resume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from multiscene.algos.dreamer.replay import Episode, EpisodeBuilder, EpisodeReplay
from multiscene.config import ConfigError


def make_episode(n: int, level: int = 0, action_size: int = 3, terminal: bool = True) -> Episode:
    obs = (np.arange(n, dtype=np.uint8)[:, None, None] + 1) * np.ones((n, 2, 2), dtype=np.uint8)
    action = np.zeros((n, action_size), dtype=np.float32)
    action[1:, 0] = 1.0
    reward = np.arange(1, n + 1, dtype=np.float32)
    discount = np.ones(n, dtype=np.float32)
    if terminal:
        discount[-1] = 0.0
    return Episode(obs, action, reward, discount, level)


def test_short_episode_is_padded_with_an_absorbing_state() -> None:
    replay = EpisodeReplay(capacity=1000, seq_len=10, action_size=3, discrete=True)
    replay.add(make_episode(4, terminal=False))
    batch = replay.sample(64, np.random.default_rng(0))
    assert batch.obs.shape == (10, 64, 2, 2) and batch.action.shape == (10, 64, 3)
    for b in range(64):
        real = int((~batch.padded[:, b]).sum())
        start = 4 - real
        assert batch.obs[0, b, 0, 0] == start + 1  # the sequence starts at step `start`
        assert batch.first[0, b] == (start == 0) and not batch.first[1:, b].any()
        np.testing.assert_array_equal(batch.reward[:real, b], np.arange(start + 1, 5))
        pad = batch.padded[:, b]
        assert pad[real:].all() and not pad[:real].any()
        assert (batch.reward[pad, b] == 0).all() and (batch.discount[pad, b] == 0).all()
        assert (batch.obs[pad, b] == 4).all()  # the last observation repeated
        assert np.allclose(batch.action[pad, b].sum(-1), 1.0)  # one-hot actions
    # the padded actions are uniform over the 3 actions
    counts = batch.action[batch.padded].sum(0)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert (counts > 0).all()


def test_continuous_padding_actions_are_uniform_in_box() -> None:
    replay = EpisodeReplay(capacity=100, seq_len=8, action_size=2, discrete=False)
    ep = make_episode(2, action_size=2)
    replay.add(ep)
    batch = replay.sample(200, np.random.default_rng(1))
    pad = batch.action[batch.padded]
    assert pad.min() >= -1.0 and pad.max() <= 1.0 and pad.min() < -0.9 and pad.max() > 0.9


def test_sampling_is_uniform_over_episodes_not_steps() -> None:
    """Episodes of lengths 5 and 200: step-uniform sampling would pick the long one 40x as often."""
    replay = EpisodeReplay(capacity=10_000, seq_len=6, action_size=3, discrete=True)
    lengths = [5, 200, 20, 80]
    for level, n in enumerate(lengths):
        replay.add(make_episode(n, level=level))
    rng = np.random.default_rng(0)
    levels = np.concatenate([replay.sample(50, rng).level for _ in range(80)])
    counts = np.bincount(levels, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3
    # and a step-proportional sampler would be rejected by the same test
    step_counts = np.array(lengths) / sum(lengths) * counts.sum()
    assert stats.chisquare(counts, step_counts).pvalue < 1e-6


def test_start_is_uniform_within_an_episode() -> None:
    replay = EpisodeReplay(capacity=100, seq_len=3, action_size=3, discrete=True)
    replay.add(make_episode(10))
    batch = replay.sample(5000, np.random.default_rng(2))
    starts = batch.obs[0, :, 0, 0].astype(int) - 1
    assert stats.chisquare(np.bincount(starts, minlength=10)).pvalue > 1e-3


def test_capacity_drops_the_oldest_whole_episodes() -> None:
    replay = EpisodeReplay(capacity=25, seq_len=5, action_size=3, discrete=True)
    for level in range(5):
        replay.add(make_episode(10, level=level))
    assert replay.num_steps == 20 and [e.level for e in replay.episodes] == [3, 4]
    assert replay.episodes_added == 5 and replay.steps_added == 50
    replay.add(make_episode(40, level=9))  # longer than the capacity: kept alone
    assert [e.level for e in replay.episodes] == [9]


def test_sequence_longer_than_capacity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--dreamer.seq-len.*--dreamer.replay-capacity"):
        EpisodeReplay(capacity=40, seq_len=50, action_size=3, discrete=True)


def test_state_dict_keeps_the_newest_episodes_up_to_a_cap() -> None:
    replay = EpisodeReplay(capacity=1000, seq_len=4, action_size=3, discrete=True)
    for level in range(4):
        replay.add(make_episode(10, level=level))
    state = replay.state_dict(max_steps=25)
    assert state["saved_steps"] == 20 and state["total_steps"] == 40
    other = EpisodeReplay(capacity=1000, seq_len=4, action_size=3, discrete=True)
    other.load_state_dict(state)
    assert [e.level for e in other.episodes] == [2, 3] and other.num_steps == 20
    assert other.episodes_added == 4
    full = EpisodeReplay(capacity=1000, seq_len=4, action_size=3, discrete=True)
    full.load_state_dict(replay.state_dict())
    a = replay.sample(8, np.random.default_rng(5))
    b = full.sample(8, np.random.default_rng(5))
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.action, b.action)


def test_episode_builder_layout() -> None:
    builder = EpisodeBuilder(num_envs=2, action_size=3)
    o = [np.full((2, 2), i, dtype=np.uint8) for i in range(3)]
    builder.start(1, o[0], level=7)
    builder.append(1, o[1], np.eye(3, dtype=np.float32)[2], 0.5, 1.0)
    ep = builder.finish(1, np.eye(3, dtype=np.float32)[1], 2.0, terminated=True)
    assert len(ep) == 3 and ep.level == 7
    np.testing.assert_array_equal(ep.reward, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ep.discount, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(ep.action, [[0, 0, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(ep.obs[2], o[1])  # terminal frame: the last observation repeated
    truncated = EpisodeBuilder(1, 3)
    truncated.start(0, o[0], 0)
    assert truncated.finish(0, np.eye(3, dtype=np.float32)[0], 0.0, terminated=False).discount[-1] == 1.0


def test_padding_after_a_time_limit_cut_is_left_out_of_the_losses() -> None:
    """Absorbing padding is right after a terminal (seed 003's dying Mario); after a time-limit cut the MDP
    goes on, so the padded steps are marked invalid."""
    replay = EpisodeReplay(capacity=100, seq_len=6, action_size=3, discrete=True)
    replay.add(make_episode(3, level=0, terminal=True))
    replay.add(make_episode(3, level=1, terminal=False))
    batch = replay.sample(200, np.random.default_rng(0))
    terminal = batch.level == 0
    assert batch.valid[:, terminal].all()
    assert (batch.valid[:, ~terminal] == ~batch.padded[:, ~terminal]).all()
    assert batch.padded[:, ~terminal].any()
