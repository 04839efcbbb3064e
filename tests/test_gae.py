"""GAE against a hand-computed case and against a plain Python loop (STYLE.md, SB3 tests/test_gae.py)."""

from __future__ import annotations

import pytest
import torch

from multiscene.gae import compute_gae, discounted_returns, nstep_returns


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


# ----------------------------------------------------------------------------------------------------------
# Time-limit truncation (issue 16)


def test_gae_truncation_in_the_middle_by_hand():
    # T=4, two envs, one head; gamma = lambda = 0.5. Both episodes end after step 1: env 0 is cut by a time limit
    # (bootstrap from the final observation's value 6), env 1 terminates (final value given but ignored).
    # env 0: delta_3 = 1 + 0.5*4 - 2 = 1;   delta_2 = 0 + 0.5*2 - 4 = -3
    #        delta_1 = 2 + 0.5*6 - 2 = 3 (cut: bootstrap from the final obs, not from V_2 of the next episode)
    #        delta_0 = 1 + 0.5*2 - 1 = 1
    #        A_3 = 1; A_2 = -3 + 0.25*1 = -2.75; A_1 = 3 (the lambda-sum stops at the cut); A_0 = 1 + 0.25*3 = 1.75
    # env 1: the same but delta_1 = 2 - 2 = 0, so A_1 = 0 and A_0 = 1.
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])[..., None]
    values = torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0], [2.0, 2.0]])[..., None]
    dones = torch.tensor([[False, False], [True, True], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    final_values = torch.full((4, 2, 1), float("nan"))  # read only where truncated
    final_values[1, :, 0] = 6.0
    next_value = torch.tensor([[4.0], [4.0]])
    adv, ret = compute_gae(rewards, values, dones, next_value, 0.5, 0.5, truncated=truncated,
                           final_values=final_values)
    assert torch.equal(adv[:, 0, 0], torch.tensor([1.75, 3.0, -2.75, 1.0]))
    assert torch.equal(adv[:, 1, 0], torch.tensor([1.0, 0.0, -2.75, 1.0]))
    assert torch.equal(ret[:, 0, 0], torch.tensor([2.75, 5.0, 1.25, 3.0]))
    # Today's treatment (no truncation info) makes env 0 look like env 1.
    adv_old, _ = compute_gae(rewards, values, dones, next_value, 0.5, 0.5)
    assert torch.equal(adv_old[:, 0], adv_old[:, 1]) and torch.equal(adv_old[:, 1], adv[:, 1])


def test_nstep_returns_truncation_by_hand():
    # Same env 0 as above, gamma 0.5: R_3 = 1 + 0.5*4 = 3; R_2 = 0 + 0.5*3 = 1.5; R_1 = 2 + 0.5*6 = 5 (cut);
    # R_0 = 1 + 0.5*5 = 3.5. With a termination instead: R_1 = 2, R_0 = 2.
    rewards = torch.tensor([1.0, 2.0, 0.0, 1.0])[:, None]
    values = torch.tensor([1.0, 2.0, 4.0, 2.0])[:, None]
    dones = torch.tensor([False, True, False, False])[:, None]
    final_values = torch.tensor([0.0, 6.0, 0.0, 0.0])[:, None]
    adv, ret = nstep_returns(rewards, values, dones, torch.tensor([4.0]), 0.5, truncated=dones.clone(),
                             final_values=final_values)
    assert torch.equal(ret[:, 0], torch.tensor([3.5, 5.0, 1.5, 3.0]))
    assert torch.equal(adv, ret - values)
    _, ret_term = nstep_returns(rewards, values, dones, torch.tensor([4.0]), 0.5)
    assert torch.equal(ret_term[:, 0], torch.tensor([2.0, 2.0, 1.5, 3.0]))


def _plain_loop_targets(rewards, values, dones, truncated, final_values, next_value, gamma, lam):
    """GAE and n-step returns one scalar at a time, written from the definitions (Schulman et al. 2016, eq. 16)."""
    T, B, H = rewards.shape
    adv = [[[0.0] * H for _ in range(B)] for _ in range(T)]
    nstep = [[[0.0] * H for _ in range(B)] for _ in range(T)]
    for b in range(B):
        for h in range(H):
            running_adv, running_ret = 0.0, float(next_value[b, h])
            for t in reversed(range(T)):
                if bool(truncated[t, b]):
                    following, carry = float(final_values[t, b, h]), 0.0
                elif bool(dones[t, b]):
                    following, carry = 0.0, 0.0
                else:
                    following = float(next_value[b, h]) if t == T - 1 else float(values[t + 1, b, h])
                    carry = 1.0
                delta = float(rewards[t, b, h]) + gamma * following - float(values[t, b, h])
                running_adv = delta + gamma * lam * carry * running_adv
                adv[t][b][h] = running_adv
                tail = following if carry == 0.0 else running_ret
                running_ret = float(rewards[t, b, h]) + gamma * tail
                nstep[t][b][h] = running_ret
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(nstep, dtype=torch.float64)


def _random_rollout(seed, T=19, B=6, H=3):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dones = torch.rand(T, B, generator=g) < 0.25
    truncated = dones & (torch.rand(T, B, generator=g) < 0.5)
    final_values = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    next_value = torch.randn(B, H, generator=g, dtype=torch.float64)
    assert truncated.any() and (dones & ~truncated).any()
    return rewards, values, dones, truncated, final_values, next_value


def test_vectorized_targets_equal_plain_loop_with_truncations_and_heads():
    rewards, values, dones, truncated, final_values, next_value = _random_rollout(1)
    expected_adv, expected_nstep = _plain_loop_targets(rewards, values, dones, truncated, final_values, next_value,
                                                       0.97, 0.9)
    adv, ret = compute_gae(rewards, values, dones, next_value, 0.97, 0.9, truncated=truncated,
                           final_values=final_values)
    assert torch.allclose(adv, expected_adv, atol=1e-10)
    assert torch.allclose(ret, expected_adv + values, atol=1e-10)
    nstep_adv, nstep = nstep_returns(rewards, values, dones, next_value, 0.97, truncated=truncated,
                                     final_values=final_values)
    assert torch.allclose(nstep, expected_nstep, atol=1e-10)
    assert torch.allclose(nstep_adv, expected_nstep - values, atol=1e-10)


def test_nstep_returns_equal_gae_with_lambda_one():
    rewards, values, dones, truncated, final_values, next_value = _random_rollout(2)
    for trunc, final in ((None, None), (truncated, final_values)):
        _, gae_ret = compute_gae(rewards, values, dones, next_value, 0.95, 1.0, truncated=trunc, final_values=final)
        _, nstep = nstep_returns(rewards, values, dones, next_value, 0.95, truncated=trunc, final_values=final)
        assert torch.allclose(gae_ret, nstep, atol=1e-10)


def _gae_before_issue_16(rewards, values, dones, next_value, gamma, gae_lambda):
    """compute_gae as it was at commit 0d8c328 (before truncation support), kept to pin today's results."""
    nonterminal = (1.0 - dones.to(rewards.dtype)).reshape(*dones.shape, *([1] * (rewards.dim() - 2)))
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal[t] - values[t]
        last = delta + gamma * gae_lambda * nonterminal[t] * last
        advantages[t] = last
    return advantages, advantages + values


def test_defaults_reproduce_todays_targets_bit_for_bit():
    rewards, values, dones, truncated, final_values, next_value = _random_rollout(3)
    rewards, values, next_value = rewards.float(), values.float(), next_value.float()
    old_adv, old_ret = _gae_before_issue_16(rewards, values, dones, next_value, 0.999, 0.95)
    adv, ret = compute_gae(rewards, values, dones, next_value, 0.999, 0.95)
    assert torch.equal(adv, old_adv) and torch.equal(ret, old_ret)
    # No truncation flagged: the same numbers, whatever final_values holds.
    no_cut = torch.zeros_like(truncated)
    adv_flagged, _ = compute_gae(rewards, values, dones, next_value, 0.999, 0.95, truncated=no_cut,
                                 final_values=torch.full_like(values, float("nan")))
    assert torch.equal(adv_flagged, old_adv)
    # discounted_returns without truncation: the realized return-to-go of test_discounted_returns_reset_at_episode_end.
    r = rewards[..., 0]
    old = torch.zeros_like(r)
    running = torch.zeros_like(r[0])
    for t in reversed(range(r.shape[0])):
        running = r[t] + 0.9 * running * (1.0 - dones[t].to(r.dtype))
        old[t] = running
    assert torch.equal(discounted_returns(r, dones, 0.9), old)


def test_discounted_returns_bootstrap_only_at_truncation():
    # Episode A: steps 0-1, cut by the time limit (final value 4). Episode B: step 2, terminates. gamma = 0.5.
    # G_1 = 1 + 0.5*4 = 3, G_0 = 1 + 0.5*3 = 2.5; G_2 = 1 (termination: no tail).
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    dones = torch.tensor([[False], [True], [True]])
    truncated = torch.tensor([[False], [True], [False]])
    final_values = torch.tensor([[0.0], [4.0], [9.0]])
    out = discounted_returns(rewards, dones, 0.5, truncated=truncated, final_values=final_values)
    assert torch.equal(out[:, 0], torch.tensor([2.5, 3.0, 1.0]))


def test_truncation_arguments_are_checked():
    rewards, values, dones, truncated, final_values, next_value = _random_rollout(4)
    with pytest.raises(ValueError, match="subset of dones"):
        compute_gae(rewards, values, dones, next_value, 0.9, 0.9, truncated=~dones, final_values=final_values)
    with pytest.raises(ValueError, match="go together"):
        nstep_returns(rewards, values, dones, next_value, 0.9, truncated=truncated)
    with pytest.raises(ValueError, match="final_values has shape"):
        discounted_returns(rewards, dones, 0.9, truncated=truncated, final_values=final_values[..., 0])


def test_a_task_that_only_truncates_has_the_analytic_value_only_with_the_bootstrap():
    # One state, reward 1 every step, no terminal state: V = 1 / (1 - gamma) = 10 for gamma 0.9. Episodes are cut
    # by a time limit every 5 steps (4 envs at different phases); a table value is fitted to the targets until it
    # stops moving. With the bootstrap the fixed point is the analytic 10; treating the cut as a termination
    # teaches the value of a 5-step horizon (issue 16, item 4).
    gamma, T, B, L = 0.9, 20, 4, 5
    step_in_episode = (torch.arange(T)[:, None] + torch.arange(B)[None, :]) % L
    dones = step_in_episode == L - 1
    rewards = torch.ones(T, B, 1, dtype=torch.float64)

    def fixed_point(bootstrap: bool, targets: str) -> float:
        v = 0.0
        for _ in range(300):
            values = torch.full((T, B, 1), v, dtype=torch.float64)
            kwargs = {"truncated": dones, "final_values": values.clone()} if bootstrap else {}
            if targets == "gae":
                _, ret = compute_gae(rewards, values, dones, values[0], gamma, 0.95, **kwargs)
            else:
                _, ret = nstep_returns(rewards, values, dones, values[0], gamma, **kwargs)
            v = float(ret.mean())
        return v

    for targets in ("gae", "nstep"):
        assert fixed_point(True, targets) == pytest.approx(10.0, abs=1e-6)
        # Without it the targets are return-to-go sums of at most 5 rewards, averaging (1 + 1.9 + 2.71 + 3.44 +
        # 4.10) / 5 = 2.63 over the positions, a little more where the rollout's end bootstraps: 2.64-2.70.
        assert 2.6 < fixed_point(False, targets) < 2.8


@pytest.mark.parametrize("with_truncation", [False, True])
def test_gae_numpy_path_equals_the_torch_recursion_bit_for_bit(with_truncation):
    # CPU float32 inputs take the numpy path; the same inputs marked requires_grad take the torch loop (a
    # tensor that needs grad has no numpy view). The two must agree exactly, over many episode ends and heads.
    g = torch.Generator().manual_seed(3)
    T, B, H = 300, 3, 2
    rewards, values = torch.randn(T, B, H, generator=g), torch.randn(T, B, H, generator=g) * 5
    dones = torch.rand(T, B, generator=g) < 0.05
    next_value = torch.randn(B, H, generator=g)
    extra = {}
    if with_truncation:
        extra = {"truncated": dones & (torch.rand(T, B, generator=g) < 0.5),
                 "final_values": torch.randn(T, B, H, generator=g)}
    fast = compute_gae(rewards, values, dones, next_value, gamma=0.99, gae_lambda=0.95, **extra)
    slow = compute_gae(rewards.clone().requires_grad_(), values, dones, next_value, gamma=0.99, gae_lambda=0.95, **extra)
    assert torch.equal(fast[0], slow[0].detach()) and torch.equal(fast[1], slow[1].detach())
    assert fast[0].abs().sum() > 0
