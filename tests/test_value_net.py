"""--value-net separate: the critic reads an encoder of its own (CleanRL's and baselines' MuJoCo agents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiscene.cli import parse_train_args
from multiscene.config import ConfigError, validate
from multiscene.models.agent import Agent
from multiscene.presets import get_preset


def _agent(value_net: str, critic: str = "scalar") -> Agent:
    cfg = get_preset("ppo-mujoco")
    from multiscene.config import replace

    cfg = replace(cfg, value_net=value_net, critic=critic)
    return Agent((5,), 2, cfg, continuous=True, obs_dtype=np.float32)


def _forward(agent: Agent, obs: torch.Tensor):
    T, B = obs.shape[:2]
    return agent(obs, torch.zeros(T, B, dtype=torch.bool), torch.zeros(T, B, 2), torch.zeros(T, B),
                 agent.initial_state(B, "cpu"), normalized=True)


@pytest.mark.parametrize("critic", ["scalar", "dve"])
def test_separate_value_net_keeps_the_value_loss_out_of_the_policy_trunk(critic):
    torch.manual_seed(0)
    agent = _agent("separate", critic)
    out = _forward(agent, torch.randn(3, 4, 5))
    out.values.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in agent.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.value_encoder.parameters())
    agent.zero_grad()
    out = _forward(agent, torch.randn(3, 4, 5))
    out.logits.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in agent.value_encoder.parameters())


def test_shared_value_net_sends_the_value_loss_into_the_trunk():
    torch.manual_seed(0)
    agent = _agent("shared")
    assert agent.value_encoder is None
    _forward(agent, torch.randn(3, 4, 5)).values.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.encoder.parameters())


def test_ppo_mujoco_uses_separate_networks_and_the_flag_parses():
    assert get_preset("ppo-mujoco").value_net == "separate"
    cfg = parse_train_args(["--env", "CartPole-v1", "--value-net", "separate", "--core", "none"])
    assert cfg.value_net == "separate"


def test_separate_value_net_with_an_lstm_core_is_refused():
    cfg = parse_train_args(["--env", "MiniGrid-DoorKey-5x5-v0", "--value-net", "separate", "--core", "lstm"])
    with pytest.raises(ConfigError, match="--value-net separate needs --core none"):
        validate(cfg)
