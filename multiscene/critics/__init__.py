"""Critics (SPEC §3): the scalar RL² critic, DVE and Sparse DVE, and the schedule of the L_CC loss.

``make_critic(cfg, core_dim, encoder_dim)`` builds the critic named by ``--critic`` from multiscene/registry.py;
``make_cc_schedule(cfg)`` builds the schedule whose scales the trainer applies to the critic's auxiliary terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from multiscene.critics.base import Critic, CriticOutput
from multiscene.critics.dve import (
    DVECritic,
    SparseDVECritic,
    cc_loss,
    cc_terms,
    confusion,
    confusion_histogram,
    contribution,
)
from multiscene.critics.scalar import ScalarCritic
from multiscene.critics.schedule import CCSchedule, make_cc_schedule

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

__all__ = [
    "CCSchedule",
    "Critic",
    "CriticOutput",
    "DVECritic",
    "ScalarCritic",
    "SparseDVECritic",
    "cc_loss",
    "cc_terms",
    "confusion",
    "confusion_histogram",
    "contribution",
    "make_cc_schedule",
    "make_critic",
]


def make_critic(cfg: TrainConfig, core_dim: int, encoder_dim: int) -> Critic:
    """The critic registered under ``--critic`` (multiscene/registry.py), built by its ``from_config``.

    core_dim: width of the core output [T, B, core_dim]; encoder_dim: width of the per-frame encoder output,
    read only by critics that look at single frames (DVE with ``--dve.cluster-input encoder``).
    """
    from multiscene import registry

    return registry.load("critic", cfg.critic).from_config(cfg, core_dim, encoder_dim)
