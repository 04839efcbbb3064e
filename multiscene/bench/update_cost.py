"""``multiscene bench update-cost``: K-FAC's extra cost per update as a ratio to A2C's (issue 10, "Speed").

For one config (network, envs x steps), it collects ONE rollout, computes its n-step advantages, and then times
the same update on that same batch twice over, from the same starting weights:

- A2C: ``A2C.update`` (forward, loss, backward, gradient clip, RMSprop step);
- ACKTR: ``ACKTR.update`` (the same, plus the sampled Fisher loss's backward pass that feeds K-FAC's Kronecker
  factors, the factors' running averages, the eigendecompositions every ``--acktr.inverse-every`` updates, the
  preconditioning and the trust-region scale).

Each timed update starts from the rollout's weights (restored outside the clock), so a large step cannot drive
the timing into a different regime (a skipped non-finite update costs less). ``--updates`` timed updates per
algorithm follow one untimed warm-up; with the default ``--updates`` equal to ``inverse_every`` the ACKTR mean
holds exactly one eigendecomposition refresh, i.e. the amortized cost. The figures:

- ``a2c_seconds``, ``acktr_seconds``: mean seconds per update;
- ``acktr_refresh_seconds`` / ``acktr_plain_seconds``: the slowest ACKTR update (the one refreshing the
  eigendecompositions) and the median of the others;
- ``ratio = acktr_seconds / a2c_seconds`` (the extra cost is ``ratio - 1``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass

import torch

from multiscene.config import ConfigError, TrainConfig, replace, validate


@dataclass(frozen=True)
class UpdateCost:
    """One config's update times in seconds, and their ratio."""

    preset: str
    env: str
    encoder: str
    """The agent's encoder class name (NatureCNN, MLP, ...)."""
    parameters: int
    """Trainable parameters of the agent."""
    batch: int
    """num_envs x num_steps: samples per update."""
    updates: int
    a2c_seconds: float
    acktr_seconds: float
    acktr_refresh_seconds: float
    acktr_plain_seconds: float
    ratio: float
    torch_threads: int

    def lines(self) -> list[str]:
        """``name: value`` lines, the format the command prints."""
        from multiscene.bench.throughput import result_lines

        return result_lines(self)


def _time_updates(algo_name: str, base_cfg: TrainConfig, agent: torch.nn.Module, rollout: object, adv: object,
                  updates: int, device: torch.device) -> list[float]:
    """Seconds of each of ``updates`` timed updates (after one warm-up) of ``algo_name`` on one batch."""
    from multiscene import registry

    cfg = replace(base_cfg, algo=algo_name)
    algo = registry.load("algorithm", algo_name)()
    start_state = copy.deepcopy(agent.state_dict())
    optimizer = algo.make_optimizer(agent, cfg)
    aux_scales: dict[str, float] = {}
    times = []
    for i in range(updates + 1):
        agent.load_state_dict(start_state)
        t0 = time.perf_counter()
        algo.update(agent, optimizer, rollout, adv, aux_scales, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:  # the first call allocates and builds the factors
            times.append(time.perf_counter() - t0)
    agent.load_state_dict(start_state)
    return times


def run_update_cost(cfg: TrainConfig, updates: int | None = None) -> UpdateCost:
    """Measure ``cfg`` (see the module docstring). ``updates`` defaults to ACKTR's ``inverse_every``."""
    from multiscene import registry
    from multiscene.algos.onpolicy.rollout import RolloutCollector
    from multiscene.envs import check_env_id, make_env
    from multiscene.runtime import env_spec, make_agent, resolve_device, seed_everything

    updates = cfg.acktr.inverse_every if updates is None else updates  # type: ignore[attr-defined]
    if updates < 2:
        raise ConfigError(f"--updates must be at least 2 (a refresh and a plain K-FAC update), got {updates}.")
    # Both algorithms see the one batch of one rollout; the critic's aux terms are off (scalar critic in the
    # presets this is meant for), and the budget only has to allow the one rollout.
    cfg = replace(cfg, total_timesteps=max(cfg.total_timesteps, cfg.batch_size))
    validate(cfg)
    check_env_id(cfg.env)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        agent = make_agent(cfg, envs, device=device)
        rollout = RolloutCollector(envs, agent, cfg, device).collect(agent)
    finally:
        envs.close()
    a2c = registry.load("algorithm", "a2c")()
    adv = a2c.advantages(agent.critic, rollout, replace(cfg, algo="a2c"))
    a2c_times = _time_updates("a2c", cfg, agent, rollout, adv, updates, device)
    acktr_times = _time_updates("acktr", cfg, agent, rollout, adv, updates, device)
    a2c_mean = statistics.fmean(a2c_times)
    acktr_mean = statistics.fmean(acktr_times)
    encoder = type(getattr(agent, "encoder", agent)).__name__
    return UpdateCost(
        preset=cfg.preset, env=cfg.env, encoder=encoder,
        parameters=sum(p.numel() for p in agent.parameters() if p.requires_grad), batch=cfg.batch_size,
        updates=updates, a2c_seconds=a2c_mean, acktr_seconds=acktr_mean,
        acktr_refresh_seconds=max(acktr_times), acktr_plain_seconds=statistics.median(sorted(acktr_times)[:-1]),
        ratio=acktr_mean / a2c_mean, torch_threads=torch.get_num_threads(),
    )


def main(argv: list[str]) -> int:
    """``multiscene bench update-cost --preset P [--updates N] [--json] [any train flag]``."""
    from multiscene.cli import parse_train_args

    parser = argparse.ArgumentParser(
        prog="multiscene bench update-cost", add_help=False, allow_abbrev=False,
        description="Seconds per A2C and per ACKTR (K-FAC) update on the same network and batch, and their ratio.",
    )
    parser.add_argument("--updates", type=int, default=None,
                        help="timed updates per algorithm (default --acktr.inverse-every: one refresh each)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("-h", "--help", action="store_true")
    ns, train_args = parser.parse_known_args(argv)
    if ns.help:
        parser.print_help()
        print("\nEvery `multiscene train` flag is accepted too (--preset, --env, --num-envs, --torch-threads, ...).")
        return 0
    result = run_update_cost(parse_train_args(train_args), ns.updates)
    for line in result.lines():
        print(line)
    if ns.json:
        print(json.dumps(dataclasses.asdict(result)))
    return 0
