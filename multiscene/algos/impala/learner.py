"""The IMPALA learner: V-trace actor-critic loss on a batch of unrolls, and one optimizer step (SPEC §5).

The loss (Espeholt et al. 2018 §4.2; deepmind/scalable_agent, seed 002's footnote 1), with V-trace targets
``vs`` and advantages ``A`` computed under no_grad from the learner's current values::

    policy   -E[log pi(a_t|x_t) * A_t]
    baseline 0.5 * E[sum_heads (vs_t - V(x_t))^2]              weighted by --impala.baseline-cost
    entropy  -E[H(pi(.|x_t))]                                  weighted by --impala.entropy-cost

plus the critic's auxiliary terms (L_CC for sparse-dve, scaled by ``multiscene.critics.schedule``) and the
optional VAE terms (``multiscene.auxloss.vae``, scaled by ``vae.scales``). Expectations are means over the
[T, B] steps of the batch (ours: scalable_agent sums them; with Adam that only moves the gradient clip and the
weight of the mean-based auxiliary terms, which then keep the scale they have in the on-policy loop).

The whole unroll, plus its bootstrap observation, goes through the agent from the LSTM state the actor had at
the unroll's start; the bootstrap value V(x_T) is the learner's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Categorical

from multiscene.algos.impala import ImpalaConfig
from multiscene.algos.impala.vtrace import vtrace
from multiscene.auxloss import scaled_sum
from multiscene.auxloss.vae import VAEAux
from multiscene.critics.base import CriticOutput
from multiscene.envs.base import EpisodeStats
from multiscene.models.agent import Agent
from multiscene.models.core import CoreState
from multiscene.ppo import explained_variance

__all__ = ["LearnerResult", "Unroll", "encoder_features", "impala_loss", "learner_step", "stack_unrolls"]


@dataclass(frozen=True)
class Unroll:
    """One actor's unroll, time-major. T = unroll_length, B = envs in it, after the T steps one more
    observation for the bootstrap value (index T)."""

    obs: torch.Tensor
    """[T + 1, B, *obs] uint8."""
    first: torch.Tensor
    """[T + 1, B] bool: obs[t] starts an episode."""
    prev_action: torch.Tensor
    """[T + 1, B] long: the action before obs[t] (0 at episode starts)."""
    prev_reward: torch.Tensor
    """[T + 1, B] float: the raw reward before obs[t] (0 at episode starts)."""
    actions: torch.Tensor
    """[T, B] long."""
    behaviour_logp: torch.Tensor
    """[T, B] log mu(a_t|x_t) under the actor's copy of the policy."""
    rewards: torch.Tensor
    """[T, B] raw env reward of the action at t."""
    dones: torch.Tensor
    """[T, B] bool: the episode ended after the action at t."""
    level_seeds: torch.Tensor
    """[T + 1, B] int64, the level of obs[t] (logging only, never fed to the agent; SPEC §1)."""
    initial_state: CoreState
    """Core state before obs[0], each [1, B, hidden] (the LSTM state at the unroll's start)."""
    episodes: tuple[EpisodeStats, ...]
    """Episodes that ended during the unroll."""
    policy_version: int
    """The learner update whose weights acted (-1: the initial weights)."""
    actor_index: int
    actor_pid: int
    """Process id of the actor that made it; a new pid for the same index means the actor was restarted."""
    actor_seconds: float
    """Wall time the actor spent producing this unroll (acting and env steps)."""

    @property
    def num_steps(self) -> int:
        """Env steps in the unroll: T * B."""
        return int(self.actions.numel())


def stack_unrolls(unrolls: list[Unroll]) -> Unroll:
    """Concatenate unrolls along the batch dimension (B = sum of theirs); the policy version is the oldest."""
    cat = lambda name: torch.cat([getattr(u, name) for u in unrolls], dim=1)  # noqa: E731
    fields = ("obs", "first", "prev_action", "prev_reward", "actions", "behaviour_logp", "rewards", "dones",
              "level_seeds")
    state = tuple(torch.cat([u.initial_state[i] for u in unrolls], dim=1) for i in range(len(unrolls[0].initial_state)))
    return Unroll(
        **{name: cat(name) for name in fields}, initial_state=state,
        episodes=tuple(e for u in unrolls for e in u.episodes),
        policy_version=min(u.policy_version for u in unrolls), actor_index=-1, actor_pid=-1,
        actor_seconds=sum(u.actor_seconds for u in unrolls),
    )


@contextmanager
def encoder_features(agent: Agent) -> Iterator[list[torch.Tensor]]:
    """Capture the agent's per-frame encoder output [N, D] during forward passes inside the block.

    The VAE reads the encoder features, which ``Agent.forward`` does not return; a forward hook gets them
    without a second encoder pass and without changing the agent (see the report for the one-line change that
    would make this unnecessary: ``extras["features"]``).
    """
    captured: list[torch.Tensor] = []
    handle = agent.encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


def impala_loss(
    agent: Agent,
    batch: Unroll,
    gamma: float,
    impala: ImpalaConfig,
    aux_scales: dict[str, float],
    vae: VAEAux | None = None,
    vae_scales: dict[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The V-trace actor-critic loss of one batch; returns (total, metrics as detached scalar tensors).

    aux_scales: the L_CC schedule's scales, keyed as ``agent.critic.aux_losses`` (asserted equal).
    vae / vae_scales: the VAE auxiliary loss and its scales (``multiscene.auxloss.vae.scales``), or None.
    """
    T, B = batch.actions.shape
    to = lambda x: x.to(device, non_blocking=True)  # noqa: E731
    obs, first = to(batch.obs), to(batch.first)
    with encoder_features(agent) as captured:
        out = agent(obs, first, to(batch.prev_action), to(batch.prev_reward), tuple(to(s) for s in batch.initial_state))
    logits = out.logits[:T].float()
    values = out.values[:T].float()  # [T, B, H]
    bootstrap = out.values[T].float().detach()  # [B, H]
    dist = Categorical(logits=logits)
    actions = to(batch.actions)
    target_logp = dist.log_prob(actions)

    critic = agent.critic
    head_rewards = critic.head_rewards(to(batch.rewards).float())
    discounts = gamma * (1.0 - to(batch.dones).float())
    vs, pg_adv_heads = vtrace(
        to(batch.behaviour_logp).float(), target_logp.detach(), head_rewards, values.detach(), bootstrap, discounts,
        rho_bar=impala.rho_bar, c_bar=impala.c_bar,
    )
    pg_advantages = critic.combine_advantages(pg_adv_heads)  # [T, B]

    policy_loss = -(target_logp * pg_advantages).mean()
    value_loss = 0.5 * (vs - values).pow(2).sum(-1).mean()
    entropy = dist.entropy().mean()
    total = policy_loss + impala.baseline_cost * value_loss - impala.entropy_cost * entropy

    with torch.no_grad():
        ratio = (target_logp - to(batch.behaviour_logp).float()).exp()
    metrics: dict[str, torch.Tensor] = {
        "losses/policy_loss": policy_loss.detach(),
        "losses/value_loss": value_loss.detach(),
        "losses/entropy": entropy.detach(),
        "losses/explained_variance": torch.tensor(explained_variance(values[..., 0].detach().flatten(), vs[..., 0].flatten())),
        "impala/rho_mean": ratio.mean(),
        "impala/rho_clipped_fraction": (ratio > impala.rho_bar).float().mean(),
    }

    extras = {k: v[:T].float() for k, v in out.extras.items()}
    critic_out = CriticOutput(values, extras)
    valid = torch.ones(T, B, device=values.device)
    aux = critic.aux_losses(critic_out, valid, first=first[:T])
    total = total + scaled_sum(aux, aux_scales, metrics, "critic aux")
    for name, value in critic.diagnostics(critic_out, valid, first=first[:T]).items():
        metrics[f"dve/{name}"] = torch.tensor(value)

    if vae is not None:
        assert vae_scales is not None, "vae_scales must come with vae"
        features = captured[0].reshape(T + 1, B, -1)[:T].float()
        terms = vae.losses(obs[:T], features)
        total = total + scaled_sum(terms, vae_scales, metrics, "VAE")
        metrics["vae/neg_elbo"] = (terms["vae_recon"] + terms["vae_kl"]).detach()
    return total, metrics


@dataclass(frozen=True)
class LearnerResult:
    metrics: dict[str, float]
    skipped: bool
    """True when a loss term or the gradient was non-finite: no parameter changed (issue #6)."""
    bad_term: str | None


def learner_step(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    batch: Unroll,
    gamma: float,
    impala: ImpalaConfig,
    aux_scales: dict[str, float],
    vae: VAEAux | None = None,
    vae_scales: dict[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> LearnerResult:
    """One gradient step on ``batch``; the global gradient norm is clipped to ``impala.max_grad_norm``."""
    loss, metrics = impala_loss(agent, batch, gamma, impala, aux_scales, vae, vae_scales, device)
    optimizer.zero_grad(set_to_none=True)
    # Explained variance is nan whenever the targets are constant; it is a diagnostic, not a loss term.
    checked = {k: v for k, v in metrics.items() if k != "losses/explained_variance"}
    bad = next((name for name, v in {**checked, "loss": loss}.items() if not bool(torch.isfinite(v).all())), None)
    if bad is None:
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = nn.utils.clip_grad_norm_(params, impala.max_grad_norm)
        if not torch.isfinite(grad_norm):
            bad = "gradients"
    if bad is not None:
        optimizer.zero_grad(set_to_none=True)
        return LearnerResult({}, skipped=True, bad_term=bad)
    optimizer.step()
    metrics["losses/grad_norm"] = grad_norm.detach()
    return LearnerResult({k: float(v) for k, v in metrics.items()}, skipped=False, bad_term=None)
