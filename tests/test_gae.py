"""GAE against a hand-computed case and against a plain Python loop (STYLE.md, SB3 tests/test_gae.py)."""

from __future__ import annotations

import torch

from multiscene.gae import compute_gae, discounted_returns


def test_gae_hand_computed_two_steps():
    # T=2, B=1, one head. gamma=0.5, lambda=0.5, no episode end.
    # delta_1 = r1 + g*V_next - V1 = 1 + 0.5*4 - 2 = 1
    # delta_0 = r0 + g*V1 - V0 = 0 + 0.5*2 - 1 = 0
    # A_1 = 1; A_0 = delta_0 + g*l*A_1 = 0 + 0.25 = 0.25
    rewards = torch.tensor([[[0.0]], [[1.0]]])
    values = torch.tensor([[[1.0]], [[2.0]]])
    dones = torch.zeros(2, 1, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, dones, torch.tensor([[4.0]]), gamma=0.5, gae_lambda=0.5)
    assert torch.allclose(adv.squeeze(), torch.tensor([0.25, 1.0]))
    assert torch.allclose(ret.squeeze(), torch.tensor([1.25, 3.0]))


def test_gae_episode_end_blocks_bootstrap():
    # The episode ends after step 0: A_0 = r0 - V0 = 1 - 0.5; step 1 bootstraps from next_value.
    rewards = torch.tensor([[1.0], [0.0]])
    values = torch.tensor([[0.5], [1.0]])
    dones = torch.tensor([[True], [False]])
    adv, _ = compute_gae(rewards, values, dones, torch.tensor([2.0]), gamma=0.9, gae_lambda=1.0)
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, 0.0 + 0.9 * 2.0 - 1.0]))


def _plain_loop_gae(rewards, values, dones, next_value, gamma, lam):
    T, B, H = rewards.shape
    adv = [[[0.0] * H for _ in range(B)] for _ in range(T)]
    for b in range(B):
        for h in range(H):
            running = 0.0
            for t in reversed(range(T)):
                nxt = float(next_value[b, h]) if t == T - 1 else float(values[t + 1, b, h])
                nonterminal = 0.0 if bool(dones[t, b]) else 1.0
                delta = float(rewards[t, b, h]) + gamma * nxt * nonterminal - float(values[t, b, h])
                running = delta + gamma * lam * nonterminal * running
                adv[t][b][h] = running
    return torch.tensor(adv)


def test_vectorized_gae_equals_plain_loop_with_heads_and_episode_starts():
    g = torch.Generator().manual_seed(0)
    T, B, H = 17, 5, 3
    rewards = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dones = torch.rand(T, B, generator=g) < 0.2
    next_value = torch.randn(B, H, generator=g, dtype=torch.float64)
    adv, ret = compute_gae(rewards, values, dones, next_value, gamma=0.97, gae_lambda=0.9)
    expected = _plain_loop_gae(rewards, values, dones, next_value, 0.97, 0.9).to(torch.float64)
    assert dones.any() and not dones.all()
    assert torch.allclose(adv, expected, atol=1e-10)
    assert torch.allclose(ret, expected + values, atol=1e-10)


def test_discounted_returns_reset_at_episode_end():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    dones = torch.tensor([[False], [True], [False]])
    out = discounted_returns(rewards, dones, gamma=0.5)
    assert torch.allclose(out[:, 0], torch.tensor([1.5, 1.0, 1.0]))
