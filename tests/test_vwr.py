"""The variability-weighted reward (seed 004, §4.1; SPEC §4): hand computation, the properties SPEC §4 asks
for (with hypothesis), degenerate inputs, and the running per-env version against the plain function."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multiscene.config import ConfigError
from multiscene.rewards.vwr import (
    RunningVWR,
    VWRConfig,
    validate_vwr,
    variability_weighted_reward,
    vwr_terms,
)

torch.set_num_threads(1)

REWARD = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_infinity=False)
POSITIVE_REWARD = st.floats(min_value=1e-3, max_value=50.0, allow_nan=False, allow_infinity=False)
HORIZON = st.integers(min_value=2, max_value=40)


def _window(past: list[float], immediate: float) -> torch.Tensor:
    return torch.tensor([*past, immediate], dtype=torch.float64)


def test_hand_computed_window_of_three() -> None:
    # x = [0, 1, 1], T = 2. Step by step as vwr_terms's docstring says:
    # D = [0, 0, x_1 - x_0] = [0, 0, 1]; bridge B = D - (k/2) D_2 = [0, -1/2, 0];
    # g = asinh(1), R = g/2, q = [1, e^R, e^g]; excursion = 1 * B / (1 + 1/2) = [0, -1/3, 0];
    # z = [0, -(1/3) e^{-R}, 0]; w = 1 - std(z)^2; VWR = R w.
    g = math.asinh(1.0)
    r_avg = g / 2
    z1 = -(1 / 3) * math.exp(-r_avg)
    mean = z1 / 3
    var = (z1**2) / 3 - mean**2
    w = 1 - var
    terms = vwr_terms(_window([0.0, 1.0], 1.0))
    assert float(terms.log_return) == pytest.approx(r_avg, rel=1e-12)
    assert float(terms.volatility) == pytest.approx(math.sqrt(var), rel=1e-12)
    assert float(terms.weight) == pytest.approx(w, rel=1e-12)
    assert float(terms.vwr) == pytest.approx(r_avg * w, rel=1e-12)
    assert terms.curve.tolist() == pytest.approx([1.0, math.exp(r_avg) - 1 / 3, math.exp(g)], rel=1e-12)


def test_hand_computed_negative_reward_is_penalized_not_rewarded_by_volatility() -> None:
    # Same past, r_t = -1: R = -asinh(1)/2 < 0, so VWR = R (2 - w) (ours), below R, not R * w above it.
    terms = vwr_terms(_window([0.0, 1.0], -1.0))
    r_avg = -math.asinh(1.0) / 2
    assert float(terms.log_return) == pytest.approx(r_avg, rel=1e-12)
    assert float(terms.weight) < 1.0
    assert float(terms.vwr) == pytest.approx(r_avg * (2 - float(terms.weight)), rel=1e-12)
    assert float(terms.vwr) < r_avg


@settings(max_examples=60, deadline=None)
@given(HORIZON, REWARD, REWARD, REWARD)
def test_constant_past_gives_full_weight_and_increasing_vwr(
    horizon: int, level: float, first: float, second: float
) -> None:
    low, high = sorted((first, second))
    windows = torch.stack([_window([level] * horizon, low), _window([level] * horizon, high)])
    terms = vwr_terms(windows)
    assert torch.equal(terms.weight, torch.ones(2, dtype=torch.float64))
    expected = torch.asinh(torch.tensor([low, high], dtype=torch.float64)) / horizon
    assert torch.allclose(terms.vwr, expected, rtol=1e-12, atol=0)
    if low < high:
        assert terms.vwr[0] < terms.vwr[1]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(REWARD, min_size=2, max_size=40),
    REWARD,
    st.floats(min_value=1.0, max_value=20.0),
    st.sampled_from([0.5, 1.0, 2.0]),
)
def test_more_volatility_never_raises_vwr(past: list[float], immediate: float, factor: float, sigma: float) -> None:
    # "More volatile" = the past's deviations from its last value x_{T-1} scaled by factor >= 1 (the flipped
    # path D_k = x_{T-1} - x_{T-k} scales by exactly that factor); the immediate reward stays. The flat past
    # (factor 0) is the least volatile of all.
    base = torch.tensor(past, dtype=torch.float64)
    anchor = base[-1]
    louder = anchor + factor * (base - anchor)
    flat = torch.full_like(base, float(anchor))
    r = torch.tensor([immediate], dtype=torch.float64)
    windows = torch.stack([torch.cat([flat, r]), torch.cat([base, r]), torch.cat([louder, r])])
    terms = vwr_terms(windows, sigma_max=sigma)
    tol = 1e-9
    assert terms.volatility[0] == 0
    assert terms.volatility[1] <= terms.volatility[2] + tol
    assert terms.vwr[2] <= terms.vwr[1] + tol
    assert terms.vwr[1] <= terms.vwr[0] + tol


def test_appendix_a_recent_oscillation_is_penalized_more() -> None:
    # Seed 004, Appendix A: two windows with the same immediate reward, one oscillating in the recent past, its
    # mirror image oscillating long ago. The flip puts the recent oscillation at small k, where the growing
    # exponential reference is small, so its differential z is larger.
    horizon = 20
    oscillation = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    recent = [1.0] * (horizon - 1 - len(oscillation)) + oscillation + [1.0]
    long_ago = [1.0] + oscillation[::-1] + [1.0] * (horizon - 1 - len(oscillation))
    assert long_ago == recent[::-1]
    terms = vwr_terms(torch.stack([_window(recent, 1.0), _window(long_ago, 1.0)]))
    assert terms.log_return[0] == terms.log_return[1]
    assert terms.volatility[0] > terms.volatility[1]
    assert terms.vwr[0] < terms.vwr[1]


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=4, max_value=40),
    st.data(),
    st.floats(min_value=-5.0, max_value=5.0),
    POSITIVE_REWARD,
)
def test_recent_oscillation_weighs_more_than_its_mirror_long_ago(
    horizon: int, data: st.DataObject, level: float, immediate: float
) -> None:
    # An oscillation inside the past (touching neither x_0 nor x_{T-1}, so the bridge needs no detrending) in
    # the recent half, against the same oscillation mirrored into the old half; r_t > 0 so the reference grows.
    length = data.draw(st.integers(min_value=1, max_value=(horizon - 2) // 2))
    deviations = data.draw(st.lists(REWARD, min_size=length, max_size=length))
    recent = [level] * horizon
    recent[horizon - 1 - length : horizon - 1] = [level + d for d in deviations]
    long_ago = [level] * horizon
    long_ago[1 : 1 + length] = [level + d for d in reversed(deviations)]
    terms = vwr_terms(torch.stack([_window(recent, immediate), _window(long_ago, immediate)]))
    assert terms.volatility[0] >= terms.volatility[1] - 1e-12
    assert terms.vwr[0] <= terms.vwr[1] + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.lists(REWARD, min_size=3, max_size=30), st.floats(min_value=0.1, max_value=100.0))
def test_scale_is_a_reward_unit(window: list[float], unit: float) -> None:
    # Rewards in another unit with the matching --vwr.scale give the same VWR.
    x = torch.tensor(window, dtype=torch.float64)
    assert torch.allclose(
        variability_weighted_reward(x * unit, scale=unit), variability_weighted_reward(x), rtol=1e-9, atol=1e-12
    )


def test_shapes_and_batching_match_one_window_at_a_time() -> None:
    gen = torch.Generator().manual_seed(0)
    windows = torch.randn(2, 3, 21, generator=gen, dtype=torch.float64) * 3
    out = variability_weighted_reward(windows)
    assert out.shape == (2, 3)
    one_by_one = torch.stack(
        [torch.stack([variability_weighted_reward(windows[i, j]) for j in range(3)]) for i in range(2)]
    )
    assert torch.allclose(out, one_by_one, rtol=1e-12, atol=0)
    assert variability_weighted_reward(windows[0, 0]).shape == ()
    # Integer rewards are read as float32.
    assert variability_weighted_reward(torch.tensor([0, 1, 1])).dtype == torch.float32


def test_degenerate_windows_give_finite_values() -> None:
    zero = vwr_terms(torch.zeros(5, 21))
    assert torch.equal(zero.vwr, torch.zeros(5))
    assert torch.equal(zero.weight, torch.ones(5))
    # r_t = 0 gives R = 0 and VWR = 0 whatever the past.
    spiky = torch.tensor([[0.0] * 10 + [1.0] + [0.0] * 10, [5.0] * 20 + [0.0]])
    assert torch.equal(variability_weighted_reward(spiky), torch.zeros(2))
    extreme = torch.tensor(
        [[-1e6] * 20 + [-1e6], [1e6, -1e6] * 10 + [1e6], [-3.0, 7.0] * 10 + [-2.0], [1e-30] * 21],
        dtype=torch.float32,
    )
    terms = vwr_terms(extreme)
    for name, value in terms._asdict().items():
        assert torch.isfinite(value).all(), name
    assert (terms.curve > 0).all()
    assert (terms.weight >= 0).all() and (terms.weight <= 1).all()


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="T >= 1"):
        variability_weighted_reward(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="sigma_max"):
        variability_weighted_reward(torch.zeros(3), sigma_max=0.0)
    validate_vwr(VWRConfig())
    with pytest.raises(ConfigError, match=r"--vwr\.window must be >= 2"):
        validate_vwr(VWRConfig(window=1))
    with pytest.raises(ConfigError, match=r"--vwr\.sigma-max"):
        validate_vwr(VWRConfig(sigma_max=-1.0))
    with pytest.raises(ConfigError, match=r"--vwr\.kappa"):
        validate_vwr(VWRConfig(kappa=0.0))


def _reference_windows(rewards: list[list[float]], firsts: list[list[bool]], horizon: int) -> list[torch.Tensor]:
    """Plain-loop reference: per env, the episode's rewards so far, padded in front with its first reward."""
    num_steps, num_envs = len(rewards), len(rewards[0])
    episodes: list[list[float]] = [[] for _ in range(num_envs)]
    out = []
    for t in range(num_steps):
        rows = []
        for i in range(num_envs):
            if firsts[t][i]:
                episodes[i] = []
            episodes[i].append(rewards[t][i])
            history = episodes[i][-(horizon + 1) :]
            rows.append([history[0]] * (horizon + 1 - len(history)) + history)
        out.append(torch.tensor(rows, dtype=torch.float64))
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=2, max_value=8), st.integers(0, 2**31 - 1))
def test_running_vwr_equals_the_function_on_every_window(num_envs: int, horizon: int, seed: int) -> None:
    rng = random.Random(seed)
    num_steps = 3 * horizon + 5
    # Sparse, signed rewards and episodes of random length; every env starts an episode at step 0.
    rewards = [[rng.choice([0.0, 0.0, 1.0, -1.0, rng.uniform(-3, 3)]) for _ in range(num_envs)] for _ in range(num_steps)]
    firsts = [[t == 0 or rng.random() < 0.15 for _ in range(num_envs)] for t in range(num_steps)]
    running = RunningVWR(num_envs, horizon, dtype=torch.float64)
    for t, window in enumerate(_reference_windows(rewards, firsts, horizon)):
        got = running.step(torch.tensor(rewards[t], dtype=torch.float64), torch.tensor(firsts[t]))
        assert torch.equal(running.windows(), window)
        assert torch.equal(got, variability_weighted_reward(window))


def test_running_vwr_forgets_everything_older_than_the_window() -> None:
    # Two envs with different early histories and the same last T+1 rewards of one episode give the same VWR.
    horizon = 4
    running = RunningVWR(2, horizon, dtype=torch.float64)
    stream = [[5.0, -2.0], [0.0, 9.0], [3.0, 3.0], [1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [1.0, 1.0]]
    first = torch.tensor([True, True])
    for t, pair in enumerate(stream):
        out = running.step(torch.tensor(pair, dtype=torch.float64), first if t == 0 else ~first)
    assert out[0] == out[1]


def test_running_vwr_state_dict_resumes_exactly() -> None:
    gen = torch.Generator().manual_seed(3)
    a = RunningVWR(3, 5)
    for _ in range(7):
        a.step(torch.randn(3, generator=gen), torch.rand(3, generator=gen) < 0.2)
    b = RunningVWR(3, 5)
    b.load_state_dict(a.state_dict())
    for _ in range(9):
        reward, first = torch.randn(3, generator=gen), torch.rand(3, generator=gen) < 0.2
        assert torch.equal(a.step(reward, first), b.step(reward, first))
    with pytest.raises(ValueError, match="--vwr.window"):
        RunningVWR(3, 6).load_state_dict(a.state_dict())


def test_running_vwr_first_step_of_an_episode_has_no_volatility() -> None:
    running = RunningVWR.from_config(2, VWRConfig(window=3))
    out = running.step(torch.tensor([2.0, -1.0]), torch.tensor([True, True]))
    assert torch.allclose(out, torch.asinh(torch.tensor([2.0, -1.0])) / 3)
