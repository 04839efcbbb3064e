"""IMPALA with V-trace, actors on Ray (Espeholt et al. 2018; seed 002; SPEC §5; issue 12).

- ``vtrace.py``: the V-trace targets, a pure function.
- ``actors.py``: ``ImpalaActor``, which steps its own vectorized envs with a possibly stale copy of the policy
  and returns ``Unroll`` records; run as Ray actors.
- ``learner.py``: the V-trace actor-critic loss and one optimizer step on a batch of unrolls.
- ``loop.py``: ``train(cfg, impala)``: Ray, the actor pool (restarts), logging, checkpoints, evaluation.

``ImpalaConfig`` (``--impala.*``) holds the options of this algorithm only; the discount is the top-level
``--gamma`` (seed 002 uses 0.99).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from multiscene.config import ConfigError

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

__all__ = ["ImpalaConfig", "check_impala_config"]


@dataclass(frozen=True)
class ImpalaConfig:
    """IMPALA actor-learner options (``--impala.*``). Defaults: seed 002 Table A-1 unless said otherwise."""

    num_actors: int = 8
    """Ray actors, each stepping its own envs. Default 8: Table A-1 "num-actors"."""
    envs_per_actor: int = 1
    """Vectorized envs per actor; each env gives one unroll column. Default 1: one env per actor, as in
    deepmind/scalable_agent (seed 002's footnote 1); raise it for throughput on Procgen."""
    unroll_length: int = 80
    """Env steps per unroll. Default 80: Table A-1 "Unroll Length". An unroll may cross episode ends (and be
    longer than an episode): V-trace stops at each end, and the LSTM state resets there."""
    batch_size: int = 32
    """Unrolls (env columns of ``unroll_length`` steps) per learner update. Default 32: Table A-1."""
    learning_rate: float = 1e-5
    """Adam learning rate. Default 1e-5: Table A-1 "Adam learning rate"."""
    adam_beta1: float = 0.9
    """Adam beta1. Table A-1."""
    adam_beta2: float = 0.999
    """Adam beta2. Table A-1."""
    adam_eps: float = 1e-8
    """Adam epsilon. Table A-1."""
    baseline_cost: float = 0.5
    """Weight of the value (baseline) loss. Table A-1 "Baseline loss scaling"."""
    entropy_cost: float = 0.01
    """Weight of the entropy bonus. Table A-1 "Entropy loss scaling"."""
    max_grad_norm: float = 100.0
    """Global gradient-norm clip. Table A-1 "Clip global gradient norm"."""
    rho_bar: float = 1.0
    """V-trace truncation of the importance weights rho (Espeholt et al. 2018 §4.1 and the issue: 1.0)."""
    c_bar: float = 1.0
    """V-trace truncation of the trace coefficients c (Espeholt et al. 2018 §4.1 and the issue: 1.0)."""
    actor_num_cpus: float = 1.0
    """CPUs Ray reserves per actor (ours: one core steps one actor's envs and policy)."""
    actor_num_gpus: float = 0.0
    """GPUs Ray reserves per actor (ours: actors act on the CPU; the learner uses --device)."""
    max_actor_restarts: int = 10
    """Restarts allowed per actor after it dies (killed process, env crash) before the run stops (ours)."""
    ray_address: str | None = None
    """None: start a local Ray instance (and shut it down at the end). ``auto`` or ``HOST:PORT``: join a
    running Ray cluster (``ray start --head`` / ``ray start --address HOST:PORT``)."""

    @property
    def steps_per_update(self) -> int:
        """Env steps the learner consumes per update: batch_size unrolls of unroll_length steps."""
        return self.batch_size * self.unroll_length


def check_impala_config(impala: ImpalaConfig) -> None:
    """Raise ConfigError naming the ``--impala.*`` flag and what is allowed."""
    for name in ("num_actors", "envs_per_actor", "unroll_length", "batch_size"):
        if getattr(impala, name) <= 0:
            raise ConfigError(f"--impala.{name.replace('_', '-')} must be positive, got {getattr(impala, name)}.")
    if impala.batch_size % impala.envs_per_actor != 0:
        raise ConfigError(
            f"--impala.batch-size ({impala.batch_size}) must be divisible by --impala.envs-per-actor "
            f"({impala.envs_per_actor}): a batch is made of whole actor unrolls. Allowed --impala.batch-size: "
            f"multiples of {impala.envs_per_actor}."
        )
    for name in ("learning_rate", "adam_eps", "max_grad_norm", "rho_bar", "c_bar"):
        if not getattr(impala, name) > 0:
            raise ConfigError(f"--impala.{name.replace('_', '-')} must be positive, got {getattr(impala, name)}.")
    if not (0.0 <= impala.adam_beta1 < 1.0 and 0.0 <= impala.adam_beta2 < 1.0):
        raise ConfigError("--impala.adam-beta1 and --impala.adam-beta2 must lie in [0, 1).")
    if impala.baseline_cost < 0 or impala.entropy_cost < 0:
        raise ConfigError("--impala.baseline-cost and --impala.entropy-cost must be >= 0.")
    if impala.actor_num_cpus < 0 or impala.actor_num_gpus < 0:
        raise ConfigError("--impala.actor-num-cpus and --impala.actor-num-gpus must be >= 0.")
    if impala.max_actor_restarts < 0:
        raise ConfigError(f"--impala.max-actor-restarts must be >= 0, got {impala.max_actor_restarts}.")


class IMPALA:
    """``--algo impala``: its own actor-learner loop (multiscene/algos/impala/loop.py) on Ray; options in
    ``--impala.*``, ``--aux vae`` adds seed 002's VAE."""

    name = "impala"
    family = "impala"
    config_group = ("impala", ImpalaConfig)
    not_data_parallel = "IMPALA scales with Ray actors (--impala.num-actors, --impala.ray-address), not torchrun"

    @classmethod
    def train(cls, cfg: TrainConfig) -> Path:
        from multiscene.algos.impala.loop import train

        return train(cfg, cfg.impala, cfg.vae if cfg.aux == "vae" else None)  # type: ignore[attr-defined]
