"""DreamerV2 parts: RSSM shapes and straight-through gradients, KL balancing by hand, lambda-returns by loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from multiscene.algos.dreamer import DreamerConfig, validate_dreamer
from multiscene.algos.dreamer.behavior import Behavior, lambda_returns
from multiscene.algos.dreamer.replay import EpisodeBuilder, EpisodeReplay
from multiscene.algos.dreamer.rssm import RSSM, categorical_kl, flatten_time, straight_through_sample
from multiscene.algos.dreamer.world_model import (
    MINIGRID_SYMBOL_CLASSES,
    WorldModel,
    kl_balance_loss,
    one_hot_symbols,
    symbol_classes_for,
)
from multiscene.config import ConfigError
from multiscene.envs.base import EnvStep

SMALL = DreamerConfig(size="small")


def test_rssm_observe_and_imagine_shapes() -> None:
    torch.manual_seed(0)
    rssm = RSSM(embed_size=10, action_size=4, deter=12, hidden=8, stoch=5, classes=6)
    T, B = 7, 3
    embed = torch.randn(T, B, 10)
    action = torch.eye(4)[torch.randint(4, (T, B))]
    first = torch.zeros(T, B, dtype=torch.bool)
    first[0] = True
    post, prior = rssm.observe(embed, action, first)
    for state in (post, prior):
        assert state.deter.shape == (T, B, 12)
        assert state.stoch.shape == (T, B, 5, 6) and state.logits.shape == (T, B, 5, 6)
        # every latent is one-hot in the forward pass (up to the float rounding of sample + p - sg(p))
        assert torch.allclose(state.stoch, state.stoch.round(), atol=1e-6)
        assert torch.equal(state.stoch.round().sum(-1), torch.ones(T, B, 5))
    assert torch.equal(post.deter, prior.deter)  # the posterior only adds the observation to z
    assert RSSM.features(post).shape == (T, B, rssm.feature_size) == (T, B, 12 + 30)
    start = flatten_time(post)
    imagined = rssm.imagine(torch.eye(4)[torch.randint(4, (5, T * B))], start)
    assert imagined.deter.shape == (5, T * B, 12) and imagined.stoch.shape == (5, T * B, 5, 6)


def test_observe_resets_state_at_episode_starts() -> None:
    """With ``first`` set at step 2, the model from step 2 on does not depend on steps 0-1."""
    torch.manual_seed(0)
    rssm = RSSM(embed_size=6, action_size=3, deter=8, hidden=8, stoch=4, classes=4)
    embed = torch.randn(5, 1, 6)
    action = torch.eye(3)[torch.randint(3, (5, 1))]
    first = torch.tensor([[True], [False], [True], [False], [False]])
    gen = torch.Generator().manual_seed(1)
    post_a, _ = rssm.observe(embed, action, first, generator=gen)
    other = embed.clone()
    other[:2] = torch.randn(2, 1, 6)
    gen = torch.Generator().manual_seed(1)
    post_b, _ = rssm.observe(other, action, first, generator=gen)
    assert torch.allclose(post_a.deter[2:], post_b.deter[2:])
    assert not torch.allclose(post_a.logits[:2], post_b.logits[:2])  # before the reset they do differ
    assert torch.allclose(post_a.logits[2:], post_b.logits[2:])


def test_straight_through_forward_is_sample_and_gradient_is_probs_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, requires_grad=True)
    weights = torch.randn(4, 3, 5)
    sample = straight_through_sample(logits, torch.Generator().manual_seed(3))
    # forward: a one-hot sample (up to float rounding), the same one for the same generator state
    assert torch.allclose(sample.detach(), sample.detach().round(), atol=1e-6)
    assert torch.equal(sample.detach().round().sum(-1), torch.ones(4, 3))
    again = straight_through_sample(logits, torch.Generator().manual_seed(3))
    assert torch.equal(sample.detach().round(), again.detach().round())
    (sample * weights).sum().backward()
    st_grad = logits.grad.clone()
    logits.grad = None
    (torch.softmax(logits, -1) * weights).sum().backward()
    assert torch.allclose(st_grad, logits.grad)
    assert st_grad.abs().sum() > 0


def test_straight_through_samples_follow_the_probabilities() -> None:
    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(20_000, 3)
    counts = straight_through_sample(logits, torch.Generator().manual_seed(0)).detach().round().sum(0)
    assert stats.chisquare(counts.numpy(), [2_000, 4_000, 14_000]).pvalue > 1e-3


def test_kl_balance_matches_hand_computation() -> None:
    # One latent of 2 classes: post = (0.8, 0.2), prior = (0.5, 0.5).
    post = torch.log(torch.tensor([[[0.8, 0.2]]]))
    prior = torch.log(torch.tensor([[[0.5, 0.5]]]))
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert categorical_kl(post, prior).item() == pytest.approx(kl, rel=1e-6)
    prior_p = prior.clone().requires_grad_(True)
    post_p = post.clone().requires_grad_(True)
    loss, _ = kl_balance_loss(post_p, prior_p, balance=0.8, free=0.0)
    assert loss.item() == pytest.approx(kl, rel=1e-6)  # both sides have the value KL(post || prior)
    loss.backward()
    # d KL / d prior_logits = softmax(prior) - post; only the 0.8 side reaches the prior.
    assert torch.allclose(prior_p.grad, 0.8 * (torch.tensor([0.5, 0.5]) - torch.tensor([0.8, 0.2])), atol=1e-6)
    # d KL / d post_logits_i = p_i * (log(p_i / q_i) - KL); only the 0.2 side reaches the posterior.
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    assert torch.allclose(post_p.grad, 0.2 * p * (torch.log(p / q) - kl), atol=1e-6)
    # free nats: below the threshold the loss is the constant and the gradient vanishes
    prior_p.grad = None
    loss, _ = kl_balance_loss(post, prior_p, balance=0.8, free=1.0)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.count_nonzero(prior_p.grad) == 0


def test_kl_free_nats_apply_to_the_batch_mean() -> None:
    """free_avg: a batch whose mean KL exceeds the free nats keeps every element's gradient."""
    post = torch.log(torch.tensor([[[0.99, 0.01]], [[0.5, 0.5]]]))
    prior = torch.zeros(2, 1, 2, requires_grad=True)
    per = categorical_kl(post, prior.detach())
    free = float(per.mean()) - 0.01
    assert per.min() < free  # one element alone is below the free nats
    loss, _ = kl_balance_loss(post, prior, balance=1.0, free=free)
    assert loss.item() == pytest.approx(float(per.mean()), rel=1e-6)


def _loop_lambda_returns(reward, cont, value, lam):  # type: ignore[no-untyped-def]
    H, N = reward.shape
    out = torch.zeros(H, N)
    for n in range(N):
        for t in range(H):
            # G_t = sum over n-step returns, written as the recursion unrolled by hand per element
            g = value[H - 1, n].item()
            for k in range(H - 1, t - 1, -1):
                g = reward[k, n].item() + cont[k, n].item() * ((1 - lam) * value[k, n].item() + lam * g)
            out[t, n] = g
    return out


def test_lambda_returns_match_plain_loop_with_discount_head() -> None:
    torch.manual_seed(0)
    wm = WorldModel((5,), 3, SMALL)
    feats = torch.randn(9, 4, wm.rssm.feature_size)
    reward = wm.predicted_reward(feats[1:]).detach()
    cont = 0.99 * torch.sigmoid(wm.continuation_logits(feats[1:])).detach()
    value = torch.randn(8, 4)
    got = lambda_returns(reward, cont, value, 0.95)
    assert torch.allclose(got, _loop_lambda_returns(reward, cont, value, 0.95), atol=1e-5)
    # lambda = 0: one-step TD targets; lambda = 1 with c = 1: reward sums plus the bootstrap
    assert torch.allclose(lambda_returns(reward, cont, value, 0.0), reward + cont * value, atol=1e-6)
    ones = torch.ones_like(reward)
    mc = lambda_returns(reward, ones, value, 1.0)
    assert torch.allclose(mc[0], reward.sum(0) + value[-1], atol=1e-5)


def test_lambda_returns_stop_at_predicted_terminal() -> None:
    reward = torch.tensor([[1.0], [2.0], [4.0]])
    cont = torch.tensor([[0.9], [0.0], [0.9]])  # s_2 is terminal
    value = torch.tensor([[10.0], [20.0], [40.0]])
    got = lambda_returns(reward, cont, value, 0.5)
    assert got[1].item() == pytest.approx(2.0)  # r_2 only: nothing after the terminal counts
    assert got[0].item() == pytest.approx(1.0 + 0.9 * (0.5 * 10.0 + 0.5 * 2.0))


@pytest.mark.parametrize("obs_shape", [(64, 64, 1), (7, 7, 3)])
def test_world_model_loss_terms_and_gradients(obs_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    wm = WorldModel(obs_shape, 4, SMALL)
    T, B = 6, 2
    obs = torch.randint(0, 255 if obs_shape[0] == 64 else 10, (T, B, *obs_shape), dtype=torch.uint8)
    out = wm.loss(obs, torch.eye(4)[torch.randint(4, (T, B))], torch.randn(T, B), torch.ones(T, B),
                  torch.zeros(T, B, dtype=torch.bool), SMALL)
    assert set(out.terms) == {"kl", "image", "reward", "discount"}
    expected = (0.1 * out.terms["kl"] + out.terms["image"] + out.terms["reward"] + 5.0 * out.terms["discount"])
    assert torch.allclose(out.total, expected)
    out.total.backward()
    for name in ("encoder", "decoder", "reward_head", "discount_head", "rssm.obs_out", "rssm.img_out", "rssm.gru"):
        module = wm.get_submodule(name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert out.posterior.deter.shape == (T, B, SMALL.widths.deter)


def test_image_reconstruction_has_the_frame_shape() -> None:
    wm = WorldModel((64, 64, 3), 2, SMALL)
    assert wm.decode(torch.randn(2, 3, wm.rssm.feature_size)).shape == (2, 3, 64, 64, 3)


def test_symbol_grids_are_one_hot_encoded() -> None:
    """MiniGrid's uint8 code grids take the one-hot path; frames and float vectors do not."""
    assert symbol_classes_for((7, 7, 3), np.uint8) == MINIGRID_SYMBOL_CLASSES == 11
    assert symbol_classes_for((64, 64, 3), np.uint8) is None
    assert symbol_classes_for((4,), np.float32) is None
    assert symbol_classes_for((7, 7, 3), np.float32) is None
    wm = WorldModel((7, 7, 3), 4, SMALL, symbol_classes=11)
    assert wm.decode(torch.randn(2, 3, wm.rssm.feature_size)).shape == (2, 3, 7, 7, 3, 11)
    obs = torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8)
    assert torch.equal(one_hot_symbols(obs, 11).argmax(-1), obs.long())
    with pytest.raises(ValueError, match="outside the 11 symbol classes"):
        wm.encoder(torch.full((1, 7, 7, 3), 11, dtype=torch.uint8))


def test_world_model_learns_minigrid_views() -> None:
    """The regression test of the MiniGrid failure (world_model.py): fed as raw integers, the codes of random
    MiniGrid-Empty-5x5 views left the latents empty and the image loss at the mean view's (0.5 x summed
    variance) for 1200 train steps. One-hot encoded, 300 steps take it far below that level."""
    from multiscene.algos.dreamer.loop import store_step
    from multiscene.envs import make_env
    from multiscene.envs.base import EnvSpec, LevelSet

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    envs = make_env(EnvSpec("MiniGrid-Empty-5x5-v0", 1, 0, LevelSet(0, 1000), max_episode_steps=30))
    replay, builder = EpisodeReplay(10_000, 16, 7, True), EpisodeBuilder(1, 7)
    builder.start(0, envs.reset().obs[0], 0)
    for _ in range(1500):
        action = rng.integers(7, size=1)
        store_step(builder, replay, envs.step(action), np.eye(7, dtype=np.float32)[action], True)
    envs.close()
    cfg = DreamerConfig(size="small", batch_size=16, seq_len=16, model_lr=6e-4)
    wm = WorldModel((7, 7, 3), 7, cfg, symbol_classes=symbol_classes_for((7, 7, 3), np.uint8))
    views = wm.obs_target(torch.as_tensor(np.concatenate([e.obs for e in replay.episodes])))
    mean_view_loss = float(0.5 * views.var(0, unbiased=False).sum())
    opt = torch.optim.Adam(wm.parameters(), lr=cfg.model_lr, eps=cfg.adam_eps)
    losses = []
    for _ in range(300):
        b = replay.sample(cfg.batch_size, rng)
        out = wm.loss(torch.as_tensor(b.obs), torch.as_tensor(b.action), torch.as_tensor(b.reward),
                      torch.as_tensor(b.discount), torch.as_tensor(b.first), cfg, valid=torch.as_tensor(b.valid))
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(float(out.terms["image"].detach()))
    assert np.mean(losses[-20:]) < 0.6 * mean_view_loss, (np.mean(losses[-20:]), mean_view_loss)


@pytest.mark.parametrize("discrete", [True, False])
def test_behavior_gradients_reach_actor_and_critic_only(discrete: bool) -> None:
    from conftest import frozen_world_model_and_starts

    wm, beh, start = frozen_world_model_and_starts(discrete, SMALL)
    actor_loss, critic_loss, metrics = beh.losses(wm, start, torch.ones(12), SMALL)
    (actor_loss + critic_loss).backward()
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.grad is None for p in beh.target_critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.actor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in beh.critic.parameters())
    assert beh.reinforce_weight(SMALL) == (1.0 if discrete else 0.0)
    assert math.isfinite(metrics["imag_return_mean"])


def test_terminal_start_states_carry_no_weight() -> None:
    """Imagination from an absorbing/terminal start (replay discount 0) contributes nothing to the losses."""
    torch.manual_seed(0)
    wm = WorldModel((5,), 2, SMALL)
    wm.requires_grad_(False)
    beh = Behavior(wm.rssm.feature_size, 2, True, SMALL)
    start = wm.rssm.initial_state(4)
    actor_loss, critic_loss, _ = beh.losses(wm, start, torch.zeros(4), SMALL)
    assert actor_loss.item() == 0.0 and critic_loss.item() == 0.0


# ----------------------------------------------------------------------------------------------------------
# Time limits (issue 16): the discount head learns continuation 1 at a time-limit cut, 0 only at a termination


def scripted_episode_ends(bootstrap_truncation: bool) -> EpisodeReplay:
    """Two envs (2x2 observations, 3 actions) stepped 4 times into a replay. The observation after step n of env b
    is 10 (n + 1) + b; env 0 (level 5) is cut by a time limit after step 1, its final frame 99; env 1 (level 7)
    both terminates and reaches its limit after step 2 (a termination; the env hands over a final frame 77
    all the same) and terminates again after step 3."""
    from multiscene.algos.dreamer.loop import store_step

    replay = EpisodeReplay(capacity=100, seq_len=6, action_size=3, discrete=True)
    builder = EpisodeBuilder(2, 3)
    for b in range(2):
        builder.start(b, np.full((2, 2), b + 1, np.uint8), level=5 + 2 * b)
    cut = {(1, 0): 99, (2, 1): 77}
    ends = {(1, 0): "cut", (2, 1): "both", (3, 1): "terminated"}
    for n in range(4):
        obs = np.stack([np.full((2, 2), 10 * (n + 1) + b, np.uint8) for b in range(2)])
        truncated = np.array([ends.get((n, b)) in ("cut", "both") for b in range(2)])
        terminated = np.array([ends.get((n, b)) in ("terminated", "both") for b in range(2)])
        final_obs = None
        if truncated.any():
            final_obs = obs.copy()
            for b in np.flatnonzero(truncated):
                final_obs[b] = cut[(n, int(b))]
        step = EnvStep(obs=obs, reward=np.full(2, n + 1.0, np.float32), terminated=terminated, truncated=truncated,
                       first=terminated | truncated, level_seed=np.array([5, 7]), final_obs=final_obs)
        store_step(builder, replay, step, np.eye(3, dtype=np.float32)[[n % 3, (n + 1) % 3]], bootstrap_truncation)
    return replay


@pytest.mark.parametrize("bootstrap_truncation", [False, True])
def test_discount_labels_at_a_time_limit_cut_and_at_a_termination(bootstrap_truncation: bool) -> None:
    """The replay's discount label is 1 at a cut and 0 at a termination, flag on or off (off: as before issue 16);
    sampled sequences never show a valid 0 from the cut episode (its padding is invalid), while the padding after
    a termination is valid and absorbing. With the flag, the cut episode ends on its true final frame."""
    replay = scripted_episode_ends(bootstrap_truncation)
    cut_ep, both_ep, terminated_ep = replay.episodes
    assert (cut_ep.level, both_ep.level, terminated_ep.level) == (5, 7, 7)
    np.testing.assert_array_equal(cut_ep.discount, [1, 1, 1])
    np.testing.assert_array_equal(cut_ep.reward, [0, 1, 2])
    assert [int(o[0, 0]) for o in cut_ep.obs] == [1, 10, 99 if bootstrap_truncation else 10]
    np.testing.assert_array_equal(both_ep.discount, [1, 1, 1, 0])
    assert [int(o[0, 0]) for o in both_ep.obs] == [2, 11, 21, 21]  # a termination: the frame 77 is not stored
    np.testing.assert_array_equal(terminated_ep.discount, [1, 0])

    batch = replay.sample(300, np.random.default_rng(0))
    from_cut = batch.level == 5
    assert from_cut.any() and (~from_cut).any()
    assert (batch.discount[:, from_cut][batch.valid[:, from_cut]] == 1.0).all()
    assert (batch.valid[:, from_cut] == ~batch.padded[:, from_cut]).all() and batch.padded[:, from_cut].any()
    assert batch.valid[:, ~from_cut].all()
    assert (batch.discount[:, ~from_cut][batch.padded[:, ~from_cut]] == 0.0).all()


def test_world_model_learns_continuation_one_from_a_cut_episode() -> None:
    """The discount term on sequences of a cut episode is the Bernoulli NLL of 'continue' (label 1) over the
    valid steps only: no 0 label enters the loss from a time limit."""
    replay = EpisodeReplay(capacity=100, seq_len=6, action_size=3, discrete=True)
    replay.add(scripted_episode_ends(True).episodes[0])  # the cut episode only
    batch = replay.sample(8, np.random.default_rng(1))
    torch.manual_seed(0)
    wm = WorldModel((2, 2), 3, SMALL)
    args = [torch.as_tensor(x) for x in (batch.obs, batch.action, batch.reward, batch.discount, batch.first)]
    valid = torch.as_tensor(batch.valid)
    assert (~valid).any()
    out = wm.loss(*args, SMALL, torch.Generator().manual_seed(1), valid)
    unmasked = wm.loss(*args, SMALL, torch.Generator().manual_seed(1))
    logits = wm.continuation_logits(RSSM.features(unmasked.posterior))
    torch.testing.assert_close(out.terms["discount"], torch.nn.functional.softplus(-logits)[valid].mean())


def test_slow_target_update() -> None:
    beh = Behavior(8, 2, True, SMALL)
    with torch.no_grad():
        for p in beh.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in beh.target_critic.parameters()]
    beh.update_target(0.25)
    for b, t, c in zip(before, beh.target_critic.parameters(), beh.critic.parameters()):
        assert torch.allclose(t, 0.75 * b + 0.25 * c)


def test_dreamer_config_rejects_bad_values() -> None:
    validate_dreamer(DreamerConfig())
    with pytest.raises(ConfigError, match="--dreamer.seq-len"):
        validate_dreamer(DreamerConfig(seq_len=100, replay_capacity=50))
    with pytest.raises(ConfigError, match="--dreamer.size"):
        validate_dreamer(DreamerConfig(size="huge"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--dreamer.kl-balance"):
        validate_dreamer(DreamerConfig(kl_balance=1.5))


# ----------------------------------------------------------------------------------------------------------
# The loop: a short run on MiniGrid writes a complete run directory and resumes.


def _tiny_run(tmp_path, total: int, resume: bool = False, **changes: object):  # type: ignore[no-untyped-def]
    from conftest import tiny_config

    from multiscene.algos.dreamer.loop import train

    cfg = tiny_config(str(tmp_path / "run"), env="MiniGrid-Empty-5x5-v0", critic="scalar", num_envs=2,
                      total_timesteps=total, resume=resume, tensorboard=False, max_episode_steps=12,
                      eval_episodes=2, **changes)
    dreamer = DreamerConfig(size="small", batch_size=3, seq_len=8, train_every=8, prefill=40, horizon=4,
                            log_every=16, checkpoint_every=48, replay_capacity=2000, slow_target_update=2)
    return train(cfg, dreamer)


def test_short_minigrid_run_writes_a_run_dir_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from multiscene.checkpoint import load_latest_checkpoint
    from multiscene.logger import read_metrics

    run_dir = _tiny_run(tmp_path, total=96)
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "trainer_state.pt", "eval/final.json"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "dreamer" and config["dreamer"]["size"] == "small"
    records = read_metrics(run_dir / "metrics.jsonl")
    trained = [r for r in records if "dreamer/image_loss" in r]
    assert trained and all(np.isfinite(r["dreamer/image_loss"]) for r in trained)
    assert any("charts/episodic_return" in r for r in records)
    assert records[-2]["global_step"] == 96 and "charts/SPS" in records[-2]
    # (96 - 40 prefill) / 8 = 7 train steps
    ckpt = load_latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.state["learner"]["train_steps"] == 7
    # MiniGrid's views are one-hot encoded: 7 x 7 x 3 codes x 11 classes into the encoder's first layer.
    assert ckpt.tensors["agent.world_model.encoder.net.0.0.weight"].shape[1] == 7 * 7 * 3 * 11
    final = json.loads((run_dir / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        assert final[split]["episodes"] == 2 and "deterministic" in final[split]
    assert "random_policy_test" in final
    # `multiscene report` reads it as a finished run: a Dreamer evaluation writes no per-step records, and their
    # absence is not a missing file (it was reported as a partial run before).
    from multiscene.analysis.report import ReportOptions, build_report

    summary = build_report(run_dir, ReportOptions(tsne_points=20, frames_per_cluster=2, trajectories=1))
    assert summary["partial"] is False and summary["problems"] == [], summary["problems"]
    assert "keeps no per-step values" in (run_dir / "report" / "index.html").read_text()

    replay_steps = ckpt.state["replay"]["saved_steps"]
    assert replay_steps == ckpt.state["replay"]["total_steps"] > 0  # the whole (small) replay is saved
    resumed = _tiny_run(tmp_path, total=144, resume=True)
    records = read_metrics(resumed / "metrics.jsonl")
    steps = [r["global_step"] for r in records if "charts/SPS" in r]
    assert steps == sorted(steps) and steps[-1] == 144 and len(set(steps)) == len(steps)
    ckpt2 = load_latest_checkpoint(resumed)
    assert ckpt2 is not None and ckpt2.state["learner"]["train_steps"] == 7 + 6
    assert ckpt2.state["replay"]["episodes_added"] > ckpt.state["replay"]["episodes_added"]


def test_multiscene_eval_of_a_dreamer_run_reproduces_its_final_evaluation(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # `multiscene eval RUN_DIR` rebuilds a Dreamer run's agent from its config and latest checkpoint (the on-policy
    # agent cannot hold a world model): with the evaluation's fixed seeds it reproduces the end-of-training
    # figures exactly, and adds the random policy's floor.
    import json

    from multiscene.cli import main
    from multiscene.config import ConfigError
    from multiscene.evaluate import evaluate_checkpoint

    run_dir = _tiny_run(tmp_path, total=96)
    with pytest.raises(SystemExit) as exited:
        main(["eval", str(run_dir), "--tag", "again"])
    assert exited.value.code == 0
    assert "written:" in capsys.readouterr().out
    final = json.loads((run_dir / "eval" / "final.json").read_text())
    again = json.loads((run_dir / "eval" / "again.json").read_text())
    assert again["algo"] == "dreamer" and "random_policy_test" in again
    for split in ("train", "test"):
        assert again[split]["episodes"] == final[split]["episodes"] == 2
        assert again[split]["return_mean"] == final[split]["return_mean"]
        assert again[split]["deterministic"]["return_mean"] == final[split]["deterministic"]["return_mean"]
    with pytest.raises(ConfigError, match="--video"):
        evaluate_checkpoint(run_dir, video=True)


def test_resume_continues_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """96 steps in one go and 48 + resumed 48 give the same weights (env, replay, RNG and optimizers restored)."""
    from conftest import assert_resume_matches_one_go

    assert_resume_matches_one_go(_tiny_run, tmp_path)


def test_invalid_steps_do_not_count_in_the_world_model_loss() -> None:
    """Masked steps change neither the loss nor its gradient (replay marks padding after time-limit cuts)."""
    torch.manual_seed(0)
    wm = WorldModel((5,), 2, SMALL)
    T, B = 4, 2
    obs = torch.randint(0, 10, (T, B, 5), dtype=torch.uint8)
    action = torch.eye(2)[torch.randint(2, (T, B))]
    first = torch.zeros(T, B, dtype=torch.bool)
    valid = torch.ones(T, B, dtype=torch.bool)
    valid[2:, 1] = False
    reward, discount = torch.randn(T, B), torch.ones(T, B)
    out_a = wm.loss(obs, action, reward, discount, first, SMALL, torch.Generator().manual_seed(1), valid)
    reward_b, discount_b = reward.clone(), discount.clone()
    reward_b[2:, 1], discount_b[2:, 1] = 100.0, 0.0  # garbage where invalid
    out_b = wm.loss(obs, action, reward_b, discount_b, first, SMALL, torch.Generator().manual_seed(1), valid)
    for name in out_a.terms:
        assert torch.allclose(out_a.terms[name], out_b.terms[name]), name
    unmasked = wm.loss(obs, action, reward, discount, first, SMALL, torch.Generator().manual_seed(1))
    manual = 0.5 * (wm.predicted_reward(RSSM.features(unmasked.posterior)) - reward).pow(2)
    assert torch.allclose(out_a.terms["reward"], manual[valid].mean(), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Common choices DreamerV2 does not use are refused, not ignored: --critic (it has its own value network) and
# --hotwire (an on-policy segment mechanism).


@pytest.mark.parametrize("critic", ["dve", "sparse-dve", "multi"])
def test_a_critic_dreamer_does_not_use_is_refused(tmp_path, critic: str) -> None:  # type: ignore[no-untyped-def]
    from conftest import tiny_config

    from multiscene.algos.dreamer.loop import train
    from multiscene.config import replace, validate

    run_dir = tmp_path / "run"
    cfg = tiny_config(str(run_dir), env="MiniGrid-Empty-5x5-v0", critic=critic, algo="dreamer")
    message = rf"--critic {critic} is not used by --algo dreamer: .*Allowed --critic with --algo dreamer: scalar\."
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, SMALL)  # the loop checks too (it does not call validate), before writing anything
    assert not run_dir.exists()
    validate(replace(cfg, critic="scalar"))
    # Every other algorithm takes every critic.
    for algo in ("ppo", "a2c", "acktr", "impala"):
        validate(replace(cfg, algo=algo))


@pytest.mark.parametrize(("changes", "message"), [
    ({"hotwire": True},
     r"--hotwire needs an algorithm that collects n-step segments \(ppo, a2c, acktr\); got --algo dreamer"),
    ({"aux": "vae"}, r"--aux vae is not used by --algo dreamer: .*Allowed --aux with --algo dreamer: none"),
    ({"encoder": "mlp"}, r"--encoder mlp is not used by --algo dreamer: .*Allowed --encoder with --algo dreamer: auto"),
])
def test_choices_dreamer_does_not_use_are_refused(tmp_path, changes, message) -> None:  # type: ignore[no-untyped-def]
    from conftest import tiny_config

    from multiscene.algos.dreamer.loop import train
    from multiscene.config import replace, validate

    run_dir = tmp_path / "run"
    cfg = replace(tiny_config(str(run_dir), env="MiniGrid-Empty-5x5-v0", critic="scalar", algo="dreamer"), **changes)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, SMALL)  # the loop checks too (it does not call validate), before writing anything
    assert not run_dir.exists()
    if "hotwire" not in changes:
        validate(replace(cfg, algo="ppo", encoder="auto"))  # the same choice is fine for the on-policy loop


def test_cli_gives_dreamer_its_own_critic_unless_one_is_asked_for() -> None:
    """Without --critic, a preset's critic that --algo dreamer does not use (the quickstart's sparse-dve) becomes
    scalar, as a preset's --bootstrap-truncation does on Procgen; asked for explicitly, it is kept (and refused)."""
    from multiscene.cli import parse_train_args
    from multiscene.presets import get_preset

    assert get_preset("quickstart").critic == "sparse-dve"
    assert parse_train_args(["--algo", "dreamer"]).critic == "scalar"
    assert parse_train_args(["--algo", "dreamer", "--critic", "dve"]).critic == "dve"
    assert parse_train_args(["--algo", "dreamer", "--critic=multi"]).critic == "multi"
    assert parse_train_args(["--algo", "impala"]).critic == "sparse-dve"  # IMPALA uses every critic


def test_replay_keeps_float_vector_observations_as_floats() -> None:
    """CartPole-like float vectors (negative and fractional values) come back from the replay unchanged in
    float32; a cast to uint8 truncated them (and wrapped negatives) before."""
    replay = EpisodeReplay(capacity=100, seq_len=4, action_size=2, discrete=True)
    builder = EpisodeBuilder(1, 2)
    values = [np.array([-0.25, 0.5, 1.75, -3.0]) + i for i in range(3)]
    builder.start(0, values[0], level=0)
    for i in (1, 2):
        builder.append(0, values[i], np.eye(2, dtype=np.float32)[i % 2], 1.0, 1.0)
    replay.add(builder.finish(0, np.eye(2, dtype=np.float32)[0], 1.0, terminated=True))
    episode = replay.episodes[0]
    assert episode.obs.dtype == np.float32
    np.testing.assert_array_equal(episode.obs[:3], np.stack(values).astype(np.float32))
    batch = replay.sample(2, np.random.default_rng(0))
    assert batch.obs.dtype == np.float32 and batch.obs.min() < 0 and not np.all(batch.obs == batch.obs.round())
    # Frames and symbol grids stay uint8.
    builder.start(0, np.full((2, 2), 3, np.uint8), level=0)
    replay.add(builder.finish(0, np.eye(2, dtype=np.float32)[0], 0.0, terminated=True))
    assert replay.episodes[1].obs.dtype == np.uint8


def test_unsupported_action_space_is_refused_before_the_run_directory_is_touched(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A multi-level list with a Box-action env (the multi-level env steps integer actions): one ConfigError
    naming --env and what is allowed; no run dir. Pendulum alone (a 1-D Box) and CartPole pass the check
    (tests/test_dreamer_continuous.py runs Pendulum)."""
    from multiscene.algos.dreamer.loop import check_action_space
    from multiscene.cli import parse_train_args
    from multiscene.config import ConfigError
    from multiscene.trainer import train

    run_dir = tmp_path / "run"
    cfg = parse_train_args(["--algo", "dreamer", "--env", "CartPole-v1,Pendulum-v1", "--total-timesteps", "64",
                            "--run-dir", str(run_dir), "--progress", "none", "--no-tensorboard"])
    with pytest.raises(ConfigError, match=r"--env CartPole-v1,Pendulum-v1: Pendulum-v1 .*Discrete actions only"):
        train(cfg)
    assert not run_dir.exists()
    check_action_space("CartPole-v1")
    check_action_space("Pendulum-v1")
