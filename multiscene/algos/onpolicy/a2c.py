"""A2C (Mnih et al. 2016, synchronous), as the baseline of the ACKTR paper (Wu et al. 2017) and seed 004.

One gradient step per rollout of ``--num-steps`` (n) steps from every env, on the whole batch: n-step returns
bootstrapped from the value after the rollout (``--a2c.gae-lambda 1``, the default, is exactly that), the policy
gradient ``-A * log pi``, an entropy bonus and ``vf_coef`` times the squared value error (summed over critic
heads). Defaults, checked against openai/baselines ``a2c/a2c.py`` ``learn()``: RMSprop lr 7e-4, alpha 0.99,
eps 1e-5, entropy 0.01, value coefficient 0.5, gradient clip 0.5, gamma 0.99; the lr, entropy, value and clip
values are the flat flags (``--learning-rate``, ``--ent-coef``, ``--vf-coef``, ``--max-grad-norm``,
``--gamma``) that the ``a2c-*`` presets set. baselines uses n = 5; we use n = 20 in the presets (issue 10: our
choice, to match ACKTR's n-step). Like baselines, the value error is not halved: ``vf_coef * mean((R - V)^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from multiscene.algos.onpolicy.base import (
    Advantages,
    DeviceRollout,
    OnPolicyAlgorithm,
    Snapshot,
    UpdateResult,
    adam,
    add_aux_terms,
    backward_and_clip,
    critic_diagnostics,
    first_nonfinite_parameter,
    param_groups,
)
from multiscene.algos.onpolicy.ppo import masked_mean, normalize_advantages
from multiscene.config import ConfigError

if TYPE_CHECKING:
    from multiscene.algos.onpolicy.rollout import Rollout
    from multiscene.config import TrainConfig
    from multiscene.models.agent import Agent, AgentOutput


@dataclass(frozen=True)
class A2CConfig:
    """A2C (``--algo a2c``); the learning rate and loss coefficients are the flat CleanRL flags."""

    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """RMSprop as in A3C/A2C and openai/baselines; adam as an alternative."""
    rms_alpha: float = 0.99
    """RMSprop smoothing constant (baselines a2c: alpha=0.99)."""
    rms_eps: float = 1e-5
    """RMSprop epsilon (baselines a2c: epsilon=1e-5)."""
    gae_lambda: float = 1.0
    """1.0: plain n-step returns over the rollout (baselines); below 1, GAE(lambda) advantages."""

    def validate(self, cfg: TrainConfig) -> None:
        if not 0.0 < self.rms_alpha < 1.0 or self.rms_eps <= 0:
            raise ConfigError("--a2c.rms-alpha must lie in (0, 1) and --a2c.rms-eps be positive.")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"--a2c.gae-lambda must lie in [0, 1], got {self.gae_lambda}.")


def a2c_loss(
    out: AgentOutput, agent: Agent, rollout: Rollout, adv: Advantages, cfg: TrainConfig, device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy gradient, entropy bonus and value error of one full-batch A2C step -> (total, metrics)."""
    dist = agent.distribution(out.logits.float())
    logprobs = dist.log_prob(rollout.actions.to(device))
    advantages = adv.policy.to(device)
    # Hot-wired steps (seed 004 §5) leave the policy terms; the value loss keeps every step.
    mask = rollout.policy_mask.to(device) if rollout.policy_mask is not None else None
    if cfg.norm_adv:
        advantages = normalize_advantages(advantages, mask)
    pg_loss = masked_mean(-(advantages * logprobs), mask)
    entropy = masked_mean(dist.entropy(), mask)
    v_loss = (out.values.float() - adv.returns.to(device)).pow(2).sum(dim=-1).mean()
    total = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        log_ratio = logprobs - rollout.logprobs.to(device)  # 0 up to float error: the data is on-policy
        approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
    metrics = {
        "losses/policy_loss": pg_loss.detach(),
        "losses/value_loss": v_loss.detach(),
        "losses/entropy": entropy.detach(),
        "losses/approx_kl": approx_kl,
    }
    return total, metrics


class A2C(OnPolicyAlgorithm):
    """``--algo a2c``: one RMSprop step on each rollout's whole batch."""

    name = "a2c"
    config_group = ("a2c", A2CConfig)
    uses_minibatches = False

    def make_optimizer(self, agent: Agent, cfg: TrainConfig) -> torch.optim.Optimizer:
        groups = param_groups(agent, cfg)
        if cfg.a2c.optimizer == "adam":  # type: ignore[attr-defined]
            return adam(groups, cfg)
        return torch.optim.RMSprop(
            groups, lr=cfg.learning_rate, alpha=cfg.a2c.rms_alpha, eps=cfg.a2c.rms_eps  # type: ignore[attr-defined]
        )

    def gae_lambda(self, cfg: TrainConfig) -> float:
        return cfg.a2c.gae_lambda  # type: ignore[attr-defined]

    def before_backward(
        self, agent: Agent, optimizer: torch.optim.Optimizer, out: AgentOutput, metrics: dict[str, torch.Tensor],
        cfg: TrainConfig,
    ) -> None:
        """Hook between the loss and its backward pass (ACKTR records its Fisher statistics here)."""

    def step_metrics(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """What the optimizer's step reports (ACKTR: the trust-region scale)."""
        return {}

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
        snapshot = Snapshot(agent, optimizer)
        inputs = DeviceRollout.of(rollout, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = inputs.forward(agent, slice(None))
        loss, metrics = a2c_loss(out, agent, rollout, adv, cfg, device)
        loss, critic_out = add_aux_terms(loss, metrics, agent, out, inputs.obs, inputs.first, aux_scales)
        bad, grad_norm = backward_and_clip(
            agent, optimizer, loss, metrics, cfg, lambda: self.before_backward(agent, optimizer, out, metrics, cfg)
        )
        if bad is not None:
            snapshot.restore()
            return UpdateResult({}, skipped=True, bad_term=bad)
        optimizer.step()
        broken = first_nonfinite_parameter(agent)
        if broken is not None:
            # Finite loss and gradients, non-finite weights: the optimizer's step itself failed (K-FAC's
            # curvature, say). Writing them would only surface as NaN logits in the next rollout.
            snapshot.restore()
            name = type(optimizer).__name__
            return UpdateResult({}, skipped=True, bad_term=f"parameters after the {name} step ({broken})")
        metrics["losses/grad_norm"] = grad_norm.detach()  # type: ignore[union-attr]
        metrics.update(self.step_metrics(optimizer))
        metrics.update(critic_diagnostics(agent, critic_out, inputs.first))
        return UpdateResult({k: float(v) for k, v in metrics.items()}, skipped=False, bad_term=None)
