"""DreamerV2's behavior learning: actor and critic trained on rollouts imagined by the world model.

From every posterior state of a world-model batch (N = T * B starts), the actor imagines H steps in the prior
(``--dreamer.horizon``, 15). The world model predicts rewards r_k and continuation probabilities from the
discount head; ``c_k = gamma * p(continue | s_k)``. Returns are lambda-returns (DreamerV2 eq. 4), bootstrapped
with the slow target critic:

    G_t = r_{t+1} + c_{t+1} * ((1 - lambda) * v(s_{t+1}) + lambda * G_{t+1}),    G_H = v(s_H)

Indexing note (ours): r_{t+1} and c_{t+1} are read at the state the action at t leads to, i.e. the reward of
arriving there; DreamerV2's code reads them one state earlier, an off-by-one DreamerV3 removed.

Each imagined step is weighted by the chance the trajectory is still alive, ``w_t = prod_{k<=t} c_k`` with
``c_0 = gamma * discount`` of the start state from the replay (0 at terminal and absorbing starts, so
imagination from a padded step, seed 003 §5.2, counts for nothing).

Losses (DreamerV2 eqs. 5-6):
    critic   mean_t w_t * 0.5 * (v(s_t) - sg(G_t))^2
    actor    -mean_t w_t * [rho * ln pi(a_t|s_t) sg(G_t - v_target(s_t)) + (1 - rho) * G_t + eta * H[pi(.|s_t)]]
with rho = 1 (Reinforce, discrete actions), 0 (dynamics backprop, continuous actions) or 1 - actor_grad_mix.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from multiscene.algos.dreamer import DreamerConfig
from multiscene.algos.dreamer.rssm import RSSM, RSSMState, straight_through_sample
from multiscene.algos.dreamer.world_model import WorldModel, mlp


def lambda_returns(
    reward: torch.Tensor, continuation: torch.Tensor, value: torch.Tensor, lam: float
) -> torch.Tensor:
    """Lambda-returns of an imagined rollout, all [H, N] indexed by the state reached (s_1..s_H):

    ``reward[k]`` = r_{k+1}, ``continuation[k]`` = c_{k+1} (gamma times the discount head), ``value[k]`` =
    v(s_{k+1}). Returns G [H, N] for the states s_0..s_{H-1}; see the module docstring.
    """
    assert reward.shape == continuation.shape == value.shape, (reward.shape, continuation.shape, value.shape)
    horizon = reward.shape[0]
    returns = torch.empty_like(reward)
    nxt = value[-1]
    for k in reversed(range(horizon)):
        nxt = reward[k] + continuation[k] * ((1.0 - lam) * value[k] + lam * nxt)
        returns[k] = nxt
    return returns


@dataclass
class ActionDist:
    """The actor's distribution at a batch of states: categorical (one-hot actions) or tanh-Gaussian."""

    discrete: bool
    logits: torch.Tensor | None = None
    """[N, A] (discrete)."""
    mean: torch.Tensor | None = None
    """[N, A] pre-tanh mean (continuous)."""
    std: torch.Tensor | None = None

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """[N, A]: a straight-through one-hot (discrete) or a reparameterized tanh-Gaussian sample, so that
        dynamics backprop can pass gradients through the action."""
        return self.sample_with_raw(generator)[0]

    def sample_with_raw(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(action, raw): ``sample``'s action and, for tanh-Gaussians, the Gaussian sample u before the tanh
        (None for categoricals), from the same random draw. ``log_prob(action, raw=u)`` is exact even where the
        tanh saturates, which inverting the action cannot be."""
        if self.discrete:
            assert self.logits is not None
            return straight_through_sample(self.logits, generator), None
        assert self.mean is not None and self.std is not None
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        raw = self.mean + self.std * noise
        return torch.tanh(raw), raw

    def mode(self) -> torch.Tensor:
        if self.discrete:
            assert self.logits is not None
            return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).float()
        assert self.mean is not None
        return torch.tanh(self.mean)

    def log_prob(self, action: torch.Tensor, raw: torch.Tensor | None = None) -> torch.Tensor:
        """[N] log-density of ``action`` [N, A]. For tanh-Gaussians pass ``raw``, the pre-tanh sample the action
        came from (``sample_with_raw``): the density is then the Gaussian's at u minus the tanh's log-Jacobian
        log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for any u. Without it u is recovered as
        atanh(action) with the action clamped inside (-1, 1), which is wrong once the actor saturates
        (|u| > 7.25): Reinforce then pushes the mean on the clamped point's distance."""
        if self.discrete:
            assert self.logits is not None
            return (action * torch.log_softmax(self.logits, -1)).sum(-1)
        assert self.mean is not None and self.std is not None
        if raw is None:
            clipped = action.clamp(-0.999999, 0.999999)
            raw = torch.atanh(clipped)
            log_jacobian = torch.log1p(-clipped.pow(2))
        else:
            log_jacobian = 2.0 * (math.log(2.0) - raw - F.softplus(-2.0 * raw))
        normal = -0.5 * ((raw - self.mean) / self.std).pow(2) - torch.log(self.std) - 0.5 * math.log(2 * math.pi)
        return (normal - log_jacobian).sum(-1)

    def entropy(self, sample: torch.Tensor | None = None) -> torch.Tensor:
        """[N]: exact for categoricals. For tanh-Gaussians H[tanh(u)] = H[u] + E[log(1 - tanh(u)^2)]: the
        Gaussian's entropy exactly plus a one-sample estimate of the tanh's log-Jacobian at ``sample``.

        Not ``-log_prob(sample)``: that inverts the sample with atanh of a value clamped below 1, so once the
        actor saturates (any |u| above atanh(0.999999) = 7.25) it measures the distance from the clamped
        point to the mean, and its gradient pushed the mean further out. Measured on Pendulum-v1 with dynamics
        backprop: the 'entropy' rose from -4.2 (500 train steps) to 1.7e8 (1500) while returns fell below the
        random policy's. Here the log-Jacobian is clamped (at about -13.8 per dimension) and saturated samples
        pass no gradient."""
        if self.discrete:
            assert self.logits is not None
            logp = torch.log_softmax(self.logits, -1)
            return -(logp.exp() * logp).sum(-1)
        assert sample is not None and self.std is not None
        gaussian = (torch.log(self.std) + 0.5 * math.log(2.0 * math.pi * math.e)).sum(-1)
        log_jacobian = torch.log1p(-sample.pow(2).clamp(max=1.0 - 1e-6)).sum(-1)
        return gaussian + log_jacobian


class Behavior(nn.Module):
    """Actor and critic MLPs (ELU) on the RSSM features, plus the slow target critic."""

    def __init__(self, feature_size: int, action_size: int, discrete: bool, cfg: DreamerConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.discrete = discrete
        self.action_size = action_size
        self.actor = mlp(feature_size, action_size if discrete else 2 * action_size, w.mlp_units, w.mlp_layers)
        self.critic = mlp(feature_size, 1, w.mlp_units, w.mlp_layers)
        self.target_critic = copy.deepcopy(self.critic)
        self.target_critic.requires_grad_(False)

    def policy(self, features: torch.Tensor) -> ActionDist:
        out = self.actor(features)
        if self.discrete:
            return ActionDist(True, logits=out)
        mean, raw_std = out.chunk(2, dim=-1)
        # DreamerV2's actor min_std 0.1 with a sigmoid-shaped std (configs.yaml actor.min_std).
        return ActionDist(False, mean=mean, std=2.0 * torch.sigmoid(raw_std / 2.0) + 0.1)

    def value(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        net = self.target_critic if target else self.critic
        return net(features).squeeze(-1)

    def update_target(self, fraction: float) -> None:
        """target <- fraction * critic + (1 - fraction) * target (DreamerV2 ``slow_target_fraction``)."""
        with torch.no_grad():
            for tgt, src in zip(self.target_critic.parameters(), self.critic.parameters()):
                tgt.mul_(1.0 - fraction).add_(fraction * src)

    def reinforce_weight(self, cfg: DreamerConfig) -> float:
        """rho: the share of the Reinforce gradient in the actor objective."""
        mode = cfg.actor_grad
        if mode == "auto":
            mode = "reinforce" if self.discrete else "dynamics"
        return {"reinforce": 1.0, "dynamics": 0.0, "both": 1.0 - cfg.actor_grad_mix}[mode]

    def imagine(
        self, world_model: WorldModel, start: RSSMState, horizon: int, with_grad: bool,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Roll the actor out in the prior from ``start`` ([N, ...]) -> (features [H+1, N, F], actions [H, N, A],
        pre-tanh samples [H, N, A] or None for discrete actions); ``actions[t]`` is taken in state t. The actor
        reads stop-gradient features (DreamerV2)."""
        state = start
        feats = [RSSM.features(state)]
        actions, raws = [], []
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            for _ in range(horizon):
                action, raw = self.policy(feats[-1].detach()).sample_with_raw(generator)
                state = world_model.rssm.img_step(state, action, generator)
                feats.append(RSSM.features(state))
                actions.append(action)
                raws.append(raw)
        return torch.stack(feats), torch.stack(actions), None if self.discrete else torch.stack(raws)  # type: ignore[arg-type]

    def losses(
        self, world_model: WorldModel, start: RSSMState, start_discount: torch.Tensor, cfg: DreamerConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(actor_loss, critic_loss, metrics) from imagined rollouts starting at ``start`` (detached, [N, ...])
        with the replay's discounts ``start_discount`` [N]. The world model's parameters must be frozen by the
        caller: gradients reach only the actor (through the dynamics when rho < 1) and the critic."""
        rho = self.reinforce_weight(cfg)
        feats, actions, raws = self.imagine(world_model, start, cfg.horizon, with_grad=rho < 1.0, generator=generator)
        reward = world_model.predicted_reward(feats[1:])
        continuation = cfg.gamma * torch.sigmoid(world_model.continuation_logits(feats[1:]))
        target_value = self.value(feats[1:], target=True)
        returns = lambda_returns(reward, continuation, target_value, cfg.return_lambda)
        first_cont = cfg.gamma * start_discount
        weight = torch.cumprod(torch.cat([first_cont[None], continuation[:-1]]), dim=0).detach()

        policy = self.policy(feats[:-1].detach().flatten(0, 1))
        flat_actions = actions.flatten(0, 1)
        entropy = policy.entropy(flat_actions).reshape(actions.shape[:2])
        objective = cfg.actor_ent * entropy
        if rho > 0.0:
            baseline = self.value(feats[:-1].detach(), target=True)
            advantage = (returns - baseline).detach()
            flat_raws = None if raws is None else raws.flatten(0, 1).detach()
            log_prob = policy.log_prob(flat_actions.detach(), raw=flat_raws).reshape(actions.shape[:2])
            objective = objective + rho * log_prob * advantage
        if rho < 1.0:
            objective = objective + (1.0 - rho) * returns
        actor_loss = -(weight * objective).mean()

        value = self.value(feats[:-1].detach())
        critic_loss = (weight * 0.5 * (value - returns.detach()).pow(2)).mean()
        metrics = {
            "imag_reward_mean": float(reward.detach().mean()),
            "imag_return_mean": float(returns.detach().mean()),
            "imag_value_mean": float(value.detach().mean()),
            "actor_entropy": float(entropy.detach().mean()),
            "imag_continuation_mean": float(continuation.detach().mean()),
        }
        return actor_loss, critic_loss, metrics
