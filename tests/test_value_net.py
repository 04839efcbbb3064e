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


@pytest.mark.parametrize("critic", ["scalar", "sparse-dve"])
def test_detached_value_net_trains_the_heads_but_not_the_shared_lstm_trunk(critic):
    # --value-net detached (for the MultiRoom question in docs/benchmarks.md): the critic's losses reach its own
    # heads, never the encoder or the LSTM the policy also reads; the policy still trains them.
    cfg = parse_train_args(["--env", "MiniGrid-Empty-5x5-v0", "--critic", critic, "--value-net", "detached",
                            "--core", "lstm"])
    validate(cfg)
    agent = Agent((7, 7, 3), 7, cfg)
    torch.manual_seed(0)
    obs = torch.randint(0, 11, (4, 3, 7, 7, 3), dtype=torch.uint8)
    T, B = obs.shape[:2]
    run = lambda: agent(obs, torch.zeros(T, B, dtype=torch.bool), torch.zeros(T, B, dtype=torch.long),  # noqa: E731
                        torch.zeros(T, B), agent.initial_state(B, "cpu"))
    out = run()
    critic_loss = out.values.pow(2).sum()
    if "alpha" in out.extras:
        critic_loss = critic_loss + out.extras["alpha"].pow(2).sum()
    critic_loss.backward()
    trunk = list(agent.encoder.parameters()) + list(agent.core.parameters())
    assert all(p.grad is None or not p.grad.any() for p in trunk)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.parameters())
    agent.zero_grad()
    run().logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.core.parameters())
