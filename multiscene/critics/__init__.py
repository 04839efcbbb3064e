"""Critics (SPEC §3): the scalar RL² critic, DVE and Sparse DVE, and the schedule of the L_CC loss.

``make_critic(cfg, core_dim, encoder_dim)`` builds the critic named by ``--critic``; ``make_cc_schedule(cfg)``
builds the schedule whose scales the trainer applies to the critic's auxiliary terms.
"""

from __future__ import annotations

from multiscene.config import TrainConfig
from multiscene.critics.base import Critic, CriticOutput
from multiscene.critics.dve import (
    DVECritic,
    cc_loss,
    cc_terms,
    confusion,
    confusion_histogram,
    contribution,
)
from multiscene.critics.scalar import ScalarCritic
from multiscene.critics.schedule import CCSchedule, make_cc_schedule

__all__ = [
    "CCSchedule",
    "Critic",
    "CriticOutput",
    "DVECritic",
    "ScalarCritic",
    "cc_loss",
    "cc_terms",
    "confusion",
    "confusion_histogram",
    "contribution",
    "make_cc_schedule",
    "make_critic",
]


def make_critic(cfg: TrainConfig, core_dim: int, encoder_dim: int) -> Critic:
    """The critic of ``--critic``: scalar, dve or sparse-dve (the last two read ``cfg.dve``).

    core_dim: width of the core output [T, B, core_dim]; encoder_dim: width of the per-frame encoder output,
    read only by DVE with ``--dve.cluster-input encoder``.
    """
    if cfg.critic == "scalar":
        return ScalarCritic(core_dim)
    if cfg.critic == "dve":
        return DVECritic(core_dim, encoder_dim, cfg.dve, sparse=False)
    if cfg.critic == "sparse-dve":
        return DVECritic(core_dim, encoder_dim, cfg.dve, sparse=True)
    raise ValueError(f"--critic must be one of scalar, dve, sparse-dve; got {cfg.critic!r}")
