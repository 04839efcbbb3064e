"""Hot-wiring (seed 004, §5; SPEC §4): who fires, when, how often, with which action, and the policy mask."""

from __future__ import annotations

import math

import pytest
import torch

from multiscene.algos.onpolicy.hotwire import HotWire, HotwireConfig, policy_mask, validate_hotwire
from multiscene.config import ConfigError

torch.set_num_threads(1)


def test_fires_only_for_trapped_envs() -> None:
    hot = HotWire(8, 4, HotwireConfig(fraction=1.0, epsilon=1.0), seed=0)
    hot.observe(torch.tensor([0.0, 1.0, 0.0, -0.5, 0.0, 0.0, 0.0, 2.0]))
    hot.observe(torch.zeros(8))  # a later zero reward does not make an env trapped again
    assert hot.trapped.tolist() == [True, False, True, False, True, True, True, False]
    for segment in range(5):
        fired = hot.begin_segment(segment * 10, 1000)
        assert torch.equal(fired, hot.trapped)  # epsilon = 1: exactly the trapped ones
    assert hot.metrics()["hotwire/envs_trapped"] == 5.0
    assert hot.metrics()["hotwire/envs_hotwired"] == 5.0


def test_fires_only_during_the_initial_stage_and_never_after() -> None:
    hot = HotWire(6, 3, HotwireConfig(fraction=0.05, epsilon=1.0), seed=1)
    total = 1000  # stage: segments starting before step 50
    assert hot.begin_segment(0, total).all()
    assert hot.begin_segment(49, total).all()
    for step in range(50, total, 7):
        assert not hot.begin_segment(step, total).any()
        assert (hot.forced_actions() == -1).all()
        assert hot.policy_mask(5).all()
    never = HotWire(6, 3, HotwireConfig(fraction=0.0, epsilon=1.0), seed=1)
    assert not never.begin_segment(0, total).any()


def test_frequency_is_epsilon_within_a_binomial_bound() -> None:
    envs, segments, eps = 2000, 20, 0.2
    hot = HotWire(envs, 6, HotwireConfig(fraction=1.0, epsilon=eps), seed=2)
    fired = sum(int(hot.begin_segment(s, 10**6).sum()) for s in range(segments))
    n = envs * segments
    assert abs(fired - n * eps) < 5 * math.sqrt(n * eps * (1 - eps))
    assert hot.metrics()["hotwire/segments_hotwired_total"] == float(fired)


def test_forced_actions_are_uniform_over_the_buttons() -> None:
    actions, envs = 6, 6000
    hot = HotWire(envs, actions, HotwireConfig(fraction=1.0, epsilon=1.0), seed=3)
    hot.begin_segment(0, 100)
    counts = torch.bincount(hot.forced_actions(), minlength=actions).double()
    expected = envs / actions
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected * (1 - 1 / actions))


def test_one_action_repeated_for_the_whole_segment() -> None:
    envs, actions, steps = 64, 5, 20
    hot = HotWire(envs, actions, HotwireConfig(fraction=1.0, epsilon=0.5), seed=4)
    gen = torch.Generator().manual_seed(0)
    fired = hot.begin_segment(0, 1000)
    assert fired.any() and not fired.all()
    taken = []
    for t in range(steps):
        sampled = torch.randint(actions, (envs,), generator=gen)
        taken.append(hot.apply(sampled))
        assert torch.equal(taken[-1][~fired], sampled[~fired])
        # A reward mid-segment frees the env for later segments but does not cut the current one short.
        hot.observe(torch.where(torch.arange(envs) == t, 1.0, 0.0))
    taken_t = torch.stack(taken)
    assert (taken_t[:, fired] == hot.forced_actions()[fired]).all()
    assert ((hot.forced_actions()[fired] >= 0) & (hot.forced_actions()[fired] < actions)).all()
    assert not hot.begin_segment(20, 1000)[:steps].any()


def test_reproducible_with_a_seed() -> None:
    def trace(seed: int) -> list[list[int]]:
        hot = HotWire(32, 7, HotwireConfig(fraction=1.0, epsilon=0.3), seed=seed)
        out = []
        for s in range(10):
            hot.begin_segment(s, 100)
            out.append(hot.forced_actions().tolist())
        return out

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_state_dict_resumes_exactly() -> None:
    cfg = HotwireConfig(fraction=1.0, epsilon=0.4)
    a = HotWire(16, 4, cfg, seed=7)
    for s in range(3):
        a.begin_segment(s, 100)
        a.observe((torch.arange(16) == s).float())
    b = HotWire(16, 4, cfg, seed=123)
    b.load_state_dict(a.state_dict())
    for s in range(3, 9):
        assert torch.equal(a.begin_segment(s, 100), b.begin_segment(s, 100))
        assert torch.equal(a.forced_actions(), b.forced_actions())
    assert a.metrics() == b.metrics()
    with pytest.raises(ValueError, match="--num-envs"):
        HotWire(8, 4, cfg, seed=0).load_state_dict(a.state_dict())


def test_policy_mask_excludes_hot_wired_envs_for_every_step() -> None:
    mask = policy_mask(torch.tensor([True, False, True]), 4)
    assert mask.shape == (4, 3)
    assert mask.tolist() == [[False, True, False]] * 4


def test_bad_set_ups_raise_config_errors_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--hotwire needs discrete actions"):
        HotWire(4, 6, HotwireConfig(), seed=0, continuous=True)
    with pytest.raises(ConfigError, match="--hotwire needs an algorithm"):
        validate_hotwire(HotwireConfig(), algo="impala")
    validate_hotwire(HotwireConfig(), algo="acktr")
    with pytest.raises(ConfigError, match="--hotwire-cfg.epsilon"):
        validate_hotwire(HotwireConfig(epsilon=1.5))
    with pytest.raises(ConfigError, match="--hotwire-cfg.fraction"):
        validate_hotwire(HotwireConfig(fraction=-0.1))


def test_group_validate_checks_the_algorithm_only_when_hotwire_is_on() -> None:
    class _Cfg:
        algo = "impala"
        hotwire = True

    with pytest.raises(ConfigError, match="--algo impala"):
        HotwireConfig().validate(_Cfg())
    _Cfg.hotwire = False
    HotwireConfig().validate(_Cfg())
