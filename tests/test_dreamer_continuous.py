"""DreamerV2's continuous-action path driven by the env loop (issue 13): a tanh-Gaussian actor on [-1, 1]^n,
uniformly random prefill in that box, actions rescaled to the Box's bounds only on their way to the env, dynamics
backprop through the world model's imagined states, and a short Pendulum-v1 run that trains, evaluates and
resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from multiscene.algos.dreamer import DreamerConfig
from multiscene.algos.dreamer.behavior import Behavior
from multiscene.algos.dreamer.loop import DreamerAgent, check_action_space
from multiscene.algos.dreamer.rssm import RSSMState
from multiscene.algos.dreamer.world_model import WorldModel
from multiscene.config import ConfigError
from multiscene.envs.base import ActionSpec

SMALL = DreamerConfig(size="small")
BOX = ActionSpec("continuous", 3, np.array([-2.0, 0.0, -np.inf], np.float32), np.array([2.0, 10.0, np.inf], np.float32))


def test_continuous_agent_acts_in_the_unit_box_and_the_env_gets_the_box_bounds() -> None:
    """Prefill is uniform in [-1, 1]^n (both halves of every dimension hit), the mode is tanh of the actor's
    mean (next test), actor samples lie inside the box, and ``env_actions`` maps -1 / 0 / 1 to low / middle / high (an infinite bound passes as it is)."""
    torch.manual_seed(0)
    agent = DreamerAgent((4,), 3, SMALL, action_spec=BOX)
    assert not agent.discrete and not agent.behavior.discrete
    B = 256
    obs, first = torch.randn(B, 4), torch.ones(B, dtype=torch.bool)
    action, state = agent.act(obs, first, agent.initial_state(B, torch.device("cpu")), random_action=True)
    assert action.shape == (B, 3) and action.dtype == torch.float32
    assert action.min() >= -1.0 and action.max() <= 1.0
    assert (action.min(0).values < -0.8).all() and (action.max(0).values > 0.8).all()
    assert torch.equal(state.prev_action, action)  # the RSSM is fed the [-1, 1] vector, not the env's units

    sample, _ = agent.act(obs, first, agent.initial_state(B, torch.device("cpu")))
    assert sample.shape == (B, 3) and sample.abs().max() < 1.0

    env = agent.env_actions(torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]]))
    assert env.dtype == np.float32
    np.testing.assert_allclose(env, [[-2.0, 0.0, -1.0], [0.0, 5.0, 0.0], [2.0, 10.0, 0.5]])
    np.testing.assert_array_equal(agent.replay_actions(action), action.numpy())


def test_deterministic_continuous_action_is_tanh_of_the_actor_mean() -> None:
    torch.manual_seed(1)
    agent = DreamerAgent((4,), 1, SMALL, action_spec=ActionSpec("continuous", 1, np.array([-2.0], np.float32),
                                                                 np.array([2.0], np.float32)))
    obs, first = torch.randn(5, 4), torch.ones(5, dtype=torch.bool)
    state = agent.initial_state(5, torch.device("cpu"))
    torch.manual_seed(2)
    mode, after = agent.act(obs, first, state, deterministic=True)
    features = torch.cat([after.rssm.deter, after.rssm.stoch.flatten(-2)], -1)
    mean = agent.behavior.actor(features).chunk(2, -1)[0]
    torch.testing.assert_close(mode, torch.tanh(mean))


def test_discrete_spec_builds_the_same_agent_as_before() -> None:
    """A Discrete ``action_spec`` (or none, Mario and the multi-level env) keeps the categorical actor, integer
    actions for the env and one-hot actions for the replay."""
    torch.manual_seed(0)
    a = DreamerAgent((5,), 4, SMALL)
    torch.manual_seed(0)
    b = DreamerAgent((5,), 4, SMALL, action_spec=ActionSpec.discrete(4))
    assert a.discrete and b.discrete
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    action = torch.tensor([0, 3])
    np.testing.assert_array_equal(b.env_actions(action), [0, 3])
    np.testing.assert_array_equal(b.replay_actions(action), np.eye(4, dtype=np.float32)[[0, 3]])
    with pytest.raises(ValueError, match="does not match"):
        DreamerAgent((5,), 4, SMALL, action_spec=BOX)


def _continuous_losses(
    cfg: DreamerConfig, detach_actions: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[Behavior, WorldModel, list[torch.Tensor], torch.Tensor]:
    """Behavior losses on a frozen world model, recording (and optionally detaching) every imagined action
    as the RSSM's prior step receives it."""
    from conftest import frozen_world_model_and_starts

    wm, beh, start = frozen_world_model_and_starts(False, cfg)
    seen: list[torch.Tensor] = []
    img_step = wm.rssm.img_step

    def spy(prev: RSSMState, action: torch.Tensor, generator: Any = None) -> RSSMState:
        if detach_actions:
            action = action.detach()
        elif action.requires_grad:
            action.retain_grad()
        seen.append(action)
        return img_step(prev, action, generator)

    monkeypatch.setattr(wm.rssm, "img_step", spy)
    actor_loss, critic_loss, _ = beh.losses(wm, start, torch.ones(12), cfg)
    (actor_loss + critic_loss).backward()
    return beh, wm, seen, actor_loss


def test_dynamics_backprop_reaches_the_actor_through_the_imagined_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """``actor_grad: auto`` is dynamics backprop for continuous actions: with the entropy bonus off, the actor's
    whole gradient comes from the lambda-returns through the RSSM's prior steps. It is nonzero, the imagined
    actions carry gradient, the frozen world model gets none; and with the actions detached where the RSSM
    reads them, the actor's gradient is exactly zero, so no Reinforce (log-probability) term contributes."""
    cfg = DreamerConfig(size="small", horizon=4, actor_ent=0.0)
    beh, wm, seen, _ = _continuous_losses(cfg, detach_actions=False, monkeypatch=monkeypatch)
    assert beh.reinforce_weight(cfg) == 0.0
    assert len(seen) == cfg.horizon
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in seen)
    actor_grads = [p.grad for p in beh.actor.parameters()]
    assert all(g is not None for g in actor_grads) and sum(float(g.abs().sum()) for g in actor_grads) > 0
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.grad is None for p in beh.target_critic.parameters())

    with monkeypatch.context() as m:
        beh, _, _, _ = _continuous_losses(cfg, detach_actions=True, monkeypatch=m)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in beh.actor.parameters())


def test_action_space_check() -> None:
    """Discrete and 1-D Box spaces pass; a multi-level list with a Box env, and a non-Box, non-Discrete space,
    get a ConfigError naming --env and what is allowed."""
    import gymnasium

    check_action_space("CartPole-v1")
    check_action_space("Pendulum-v1")
    with pytest.raises(ConfigError, match=r"--env CartPole-v1,Pendulum-v1: Pendulum-v1 .*Discrete actions only"):
        check_action_space("CartPole-v1,Pendulum-v1")

    class MultiButton(gymnasium.Env):  # type: ignore[type-arg]
        observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gymnasium.spaces.MultiDiscrete([2, 3])

    gymnasium.register("MultisceneTestMultiButton-v0", entry_point=MultiButton)
    try:
        with pytest.raises(ConfigError, match=r"--env MultisceneTestMultiButton-v0: .*Discrete .*1-D Box"):
            check_action_space("MultisceneTestMultiButton-v0")
    finally:
        gymnasium.registry.pop("MultisceneTestMultiButton-v0")


# ----------------------------------------------------------------------------------------------------------
# The loop on Pendulum-v1 (float observations, a Box [-2, 2] torque)


def _pendulum_run(tmp_path: Path, total: int, resume: bool = False, **changes: object) -> Path:
    from conftest import tiny_config

    from multiscene.algos.dreamer.loop import train

    cfg = tiny_config(str(tmp_path / "run"), env="Pendulum-v1", critic="scalar", num_envs=2,
                      total_timesteps=total, resume=resume, tensorboard=False, max_episode_steps=16,
                      eval_episodes=2, **changes)
    dreamer = DreamerConfig(size="small", batch_size=3, seq_len=8, train_every=8, prefill=40, horizon=4,
                            log_every=16, checkpoint_every=48, replay_capacity=2000, slow_target_update=2,
                            reward_transform="identity")
    return train(cfg, dreamer)


@pytest.fixture
def env_actions(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every action array handed to a Gymnasium env's ``step`` (before its clip)."""
    from multiscene.envs.gymnasium import GymnasiumVecEnv

    seen: list[np.ndarray] = []
    step = GymnasiumVecEnv.step

    def record(self: GymnasiumVecEnv, actions: np.ndarray) -> Any:
        seen.append(np.array(actions, copy=True))
        return step(self, actions)

    monkeypatch.setattr(GymnasiumVecEnv, "step", record)
    return seen


def test_short_pendulum_run_trains_evaluates_and_resumes(tmp_path: Path, env_actions: list[np.ndarray]) -> None:
    from multiscene.checkpoint import load_latest_checkpoint
    from multiscene.logger import read_metrics

    run_dir = _pendulum_run(tmp_path, total=96)
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "trainer_state.pt", "eval/final.json"):
        assert (run_dir / name).exists(), name
    records = read_metrics(run_dir / "metrics.jsonl")
    trained = [r for r in records if "dreamer/image_loss" in r]
    assert trained and all(np.isfinite(r["dreamer/actor_loss"]) for r in trained)
    assert any("charts/episodic_return" in r for r in records)

    # The env got float torques of shape [B, 1] in Pendulum's [-2, 2], beyond [-1, 1] (rescaled): the first 20
    # vectorized steps are the uniform prefill, so |torque| > 1 about half the time.
    training = np.stack(env_actions[:48])
    assert training.shape == (48, 2, 1) and training.dtype == np.float32
    assert training.min() >= -2.0 and training.max() <= 2.0
    assert (np.abs(training[:20]) > 1.0).mean() > 0.25 and training.min() < -1.0 and training.max() > 1.0

    ckpt = load_latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.state["learner"]["train_steps"] == (96 - 40) // 8
    assert ckpt.tensors["agent.behavior.actor.4.weight"].shape[0] == 2  # mean and std of one torque
    episodes = ckpt.state["replay"]["episodes"]
    assert episodes
    for ep in episodes:
        assert ep["obs"].dtype == np.float32 and ep["obs"].shape[1:] == (3,)
        assert ep["action"].shape[1:] == (1,) and np.abs(ep["action"]).max() <= 1.0  # stored in [-1, 1]
    stored = np.concatenate([ep["action"][1:, 0] for ep in episodes])
    assert len(np.unique(stored)) > len(stored) // 2  # real-valued, not one-hot

    final = json.loads((run_dir / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        assert final[split]["episodes"] == 2 and "deterministic" in final[split]
        assert final[split]["return_mean"] < 0  # Pendulum's costs
    assert final["random_policy_test"]["episodes"] == 2 and final["random_policy_test"]["return_mean"] < 0
    evaluation = np.concatenate([a.ravel() for a in env_actions[48:]])
    assert evaluation.min() >= -2.0 and evaluation.max() <= 2.0 and np.abs(evaluation).max() > 1.0

    resumed = _pendulum_run(tmp_path, total=144, resume=True)
    steps = [r["global_step"] for r in read_metrics(resumed / "metrics.jsonl") if "charts/SPS" in r]
    assert steps == sorted(steps) and steps[-1] == 144 and len(set(steps)) == len(steps)
    ckpt2 = load_latest_checkpoint(resumed)
    assert ckpt2 is not None and ckpt2.state["learner"]["train_steps"] == 7 + 6


def test_continuous_resume_continues_identically(tmp_path: Path) -> None:
    """96 steps in one go and 48 + resumed 48 give the same weights (env, replay, RNG, optimizers restored)."""
    from conftest import assert_resume_matches_one_go

    assert_resume_matches_one_go(_pendulum_run, tmp_path)


def test_tanh_gaussian_entropy_matches_monte_carlo_and_stays_bounded_when_saturated() -> None:
    """The entropy estimate is unbiased (its mean over samples matches -E[log p(a)] computed from the pre-tanh
    samples, where nothing is clamped), and for a saturated actor it stays bounded with no gradient that pushes
    the mean further out (the atanh-based -log p grew without bound there, see ``ActionDist.entropy``)."""
    import math

    from multiscene.algos.dreamer.behavior import ActionDist

    torch.manual_seed(0)
    mean, std = torch.tensor([[0.3, -0.8]]).expand(200_000, 2), torch.tensor([[0.5, 1.2]]).expand(200_000, 2)
    dist = ActionDist(False, mean=mean, std=std)
    u = mean + std * torch.randn(mean.shape)
    a = torch.tanh(u)
    normal = -0.5 * ((u - mean) / std).pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    exact_log_p = (normal - 2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))).sum(-1)
    assert abs(float(dist.entropy(a).mean()) - float(-exact_log_p.mean())) < 0.02

    raw_mean = torch.full((4, 1), 50.0, requires_grad=True)
    saturated = ActionDist(False, mean=raw_mean, std=torch.full((4, 1), 0.5))
    entropy = saturated.entropy(saturated.sample())
    assert torch.isfinite(entropy).all() and float(entropy.detach().max()) < 0.0
    entropy.sum().backward()
    assert raw_mean.grad is not None and float(raw_mean.grad.max()) <= 0.0


def test_fig8_reconstruction_loads_a_continuous_agent_and_feeds_it_unit_box_actions(tmp_path: Path) -> None:
    # The protocol's Fig. 8 (multiscene/protocol/reconstruct.py) rebuilds a run's agent from the env's spaces and
    # replays a random sequence through its posterior: a continuous run must load, and the RSSM must read the
    # actions in [-1, 1] as the actor emits them, not Pendulum's torques in [-2, 2].
    from multiscene.algos.dreamer.loop import load_dreamer_agent
    from multiscene.envs import make_env
    from multiscene.envs.base import EnvSpec, LevelSet
    from multiscene.protocol.reconstruct import collect_sequence, reconstruct

    run_dir = _pendulum_run(tmp_path, total=96)
    envs = make_env(EnvSpec("Pendulum-v1", 1, 5, LevelSet(0, 1)))
    try:
        agent = load_dreamer_agent(run_dir, envs, torch.device("cpu"))
        assert not agent.discrete
        seq = collect_sequence(envs, 30, seed=3)
    finally:
        envs.close()
    fed = seq.prev_action[~seq.first]
    assert fed.shape[1:] == (1,) and np.abs(fed).max() <= 1.0 + 1e-6
    assert np.abs(fed).max() > 0.5  # uniform torques in [-2, 2] map onto the whole unit interval
    frames, error = reconstruct(agent, seq)
    assert frames.shape == seq.obs.shape and np.isfinite(error).all()


def test_log_prob_from_the_pre_tanh_sample_is_exact_where_the_tanh_saturates() -> None:
    """``log_prob(action, raw=u)`` equals torch's tanh-transformed Normal at moderate u (where inverting the action
    also works), and stays exact for a saturated actor, where atanh of the clamped action is off by orders of
    magnitude and its Reinforce gradient points the wrong way. Behavior.losses with --dreamer.actor-grad
    reinforce uses the raw samples of the imagined rollout."""
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    from multiscene.algos.dreamer.behavior import ActionDist

    torch.manual_seed(1)
    mean, std = torch.randn(64, 3, dtype=torch.float64), torch.rand(64, 3, dtype=torch.float64) + 0.2
    dist = ActionDist(False, mean=mean, std=std)
    action, raw = dist.sample_with_raw()
    assert raw is not None and torch.equal(action, torch.tanh(raw))
    reference = TransformedDistribution(Normal(mean, std), [TanhTransform()]).log_prob(action).sum(-1)
    assert torch.allclose(dist.log_prob(action, raw=raw), reference, atol=1e-8)
    assert torch.allclose(dist.log_prob(action), reference, atol=1e-5)  # the inverted path, fine here

    # Saturated: u around 20, tanh(u) == 1 in float32. The exact value is the Gaussian's density at u minus
    # log(1 - tanh(u)^2) ~ -2u + 2 log 2 (a large positive number); the clamped inversion is far off.
    mean32 = torch.full((5, 1), 20.0, requires_grad=True)
    saturated = ActionDist(False, mean=mean32, std=torch.full((5, 1), 0.5))
    torch.manual_seed(2)
    action, raw = saturated.sample_with_raw()
    assert raw is not None and bool((action == 1.0).all())
    exact = Normal(mean32.detach().double(), 0.5).log_prob(raw.detach().double()) - 2.0 * (
        math.log(2.0) - raw.detach().double() - torch.nn.functional.softplus(-2.0 * raw.detach().double()))
    ours = saturated.log_prob(action.detach(), raw=raw.detach())
    assert torch.allclose(ours.double(), exact.sum(-1), rtol=1e-5)
    inverted = saturated.log_prob(action.detach())
    assert float((inverted.detach().double() - exact.sum(-1)).abs().min()) > 10.0
    # Reinforce on the exact density: the mean's gradient is the Gaussian score (u - mean) / std^2 only.
    ours.sum().backward()
    assert torch.allclose(mean32.grad, ((raw.detach() - 20.0) / 0.25), atol=1e-4)
