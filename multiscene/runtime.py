"""What every training loop shares, whatever it learns from: env specs, devices, seeding, RNG state, the
saved config, the agent's tensors and the stop signals (SIGINT / SIGTERM).

The on-policy loop (multiscene/algos/onpolicy/loop.py) and the loops of other algorithm families import these
rather than keeping copies.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import multiscene
from multiscene.config import ConfigError, config_from_dict
from multiscene.envs.base import EnvSpec, LevelSet

if TYPE_CHECKING:
    from multiscene.config import TrainConfig
    from multiscene.envs.base import VecEnv
    from multiscene.models.agent import Agent

CONFIG_FILE = "config.json"


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (too many non-finite updates); the last good state was saved."""


def default_run_dir(cfg: TrainConfig) -> Path:
    env = cfg.env.replace(",", "+").replace("/", "-").replace(":", "-")
    algo = "" if cfg.algo == "ppo" else f"{cfg.algo}-"
    return Path("runs") / f"{env}-{algo}{cfg.critic}-s{cfg.seed}"


def env_spec(cfg: TrainConfig, split: str, num_envs: int, seed_offset: int = 0, training: bool = True) -> EnvSpec:
    """Train levels [start_level, start_level + num_levels); test levels a disjoint range after them.

    ``training=False`` builds an evaluation env set: Atari then plays whole games (no episodic life) with raw
    rewards."""
    if split == "train":
        levels = LevelSet(cfg.start_level, cfg.num_levels)
    else:
        levels = LevelSet(cfg.test_levels_start, cfg.test_num_levels)
    split_offset = 0 if split == "train" else 7919
    return EnvSpec(
        env_id=cfg.env,
        num_envs=num_envs,
        seed=cfg.seed * 1000 + split_offset + seed_offset,
        levels=levels,
        distribution_mode=cfg.distribution_mode,
        num_threads=cfg.num_threads,
        max_episode_steps=cfg.max_episode_steps,
        training=training,
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    return {"config": dataclasses.asdict(cfg), "multiscene_version": multiscene.__version__}


def load_config(run_dir: Path) -> TrainConfig:
    """Rebuild the TrainConfig saved in ``run_dir/config.json`` (runs of older versions load as PPO runs)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a multiscene run directory (no {CONFIG_FILE}).")
    return config_from_dict(json.loads(path.read_text())["config"])


class SignalFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next update boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def make_agent(cfg: TrainConfig, envs_or_shape: VecEnv | tuple[int, ...], num_actions: int | None = None,
               device: torch.device | str = "cpu") -> Agent:
    """The agent for an env set (``make_agent(cfg, envs, device=...)``), or for an observation shape and a
    number of discrete actions (``make_agent(cfg, obs_shape, num_actions, device)``)."""
    from multiscene.models.agent import Agent

    if isinstance(envs_or_shape, tuple):
        assert num_actions is not None
        agent = Agent(envs_or_shape, num_actions, cfg)
    else:
        agent = Agent.for_env(envs_or_shape, cfg)
    agent = agent.to(device)
    if torch.device(device).type == "cuda":
        agent = agent.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return agent


def agent_tensors(agent: Agent, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """What goes into model.safetensors: the agent's state dict under ``agent.`` plus ``extra`` tensors."""
    tensors = {f"agent.{k}": v for k, v in agent.state_dict().items()}
    tensors.update(extra or {})
    return tensors


def load_agent_tensors(agent: Agent, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len("agent."):]: v for k, v in tensors.items() if k.startswith("agent.")}
    agent.load_state_dict(state)
