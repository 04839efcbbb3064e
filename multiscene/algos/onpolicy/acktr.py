"""ACKTR (Wu et al. 2017, arXiv 1708.05144): A2C's loss, stepped by K-FAC's natural gradient with a trust
region (multiscene/optim/kfac.py).

Each update first back-propagates a Fisher loss sampled from the model's own predictive distributions, which
is what K-FAC's Kronecker factors are estimated from (ACKTR §3.1): ``-log pi(a~)`` for an action a~ sampled
from the current policy, plus for the critic ``-vf_fisher_coef * mean((V - sg(V + eps))^2)`` with eps ~ N(0, 1)
(a Gaussian predictive distribution of the value, as openai/baselines ``acktr``). Then the usual loss is
back-propagated and K-FAC preconditions the gradient of every Linear and Conv2d layer; layers it does not cover
(the LSTM, layer norms, the Gaussian log-std) take a plain SGD-with-momentum step at the same rate.

K-FAC's momentum follows baselines' convention (``p -= lr * (1 - m) * buf``), so lr 0.25 means what it means
there (docs/kfac.md). Defaults, checked against openai/baselines ``acktr/acktr.py`` (Model) and its K-FAC settings: lr 0.25 (the
``acktr-*`` presets' ``--learning-rate``), momentum 0.9, damping 0.01, KL clip 0.001, statistics decay 0.99,
entropy 0.01, value coefficient 0.5, Fisher value coefficient 1.0, gradient clip 0.5, n = 20 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from multiscene.algos.onpolicy.a2c import A2C
from multiscene.config import ConfigError

if TYPE_CHECKING:
    from multiscene.config import TrainConfig
    from multiscene.models.agent import Agent, AgentOutput


@dataclass(frozen=True)
class ACKTRConfig:
    """ACKTR (``--algo acktr``): K-FAC settings; the learning rate is ``--learning-rate`` (0.25 in presets)."""

    momentum: float = 0.9
    """Momentum of the K-FAC step (baselines: 0.9)."""
    damping: float = 0.01
    """Tikhonov damping added to the Kronecker factors (baselines' kfac epsilon: 0.01)."""
    kl_clip: float = 0.001
    """Trust region: the step is scaled so its predicted KL stays below this (ACKTR §3.1; baselines 0.001)."""
    stat_decay: float = 0.99
    """Running-average decay of the Kronecker factors (baselines: 0.99)."""
    stats_every: int = 1
    """Update the factors every this many updates; the updates between skip the sampled Fisher loss's
    backward pass too (losses/fisher_loss is logged only on updates that record)."""
    inverse_every: int = 10
    """Recompute the factors' inverses every this many updates (K-FAC's amortization; ours, as common
    PyTorch ports)."""
    vf_fisher_coef: float = 1.0
    """Weight of the critic's sampled Fisher loss (baselines: 1.0)."""
    gae_lambda: float = 1.0
    """1.0: n-step returns (ACKTR); below 1, GAE(lambda)."""

    def validate(self, cfg: TrainConfig) -> None:
        if self.damping <= 0 or self.kl_clip <= 0:
            raise ConfigError("--acktr.damping and --acktr.kl-clip must be positive.")
        if not 0.0 <= self.stat_decay < 1.0 or not 0.0 <= self.momentum < 1.0:
            raise ConfigError("--acktr.stat-decay and --acktr.momentum must lie in [0, 1).")
        if self.stats_every < 1 or self.inverse_every < 1:
            raise ConfigError("--acktr.stats-every and --acktr.inverse-every must be >= 1.")


class ACKTR(A2C):
    """``--algo acktr``: A2C's update with the K-FAC optimizer."""

    name = "acktr"
    config_group = ("acktr", ACKTRConfig)  # type: ignore[assignment]
    not_data_parallel = "K-FAC's Kronecker factors and inverses are per-process statistics that are not all-reduced"

    def make_optimizer(self, agent: Agent, cfg: TrainConfig) -> torch.optim.Optimizer:
        from multiscene.optim.kfac import KFAC

        k = cfg.acktr  # type: ignore[attr-defined]
        return KFAC(agent, lr=cfg.learning_rate, momentum=k.momentum, stat_decay=k.stat_decay, damping=k.damping,
                    kl_clip=k.kl_clip, stats_every=k.stats_every, inverse_every=k.inverse_every)

    def gae_lambda(self, cfg: TrainConfig) -> float:
        return cfg.acktr.gae_lambda  # type: ignore[attr-defined]

    def before_backward(
        self, agent: Agent, optimizer: torch.optim.Optimizer, out: AgentOutput, metrics: dict[str, torch.Tensor],
        cfg: TrainConfig,
    ) -> None:
        if not optimizer.stats_due:  # type: ignore[attr-defined]
            # --acktr.stats-every k: between statistics updates the factors are not touched, so the sampled
            # Fisher loss and its backward pass (the extra cost of ACKTR besides KFAC.step) are skipped too.
            return
        dist = agent.distribution(out.logits.float())
        with torch.no_grad():
            sampled = dist.sample()
        pg_fisher = -dist.log_prob(sampled).mean()
        values = out.values.float()
        noisy_target = (values + torch.randn_like(values)).detach()
        coef = cfg.acktr.vf_fisher_coef  # type: ignore[attr-defined]
        vf_fisher = -coef * (values - noisy_target).pow(2).sum(dim=-1).mean()
        with optimizer.record_stats():  # type: ignore[attr-defined]
            (pg_fisher + vf_fisher).backward(retain_graph=True)
        metrics["losses/fisher_loss"] = (pg_fisher + vf_fisher).detach()

    def step_metrics(self, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        nu = getattr(optimizer, "last_nu", None)
        return {} if nu is None else {"losses/kfac_nu": nu.detach()}
