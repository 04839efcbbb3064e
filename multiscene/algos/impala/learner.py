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

Time limits (issue 16; ``--bootstrap-truncation``, where the env tells a time-limit cut from a termination): the
actor records which steps were cut and the last observation of each cut episode. The learner evaluates those
observations in the same forward pass (``interleave_final_obs``: each goes right after its cut step, so its
value comes from the LSTM state after that step, under the learner's weights) and folds gamma * V(final) into
the cut step's reward (``fold_time_limit_bootstrap``). The cut step's discount is 0 as at any episode end, so
its target is r_t + gamma * V(final) and the traces stop there; a termination bootstraps from nothing. With
--no-bootstrap-truncation the actor records nothing and the loss is the one before the option existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

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

__all__ = [
    "Interleaved", "LearnerResult", "Unroll", "UnrollOutputs", "encoder_features", "fold_time_limit_bootstrap",
    "forward_unroll", "impala_loss", "interleave_final_obs", "learner_step", "stack_unrolls",
]


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
    truncated: torch.Tensor | None = None
    """[T, B] bool, a subset of ``dones``: the episode was cut by a time limit after the action at t (and did
    not terminate on that step). None when the actor ran with --no-bootstrap-truncation (issue 16)."""
    final_obs: torch.Tensor | None = None
    """[K, *obs] uint8, K = truncated.sum(): the last observation of each cut episode (``obs[t + 1]`` is the
    reset one), column by column and in time order within a column, i.e. the order of
    ``truncated.t().nonzero()``; so stacking unrolls along B concatenates these along K. None with
    ``truncated``."""
    extra_rewards: torch.Tensor | None = None
    """[T, B, E] float: the rewards of the critic's ``make_reward_transform`` for the action at t (A2MC's VWR
    for ``--critic multi``, in ``extra_rewards[..., 0]``), stepped by the actor on the raw env reward as the
    on-policy collector does; None when the critic has no transform (every head learns the env reward)."""

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
    recorded = {u.truncated is not None for u in unrolls}
    if len(recorded) != 1:
        raise ValueError("stack_unrolls: some unrolls record time-limit cuts (truncated, final_obs) and some do not; "
                         "every actor must run with the same --bootstrap-truncation.")
    truncated = final_obs = None
    if recorded == {True}:
        truncated = cat("truncated")
        # Column-major order: the columns of the first unroll, then those of the next (see Unroll.final_obs).
        final_obs = torch.cat([u.final_obs for u in unrolls if u.final_obs is not None], dim=0)
    if len({u.extra_rewards is not None for u in unrolls}) != 1:
        raise ValueError("stack_unrolls: some unrolls carry extra_rewards (the critic's reward transform, e.g. "
                         "--critic multi's VWR) and some do not; every actor must run with the same --critic.")
    extra_rewards = cat("extra_rewards") if unrolls[0].extra_rewards is not None else None
    return Unroll(
        **{name: cat(name) for name in fields}, initial_state=state,
        episodes=tuple(e for u in unrolls for e in u.episodes),
        policy_version=min(u.policy_version for u in unrolls), actor_index=-1, actor_pid=-1,
        actor_seconds=sum(u.actor_seconds for u in unrolls), truncated=truncated, final_obs=final_obs,
        extra_rewards=extra_rewards,
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


class Interleaved(NamedTuple):
    """A batch's agent inputs with each cut episode's final observation placed right after its cut step."""

    obs: torch.Tensor
    """[L, B, *obs] uint8, L = T + 1 + the most cuts in one column."""
    first: torch.Tensor
    """[L, B] bool."""
    prev_action: torch.Tensor
    """[L, B] long."""
    prev_reward: torch.Tensor
    """[L, B] float."""
    steps: torch.Tensor
    """[T + 1, B] long: where step t of column b (and the bootstrap observation, t = T) now lies."""
    finals: torch.Tensor
    """[K] long: where the k-th final observation lies, in column ``cut_columns[k]``."""
    cut_steps: torch.Tensor
    """[K] long: the step t of the k-th cut."""
    cut_columns: torch.Tensor
    """[K] long: the column b of the k-th cut."""


def interleave_final_obs(batch: Unroll) -> Interleaved:
    """Insert, after each time-limit cut (t, b), the final observation of the cut episode as one more step of
    column b: not an episode start, with the action a_t and reward r_t before it, as the on-policy collector
    evaluates it (issue 16). One forward pass then gives V(final_obs) from the recurrent state after step t under
    the learner's weights, and leaves every real step's output as it was: the observation after a cut starts a
    new episode, where the core's state (and the previous action and reward) are zeroed, so nothing of the
    inserted step reaches it. Columns with fewer cuts are padded at the end (episode starts, never read)."""
    assert batch.truncated is not None and batch.final_obs is not None, "the batch records no time-limit cuts"
    T, B = batch.actions.shape
    if bool((batch.truncated & ~batch.dones).any()):
        raise ValueError("Unroll.truncated must be a subset of Unroll.dones: a time-limit cut ends the episode.")
    cut_columns, cut_steps = batch.truncated.t().nonzero(as_tuple=True)  # column-major: the order of final_obs
    if batch.final_obs.shape[0] != cut_columns.numel():
        raise ValueError(f"Unroll.final_obs holds {batch.final_obs.shape[0]} observations for "
                         f"{cut_columns.numel()} time-limit cuts in Unroll.truncated; they must match.")
    shift = torch.zeros(T + 1, B, dtype=torch.long)
    shift[1:] = batch.truncated.long().cumsum(0)  # cuts before step t in its column
    steps = torch.arange(T + 1)[:, None] + shift
    finals = steps[cut_steps, cut_columns] + 1
    length = int(steps[T].max()) + 1
    columns = torch.arange(B).expand(T + 1, B)
    obs = batch.obs[T].unsqueeze(0).expand(length, *batch.obs.shape[1:]).clone()
    first = torch.ones(length, B, dtype=torch.bool)
    prev_action = torch.zeros(length, B, dtype=batch.prev_action.dtype)
    prev_reward = torch.zeros(length, B, dtype=batch.prev_reward.dtype)
    obs[steps, columns] = batch.obs
    first[steps, columns] = batch.first
    prev_action[steps, columns] = batch.prev_action
    prev_reward[steps, columns] = batch.prev_reward
    obs[finals, cut_columns] = batch.final_obs.to(obs.dtype)
    first[finals, cut_columns] = False
    prev_action[finals, cut_columns] = batch.actions[cut_steps, cut_columns].to(prev_action.dtype)
    prev_reward[finals, cut_columns] = batch.rewards[cut_steps, cut_columns].to(prev_reward.dtype)
    return Interleaved(obs, first, prev_action, prev_reward, steps, finals, cut_steps, cut_columns)


class UnrollOutputs(NamedTuple):
    """The learner's forward pass over a batch: outputs at the T + 1 steps of the unroll (the last one is the
    bootstrap observation), and the values of the cut episodes' final observations."""

    logits: torch.Tensor
    """[T + 1, B, A]."""
    values: torch.Tensor
    """[T + 1, B, H]."""
    extras: dict[str, torch.Tensor]
    """The agent's extras, each [T + 1, B, ...]."""
    features: torch.Tensor
    """[T + 1, B, D] encoder output (the VAE reads it)."""
    final_values: torch.Tensor | None
    """[T, B, H], detached: V(final observation) where ``batch.truncated``, 0 elsewhere; None when the batch
    has no cut (or records none: --no-bootstrap-truncation)."""


def forward_unroll(agent: Agent, batch: Unroll, device: torch.device | str = "cpu") -> UnrollOutputs:
    """Run the whole unroll, its bootstrap observation and (where cut by a time limit) its episodes' final
    observations through the agent, from the LSTM state the actor had at the unroll's start."""
    to = lambda x: x.to(device, non_blocking=True)  # noqa: E731
    state = tuple(to(s) for s in batch.initial_state)
    if batch.truncated is None or not bool(batch.truncated.any()):
        with encoder_features(agent) as captured:
            out = agent(to(batch.obs), to(batch.first), to(batch.prev_action), to(batch.prev_reward), state)
        features = captured[0].reshape(*batch.first.shape, -1)
        return UnrollOutputs(out.logits, out.values, out.extras, features, None)
    seq = interleave_final_obs(batch)
    with encoder_features(agent) as captured:
        out = agent(to(seq.obs), to(seq.first), to(seq.prev_action), to(seq.prev_reward), state)
    steps, columns = to(seq.steps), to(torch.arange(seq.steps.shape[1]).expand_as(seq.steps))
    pick = lambda x: x[steps, columns]  # noqa: E731  ([L, B, ...] -> [T + 1, B, ...])
    features = captured[0].reshape(*seq.first.shape, -1)
    T = batch.actions.shape[0]
    final_values = torch.zeros(T, *out.values.shape[1:], dtype=out.values.dtype, device=out.values.device)
    final_values[to(seq.cut_steps), to(seq.cut_columns)] = out.values[to(seq.finals), to(seq.cut_columns)].detach()
    return UnrollOutputs(pick(out.logits), pick(out.values), {k: pick(v) for k, v in out.extras.items()},
                         pick(features), final_values)


def fold_time_limit_bootstrap(
    rewards: torch.Tensor, truncated: torch.Tensor, final_values: torch.Tensor, gamma: float
) -> torch.Tensor:
    """rewards [T, B, *H] -> rewards + gamma * final_values where truncated ([T, B]), the same elsewhere.

    A cut step is a done, so its V-trace discount is already 0: with gamma * V(final observation) folded into
    its reward, its target is r_t + gamma * V(final) and the traces stop there, as ``multiscene.gae`` does for
    GAE (issue 16). ``torch.where``: entries of ``final_values`` off the cuts are never read."""
    assert truncated.shape == rewards.shape[:2] and final_values.shape == rewards.shape, (
        truncated.shape, final_values.shape, rewards.shape)
    mask = truncated.bool().reshape(*truncated.shape, *([1] * (rewards.dim() - 2)))
    return torch.where(mask, rewards + gamma * final_values.to(rewards.dtype), rewards)


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
    first = to(batch.first)
    out = forward_unroll(agent, batch, device)
    logits = out.logits[:T].float()
    values = out.values[:T].float()  # [T, B, H]
    bootstrap = out.values[T].float().detach()  # [B, H]
    dist = Categorical(logits=logits)
    actions = to(batch.actions)
    target_logp = dist.log_prob(actions)

    critic = agent.critic
    # Once per batch, as the on-policy loop calls it once per rollout: in training mode --critic multi folds the
    # batch into the running RMS of its VWR scaling here.
    extra = None if batch.extra_rewards is None else to(batch.extra_rewards).float()
    head_rewards = critic.head_rewards(to(batch.rewards).float(), extra)  # [T, B, H]
    discounts = gamma * (1.0 - to(batch.dones).float())
    if out.final_values is not None and batch.truncated is not None:
        head_rewards = fold_time_limit_bootstrap(head_rewards, to(batch.truncated), out.final_values.float(), gamma)
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
        "impala/rho_mean": ratio.mean(),
        "impala/rho_clipped_fraction": (ratio > impala.rho_bar).float().mean(),
    }
    # Per head, under the on-policy loop's names: the first head's is also losses/explained_variance.
    for h, head in enumerate(critic.head_names):
        ev = torch.tensor(explained_variance(values[..., h].detach().flatten(), vs[..., h].flatten()))
        if h == 0:
            metrics["losses/explained_variance"] = ev
        if len(critic.head_names) > 1:
            metrics[f"losses/explained_variance/{head}"] = ev

    extras = {k: v[:T].float() for k, v in out.extras.items()}
    critic_out = CriticOutput(values, extras)
    valid = torch.ones(T, B, device=values.device)
    aux = critic.aux_losses(critic_out, valid, first=first[:T])
    total = total + scaled_sum(aux, aux_scales, metrics, "critic aux")
    for name, value in critic.diagnostics(critic_out, valid, first=first[:T]).items():
        metrics[f"dve/{name}"] = torch.tensor(value)

    if vae is not None:
        assert vae_scales is not None, "vae_scales must come with vae"
        features = out.features[:T].float()
        terms = vae.losses(to(batch.obs[:T]), features)
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
    checked = {k: v for k, v in metrics.items() if not k.startswith("losses/explained_variance")}
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
