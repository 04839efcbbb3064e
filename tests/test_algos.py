"""The algorithm axis (issue 10): registry, config groups, distributions, A2C returns, every algo x critic."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest
import torch
from conftest import tiny_config

from multiscene import registry
from multiscene.algos.onpolicy.a2c import A2C
from multiscene.algos.onpolicy.rollout import Rollout
from multiscene.cli import parse_train_args
from multiscene.config import ConfigError, TrainConfig, _assemble_train_config, validate
from multiscene.critics.scalar import ScalarCritic
from multiscene.logger import read_metrics
from multiscene.models.distributions import CategoricalActions, DiagGaussian
from multiscene.presets import default_preset
from multiscene.trainer import train


def test_gaussian_log_prob_and_entropy_match_torch():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3, 4), torch.randn(4) * 0.5
    action = torch.randn(5, 3, 4)
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp().expand_as(mean)), 1)
    torch.testing.assert_close(ours.log_prob(action), ref.log_prob(action))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    assert ours.mode() is mean and ours.sample().shape == (5, 3, 4)


def test_categorical_mode_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert CategoricalActions(logits=logits).mode().tolist() == [1, 0]


def _rollout(rewards: torch.Tensor, dones: torch.Tensor, values: torch.Tensor, next_value: torch.Tensor) -> Rollout:
    T, B = rewards.shape
    z = torch.zeros(T, B)
    return Rollout(obs=z, first=z.bool(), prev_action=z.long(), prev_reward=z, actions=z.long(), logprobs=z,
                   values=values, rewards=rewards, raw_rewards=rewards, dones=dones, initial_state=(),
                   next_value=next_value, alpha=None, episodes=[])


def test_a2c_returns_are_n_step_returns_across_episode_ends():
    torch.manual_seed(1)
    T, B, gamma = 6, 3, 0.9
    rewards, values = torch.randn(T, B), torch.randn(T, B, 1)
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[2, 0] = dones[4, 1] = dones[5, 2] = True
    next_value = torch.randn(B, 1)
    cfg = tiny_config("unused", algo="a2c", critic="scalar", gamma=gamma)
    adv = A2C().advantages(ScalarCritic(4), _rollout(rewards, dones, values, next_value), cfg)
    for b in range(B):  # plain loop: R_t = r_t + gamma * R_{t+1}, cut at episode ends, bootstrapped at T
        running = next_value[b, 0].item()
        for t in reversed(range(T)):
            running = rewards[t, b].item() + gamma * running * (0.0 if dones[t, b] else 1.0)
            assert math.isclose(adv.returns[t, b, 0].item(), running, rel_tol=1e-5, abs_tol=1e-6)
            assert math.isclose(adv.policy[t, b].item(), running - values[t, b, 0].item(), rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("algo", ["a2c", "acktr"])
@pytest.mark.parametrize("critic", ["scalar", "dve", "sparse-dve"])
def test_every_algorithm_trains_with_every_critic(tmp_path, algo, critic):
    if algo == "acktr":
        pytest.importorskip("multiscene.optim.kfac")
    cfg = tiny_config(str(tmp_path / "run"), algo=algo, critic=critic, final_eval=False, learning_rate=1e-3)
    run = train(cfg)
    records = [r for r in read_metrics(run / "metrics.jsonl") if "losses/policy_loss" in r]
    assert [r["update"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["losses/value_loss"]) for r in records)
    if critic == "sparse-dve":
        assert all("losses/cc_confusion" in r for r in records)
    if algo == "acktr":
        assert all("losses/fisher_loss" in r for r in records)


def test_algorithm_config_groups_parse_from_the_command_line():
    cfg = parse_train_args(["--algo", "a2c", "--a2c.rms-alpha", "0.95", "--preset", "quickstart"])
    assert cfg.algo == "a2c" and cfg.a2c.rms_alpha == 0.95 and cfg.preset == "quickstart"
    with pytest.raises(ConfigError, match="--a2c.rms-alpha"):
        validate(dataclasses.replace(cfg, a2c=dataclasses.replace(cfg.a2c, rms_alpha=1.5)))
    with pytest.raises(ConfigError, match="--algo must be one of ppo, a2c, acktr"):
        validate(dataclasses.replace(cfg, algo="sac"))


@pytest.mark.parametrize(("env", "algo", "preset"), [
    (None, None, "quickstart"), ("heist", None, "procgen-easy"), ("MiniGrid-DoorKey-5x5-v0", None, "minigrid"),
    ("HalfCheetah-v5", "acktr", "acktr-mujoco"), ("BoxingNoFrameskip-v4", "a2c", "a2c-atari"),
    ("ALE/Boxing-v5", None, "ppo-atari"), ("CartPole-v1", "a2c", "a2c-gym"), ("CartPole-v1", None, "gym"),
])
def test_default_preset_follows_the_env_family_and_algorithm(env, algo, preset):
    assert default_preset(env, algo) == preset


def test_without_preset_the_env_family_decides(tmp_path):
    cfg = parse_train_args(["--env", "heist"])
    assert cfg.preset == "procgen-easy" and cfg.gamma == 0.999 and cfg.critic == "scalar"


def test_a_new_part_is_one_module_plus_one_registration_line(monkeypatch):
    """What the README promises: a new critic with options of its own needs its file and one line in
    multiscene/registry.py; TrainConfig then has its group and the flag parses."""
    module = types.ModuleType("my_critic_module")

    @dataclasses.dataclass(frozen=True)
    class MyConfig:
        scale: float = 1.0

    class MyCritic(ScalarCritic):
        config_group = ("mine", MyConfig)

    module.MyCritic = MyCritic
    monkeypatch.setitem(sys.modules, "my_critic_module", module)
    monkeypatch.setitem(registry.CRITICS, "mine", "my_critic_module:MyCritic")  # the one registration line
    config_type = _assemble_train_config()
    import tyro

    cfg = tyro.cli(config_type, args=["--critic", "mine", "--mine.scale", "2.5"], default=config_type())
    assert cfg.critic == "mine" and cfg.mine.scale == 2.5
    assert "mine" not in {f.name for f in dataclasses.fields(TrainConfig)}  # the real config is untouched


@pytest.mark.parametrize(("algo", "env_head"), [("ppo", "sparse-dve"), ("a2c", "dve")])
def test_multi_critic_with_a_dve_env_head_trains_end_to_end(tmp_path, algo, env_head):
    """Issue 11's composition: the DVE mixture on A2MC's env-reward head (MC-PPO / A2MC), L_CC included."""
    cfg = tiny_config(str(tmp_path / "run"), algo=algo, critic="multi", final_eval=False,
                      multi={"env_head": env_head})
    records = [r for r in read_metrics(train(cfg) / "metrics.jsonl") if "losses/policy_loss" in r]
    assert len(records) == 3
    assert all("losses/explained_variance/vwr" in r and "losses/explained_variance/env" in r for r in records)
    assert all("dve/confusion_mean" in r for r in records)
    assert all(("losses/cc_confusion" in r) == (env_head == "sparse-dve") for r in records)


def test_hotwire_fires_in_the_initial_stage_only(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), algo="a2c", critic="scalar", final_eval=False, hotwire=True,
                      total_timesteps=4 * 16 * 6, hotwire_cfg={"fraction": 0.5, "epsilon": 1.0})
    records = [r for r in read_metrics(train(cfg) / "metrics.jsonl") if "losses/policy_loss" in r]
    fired = [r["hotwire/envs_hotwired"] for r in records]
    assert len(fired) == 6 and fired[3:] == [0, 0, 0]
    assert sum(fired[:3]) > 0


@pytest.mark.parametrize("algo", ["ppo", "a2c", "acktr"])
def test_each_algorithm_learns_cartpole(tmp_path, algo):
    """Issue 10: every algorithm learns something small quickly. CartPole-v1 from the env family's own preset
    (gym, a2c-gym, acktr-gym); a uniform policy averages about 22 steps."""
    cfg = parse_train_args(["--env", "CartPole-v1", "--algo", algo, "--total-timesteps", "24000", "--run-dir",
                            str(tmp_path / "run"), "--progress", "none", "--no-final-eval", "--torch-threads", "1"])
    records = [r for r in read_metrics(train(cfg) / "metrics.jsonl") if "charts/episodic_return" in r]
    early = sum(r["charts/episodic_return"] for r in records[:3]) / 3
    late = sum(r["charts/episodic_return"] for r in records[-5:]) / 5
    assert early < 30 and late > 1.8 * early, (early, late)


def test_an_encoder_that_cannot_read_the_observations_is_refused(tmp_path):
    cfg = parse_train_args(["--env", "CartPole-v1", "--encoder", "impala", "--run-dir", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="--encoder impala cannot read the observations of --env"):
        train(cfg)
    assert not any((tmp_path / "run" / "checkpoints").glob("*"))


def test_bootstrap_truncation_follows_what_the_env_can_report():
    assert parse_train_args(["--env", "MiniGrid-DoorKey-5x5-v0"]).bootstrap_truncation
    # Procgen cannot tell a time limit apart: off unless asked for, and refused when asked for.
    assert not parse_train_args(["--preset", "quickstart", "--env", "coinrun"]).bootstrap_truncation
    cfg = parse_train_args(["--preset", "quickstart", "--env", "coinrun", "--bootstrap-truncation"])
    with pytest.raises(ConfigError, match="--bootstrap-truncation: coinrun cannot tell"):
        validate(cfg)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_vae_auxiliary_loss_trains_under_on_policy_algorithms(tmp_path, algo):
    """Issue 12: --aux vae for every algorithm; the VAE lives in the agent, so it is checkpointed with it."""
    cfg = tiny_config(str(tmp_path / "run"), env="coinrun", algo=algo, critic="scalar", aux="vae", final_eval=False,
                      num_levels=5, vae={"latent_dim": 8})
    run = train(cfg)
    records = [r for r in read_metrics(run / "metrics.jsonl") if "losses/policy_loss" in r]
    assert len(records) == 3
    assert all(r["losses/vae_recon"] > 0 and r["losses/vae_kl"] >= 0 for r in records)
    assert all(r["schedule/vae_recon"] == 1.0 for r in records)
    from safetensors.torch import load_file

    assert any(k.startswith("agent.aux.") for k in load_file(str(run / "model.safetensors")))
    assert (run / "eval" / "vae_frames.npz").exists()  # the report's reconstruction grid (seed 002 Figs 3, 5)


def test_vae_on_vector_observations_is_refused_before_a_run_exists(tmp_path):
    cfg = parse_train_args(["--env", "CartPole-v1", "--aux", "vae", "--run-dir", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="--aux vae needs 64x64x3 image observations"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_running_obs_norm_matches_the_moments_of_everything_seen():
    from multiscene.normalize import RunningObsNorm

    torch.manual_seed(0)
    norm, x = RunningObsNorm((5,)), torch.randn(120, 5) * 3 + 1
    for chunk in x.split(7):
        norm.update(chunk)
    # Equal up to the tiny prior count (1e-4 at mean 0, variance 1) the statistics start from.
    torch.testing.assert_close(norm.mean, x.double().mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.var, x.double().var(0, unbiased=False), rtol=1e-4, atol=1e-4)
    out = norm(x)
    assert out.dtype == torch.float32 and out.abs().max() <= 10.0
    assert set(dict(norm.named_buffers())) == {"mean", "var", "count"}  # saved with the agent's weights


def test_every_preset_builds_and_validates():
    """Each of the seeds' presets (seed 000 Table 1, seed 002, seed 004 Table 2, the family defaults) is a valid
    config with the algorithm and critic it names."""
    from multiscene.presets import PRESETS, get_preset

    for name in PRESETS:
        cfg = get_preset(name)
        validate(cfg)
        assert cfg.preset == name or name in ("gym",), name
    assert get_preset("a2mc-mujoco-swimmer").critic == "multi" and get_preset("a2mc-mujoco-swimmer").algo == "acktr"
    assert get_preset("mcppo-mujoco-walker2d").env == "Walker2d-v5"
    assert get_preset("a2mc-atari-freeway").hotwire and get_preset("a2mc-atari-freeway").total_timesteps == 15_000_000
    assert get_preset("impala-vae-hard").aux == "vae" and get_preset("impala-hard").algo == "impala"


def test_acktr_stats_every_skips_the_fisher_backward_between_statistics_updates(tmp_path, monkeypatch):
    # --acktr.stats-every 2: updates 1 and 3 (K-FAC steps 0 and 2) record factor statistics; update 2 neither
    # records nor back-propagates the sampled Fisher loss (it would only be thrown away).
    from multiscene.optim.kfac import KFAC

    recorded = []
    real_record = KFAC.record_stats

    def counting_record(self):
        recorded.append(self.steps)
        return real_record(self)

    monkeypatch.setattr(KFAC, "record_stats", counting_record)
    cfg = tiny_config(str(tmp_path / "run"), algo="acktr", critic="scalar", final_eval=False, learning_rate=1e-3,
                      acktr={"stats_every": 2})
    assert cfg.acktr.stats_every == 2
    run = train(cfg)
    records = [r for r in read_metrics(run / "metrics.jsonl") if "losses/policy_loss" in r]
    assert [r["update"] for r in records] == [1, 2, 3]
    assert ["losses/fisher_loss" in r for r in records] == [True, False, True]
    assert recorded == [0, 2]
    assert all(math.isfinite(r["losses/kfac_nu"]) for r in records)


def test_the_loop_counts_truncated_episodes(tmp_path):
    # MiniGrid at a 3-step limit: an untrained agent is cut far more often than it reaches the goal.
    run = train(tiny_config(str(tmp_path / "run"), critic="scalar", final_eval=False, max_episode_steps=3))
    records = [r for r in read_metrics(run / "metrics.jsonl") if "charts/episodes" in r]
    assert records
    assert all(0 <= r["charts/episodes_truncated"] <= r["charts/episodes"] for r in records)
    assert sum(r["charts/episodes_truncated"] for r in records) > 0


@pytest.mark.parametrize("frames", [0, 2])
def test_eval_frames_caps_the_rendered_frames_of_the_final_evaluation(tmp_path, frames):
    import numpy as np

    run = train(tiny_config(str(tmp_path / "run"), critic="scalar", eval_frames=frames, final_eval_steps=0))
    path = run / "eval" / "final_frames_test.npz"
    if frames == 0:
        assert not path.exists()
        return
    with np.load(path) as data:
        lengths = [data[k].shape[0] for k in data.files if k.startswith("episode_")]
    assert lengths and max(lengths) == frames


def test_mujoco_keeps_fewer_frames_by_default():
    from multiscene.config import replace
    from multiscene.evaluate import MAX_FRAMES_PER_EPISODE, SLOW_RENDER_FRAMES, eval_frames
    from multiscene.presets import get_preset

    assert eval_frames(get_preset("ppo-mujoco")) == SLOW_RENDER_FRAMES < MAX_FRAMES_PER_EPISODE
    assert eval_frames(get_preset("quickstart")) == MAX_FRAMES_PER_EPISODE
    assert eval_frames(replace(get_preset("ppo-mujoco"), eval_frames=7)) == 7
    with pytest.raises(ConfigError, match="--eval-frames must be >= 0"):
        validate(replace(get_preset("quickstart"), eval_frames=-1))


@pytest.mark.parametrize("scale", [10.0, 1e-3])  # clipped, and left alone (norm below the limit)
def test_clip_grad_norm_equals_torchs_bit_for_bit(scale):
    from multiscene.algos.onpolicy.base import clip_grad_norm

    def net_with_grads():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(17, 64), torch.nn.Tanh(), torch.nn.Linear(64, 6))
        (net(torch.randn(32, 17)).pow(2).sum() * scale).backward()
        return list(net.parameters())

    ours, theirs = net_with_grads(), net_with_grads()
    norm = clip_grad_norm(ours, 0.5)
    reference = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert torch.equal(norm, reference)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ours))
    assert clipped == pytest.approx(min(float(reference), 0.5), rel=1e-4)


def test_adam_fused_flag_builds_the_fused_kernel_and_trains(tmp_path):
    from multiscene.algos.onpolicy.base import adam

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert adam(params, TrainConfig()).defaults["foreach"] is True
    assert adam(params, TrainConfig(adam_fused=True)).defaults["fused"] is True
    cfg = parse_train_args(["--preset", "gym", "--env", "CartPole-v1", "--adam-fused", "--total-timesteps", "1024",
                            "--run-dir", str(tmp_path / "run"), "--no-final-eval", "--no-tensorboard"])
    assert cfg.adam_fused
    run = train(cfg)
    losses = [r["losses/value_loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
