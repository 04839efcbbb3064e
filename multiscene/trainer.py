"""Public entry point of training: ``train(cfg)`` runs the algorithm of ``cfg.algo`` (multiscene/registry.py).

The on-policy algorithms share multiscene/algos/onpolicy/loop.py; other families bring loops of their own. What
every loop shares (env specs, seeding, config.json, the agent's tensors) lives in multiscene/runtime.py and is
re-exported here for scripts written against earlier versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multiscene.runtime import (  # noqa: F401  (re-exported)
    CONFIG_FILE,
    TrainingStopped,
    agent_tensors,
    config_record,
    default_run_dir,
    env_spec,
    load_agent_tensors,
    load_config,
    make_agent,
    resolve_device,
)

if TYPE_CHECKING:
    from multiscene.config import TrainConfig


def train(cfg: TrainConfig) -> Path:
    """Train per ``cfg`` with the algorithm of ``--algo``; returns the run directory."""
    from multiscene import registry

    # Each family validates what it uses (IMPALA has no rollout of --num-envs x --num-steps).
    return registry.load("algorithm", cfg.algo).train(cfg)
