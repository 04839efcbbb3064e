"""``multiscene bench throughput``: how close end-to-end training runs to what the network allows (issue #5).

For one config, in one process, it measures four numbers:

- ``env_sps``: raw env steps/s of the training env set under uniformly random actions (no network at all);
- ``train_sps``: end-to-end training steps/s through the trainer's own ``RolloutCollector.collect`` and
  ``ppo_update`` (plus the GAE step in between), after untimed warm-up updates;
- ``ceiling_sps``: the steps/s the same network and update would reach if env stepping and Python overhead
  cost nothing: the acting forward timed at batch ``[1, num_envs]`` for ``num_steps`` steps, plus forward,
  loss, backward, gradient clip and optimizer step for ``update_epochs x num_minibatches`` minibatches at the
  real minibatch shapes, on the data of the last real rollout;
- ``ratio``: ``train_sps / ceiling_sps``.

All four come from the same run, so their ratios are comparable even on a busy machine where the absolute
numbers are not (the machines we share have 2 cores and other users).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from multiscene.algos.onpolicy.base import Advantages, OnPolicyAlgorithm
from multiscene.algos.onpolicy.ppo import ppo_loss
from multiscene.algos.onpolicy.rollout import Rollout, RolloutCollector
from multiscene.config import ConfigError, TrainConfig, replace, validate
from multiscene.critics.base import CriticOutput
from multiscene.envs import check_env_id, make_env
from multiscene.runtime import env_spec, make_agent, resolve_device, seed_everything


def result_lines(result: Any) -> list[str]:
    """A bench result dataclass as ``name: value`` lines (4 significant digits for floats): the format every
    bench command prints and the tests parse."""
    out = []
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        out.append(f"{f.name}: {value:.4g}" if isinstance(value, float) else f"{f.name}: {value}")
    return out


@dataclass(frozen=True)
class ThroughputResult:
    """One config's figures; every rate is env steps per second."""

    preset: str
    env: str
    critic: str
    core: str
    num_envs: int
    num_steps: int
    device: str
    bf16: bool
    torch_threads: int
    procgen_threads: int
    updates: int
    env_sps: float
    train_sps: float
    collect_seconds: float
    """Seconds per rollout inside ``collect`` (env stepping, acting forward, Python)."""
    update_seconds: float
    """Seconds per update inside GAE + ``ppo_update``."""
    ceiling_sps: float
    ceiling_act_seconds: float
    """Seconds of pure acting forward per rollout."""
    ceiling_update_seconds: float
    """Seconds of pure forward/backward/step per update."""
    ratio: float

    def lines(self) -> list[str]:
        """``name: value`` lines, the format the command prints and the tests parse."""
        return result_lines(self)


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: a timer must wait for them.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_env_sps(cfg: TrainConfig, steps: int) -> float:
    """Env steps/s of ``cfg``'s training env set under uniformly random actions (after one untimed step)."""
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        envs.reset()
        from multiscene.evaluate import random_actions

        gen = torch.Generator().manual_seed(cfg.seed)
        actions = [random_actions(envs, envs.num_envs, gen).numpy() for _ in range(steps + 1)]
        envs.step(actions[0])
        start = time.perf_counter()
        for t in range(1, steps + 1):
            envs.step(actions[t])
        elapsed = time.perf_counter() - start
    finally:
        envs.close()
    return steps * cfg.num_envs / elapsed


def _aux_scales(agent: Any, cfg: TrainConfig) -> dict[str, float]:
    """The aux-loss scales at the end of the budget, where a ramped schedule is fully on. Every term is computed
    whatever its scale, so this only fixes the numbers, not the work."""
    from multiscene.critics.schedule import make_cc_schedule

    return make_cc_schedule(cfg).scales(cfg.total_timesteps)


def time_ceiling(
    agent: Any, optimizer: torch.optim.Optimizer, rollout: Rollout, adv: Advantages,
    aux_scales: dict[str, float], cfg: TrainConfig, device: torch.device, algo: OnPolicyAlgorithm,
) -> tuple[float, float]:
    """(acting seconds per rollout, update seconds per update) of the network alone.

    Inputs are moved to ``device`` before the clocks start and nothing is copied back, so only the network's
    own work is timed. Runs on the caller's agent and optimizer; the bench is done with them by then. For PPO
    the update is the bare loss/backward/step over the minibatches; for the one-step algorithms (A2C, ACKTR)
    it is their own ``update`` on device-resident tensors (which adds the parameter snapshot it keeps for
    non-finite rollbacks).
    """
    T, B = rollout.first.shape
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    obs = rollout.obs.to(device)
    first = rollout.first.to(device)
    prev_action = rollout.prev_action.to(device)
    prev_reward = rollout.prev_reward.to(device)
    state = tuple(s.to(device) for s in rollout.initial_state)

    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        for t in range(T):
            out = agent(obs[t : t + 1], first[t : t + 1], prev_action[t : t + 1], prev_reward[t : t + 1], state,
                        normalized=True)
            state = out.state
    _sync(device)
    act_seconds = time.perf_counter() - start

    if cfg.algo != "ppo":
        on_device = dataclasses.replace(
            rollout, obs=obs, first=first, prev_action=prev_action, prev_reward=prev_reward,
            actions=rollout.actions.to(device), logprobs=rollout.logprobs.to(device),
        )
        moved = Advantages(*(x.to(device) for x in adv))
        _sync(device)
        start = time.perf_counter()
        algo.update(agent, optimizer, on_device, moved, aux_scales, cfg, device)
        _sync(device)
        return act_seconds, time.perf_counter() - start

    advantages, returns = adv.policy, adv.returns
    actions, logprobs = rollout.actions.to(device), rollout.logprobs.to(device)
    old_values, adv, ret = rollout.values.to(device), advantages.to(device), returns.to(device)
    initial_state = tuple(s.to(device) for s in rollout.initial_state)
    valid = torch.ones_like(first)
    minibatches = [mb.to(device) for _ in range(cfg.update_epochs) for mb in torch.randperm(B).chunk(cfg.num_minibatches)]
    _sync(device)
    start = time.perf_counter()
    for mb in minibatches:
        with autocast:
            out = agent(obs[:, mb], first[:, mb], prev_action[:, mb], prev_reward[:, mb],
                        tuple(s[:, mb] for s in initial_state), normalized=True)
        values = out.values.float()
        loss, _ = ppo_loss(
            agent.distribution(out.logits.float()), actions[:, mb], logprobs[:, mb], adv[:, mb], values, old_values[:, mb], ret[:, mb],
            clip_coef=cfg.clip_coef, clip_vloss=cfg.clip_vloss, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
            norm_adv=cfg.norm_adv,
        )
        critic_out = CriticOutput(values, {k: v.float() for k, v in out.extras.items()})
        aux = agent.critic.aux_losses(critic_out, valid[:, mb], first=first[:, mb])
        for name, term in aux.items():
            loss = loss + aux_scales[name] * term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
        optimizer.step()
    _sync(device)
    return act_seconds, time.perf_counter() - start


def run_throughput(cfg: TrainConfig, updates: int, warmup_updates: int = 1, env_steps: int | None = None) -> ThroughputResult:
    """Measure ``cfg`` (see the module docstring). ``updates`` timed updates follow ``warmup_updates`` untimed
    ones (first calls allocate and pick kernels); ``env_steps`` random steps per env time the env alone."""
    if updates < 1:
        raise ConfigError(f"--updates must be at least 1 (one timed training update), got {updates}.")
    if warmup_updates < 0:
        raise ConfigError(f"--warmup-updates must be >= 0, got {warmup_updates}.")
    env_steps = cfg.num_steps if env_steps is None else env_steps
    if env_steps < 1:
        raise ConfigError(f"--env-steps must be at least 1, got {env_steps}.")
    # The bench's own budget is --updates; the config's budget only has to allow them (and a schedule that
    # reads the budget sees the real number of steps).
    cfg = replace(cfg, total_timesteps=(updates + warmup_updates) * cfg.batch_size)
    validate(cfg)
    check_env_id(cfg.env)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)

    env_sps = measure_env_sps(cfg, env_steps)

    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        from multiscene import registry

        algo = registry.load("algorithm", cfg.algo)()
        agent = make_agent(cfg, envs, device=device)
        optimizer = algo.make_optimizer(agent, cfg)
        collector = RolloutCollector(envs, agent, cfg, device)
        aux_scales = _aux_scales(agent, cfg)
        collect_s = update_s = 0.0
        rollout = adv = None
        for i in range(warmup_updates + updates):
            _sync(device)
            t0 = time.perf_counter()
            rollout = collector.collect(agent)
            t1 = time.perf_counter()
            adv = algo.advantages(agent.critic, rollout, cfg)
            algo.update(agent, optimizer, rollout, adv, aux_scales, cfg, device)
            _sync(device)
            t2 = time.perf_counter()
            if i >= warmup_updates:
                collect_s += t1 - t0
                update_s += t2 - t1
    finally:
        envs.close()
    assert rollout is not None and adv is not None
    train_sps = updates * cfg.batch_size / (collect_s + update_s)
    act_s, ceil_update_s = time_ceiling(agent, optimizer, rollout, adv, aux_scales, cfg, device, algo)
    ceiling_sps = cfg.batch_size / (act_s + ceil_update_s)
    return ThroughputResult(
        preset=cfg.preset, env=cfg.env, critic=cfg.critic, core=cfg.core, num_envs=cfg.num_envs,
        num_steps=cfg.num_steps, device=str(device), bf16=cfg.bf16, torch_threads=torch.get_num_threads(),
        procgen_threads=cfg.num_threads if cfg.is_procgen else 0, updates=updates, env_sps=env_sps,
        train_sps=train_sps, collect_seconds=collect_s / updates, update_seconds=update_s / updates,
        ceiling_sps=ceiling_sps, ceiling_act_seconds=act_s, ceiling_update_seconds=ceil_update_s,
        ratio=train_sps / ceiling_sps,
    )


def main(argv: list[str]) -> int:
    """``multiscene bench throughput --preset P [--updates N] [--warmup-updates N] [--env-steps N] [--json]
    [any train flag]``; prints one ``name: value`` line per field (and a JSON line with --json)."""
    from multiscene.cli import parse_train_args

    parser = argparse.ArgumentParser(
        prog="multiscene bench throughput", add_help=False, allow_abbrev=False,
        description="Env SPS, training SPS, the network's ceiling and their ratio for one config.",
    )
    parser.add_argument("--updates", type=int, default=3, help="timed training updates (default 3)")
    parser.add_argument("--warmup-updates", type=int, default=1, help="untimed updates first (default 1)")
    parser.add_argument("--env-steps", type=int, default=None, help="random steps per env for env_sps (default num_steps)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("-h", "--help", action="store_true")
    ns, train_args = parser.parse_known_args(argv)
    if ns.help:
        parser.print_help()
        print("\nEvery `multiscene train` flag is accepted too (--preset, --env, --num-envs, --bf16, "
              "--torch-threads, --num-threads, ...).\nWith --algo impala: actor and learner steps/s and the "
              "learner's ratio to its compute ceiling, with 2 actors unless --impala.num-actors is given "
              "(multiscene/bench/impala.py).")
        return 0
    cfg = parse_train_args(train_args)
    if cfg.algo == "impala":
        return _impala_main(cfg, ns, train_args)
    result = run_throughput(cfg, ns.updates, ns.warmup_updates, ns.env_steps)
    for line in result.lines():
        print(line)
    if ns.json:
        print(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                          for k, v in dataclasses.asdict(result).items()}))
    return 0


def _impala_main(cfg: TrainConfig, ns: argparse.Namespace, train_args: list[str]) -> int:
    """``--algo impala``: run multiscene.bench.impala on a local Ray (2 actors unless --impala.num-actors)."""
    from multiscene.bench.impala import DEFAULT_BENCH_ACTORS, run_impala_throughput

    if not any(arg.startswith("--impala.num-actors") for arg in train_args):
        # Issue 12's overhead question is asked with 2 actors on the 2-core machine.
        cfg = dataclasses.replace(cfg, impala=dataclasses.replace(cfg.impala,  # type: ignore[attr-defined]
                                                                 num_actors=DEFAULT_BENCH_ACTORS))
    result = run_impala_throughput(cfg, ns.updates, ns.warmup_updates)
    for line in result.lines():
        print(line)
    if ns.json:
        print(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                          for k, v in dataclasses.asdict(result).items()}))
    return 0
