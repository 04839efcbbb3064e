"""IMPALA: the learner against on-policy A2C, actors' recurrent state, bad input, and Ray runs with faults.

The Ray tests start real Ray processes; on the shared 2-core dev machine Ray itself takes ~30-50 s to start,
so they are marked slow. Everything else runs without Ray in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_vtrace import reference_vtrace
from torch.distributions import Categorical

from multiscene.algos.impala import ImpalaConfig, check_impala_config
from multiscene.algos.impala.actors import ImpalaActor
from multiscene.algos.impala.learner import (
    Unroll,
    fold_time_limit_bootstrap,
    forward_unroll,
    impala_loss,
    interleave_final_obs,
    learner_step,
    stack_unrolls,
)
from multiscene.algos.impala.vtrace import vtrace
from multiscene.config import ConfigError
from multiscene.critics.multi import MultiConfig, MultiCritic
from multiscene.envs.base import EnvStep
from multiscene.gae import compute_gae
from multiscene.logger import read_metrics
from multiscene.models.agent import Agent
from multiscene.ppo import explained_variance
from multiscene.rewards.vwr import RunningVWR, VWRConfig

ENV = "MiniGrid-HiddenPayoff-v0"


def small_cfg(run_dir: str, **changes: object):
    base = dict(env=ENV, critic="scalar", hidden_size=32, max_episode_steps=8, num_levels=10, gamma=0.9)
    base.update(changes)
    return tiny_config(run_dir, **base)


def learner_and_actor(tmp_path: Path, critic: str = "scalar", envs: int = 3, T: int = 12, **changes: object):
    cfg = small_cfg(str(tmp_path / "run"), critic=critic, **changes)
    impala = ImpalaConfig(num_actors=1, envs_per_actor=envs, unroll_length=T, batch_size=envs)
    torch.manual_seed(0)
    actor = ImpalaActor(cfg, impala, actor_index=0)
    agent = Agent(actor.envs.obs_shape, actor.envs.num_actions, cfg)
    return cfg, impala, agent, actor


@pytest.mark.parametrize("bootstrap_truncation", [False, True])
def test_zero_lag_gradient_equals_the_on_policy_a2c_gradient(tmp_path: Path, bootstrap_truncation: bool) -> None:
    """Actor weights = learner weights: V-trace targets are n-step returns and rho = 1, so the IMPALA loss must
    have the gradient of A2C with GAE(lambda = 1) advantages on the same batch (same costs, same means).
    --no-bootstrap-truncation: every episode end is a terminal (the loss before issue 16); with it, GAE
    bootstraps the time-limit cuts from the final observations' values, computed here step by step."""
    cfg, impala, agent, actor = learner_and_actor(tmp_path, bootstrap_truncation=bootstrap_truncation)
    unroll = actor.unroll([agent.state_dict()], version=0)
    assert unroll.dones.any(), "the unroll should cross an episode end (max_episode_steps 8 < T 12)"
    if bootstrap_truncation:
        assert unroll.truncated is not None and unroll.truncated.any(), "HiddenPayoff cut at 8 steps"
        truncation = {"truncated": unroll.truncated, "final_values": final_values_step_by_step(agent, unroll)[..., 0]}
    else:
        assert unroll.truncated is None and unroll.final_obs is None
        truncation = {}

    agent.zero_grad()
    loss, metrics = impala_loss(agent, unroll, cfg.gamma, impala, aux_scales={})
    loss.backward()
    impala_grads = [p.grad.clone() for p in agent.parameters()]
    assert float(metrics["impala/rho_mean"]) == pytest.approx(1.0, abs=1e-5)  # zero lag: pi = mu

    # A2C written out by hand from the library's GAE, independent of vtrace.py.
    agent.zero_grad()
    T = unroll.actions.shape[0]
    out = agent(unroll.obs, unroll.first, unroll.prev_action, unroll.prev_reward, unroll.initial_state)
    dist = Categorical(logits=out.logits[:T])
    values = out.values[:T, :, 0]
    advantages, returns = compute_gae(unroll.rewards, values.detach(), unroll.dones, out.values[T, :, 0].detach(),
                                      cfg.gamma, 1.0, **truncation)
    a2c = (-(dist.log_prob(unroll.actions) * advantages).mean()
           + impala.baseline_cost * 0.5 * (returns - values).pow(2).mean()
           - impala.entropy_cost * dist.entropy().mean())
    a2c.backward()
    for (name, _), g_impala, p in zip(agent.named_parameters(), impala_grads, agent.parameters()):
        torch.testing.assert_close(g_impala, p.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert sum(float(g.abs().sum()) for g in impala_grads) > 0


def test_stale_policy_is_corrected_and_the_step_moves_the_weights(tmp_path: Path) -> None:
    cfg, impala, agent, actor = learner_and_actor(tmp_path, critic="sparse-dve")
    stale = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in agent.state_dict().items()}
    unroll = actor.unroll([stale], version=0)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in agent.parameters()]
    result = learner_step(agent, optimizer, unroll, cfg.gamma, impala,
                          aux_scales={"cc_confusion": 0.1, "cc_contribution": 0.1})
    assert not result.skipped
    assert abs(result.metrics["impala/rho_mean"] - 1.0) > 1e-4  # behaviour != target: weights are used
    assert {"losses/cc_confusion", "losses/cc_contribution", "losses/grad_norm"} <= set(result.metrics)
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.parameters()))


def test_unrolls_carry_the_lstm_state_from_one_to_the_next(tmp_path: Path) -> None:
    """Replaying unroll 1 from its initial state must end in unroll 2's initial state (T steps), and the
    learner's recomputed log-probs must equal the actor's step-by-step ones."""
    cfg, impala, agent, actor = learner_and_actor(tmp_path, envs=2, T=10)
    weights = [agent.state_dict()]
    first, second = actor.unroll(weights, 0), actor.unroll(weights, 0)
    T = first.actions.shape[0]
    with torch.no_grad():
        out = agent(first.obs[:T], first.first[:T], first.prev_action[:T], first.prev_reward[:T], first.initial_state)
        logp = Categorical(logits=out.logits).log_prob(first.actions)
    for replayed, carried in zip(out.state, second.initial_state):
        torch.testing.assert_close(replayed, carried, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp, first.behaviour_logp, atol=1e-5, rtol=1e-5)
    # Continuity: the bootstrap observation of unroll 1 is the first observation of unroll 2.
    torch.testing.assert_close(first.obs[T], second.obs[0])
    stacked = stack_unrolls([first, second])
    assert stacked.actions.shape == (T, 4) and stacked.initial_state[0].shape[1] == 4


# ----------------------------------------------------------------------------------------------------------
# Time limits (issue 16): V-trace bootstraps a time-limit cut from the value of the episode's final observation


@torch.no_grad()
def final_values_step_by_step(agent: Agent, unroll: Unroll) -> torch.Tensor:
    """[T, B, H]: at each cut (t, b), V of the cut episode's final observation from the core state after step t
    (the agent run one column at a time up to t, then one step on the final observation: not an episode start,
    action a_t and reward r_t before it); 0 elsewhere. Independent of the learner's interleaving."""
    T, B = unroll.actions.shape
    assert unroll.truncated is not None and unroll.final_obs is not None
    out = torch.zeros(T, B, agent.critic.num_heads)
    k = 0
    for b in range(B):
        for t in range(T):
            if not unroll.truncated[t, b]:
                continue
            col = slice(b, b + 1)
            state = tuple(s[:, col] for s in unroll.initial_state)
            before = agent(unroll.obs[: t + 1, col], unroll.first[: t + 1, col], unroll.prev_action[: t + 1, col],
                           unroll.prev_reward[: t + 1, col], state)
            last = agent(unroll.final_obs[k][None, None], torch.zeros(1, 1, dtype=torch.bool),
                         unroll.actions[t, col][None], unroll.rewards[t, col][None], before.state)
            out[t, b] = last.values[0, 0]
            k += 1
    assert k == unroll.final_obs.shape[0]
    return out


def scripted_unroll(agent: Agent, T: int = 7) -> Unroll:
    """Three columns of random MiniGrid-shaped observations. Column 0: a time-limit cut after step 1 and a
    termination after step 4; column 1: a cut after the last step (its bootstrap observation is the reset one);
    column 2: no episode end. Actions, rewards and behaviour log-probs are random."""
    g = torch.Generator().manual_seed(3)
    B = 3
    obs = torch.randint(0, 11, (T + 1, B, *agent.obs_shape), generator=g, dtype=torch.uint8)
    dones = torch.zeros(T, B, dtype=torch.bool)
    truncated = torch.zeros(T, B, dtype=torch.bool)
    dones[1, 0] = truncated[1, 0] = True
    dones[4, 0] = True
    dones[T - 1, 1] = truncated[T - 1, 1] = True
    actions = torch.randint(0, agent.num_actions, (T, B), generator=g)
    rewards = torch.randn(T, B, generator=g)
    first = torch.zeros(T + 1, B, dtype=torch.bool)
    first[0] = True
    first[1:] = dones
    prev_action = torch.zeros(T + 1, B, dtype=torch.long)
    prev_reward = torch.zeros(T + 1, B)
    prev_action[1:] = torch.where(dones, 0, actions)
    prev_reward[1:] = torch.where(dones, 0.0, rewards)
    final_obs = torch.randint(0, 11, (2, *agent.obs_shape), generator=g, dtype=torch.uint8)
    state = tuple(0.1 * torch.randn(s.shape, generator=g) for s in agent.initial_state(B, "cpu"))
    return Unroll(
        obs=obs, first=first, prev_action=prev_action, prev_reward=prev_reward, actions=actions,
        behaviour_logp=-1.0 - torch.rand(T, B, generator=g), rewards=rewards, dones=dones,
        level_seeds=torch.zeros(T + 1, B, dtype=torch.int64), initial_state=state, episodes=(), policy_version=0,
        actor_index=0, actor_pid=0, actor_seconds=0.0, truncated=truncated, final_obs=final_obs,
    )


class ScriptedCuts:
    """Two envs of MiniGrid-shaped observations with scripted episode ends, repeating every 7 steps: env 1 is cut
    by a time limit after step 1, env 0 after steps 2 and 4; env 1 both terminates and reaches its limit after
    step 3 (a termination: no bootstrap); env 0 terminates after step 5. The observation after step n is filled
    with n + 1; a cut episode's final observation with 100 + 2n + b."""

    num_envs, obs_shape, num_actions = 2, (7, 7, 3), 7
    cuts = {(1, 1), (2, 0), (4, 0), (3, 1)}
    terminations = {(3, 1), (5, 0)}

    def __init__(self) -> None:
        self.n = 0

    def step(self, actions: np.ndarray) -> EnvStep:
        t = self.n % 7
        truncated = np.array([(t, b) in self.cuts for b in range(2)])
        terminated = np.array([(t, b) in self.terminations for b in range(2)])
        obs = np.full((2, *self.obs_shape), self.n + 1, dtype=np.uint8)
        final_obs = None
        if truncated.any():
            final_obs = obs.copy()
            for b in np.flatnonzero(truncated):
                final_obs[b] = 100 + 2 * self.n + b
        self.n += 1
        return EnvStep(obs=obs, reward=np.full(2, 0.5 * t, np.float32), terminated=terminated, truncated=truncated,
                       first=terminated | truncated, level_seed=np.zeros(2, np.int64), final_obs=final_obs)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("bootstrap_truncation", [False, True])
def test_actor_records_time_limit_cuts_and_their_final_observations(tmp_path: Path, bootstrap_truncation: bool) -> None:
    """The actor marks the cuts (not a termination, even one on the step the limit is reached), keeps the final
    observation of each cut episode (not the reset one) column by column, and stacking unrolls keeps that order.
    --no-bootstrap-truncation records nothing, as before issue 16."""
    cfg, impala, agent, actor = learner_and_actor(tmp_path, envs=2, T=7, bootstrap_truncation=bootstrap_truncation)
    actor.envs.close()
    actor.envs = ScriptedCuts()  # type: ignore[assignment]
    weights = [agent.state_dict()]
    first, second = actor.unroll(weights, 0), actor.unroll(weights, 0)
    ends = torch.zeros(7, 2, dtype=torch.bool)
    for t, b in ScriptedCuts.cuts | ScriptedCuts.terminations:
        ends[t, b] = True
    assert torch.equal(first.dones, ends) and torch.equal(second.dones, ends)
    if not bootstrap_truncation:
        assert first.truncated is None and first.final_obs is None
        assert stack_unrolls([first, second]).truncated is None
        return
    expected = torch.zeros(7, 2, dtype=torch.bool)
    expected[1, 1] = expected[2, 0] = expected[4, 0] = True
    assert first.truncated is not None and first.final_obs is not None
    assert torch.equal(first.truncated, expected)
    # Column 0 first (steps 2, 4), then column 1 (step 1): not time order across columns.
    assert [int(o.flatten()[0]) for o in first.final_obs] == [104, 108, 103]
    assert all(bool((o == o.flatten()[0]).all()) for o in first.final_obs)
    assert int(first.obs[3, 0].flatten()[0]) == 3  # the reset observation after the cut: step 2's obs
    stacked = stack_unrolls([first, second])
    assert stacked.truncated is not None and stacked.final_obs is not None
    columns, steps = stacked.truncated.t().nonzero(as_tuple=True)
    fills = [int(o.flatten()[0]) for o in stacked.final_obs]
    assert fills == [100 + 2 * (int(t) + 7 * (int(b) // 2)) + int(b) % 2 for t, b in zip(steps, columns)]
    with pytest.raises(ValueError, match="--bootstrap-truncation"):
        stack_unrolls([first, dataclasses.replace(second, truncated=None, final_obs=None)])


def test_vtrace_with_a_folded_time_limit_matches_a_hand_computation() -> None:
    """T = 5, gamma = 0.5, a time-limit cut after step 1 (final value 8, head 2: 2) and a termination after
    step 3. Folded rewards r' = r + gamma * V(final) at the cut; discounts 0 at both ends. Off-policy at t = 0
    only (pi / mu = 0.5, so rho_0 = c_0 = 0.5). By hand, head 1 (V = 10, 20, 30, 40, 50; V(x_5) = 60):
        v_4 = 5 + 0.5 * 60 = 35         v_3 = 4 (termination: nothing after it)   v_2 = 3 + 0.5 * 4 = 5
        v_1 = 2 + 0.5 * 8 = 6 (the cut) v_0 = 10 + 0.5 * (1 + 0.5 * 20 - 10) + 0.5 * 0.5 * (6 - 20) = 7
        A_0 = 0.5 * (1 + 0.5 * 6 - 10) = -3, A_1 = 6 - 20, A_2 = 3 + 0.5 * 4 - 30, A_3 = 4 - 40, A_4 = 35 - 50."""
    gamma = 0.5
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)[:, None, None].repeat(1, 1, 2)
    values = torch.stack([torch.tensor([10.0, 20, 30, 40, 50]), torch.tensor([0.0, 0, 0, 0, 0])], -1)[:, None]
    values = values.double()
    bootstrap = torch.tensor([[60.0, 4.0]], dtype=torch.float64)
    dones = torch.tensor([0, 1, 0, 1, 0], dtype=torch.bool)[:, None]
    truncated = torch.tensor([0, 1, 0, 0, 0], dtype=torch.bool)[:, None]
    final_values = torch.full((5, 1, 2), float("nan"), dtype=torch.float64)  # read only at the cut
    final_values[1, 0] = torch.tensor([8.0, 2.0])
    behaviour = torch.full((5, 1), -1.0, dtype=torch.float64)
    target = behaviour.clone()
    target[0] += math.log(0.5)
    folded = fold_time_limit_bootstrap(rewards, truncated, final_values, gamma)
    vs, adv = vtrace(behaviour, target, folded, values, bootstrap, gamma * (1.0 - dones.double()))
    torch.testing.assert_close(vs[:, 0, 0], torch.tensor([7.0, 6, 5, 4, 35], dtype=torch.float64))
    torch.testing.assert_close(adv[:, 0, 0], torch.tensor([-3.0, -14, -25, -36, -15], dtype=torch.float64))
    # Head 2 (V = 0, V(x_5) = 4, V(final) = 2): v_1 = 2 + 1, v_3 = 4, v_2 = 3 + 2, v_4 = 5 + 2,
    # v_0 = 0 + 0.5 * (1 + 0) + 0.25 * 3.
    torch.testing.assert_close(vs[:, 0, 1], torch.tensor([1.25, 3, 5, 4, 7], dtype=torch.float64))
    # Without the fold the cut is a termination, as before issue 16: v_1 = 2.
    plain, _ = vtrace(behaviour, target, rewards, values, bootstrap, gamma * (1.0 - dones.double()))
    assert float(plain[1, 0, 0]) == 2.0


def test_learner_evaluates_the_final_observation_from_the_state_after_the_cut(tmp_path: Path) -> None:
    """One forward pass with the final observations interleaved: every real step's outputs are those of the plain
    pass over the unroll, and the value at each cut is V(final observation) from the LSTM state after the cut
    step (not the value of the reset observation that follows, and nothing at the termination)."""
    cfg = small_cfg(str(tmp_path / "run"), critic="sparse-dve")
    torch.manual_seed(0)
    agent = Agent((7, 7, 3), 7, cfg)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.mul_(30.0)  # values of order 1 rather than 0.01, so that different observations differ clearly
    unroll = scripted_unroll(agent)
    T = unroll.actions.shape[0]
    with torch.no_grad():
        fwd = forward_unroll(agent, unroll)
        plain = agent(unroll.obs, unroll.first, unroll.prev_action, unroll.prev_reward, unroll.initial_state)
    torch.testing.assert_close(fwd.values, plain.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fwd.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert set(fwd.extras) == set(plain.extras)
    for name in plain.extras:
        torch.testing.assert_close(fwd.extras[name], plain.extras[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(fwd.features, plain.extras["features"], atol=1e-5, rtol=1e-5)

    expected = final_values_step_by_step(agent, unroll)
    assert fwd.final_values is not None
    torch.testing.assert_close(fwd.final_values, expected, atol=1e-5, rtol=1e-5)
    cut = unroll.truncated
    assert cut is not None and (fwd.final_values[~cut] == 0).all() and (fwd.final_values[cut] != 0).all()
    # The reset observation after the cut, evaluated from the same state, has another value.
    with torch.no_grad():
        before = agent(unroll.obs[:2, :1], unroll.first[:2, :1], unroll.prev_action[:2, :1],
                       unroll.prev_reward[:2, :1], tuple(s[:, :1] for s in unroll.initial_state))
        reset = agent(unroll.obs[2:3, :1], torch.zeros(1, 1, dtype=torch.bool), unroll.actions[1:2, :1],
                      unroll.rewards[1:2, :1], before.state)
    assert abs(float(reset.values[0, 0, 0]) - float(fwd.final_values[1, 0, 0])) > 1e-3  # 100x the tolerance
    # Interleaved layout: column 0 has one cut (its later steps move down one), column 1's final is at T + 1.
    seq = interleave_final_obs(unroll)
    assert seq.steps[:, 0].tolist() == [0, 1, *range(3, T + 2)] and seq.steps[:, 2].tolist() == list(range(T + 1))
    assert seq.finals.tolist() == [2, T] and not seq.first[seq.finals, seq.cut_columns].any()
    assert seq.first[3, 0] and torch.equal(seq.obs[seq.finals[0], 0], unroll.final_obs[0])


def test_learner_loss_folds_the_final_values_and_leaves_terminations_alone(tmp_path: Path) -> None:
    """impala_loss on the scripted unroll (off-policy behaviour log-probs) equals the loss written out from the
    plain forward pass, the step-by-step final values and the reference V-trace; without the cut's record the
    loss is the old one (the cut is a terminal) and differs; an unroll with no cut gives the same loss whether
    or not it records cuts."""
    cfg = small_cfg(str(tmp_path / "run"), critic="scalar")
    impala = ImpalaConfig(num_actors=1, envs_per_actor=3, unroll_length=7, batch_size=3)
    torch.manual_seed(0)
    agent = Agent((7, 7, 3), 7, cfg)
    unroll = scripted_unroll(agent)
    T = unroll.actions.shape[0]

    def hand_loss(final_values: torch.Tensor | None) -> torch.Tensor:
        out = agent(unroll.obs, unroll.first, unroll.prev_action, unroll.prev_reward, unroll.initial_state)
        dist = Categorical(logits=out.logits[:T])
        logp = dist.log_prob(unroll.actions)
        values = out.values[:T]
        rewards = unroll.rewards
        if final_values is not None:
            rewards = rewards + cfg.gamma * final_values * unroll.truncated
        discounts = (cfg.gamma * (1.0 - unroll.dones.double())).numpy()
        vs, adv = reference_vtrace(unroll.behaviour_logp.double().numpy(), logp.detach().double().numpy(),
                                   rewards.double().numpy(), values[..., 0].detach().double().numpy(),
                                   out.values[T, :, 0].detach().double().numpy(), discounts, 1.0, 1.0)
        vs_t, adv_t = torch.as_tensor(vs, dtype=torch.float32), torch.as_tensor(adv, dtype=torch.float32)
        return (-(logp * adv_t).mean() + impala.baseline_cost * 0.5 * (vs_t - values[..., 0]).pow(2).mean()
                - impala.entropy_cost * dist.entropy().mean())

    with torch.no_grad():
        loss, _ = impala_loss(agent, unroll, cfg.gamma, impala, aux_scales={})
        expected = hand_loss(final_values_step_by_step(agent, unroll)[..., 0])
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        unrecorded = dataclasses.replace(unroll, truncated=None, final_obs=None)
        old, _ = impala_loss(agent, unrecorded, cfg.gamma, impala, aux_scales={})
        torch.testing.assert_close(old, hand_loss(None), atol=1e-5, rtol=1e-5)
        assert abs(float(old) - float(loss)) > 1e-4

        # No cut in the batch: recording cuts changes nothing, bit for bit.
        no_cut = dataclasses.replace(unroll, truncated=torch.zeros_like(unroll.dones), final_obs=unroll.final_obs[:0])
        a, _ = impala_loss(agent, no_cut, cfg.gamma, impala, aux_scales={})
        b, _ = impala_loss(agent, dataclasses.replace(no_cut, truncated=None, final_obs=None), cfg.gamma, impala, {})
        assert torch.equal(a, b)


def test_bad_impala_config_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--impala.batch-size"):
        check_impala_config(ImpalaConfig(envs_per_actor=3, batch_size=32))
    with pytest.raises(ConfigError, match="--impala.num-actors"):
        check_impala_config(ImpalaConfig(num_actors=0))


def test_unreachable_ray_address_is_a_config_error() -> None:
    from multiscene.algos.impala.loop import connect_ray

    with pytest.raises(ConfigError, match="--impala.ray-address"):
        connect_ray(ImpalaConfig(ray_address="127.0.0.1:1"))  # port 1: connection refused at once
    with pytest.raises(ConfigError, match="--impala.ray-address"):
        connect_ray(ImpalaConfig(ray_address="no-port-here"))


def test_more_actors_than_cpus_warns_and_says_what_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from multiscene.algos.impala import loop

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.warns(UserWarning, match="time-shares the cores"):
        assert loop.connect_ray(ImpalaConfig(num_actors=8)) is True
    assert calls[0]["num_cpus"] == 9  # every actor gets its logical CPU, plus the learner


# ----------------------------------------------------------------------------------------------------------
# Ray runs


def tagged_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``MULTISCENE_TEST_TAG=tag`` (Ray's raylet, GCS and
    workers inherit the driver's environment), read from /proc so other users of the machine are not counted."""
    pids = []
    needle = f"MULTISCENE_TEST_TAG={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as s:
                        if s.read().split(") ")[-1].startswith("Z"):
                            continue  # a zombie is already dead
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def ray_cfg(run_dir: Path, total: int, **changes: object):
    return small_cfg(str(run_dir), total_timesteps=total, max_episode_steps=24, checkpoint_interval=2,
                     eval_episodes=2, eval_num_envs=2, tensorboard=False, **changes)


RAY_IMPALA = ImpalaConfig(num_actors=2, envs_per_actor=2, unroll_length=16, batch_size=4, learning_rate=1e-3,
                          actor_num_cpus=0.5)


@pytest.mark.slow
def test_ray_run_survives_a_killed_actor_and_resumes(tmp_path: Path) -> None:
    """One local Ray (started by train itself), 2 actors: a tiny budget end to end with one actor killed
    mid-run, then --resume with a larger budget; afterwards no Ray process of ours is left."""
    from multiscene.algos.impala.loop import train

    tag = uuid.uuid4().hex
    os.environ["MULTISCENE_TEST_TAG"] = tag
    try:
        run_dir = tmp_path / "run"
        killed_pid: list[int] = []
        new_pid: list[int] = []

        def kill_once(update: int, pool) -> None:
            import ray

            if update == 2:
                killed_pid.append(ray.get(pool.handles[0].ping.remote()))
                pool.kill_actor(0)
                # Take in actor 0's requests until the pool has seen the death (a failed request, or an unroll from
                # a new process): on a loaded machine the learner could otherwise finish the budget on actor 1's
                # unrolls alone. An unroll that finished just before the kill arrives first.
                deadline = time.time() + 120
                while pool.restarts == 0 and time.time() < deadline:
                    refs = [ref for ref, index in pool.inflight.items() if index == 0]
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=5)
                    for ref in done:
                        pool._receive(ref)
            if update == 8:  # the last update: the killed actor must be back, in a new process
                deadline = time.time() + 120
                while not new_pid and time.time() < deadline:
                    try:
                        new_pid.append(ray.get(pool.handles[0].ping.remote(), timeout=60))
                    except ray.exceptions.ActorUnavailableError:  # still restarting
                        time.sleep(1.0)

        steps = RAY_IMPALA.steps_per_update  # 64 env steps per update
        train(ray_cfg(run_dir, total=8 * steps), RAY_IMPALA, on_update=kill_once)
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
        assert [r["update"] for r in records] == list(range(1, 9))
        assert records[-1]["impala/actor_restarts"] >= 1
        assert new_pid and new_pid[0] != killed_pid[0]
        for key in ("impala/policy_lag_mean", "impala/queue_depth", "impala/actor_sps", "impala/learner_sps"):
            assert key in records[-1]
        assert (run_dir / "config.json").exists() and (run_dir / "model.safetensors").exists()
        final = json.loads((run_dir / "eval" / "final.json").read_text())
        assert final["train"]["episodes"] == 2 and final["test"]["episodes"] == 2
        assert json.loads((run_dir / "config.json").read_text())["impala"]["num_actors"] == 2

        train(ray_cfg(run_dir, total=12 * steps, resume=True), RAY_IMPALA)
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
        assert [r["update"] for r in records] == list(range(1, 13))
        assert records[8]["global_step"] == 9 * steps  # continued from the checkpoint of update 8
        assert records[-1]["impala/actor_restarts"] >= 1  # the count survives the resume
        time.sleep(2.0)
        assert tagged_processes(tag) == [], "Ray processes left behind after the runs"
    finally:
        os.environ.pop("MULTISCENE_TEST_TAG", None)


SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys
    from conftest import tiny_config
    from multiscene.algos.impala import ImpalaConfig
    from multiscene.algos.impala.loop import train
    cfg = tiny_config(sys.argv[1], env="MiniGrid-HiddenPayoff-v0", critic="scalar", hidden_size=32,
                      max_episode_steps=24, num_levels=10, total_timesteps=10**7, checkpoint_interval=1000,
                      tensorboard=False)
    train(cfg, ImpalaConfig(num_actors=2, envs_per_actor=2, unroll_length=16, batch_size=4, actor_num_cpus=0.5))
    print("EXITED CLEANLY", flush=True)
    """
)


@pytest.mark.slow
def test_sigint_checkpoints_stops_actors_and_leaves_no_ray_processes(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    env = {**os.environ, "MULTISCENE_TEST_TAG": tag,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])])}
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(run_dir)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if len(read_metrics(run_dir / "metrics.jsonl")) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "EXITED CLEANLY" in output
    # checkpoint_interval is 1000, so a checkpoint exists only because SIGINT wrote one, at the last update.
    from multiscene.checkpoint import load_latest_checkpoint

    ckpt = load_latest_checkpoint(run_dir)
    assert ckpt is not None
    assert ckpt.update == read_metrics(run_dir / "metrics.jsonl")[-1]["update"] >= 2
    assert not (run_dir / "eval" / "final.json").exists()  # stopped early: no final evaluation
    time.sleep(2.0)
    assert tagged_processes(tag) == [], "Ray processes left behind after Ctrl-C"


def test_learner_step_with_the_vae_on_procgen_frames(tmp_path: Path) -> None:
    """--aux vae in the IMPALA learner: the named VAE terms join the loss with their scales, and the VAE's
    gradient reaches the shared encoder (the RL heads read the encoder features, not z)."""
    from multiscene.auxloss.vae import VAEAux, VAEConfig, scales

    cfg = tiny_config(str(tmp_path / "run"), env="coinrun", critic="scalar", hidden_size=32)
    impala = ImpalaConfig(num_actors=1, envs_per_actor=2, unroll_length=4, batch_size=2)
    torch.manual_seed(0)
    actor = ImpalaActor(cfg, impala, actor_index=0)
    agent = Agent(actor.envs.obs_shape, actor.envs.num_actions, cfg)
    unroll = actor.unroll([agent.state_dict()], version=0)
    vae_cfg = VAEConfig(latent_dim=8)
    vae = VAEAux(agent.encoder.output_dim, actor.envs.obs_shape, vae_cfg)

    def encoder_grad(vae_scales: dict[str, float]) -> torch.Tensor:
        agent.zero_grad()
        vae.zero_grad()
        loss, metrics = impala_loss(agent, unroll, cfg.gamma, impala, {}, vae, vae_scales)
        loss.backward()
        assert {"losses/vae_recon", "losses/vae_kl", "vae/neg_elbo"} <= set(metrics)
        assert float(metrics["vae/neg_elbo"]) > 0
        return agent.encoder.stages[0].conv.weight.grad.clone()

    torch.manual_seed(1)
    with_vae = encoder_grad(scales(vae_cfg))
    torch.manual_seed(1)
    without = encoder_grad({"vae_recon": 0.0, "vae_kl": 0.0})
    assert float((with_vae - without).abs().max()) > 1e-6
    assert vae.decoder_fc.weight.grad is not None
    actor.close()


def test_vae_on_non_image_observations_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    from multiscene.algos.impala.loop import train
    from multiscene.auxloss.vae import VAEConfig

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="--aux"):
        train(small_cfg(str(run_dir)), ImpalaConfig(num_actors=1, envs_per_actor=1, unroll_length=4, batch_size=1),
              VAEConfig())
    assert not run_dir.exists()  # nothing written, no Ray started


# ----------------------------------------------------------------------------------------------------------
# --critic multi (A2MC's VWR head): the actor steps the critic's reward transform, the learner hands it to
# head_rewards once per batch, V-trace runs per head.


def test_actor_vwr_stream_runs_on_across_unrolls(tmp_path: Path) -> None:
    """The VWR an actor ships over two consecutive unrolls equals one RunningVWR run over the concatenated raw
    rewards (with the ``first`` of each observation acted on): its window is carried across the unroll boundary
    like the LSTM state. Restarting it at the boundary would give other values (checked, so the test can fail)."""
    cfg, impala, agent, actor = learner_and_actor(tmp_path, critic="multi", envs=2, T=7, vwr=VWRConfig(window=4))
    actor.envs.close()
    actor.envs = ScriptedCuts()  # type: ignore[assignment]
    weights = [agent.state_dict()]
    first, second = actor.unroll(weights, 0), actor.unroll(weights, 0)
    assert first.extra_rewards is not None and second.extra_rewards is not None
    assert first.extra_rewards.shape == (7, 2, 1)
    rewards = torch.cat([first.rewards, second.rewards])
    starts = torch.cat([first.first[:7], second.first[:7]])
    assert bool(starts[0].all()) and not bool(starts[7].any())  # no episode starts at the boundary
    reference = RunningVWR.from_config(2, cfg.vwr)
    expected = torch.stack([reference.step(rewards[t], starts[t]) for t in range(14)])
    streamed = torch.cat([first.extra_rewards[..., 0], second.extra_rewards[..., 0]])
    torch.testing.assert_close(streamed, expected, atol=0.0, rtol=0.0)
    assert bool((expected != 0).any())
    restarted = RunningVWR.from_config(2, cfg.vwr)
    fresh = torch.stack([restarted.step(second.rewards[t], starts[7 + t] | (t == 0)) for t in range(7)])
    assert float((fresh - second.extra_rewards[..., 0]).abs().max()) > 1e-3
    stacked = stack_unrolls([first, second])
    assert stacked.extra_rewards is not None
    assert torch.equal(stacked.extra_rewards, torch.cat([first.extra_rewards, second.extra_rewards], dim=1))
    with pytest.raises(ValueError, match="extra_rewards"):
        stack_unrolls([first, dataclasses.replace(second, extra_rewards=None)])
    plain_cfg, _, plain_agent, plain_actor = learner_and_actor(tmp_path, critic="scalar", envs=2, T=3)
    assert plain_actor.reward_transform is None
    assert plain_actor.unroll([plain_agent.state_dict()], 0).extra_rewards is None
    plain_actor.close()


@pytest.mark.parametrize("env_head", ["scalar", "dve"])
def test_multi_critic_vtrace_targets_per_head_match_a_hand_computation(tmp_path: Path, env_head: str) -> None:
    """impala_loss with --critic multi (beta 0.5, --multi.env-head scalar or dve) on the scripted off-policy
    unroll with two time-limit cuts and a termination, the VWR given as ``extra_rewards``: per head h the
    reward is (env reward, VWR x sqrt(sum r^2 / sum vwr^2)) (match-env scaling, from this batch alone), each cut
    folds gamma * V_h(final observation) into head h's reward, and the reference V-trace (explicit sums) gives
    head h's targets; the policy advantage is A_env + 0.5 A_vwr. Loss and per-head explained variance must
    match, and the running RMS statistics take in the batch exactly once per loss / learner step."""
    cfg = small_cfg(str(tmp_path / "run"), critic="multi", multi=MultiConfig(beta=0.5, env_head=env_head))
    impala = ImpalaConfig(num_actors=1, envs_per_actor=3, unroll_length=7, batch_size=3)
    torch.manual_seed(0)
    agent = Agent((7, 7, 3), 7, cfg)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.mul_(30.0)  # values of order 1, so that the folded final values weigh in the targets
    unroll = scripted_unroll(agent)
    T, B = unroll.actions.shape
    transform = RunningVWR.from_config(B, cfg.vwr)
    vwr = torch.stack([transform.step(unroll.rewards[t], unroll.first[t]) for t in range(T)])
    unroll = dataclasses.replace(unroll, extra_rewards=vwr[..., None])
    assert unroll.truncated is not None

    with torch.no_grad():
        out = agent(unroll.obs, unroll.first, unroll.prev_action, unroll.prev_reward, unroll.initial_state)
        finals = final_values_step_by_step(agent, unroll)  # [T, B, 2]
    dist = Categorical(logits=out.logits[:T])
    logp = dist.log_prob(unroll.actions)
    values = out.values[:T]
    scale = math.sqrt(float(unroll.rewards.double().pow(2).sum()) / float(vwr.double().pow(2).sum()))
    head_rewards = torch.stack([unroll.rewards, vwr * scale], dim=-1).double()
    head_rewards = head_rewards + cfg.gamma * finals.double() * unroll.truncated[..., None]
    discounts = (cfg.gamma * (1.0 - unroll.dones.double())).numpy()
    targets, advantages = [], []
    for h in range(2):
        vs, adv = reference_vtrace(unroll.behaviour_logp.double().numpy(), logp.detach().double().numpy(),
                                   head_rewards[..., h].numpy(), values[..., h].detach().double().numpy(),
                                   out.values[T, :, h].detach().double().numpy(), discounts, 1.0, 1.0)
        targets.append(torch.as_tensor(vs, dtype=torch.float32))
        advantages.append(torch.as_tensor(adv, dtype=torch.float32))
    vs_t = torch.stack(targets, dim=-1)
    expected = (-(logp * (advantages[0] + 0.5 * advantages[1])).mean()
                + impala.baseline_cost * 0.5 * (vs_t - values).pow(2).sum(-1).mean()
                - impala.entropy_cost * dist.entropy().mean())

    with torch.no_grad():
        loss, metrics = impala_loss(agent, unroll, cfg.gamma, impala, aux_scales={})
    torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
    for h, head in enumerate(("env", "vwr")):
        ev = explained_variance(values[..., h].detach().flatten(), vs_t[..., h].flatten())
        assert float(metrics[f"losses/explained_variance/{head}"]) == pytest.approx(ev, abs=1e-5)
    assert float(metrics["losses/explained_variance"]) == float(metrics["losses/explained_variance/env"])
    assert float(metrics["dve/vwr_reward_scale"]) == pytest.approx(scale, rel=1e-6)
    assert ("dve/confusion_mean" in metrics) == (env_head == "dve")  # the env head's own diagnostics
    batch_squares = torch.stack([unroll.rewards.double().pow(2).sum(), vwr.double().pow(2).sum()])
    critic = agent.critic
    assert isinstance(critic, MultiCritic)
    torch.testing.assert_close(critic.reward_sq_sum, batch_squares)  # folded in once by the loss
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    result = learner_step(agent, optimizer, unroll, cfg.gamma, impala, aux_scales={})
    assert not result.skipped and "losses/explained_variance/vwr" in result.metrics
    torch.testing.assert_close(critic.reward_sq_sum, 2 * batch_squares)  # one more batch, once
    with pytest.raises(ValueError, match="extra"):
        impala_loss(agent, dataclasses.replace(unroll, extra_rewards=None), cfg.gamma, impala, aux_scales={})


def test_learner_step_with_a_sparse_dve_env_head_schedules_lcc(tmp_path: Path) -> None:
    """--critic multi --multi.env-head sparse-dve in the IMPALA learner: L_CC's terms join the loss under the
    schedule's names, next to the VWR head's diagnostics."""
    from multiscene.critics.schedule import make_cc_schedule

    cfg, impala, agent, actor = learner_and_actor(tmp_path, critic="multi", envs=2, T=6,
                                                  multi=MultiConfig(env_head="sparse-dve"))
    unroll = actor.unroll([agent.state_dict()], version=0)
    scales = make_cc_schedule(cfg).scales(10**6)
    assert set(scales) == {"cc_confusion", "cc_contribution"}
    result = learner_step(agent, torch.optim.Adam(agent.parameters(), lr=1e-3), unroll, cfg.gamma, impala, scales)
    assert not result.skipped
    assert {"losses/cc_confusion", "losses/cc_contribution", "dve/vwr_mean", "dve/vwr_reward_scale",
            "losses/explained_variance/vwr"} <= set(result.metrics)
    actor.close()


def test_hotwire_with_impala_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    from multiscene.algos.impala.loop import train

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"--hotwire needs an algorithm that collects n-step segments \(ppo, a2c, "
                                          r"acktr\); got --algo impala"):
        train(small_cfg(str(run_dir), critic="multi", hotwire=True),
              ImpalaConfig(num_actors=1, envs_per_actor=1, unroll_length=4, batch_size=1))
    assert not run_dir.exists()


@pytest.mark.slow
def test_ray_run_with_the_multi_critic(tmp_path: Path) -> None:
    """--algo impala --critic multi --multi.env-head dve end to end on a local Ray with 2 actors (the tiny
    config of the other Ray tests), through ``multiscene.trainer.train``: every update logs both heads'
    explained variance and the VWR diagnostics, and the checkpoint holds the VWR scaling statistics."""
    from safetensors.torch import load_file

    from multiscene.trainer import train

    run_dir = tmp_path / "run"
    cfg = ray_cfg(run_dir, total=3 * RAY_IMPALA.steps_per_update, critic="multi", algo="impala", impala=RAY_IMPALA,
                  multi=MultiConfig(env_head="dve"))
    train(cfg)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
    assert [r["update"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("losses/explained_variance/env", "losses/explained_variance/vwr", "dve/vwr_mean",
                    "dve/vwr_nonzero", "dve/vwr_reward_scale", "dve/confusion_mean"):
            assert key in r, key
        assert math.isfinite(r["losses/value_loss"]) and math.isfinite(r["dve/vwr_reward_scale"])
    tensors = load_file(str(run_dir / "model.safetensors"))
    squares = tensors["agent.critic.reward_sq_sum"]
    assert squares.shape == (2,) and bool((squares >= 0).all())
    assert json.loads((run_dir / "config.json").read_text())["config"]["critic"] == "multi"
    assert (run_dir / "eval" / "final.json").exists()


# ----------------------------------------------------------------------------------------------------------
# The actor pool's bookkeeping, with Ray replaced by a scripted fake (no processes): restarts counted once per
# death, an exception inside an actor (env crash) kills it for a restart, too many failures stop the run.


class _FakeRef:
    def __init__(self, actor: int, outcome: object) -> None:
        self.actor, self.outcome = actor, outcome


class _FakeRay:
    """Each actor answers its requests from a script: an int is the pid of a good unroll, an exception is raised;
    the script's last entry repeats."""

    def __init__(self, scripts: dict[int, list[object]], template) -> None:
        self.scripts, self.template, self.killed = scripts, template, []

    def handle(self, index: int):
        fake = self

        class Method:
            def remote(self, weights, version):
                script = fake.scripts[index]  # the last entry repeats forever
                return _FakeRef(index, script.pop(0) if len(script) > 1 else script[0])

        class Handle:
            unroll = Method()

        return Handle()

    def get(self, ref):
        if isinstance(ref.outcome, BaseException):
            raise ref.outcome
        import dataclasses

        return dataclasses.replace(self.template, actor_index=ref.actor, actor_pid=ref.outcome)

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def kill(self, handle, no_restart=True):
        self.killed.append(handle)

    def put(self, value):
        return value


def _fake_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scripts: dict[int, list[object]], max_restarts: int):
    import ray

    from multiscene.algos.impala import loop

    _cfg, _impala, agent, actor = learner_and_actor(tmp_path, envs=1, T=3)
    fake = _FakeRay(scripts, actor.unroll([agent.state_dict()], 0))
    for name in ("get", "wait", "kill", "put"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    monkeypatch.setattr(loop.time, "sleep", lambda s: None)

    class FakeActorClass:
        @staticmethod
        def remote(cfg, impala, index, incarnation):
            return fake.handle(index)

    monkeypatch.setattr(loop, "remote_actor_class", lambda impala: FakeActorClass)
    impala = ImpalaConfig(num_actors=len(scripts), envs_per_actor=1, unroll_length=3, batch_size=2,
                          max_actor_restarts=max_restarts)
    pool = loop.ActorPool(_cfg, impala, incarnation=0)
    pool.publish(agent.state_dict(), 0)
    pool.start()
    return pool, fake


def test_pool_counts_each_death_once_and_restarts_crashed_actors(monkeypatch, tmp_path: Path) -> None:
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    from multiscene.envs.base import EnvError

    scripts = {
        # actor 0: killed; two "unavailable" answers while Ray restarts it (one death), then a new process
        0: [100, RayActorError(), ActorUnavailableError("restarting", None), 101, 101, 101, 101],
        # actor 1: an env crash inside it (we kill it for a restart), then a new process
        1: [200, RayTaskError("unroll", "traceback", EnvError("env crashed")), 201, 201, 201, 201],
    }
    pool, fake = _fake_pool(monkeypatch, tmp_path, scripts, max_restarts=3)
    pids = []
    for _ in range(4):
        batch = pool.next_batch(2, lambda: False)
        assert sum(u.actions.shape[1] for u in batch) == 2
        pids += [u.actor_pid for u in batch]
    assert pool.restarts == 2  # two deaths, not three error answers
    assert len(fake.killed) == 1  # only the crashed actor is killed by us; Ray restarts the dead one itself
    assert {100, 101, 200, 201} <= set(pids)
    assert any("EnvError" in m or "RayTaskError" in m for m in pool.messages)


def test_pool_counts_a_silent_restart_by_its_new_pid(monkeypatch, tmp_path: Path) -> None:
    pool, _ = _fake_pool(monkeypatch, tmp_path, {0: [100, 100, 555, 555, 555]}, max_restarts=3)
    for _ in range(2):
        pool.next_batch(2, lambda: False)
    assert pool.restarts == 1


def test_pool_gives_up_past_the_restart_limit(monkeypatch, tmp_path: Path) -> None:
    from ray.exceptions import RayActorError

    from multiscene.algos.impala.loop import ActorFailed

    pool, _ = _fake_pool(monkeypatch, tmp_path, {0: [RayActorError() for _ in range(10)]}, max_restarts=1)
    with pytest.raises(ActorFailed, match="--impala.max-actor-restarts"):
        pool.next_batch(2, lambda: False)


def test_pool_stops_waiting_when_asked(monkeypatch, tmp_path: Path) -> None:
    from ray.exceptions import ActorUnavailableError

    pool, _ = _fake_pool(monkeypatch, tmp_path, {0: [ActorUnavailableError("x", None) for _ in range(3)]},
                         max_restarts=10)
    assert pool.next_batch(2, lambda: True) is None


@pytest.mark.slow
def test_ray_run_with_the_vae_on_procgen_checkpoints_and_resumes_it(tmp_path: Path) -> None:
    """--aux vae through the whole loop: VAE weights in the checkpoint, restored on --resume and trained on,
    the -ELBO logged. One Ray instance started here serves both runs (train leaves a caller's Ray running);
    the final evaluation is off (coinrun episodes are long; the reconstruction grid is tested in test_vae)."""
    import ray
    from safetensors.torch import load_file

    from multiscene.algos.impala.loop import train
    from multiscene.auxloss.vae import VAEConfig

    run_dir = tmp_path / "run"
    impala = ImpalaConfig(num_actors=1, envs_per_actor=2, unroll_length=8, batch_size=2, actor_num_cpus=0.5)
    common = dict(env="coinrun", critic="scalar", hidden_size=16, tensorboard=False)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        train(tiny_config(str(run_dir), total_timesteps=2 * 16, checkpoint_interval=1, final_eval=False, **common),
              impala, VAEConfig(latent_dim=8))
        first = load_file(run_dir / "model.safetensors")
        assert any(k.startswith("agent.aux.") for k in first)  # the VAE is part of the agent
        train(tiny_config(str(run_dir), total_timesteps=3 * 16, resume=True, **common), impala)
        assert ray.is_initialized()  # the caller's Ray is left running
    finally:
        ray.shutdown()
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
    assert [r["update"] for r in records] == [1, 2, 3]
    assert all(r["vae/neg_elbo"] > 0 for r in records)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["vae"]["latent_dim"] == 8 and saved["config"]["aux"] == "vae"
    second = load_file(run_dir / "model.safetensors")
    key = "agent.aux.decoder_fc.weight"
    assert not torch.equal(first[key], second[key])  # trained on
