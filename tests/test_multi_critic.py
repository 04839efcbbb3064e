"""The multi-critic (seed 004, §4.2; SPEC §3.5): per-head returns, the combined advantage, the VWR head's
reward scaling, the DVE env head's pass-through (extras, L_CC, diagnostics, gradients) and a tiny regression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multiscene.config import ConfigError, DVEConfig
from multiscene.critics.dve import DVECritic
from multiscene.critics.multi import MultiConfig, MultiCritic, validate_multi
from multiscene.gae import compute_gae
from multiscene.rewards.vwr import RunningVWR, VWRConfig

torch.set_num_threads(1)

CORE, ENC = 8, 5


def _critic(env_head: str = "scalar", beta: float = 1.0, vwr_norm: str = "match-env", seed: int = 0) -> MultiCritic:
    torch.manual_seed(seed)
    return MultiCritic(CORE, ENC, MultiConfig(beta=beta, env_head=env_head, vwr_norm=vwr_norm), DVEConfig())  # type: ignore[arg-type]


def test_two_head_returns_equal_two_single_head_computations() -> None:
    gen = torch.Generator().manual_seed(0)
    T, B = 7, 4
    rewards = torch.randn(T, B, 2, generator=gen, dtype=torch.float64)
    values = torch.randn(T, B, 2, generator=gen, dtype=torch.float64)
    next_value = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    dones = torch.rand(T, B, generator=gen) < 0.3
    adv, ret = compute_gae(rewards, values, dones, next_value, gamma=0.99, gae_lambda=0.95)
    for h in range(2):
        adv_h, ret_h = compute_gae(rewards[..., h], values[..., h], dones, next_value[:, h], 0.99, 0.95)
        assert torch.allclose(adv[..., h], adv_h, rtol=0, atol=1e-12)
        assert torch.allclose(ret[..., h], ret_h, rtol=0, atol=1e-12)
    # n-step returns (A2C/ACKTR) are GAE with lambda = 1: check one column by a plain loop.
    _, ret_n = compute_gae(rewards, values, dones, next_value, gamma=0.9, gae_lambda=1.0)
    running = next_value[0, 1]
    for t in reversed(range(T)):
        running = rewards[t, 0, 1] + 0.9 * running * (0.0 if dones[t, 0] else 1.0)
        assert ret_n[t, 0, 1] == pytest.approx(float(running), abs=1e-12)


def test_combine_advantages_with_beta() -> None:
    adv = torch.tensor([[[1.0, 2.0], [-3.0, 0.5]]])
    assert torch.equal(_critic(beta=1.0).combine_advantages(adv), torch.tensor([[3.0, -2.5]]))
    assert torch.equal(_critic(beta=0.25).combine_advantages(adv), torch.tensor([[1.5, -2.875]]))
    assert torch.equal(_critic(beta=0.0).combine_advantages(adv), adv[..., 0])


def test_head_rewards_pass_the_env_reward_and_scale_the_vwr_to_its_rms() -> None:
    critic = _critic()
    reward = torch.tensor([[2.0, 0.0], [0.0, -2.0]])
    vwr = torch.tensor([[0.1, 0.0], [0.0, -0.1]])
    out = critic.head_rewards(reward, vwr.unsqueeze(-1))
    assert out.shape == (2, 2, 2)
    assert torch.equal(out[..., 0], reward)
    # RMS(reward) = sqrt(8/4), RMS(vwr) = sqrt(0.02/4): factor 20.
    assert critic.vwr_reward_scale() == pytest.approx(20.0)
    assert torch.allclose(out[..., 1], vwr * 20.0)
    # A second rollout ([2, 1] of ones) folds into the running sums: factor sqrt((8 + 2) / (0.02 + 2)).
    critic.head_rewards(torch.full((2, 1), 1.0), torch.full((2, 1, 1), 1.0))
    assert critic.vwr_reward_scale() == pytest.approx((10 / 2.02) ** 0.5)
    # Eval mode reads the statistics without changing them; the buffers travel in the state dict.
    critic.eval()
    critic.head_rewards(torch.full((2, 1), 5.0), torch.full((2, 1, 1), 0.01))
    assert critic.vwr_reward_scale() == pytest.approx((10 / 2.02) ** 0.5)
    restored = _critic(seed=1)
    restored.load_state_dict(critic.state_dict())
    assert restored.vwr_reward_scale() == critic.vwr_reward_scale()


def test_head_rewards_without_scaling_and_with_an_all_zero_first_rollout() -> None:
    vwr = torch.tensor([[0.1, -0.2]]).unsqueeze(-1)
    raw = _critic(vwr_norm="none").head_rewards(torch.tensor([[1.0, 1.0]]), vwr)
    assert torch.equal(raw[..., 1], vwr[..., 0])
    critic = _critic()
    zeros = critic.head_rewards(torch.zeros(3, 2), torch.zeros(3, 2, 1))
    assert torch.equal(zeros, torch.zeros(3, 2, 2))
    assert critic.vwr_reward_scale() == 1.0
    with pytest.raises(ValueError, match="make_reward_transform"):
        critic.head_rewards(torch.zeros(3, 2), None)


def test_reward_transform_is_the_configured_running_vwr() -> None:
    critic = _critic()
    transform = critic.make_reward_transform(3, VWRConfig(window=5, sigma_max=2.0))
    assert isinstance(transform, RunningVWR)
    assert (transform.num_envs, transform.window, transform.sigma_max) == (3, 5, 2.0)

    class _TrainConfigLike:
        vwr = VWRConfig(window=7)

    assert critic.make_reward_transform(2, _TrainConfigLike()).window == 7
    with pytest.raises(ConfigError, match="--vwr.window"):
        critic.make_reward_transform(2, VWRConfig(window=1))


def test_config_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--multi.env-head"):
        validate_multi(MultiConfig(env_head="impala"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--multi.beta"):
        validate_multi(MultiConfig(beta=-1.0))
    with pytest.raises(ConfigError, match="--multi.beta"):
        MultiCritic(CORE, ENC, MultiConfig(beta=float("nan")), DVEConfig())


@pytest.mark.parametrize("env_head", ["scalar", "dve", "sparse-dve"])
def test_env_head_extras_aux_terms_and_gradients(env_head: str) -> None:
    critic = _critic(env_head)
    T, B = 6, 3
    core = torch.randn(T, B, CORE)
    enc = torch.randn(T, B, ENC)
    mask = torch.ones(T, B, dtype=torch.bool)
    out = critic(core, enc)
    assert out.values.shape == (T, B, 2)
    assert critic.head_names == ("env", "vwr")
    aux = critic.aux_losses(out, mask)
    diagnostics = critic.diagnostics(out, mask)
    assert {"vwr_mean", "vwr_nonzero", "vwr_reward_scale"} <= diagnostics.keys()
    if env_head == "scalar":
        assert out.extras == {} and aux == {}
        return
    reference = DVECritic(CORE, ENC, DVEConfig(), sparse=env_head == "sparse-dve")
    reference.load_state_dict(critic.env_head.state_dict())
    ref_out = reference(core, enc)
    # The DVE env head is DVECritic itself: same values, extras, L_CC keys and diagnostics.
    assert torch.equal(out.values[..., :1], ref_out.values)
    assert set(out.extras) == set(ref_out.extras) and torch.equal(out.extras["alpha"], ref_out.extras["alpha"])
    ref_aux = reference.aux_losses(ref_out, mask)
    assert aux.keys() == ref_aux.keys()
    assert (env_head == "sparse-dve") == (set(aux) == {"cc_confusion", "cc_contribution"})
    assert critic.sparse == (env_head == "sparse-dve")
    for key, value in reference.diagnostics(ref_out, mask).items():
        assert diagnostics[key] == pytest.approx(value)
    # Gradients reach both heads from the summed value loss, and the attention layer from L_CC.
    loss = out.values.pow(2).sum() + sum(aux.values(), torch.zeros(()))
    loss.backward()
    env = critic.env_head
    assert isinstance(env, DVECritic)
    for param in (env.attention.weight, env.cluster_means.weight, critic.vwr_head.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    if env_head == "sparse-dve":
        critic.zero_grad()
        out = critic(core, enc)
        sum(critic.aux_losses(out, mask).values(), torch.zeros(())).backward()
        assert env.attention.weight.grad is not None and env.attention.weight.grad.abs().sum() > 0
        assert critic.vwr_head.weight.grad is None or critic.vwr_head.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("env_head", ["scalar", "sparse-dve"])
def test_multi_critic_trains_on_a_tiny_regression(env_head: str) -> None:
    # A shared trunk feeds both heads; each head regresses its own target of the input. Both losses must fall.
    torch.manual_seed(0)
    T, B, D = 8, 16, 4
    x = torch.randn(T, B, D)
    env_target = torch.sin(x[..., 0]) + x[..., 1]
    vwr_target = 0.5 * x[..., 2] * x[..., 3]
    trunk = nn.Sequential(nn.Linear(D, CORE), nn.Tanh())
    critic = _critic(env_head)
    optimizer = torch.optim.Adam([*trunk.parameters(), *critic.parameters()], lr=1e-2)
    mask = torch.ones(T, B, dtype=torch.bool)

    def losses() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        core = trunk(x)
        out = critic(core, x[..., :1].expand(T, B, ENC))
        env_loss = (out.values[..., 0] - env_target).pow(2).mean()
        vwr_loss = (out.values[..., 1] - vwr_target).pow(2).mean()
        return env_loss, vwr_loss, critic.aux_losses(out, mask)

    with torch.no_grad():
        env0, vwr0, _ = losses()
    for _ in range(200):
        env_loss, vwr_loss, aux = losses()
        total = env_loss + vwr_loss + 0.01 * sum(aux.values(), torch.zeros(()))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    with torch.no_grad():
        env1, vwr1, _ = losses()
    assert env1 < 0.2 * env0
    assert vwr1 < 0.5 * vwr0


def test_group_validate_needs_two_clusters_for_a_sparse_env_head() -> None:
    class _Cfg:
        dve = DVEConfig(num_clusters=1)

    MultiConfig(env_head="dve").validate(_Cfg())
    with pytest.raises(ConfigError, match="--dve.num-clusters"):
        MultiConfig(env_head="sparse-dve").validate(_Cfg())
    with pytest.raises(ConfigError, match="--vwr.window"):
        VWRConfig(window=0).validate(_Cfg())


def test_collector_pipeline_running_vwr_to_two_head_advantages() -> None:
    # What the loop does with the critic's parts: step the reward transform on raw rewards with the `first` of
    # the observation each action was taken on, store it as extra[..., 0], then head rewards -> GAE -> combine.
    critic = _critic(beta=0.5)
    T, B = 12, 3
    gen = torch.Generator().manual_seed(1)
    raw = torch.where(torch.rand(T, B, generator=gen) < 0.3, torch.randn(T, B, generator=gen), torch.zeros(T, B))
    first = torch.rand(T, B, generator=gen) < 0.1
    first[0] = True
    transform = critic.make_reward_transform(B, VWRConfig(window=4))
    extra = torch.stack([transform.step(raw[t], first[t]) for t in range(T)]).unsqueeze(-1)
    assert ((extra[..., 0] != 0) == (raw != 0)).all()  # VWR is non-zero exactly where the reward is
    normalized = raw / 0.5
    head_rewards = critic.head_rewards(normalized, extra)
    scale = critic.vwr_reward_scale()
    assert scale == pytest.approx(float(normalized.pow(2).sum().sqrt() / extra.pow(2).sum().sqrt()))
    assert torch.allclose(head_rewards[..., 1], extra[..., 0] * scale)
    values = torch.randn(T, B, 2, generator=gen)
    dones = torch.cat([first[1:], torch.zeros(1, B, dtype=torch.bool)])
    adv, _ = compute_gae(head_rewards, values, dones, torch.zeros(B, 2), gamma=0.99, gae_lambda=1.0)
    assert torch.allclose(critic.combine_advantages(adv), adv[..., 0] + 0.5 * adv[..., 1])
