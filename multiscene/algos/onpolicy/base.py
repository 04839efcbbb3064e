"""What every on-policy algorithm is, and the pieces their updates share.

An on-policy algorithm (PPO, A2C, ACKTR) is a small class registered in multiscene/registry.py. The shared loop
(``multiscene.algos.onpolicy.loop``) collects a rollout, asks the algorithm for the advantages and returns,
then for its update:

- ``make_optimizer(agent, cfg)``: the optimizer (Adam, RMSprop, K-FAC);
- ``advantages(critic, rollout, cfg)``: per-head advantages and returns (GAE for PPO, n-step for A2C/ACKTR),
  and the policy advantage that combines the heads;
- ``update(agent, optimizer, rollout, advantages, returns, aux_scales, cfg, device) -> UpdateResult``.

``config_group = ("name", Dataclass)`` gives it its own ``--name.*`` flags.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from multiscene.critics.base import CriticOutput
from multiscene.gae import compute_gae

if TYPE_CHECKING:
    from multiscene.algos.onpolicy.rollout import Rollout
    from multiscene.config import TrainConfig
    from multiscene.critics.base import Critic
    from multiscene.models.agent import Agent, AgentOutput


@dataclass(frozen=True)
class UpdateResult:
    metrics: dict[str, float]
    skipped: bool
    bad_term: str | None


class Advantages(NamedTuple):
    policy: torch.Tensor
    """[T, B] the advantage of the policy loss (heads combined by the critic)."""
    heads: torch.Tensor
    """[T, B, H] per-head advantages."""
    returns: torch.Tensor
    """[T, B, H] per-head value targets."""


class OnPolicyAlgorithm(ABC):
    """Base of PPO, A2C and ACKTR: one loop, three updates."""

    name = "on-policy"
    family = "onpolicy"
    config_group: tuple[str, type] | None = None
    not_data_parallel: str | None = None
    """Why the algorithm refuses to run under torchrun (issue 15: refuse rather than train wrong); None: it runs."""
    uses_minibatches = True
    """False when the update takes the whole rollout in one step (A2C, ACKTR): --num-minibatches is ignored."""

    @classmethod
    def train(cls, cfg: TrainConfig) -> Path:
        from multiscene.algos.onpolicy.loop import train

        return train(cfg, cls())

    def make_optimizer(self, agent: Agent, cfg: TrainConfig) -> torch.optim.Optimizer:
        return adam(param_groups(agent, cfg), cfg)

    def gae_lambda(self, cfg: TrainConfig) -> float:
        return cfg.gae_lambda

    def advantages(self, critic: Critic, rollout: Rollout, cfg: TrainConfig) -> Advantages:
        head_rewards = critic.head_rewards(rollout.rewards, rollout.extra_rewards)
        heads, returns = compute_gae(
            head_rewards, rollout.values, rollout.dones, rollout.next_value, cfg.gamma, self.gae_lambda(cfg),
            **truncation_bootstrap(rollout),
        )
        return Advantages(critic.combine_advantages(heads), heads, returns)

    @abstractmethod
    def update(
        self,
        agent: Agent,
        optimizer: torch.optim.Optimizer,
        rollout: Rollout,
        adv: Advantages,
        aux_scales: dict[str, float],
        cfg: TrainConfig,
        device: torch.device,
    ) -> UpdateResult:
        """One update from one rollout; a non-finite loss or gradient restores the state from before it."""


def param_groups(agent: Agent, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one, or the DVE attention layer apart at ``--dve.attention-lr-scale``
    times the learning rate (issue 14, lead 1). Each group carries ``lr_scale`` for learning-rate annealing."""
    from multiscene.critics.dve import attention_param_groups

    return attention_param_groups(agent, agent.critic, cfg.learning_rate, cfg.dve.attention_lr_scale)  # type: ignore[attr-defined]


def truncation_bootstrap(rollout: Rollout) -> dict[str, torch.Tensor]:
    """``compute_gae``'s truncation arguments when the rollout saw a time-limit cut, else none (so rollouts
    without truncation take exactly the arithmetic of before; issue 16)."""
    if rollout.truncated is None or not bool(rollout.truncated.any()):
        return {}
    return {"truncated": rollout.truncated, "final_values": rollout.final_values}


# ----------------------------------------------------------------------------------------------------------
# Pieces shared by the updates


class DeviceRollout(NamedTuple):
    """The rollout's model inputs on the device, moved once per update (on CUDA the uint8 observations of
    64 envs x 256 steps are 200 MB; on the CPU these are no-ops)."""

    obs: torch.Tensor
    first: torch.Tensor
    prev_action: torch.Tensor
    prev_reward: torch.Tensor
    initial_state: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, rollout: Rollout, device: torch.device) -> DeviceRollout:
        obs, first, prev_action, prev_reward = (
            x.to(device, non_blocking=True)
            for x in (rollout.obs, rollout.first, rollout.prev_action, rollout.prev_reward)
        )
        return cls(obs, first, prev_action, prev_reward, tuple(s.to(device) for s in rollout.initial_state))

    def forward(self, agent: Agent, envs: torch.Tensor | slice) -> AgentOutput:
        """The agent over the whole sequences of the envs ``envs`` (indices on dim 1)."""
        return agent(
            self.obs[:, envs], self.first[:, envs], self.prev_action[:, envs], self.prev_reward[:, envs],
            tuple(s[:, envs] for s in self.initial_state), normalized=True,
        )


def add_aux_terms(
    loss: torch.Tensor,
    metrics: dict[str, torch.Tensor],
    agent: Agent,
    out: AgentOutput,
    obs: torch.Tensor,
    first: torch.Tensor,
    aux_scales: dict[str, float],
) -> tuple[torch.Tensor, CriticOutput]:
    """Adds the critic's and the auxiliary loss's named terms, each times its scale, to ``loss``; the two key
    sets must be equal (DreamerV3's rule: a term without a scale, or a scale without a term, is a bug).

    Returns the new loss and the critic's output (for diagnostics). ``obs`` [T, b, *obs], ``first`` [T, b].
    """
    critic_out = CriticOutput(out.values.float(), {k: v.float() for k, v in out.extras.items()})
    valid = torch.ones_like(first)
    terms = dict(agent.critic.aux_losses(critic_out, valid, first=first))
    aux = getattr(agent, "aux", None)
    if aux is not None:
        terms.update(aux.losses(obs, out.extras["features"], valid))
    assert set(terms) == set(aux_scales), f"aux terms {sorted(terms)} != scales {sorted(aux_scales)}"
    for name, term in terms.items():
        loss = loss + aux_scales[name] * term
        metrics[f"losses/{name}"] = term.detach()
    return loss, critic_out


def as_single_steps(rollout: Rollout, adv: Advantages) -> tuple[Rollout, Advantages]:
    """A feed-forward view of a rollout: [T, B, ...] -> [1, T * B, ...], so that minibatches "of envs" are
    minibatches of single transitions (``--minibatch-by step``, CleanRL's feed-forward scripts). Valid only
    without a recurrent core, which ``validate`` checks."""
    assert not rollout.initial_state, "--minibatch-by step needs a feed-forward agent (--core none)"

    def flat(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(1, -1, *x.shape[2:])

    changes = {name: flat(getattr(rollout, name)) for name in (
        "obs", "first", "prev_action", "prev_reward", "actions", "logprobs", "values", "rewards", "raw_rewards",
        "dones", "alpha", "extra_rewards", "policy_mask")}
    return dataclasses.replace(rollout, **changes), Advantages(*(flat(x) for x in adv))  # type: ignore[arg-type]


def adam(params: Any, cfg: TrainConfig) -> torch.optim.Adam:
    """The on-policy Adam: ``--adam-fused`` picks torch's fused kernel; otherwise the multi-tensor (foreach)
    implementation, which rounds exactly as the per-parameter loop (tests/test_pinned_ppo.py) at ~3/4 of its
    cost for small networks on the CPU."""
    if cfg.adam_fused:
        return torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
    return torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps, foreach=True)


def backward_and_clip(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    metrics: dict[str, torch.Tensor],
    cfg: TrainConfig,
    before_backward: Any = None,
) -> tuple[str | None, torch.Tensor | None]:
    """The gradient step's first half, shared by every on-policy update: name a non-finite loss term (every
    rank agrees under torchrun, issue 15), back-propagate (after ``before_backward()``, where ACKTR records its
    Fisher statistics), average gradients over ranks, clip. Returns (bad term or None, gradient norm); the caller
    restores its snapshot when a term is bad, else steps the optimizer."""
    from multiscene.scale import distributed

    bad = distributed.agree_on_bad_term(first_nonfinite({**metrics, "loss": loss}))  # name the term, not the total
    grad_norm = None
    if bad is None:
        clear_grads(optimizer)
        if before_backward is not None:
            before_backward()
            clear_grads(optimizer)
        loss.backward()
        params = list(agent.parameters())
        distributed.average_gradients(params)
        grad_norm = clip_grad_norm(params, cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            bad = "gradients"
    return bad, grad_norm


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler annotation, which cost more than the work
    (~60 us for ten tensors on the CPU, once per minibatch)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (L2) with the same operations bit for bit (norm of
    the per-tensor norms, coefficient max_norm / (norm + 1e-6) clamped at 1) in two multi-tensor calls, without
    its grouping by device and dtype: ~40% of its time for a small network on the CPU, where it runs once per
    minibatch (tests/test_algos.py checks the equality). Returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def first_nonfinite(terms: dict[str, torch.Tensor]) -> str | None:
    """The name of the first term holding a NaN or inf, or None. One check over all terms in the common case
    (called once per minibatch), then one per term to name the culprit."""
    if not terms:
        return None
    values = [v.detach() for v in terms.values()]
    # Scalars (a minibatch's loss terms) stack without a reshape each; anything else is flattened and joined.
    joined = torch.stack(values) if all(v.dim() == 0 for v in values) else torch.cat([v.reshape(-1) for v in values])
    if bool(torch.isfinite(joined).all()):
        return None
    for name, value in terms.items():
        if not bool(torch.isfinite(value).all()):
            return name
    return None


def first_nonfinite_parameter(agent: Agent) -> str | None:
    """The name of the first parameter with a NaN or inf entry, or None (``first_nonfinite`` over the weights)."""
    return first_nonfinite({name: p.detach() for name, p in agent.named_parameters()})


class Snapshot:
    """Parameters and optimizer state from before an update, to restore when a loss or gradient is not
    finite (issue #6): the update is then reported as skipped."""

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer) -> None:
        self.agent, self.optimizer = agent, optimizer
        self.params = copy.deepcopy(agent.state_dict())
        self.optim = copy.deepcopy(optimizer.state_dict())

    def restore(self) -> None:
        self.agent.load_state_dict(self.params)
        self.optimizer.load_state_dict(self.optim)
        self.optimizer.zero_grad(set_to_none=True)


def critic_diagnostics(agent: Agent, critic_out: CriticOutput, first: torch.Tensor) -> dict[str, torch.Tensor]:
    valid = torch.ones_like(first)
    return {f"dve/{k}": torch.tensor(v) for k, v in agent.critic.diagnostics(critic_out, valid, first=first).items()}


def scheduled_terms(agent: Agent, schedule: Any, global_step: int, cfg: TrainConfig) -> dict[str, float]:
    """Scales of every named aux term: the L_CC schedule's, then the auxiliary loss's."""
    scales = dict(schedule.scales(global_step))
    aux = getattr(agent, "aux", None)
    if aux is not None:
        scales.update(aux.scales(cfg))
    return scales
