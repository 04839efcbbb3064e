"""V-trace against the paper's sum formula in a plain numpy loop, and against n-step returns on-policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multiscene.algos.impala.vtrace import vtrace
from multiscene.gae import compute_gae


def reference_vtrace(
    log_mu: np.ndarray, log_pi: np.ndarray, r: np.ndarray, v: np.ndarray, v_boot: np.ndarray, disc: np.ndarray,
    rho_bar: float, c_bar: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Espeholt et al. 2018, eq. (1), written as the explicit sum over t = s..T-1 (not the recursion):

    v_s = V(x_s) + sum_t (prod_{i<t} gamma_i) (prod_{i=s}^{t-1} c_i) delta_t,  with the discounts multiplied
    in along the way, so a zero discount cuts the sum at an episode end.
    """
    T, B = r.shape
    ratio = np.exp(log_pi - log_mu)
    rho = np.minimum(rho_bar, ratio)
    c = np.minimum(c_bar, ratio)
    v_next = np.concatenate([v[1:], v_boot[None]], axis=0)
    vs = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            total = v[s, b]
            weight = 1.0  # gamma_s ... gamma_{t-1} * c_s ... c_{t-1}
            for t in range(s, T):
                delta = rho[t, b] * (r[t, b] + disc[t, b] * v_next[t, b] - v[t, b])
                total += weight * delta
                weight *= disc[t, b] * c[t, b]
            vs[s, b] = total
    adv = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            next_target = vs[s + 1, b] if s + 1 < T else v_boot[b]
            adv[s, b] = rho[s, b] * (r[s, b] + disc[s, b] * next_target - v[s, b])
    return vs, adv


def random_inputs(T: int, B: int, seed: int, spread: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    done = rng.random((T, B)) < 0.15
    return {
        "log_mu": rng.normal(-1.5, spread, (T, B)),
        "log_pi": rng.normal(-1.5, spread, (T, B)),
        "r": rng.normal(0.0, 1.0, (T, B)),
        "v": rng.normal(0.0, 1.0, (T, B)),
        "v_boot": rng.normal(0.0, 1.0, B),
        "disc": 0.9 * (1.0 - done),
    }


def run_vtrace(x: dict[str, np.ndarray], rho_bar: float, c_bar: float) -> tuple[np.ndarray, np.ndarray]:
    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in x.items()}
    vs, adv = vtrace(t["log_mu"], t["log_pi"], t["r"], t["v"], t["v_boot"], t["disc"], rho_bar=rho_bar, c_bar=c_bar)
    return vs.numpy(), adv.numpy()


@pytest.mark.parametrize(("rho_bar", "c_bar"), [(1.0, 1.0), (0.5, 0.8), (math.inf, math.inf), (1e6, 1e6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_loop_reference(rho_bar: float, c_bar: float, seed: int) -> None:
    x = random_inputs(T=9, B=4, seed=seed)
    vs, adv = run_vtrace(x, rho_bar, c_bar)
    ref_vs, ref_adv = reference_vtrace(x["log_mu"], x["log_pi"], x["r"], x["v"], x["v_boot"], x["disc"], rho_bar, c_bar)
    np.testing.assert_allclose(vs, ref_vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-10, atol=1e-10)


def test_truncation_changes_the_targets() -> None:
    # With widely different policies many ratios exceed 1, so truncating must matter: a test that passes
    # whatever rho_bar is would not catch a missing clamp.
    x = random_inputs(T=9, B=4, seed=3, spread=2.0)
    assert (np.exp(x["log_pi"] - x["log_mu"]) > 1.0).mean() > 0.2
    vs_clipped, adv_clipped = run_vtrace(x, 1.0, 1.0)
    vs_free, adv_free = run_vtrace(x, math.inf, math.inf)
    assert np.abs(vs_clipped - vs_free).max() > 1e-3
    assert np.abs(adv_clipped - adv_free).max() > 1e-3


def test_on_policy_equals_n_step_bootstrapped_returns() -> None:
    """pi = mu: v_s = r_s + g r_{s+1} + ... + g^(n) V(x_T), cut at episode ends (hand loop and GAE(1))."""
    T, B, gamma = 7, 3, 0.9
    x = random_inputs(T, B, seed=4)
    x["log_pi"] = x["log_mu"].copy()
    x["disc"][2, 0] = 0.0  # one forced episode end mid-sequence
    dones = x["disc"] == 0.0
    vs, adv = run_vtrace(x, 1.0, 1.0)

    expected = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            ret, scale = 0.0, 1.0
            for t in range(s, T):
                ret += scale * x["r"][t, b]
                if dones[t, b]:
                    scale = 0.0
                    break
                scale *= gamma
            ret += scale * x["v_boot"][b]
            expected[s, b] = ret
    np.testing.assert_allclose(vs, expected, rtol=1e-10, atol=1e-10)

    # The same targets as the library's GAE with lambda = 1; the advantage is then the A2C advantage G - V.
    gae_adv, gae_ret = compute_gae(
        torch.as_tensor(x["r"]), torch.as_tensor(x["v"]), torch.as_tensor(dones), torch.as_tensor(x["v_boot"]),
        gamma, 1.0,
    )
    np.testing.assert_allclose(vs, gae_ret.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, gae_adv.numpy(), rtol=1e-10, atol=1e-10)


def test_episode_end_blocks_the_future() -> None:
    # Changing every reward and value after an episode end must not move the targets before it.
    x = random_inputs(T=6, B=1, seed=5)
    x["disc"][:] = 0.9
    x["disc"][2, 0] = 0.0
    vs_a, adv_a = run_vtrace(x, 1.0, 1.0)
    x["r"][3:] += 10.0
    x["v"][3:] -= 5.0
    x["v_boot"] += 7.0
    vs_b, adv_b = run_vtrace(x, 1.0, 1.0)
    np.testing.assert_allclose(vs_a[:3], vs_b[:3])
    np.testing.assert_allclose(adv_a[:3], adv_b[:3])
    assert np.abs(vs_a[3:] - vs_b[3:]).min() > 1e-3


def test_no_gradient_through_targets_and_head_dims() -> None:
    T, B, H = 5, 2, 3
    x = random_inputs(T, B, seed=6)
    values = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    target_logp = torch.as_tensor(x["log_pi"]).requires_grad_(True)
    rewards = torch.randn(T, B, H, dtype=torch.float64)
    boot = torch.randn(B, H, dtype=torch.float64)
    vs, adv = vtrace(torch.as_tensor(x["log_mu"]), target_logp, rewards, values, boot, torch.as_tensor(x["disc"]))
    assert not vs.requires_grad and not adv.requires_grad
    assert vs.shape == adv.shape == (T, B, H)
    # Each head equals the single-head computation on that head's rewards and values.
    for h in range(H):
        vs_h, adv_h = vtrace(
            torch.as_tensor(x["log_mu"]), target_logp.detach(), rewards[..., h], values.detach()[..., h],
            boot[:, h], torch.as_tensor(x["disc"]),
        )
        torch.testing.assert_close(vs[..., h], vs_h)
        torch.testing.assert_close(adv[..., h], adv_h)
