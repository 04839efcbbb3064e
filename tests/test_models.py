"""The recurrent core unrolled over a sequence equals stepping it (Sample Factory tests/algo/test_rnn.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from multiscene.models.agent import Agent
from multiscene.presets import get_preset


@pytest.mark.parametrize("prev_action_reward", [True, False])
@pytest.mark.parametrize("critic", ["scalar", "sparse-dve"])
def test_unrolled_lstm_equals_stepping_with_random_episode_starts(prev_action_reward, critic):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("quickstart"), critic=critic, prev_action_reward=prev_action_reward, hidden_size=32)
    agent = Agent((7, 7, 3), 7, cfg).double()
    T, B = 12, 4
    obs = torch.randint(0, 11, (T, B, 7, 7, 3), dtype=torch.uint8)
    first = torch.rand(T, B) < 0.25
    first[0] = True
    prev_action = torch.randint(0, 7, (T, B))
    prev_reward = torch.randn(T, B)
    state = tuple(s.double() for s in agent.initial_state(B, "cpu"))
    # Nonzero carried state, so the reset at t = 0 (and inside) matters.
    state = tuple(s + 0.3 for s in state)
    full = agent(obs, first, prev_action, prev_reward, state)
    s = state
    logits, values = [], []
    for t in range(T):
        out = agent(obs[t : t + 1], first[t : t + 1], prev_action[t : t + 1], prev_reward[t : t + 1], s)
        s = out.state
        logits.append(out.logits)
        values.append(out.values)
    assert torch.allclose(full.logits, torch.cat(logits), atol=1e-10)
    assert torch.allclose(full.values, torch.cat(values), atol=1e-10)
    for a, b in zip(full.state, s):
        assert torch.allclose(a, b, atol=1e-10)


def test_episode_start_resets_memory():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("quickstart"), critic="scalar", hidden_size=16)
    agent = Agent((7, 7, 3), 7, cfg)
    obs = torch.randint(0, 11, (1, 2, 7, 7, 3), dtype=torch.uint8)
    obs[:, 1] = obs[:, 0]
    first = torch.tensor([[True, True]])
    state = (torch.randn(1, 2, 16), torch.randn(1, 2, 16))
    out = agent(obs, first, torch.tensor([[3, 5]]), torch.tensor([[1.0, -2.0]]), state)
    # Different carried state and previous action/reward, but both envs start an episode: same output.
    assert torch.allclose(out.logits[0, 0], out.logits[0, 1])
    out2 = agent(obs, ~first, torch.tensor([[3, 5]]), torch.tensor([[1.0, -2.0]]), state)
    assert not torch.allclose(out2.logits[0, 0], out2.logits[0, 1])


def test_impala_encoder_shapes():
    cfg = dataclasses.replace(get_preset("procgen-easy"), hidden_size=64)
    agent = Agent((64, 64, 3), 15, cfg)
    obs = torch.randint(0, 255, (2, 3, 64, 64, 3), dtype=torch.uint8)
    first = torch.ones(2, 3, dtype=torch.bool)
    out = agent(obs, first, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), agent.initial_state(3, "cpu"))
    assert out.logits.shape == (2, 3, 15) and out.values.shape == (2, 3, 1)
