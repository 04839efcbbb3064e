"""``multiscene bench throughput --algo impala``: IMPALA's actor and learner steps/s and the learner's ratio to its
compute ceiling (issue 12, "Speed"); also the measurements of ``benchmarks/impala_overhead.py``.

``run_impala_throughput`` trains ``cfg`` with the real IMPALA loop on a local Ray (2 actors by default) for
``warmup + updates`` learner updates and reads ``metrics.jsonl``:

- ``train_sps``: env steps learned per second between the end of the warm-up updates and the last update
  (start-up of Ray and of the actors excluded);
- ``actor_sps``: env steps the actors delivered to the learner (received unrolls, queued ones included) per
  second over the same window, from each record's ``impala/actor_sps`` (counted from the actors' start: steps
  so far = actor_sps x elapsed, elapsed = global_step / charts/SPS in a fresh run); it equals ``train_sps``
  when the queue stays empty (an actor-bound run); ``actor_sps_since_start`` is the logged figure;
- ``learner_sps``: env steps per second of learner compute inside the run (``impala/learner_sps``: batch steps /
  seconds inside ``learner_step``, median over the timed updates; the actors share the cores meanwhile);
- ``ceiling_sps``: the same ``learner_step`` (forward, V-trace, backward, clip, Adam step) on a batch of the run's
  shapes, timed after the run with no actor running: what the learner alone allows;
- ``ratio``: ``train_sps / ceiling_sps``, the learner's ratio to its ceiling (1: the learner never waits for
  unrolls and nothing else slows it; well below 1: the run is actor- or overhead-bound);
- ``learner_busy``: ``train_sps / learner_sps``, the share of wall time the learner spends computing.

``ray_cost`` and ``impala_vs_onpolicy`` are the two measurements of ``benchmarks/impala_overhead.py`` (what Ray
costs per unroll; IMPALA's steps/s against the on-policy loop), kept here so that the script and the command
share one implementation.
"""

from __future__ import annotations

import io
import pickle
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multiscene.config import ConfigError, TrainConfig

__all__ = [
    "ImpalaThroughputResult",
    "impala_vs_onpolicy",
    "ray_cost",
    "run_impala_throughput",
    "run_sps",
    "synthetic_unroll",
    "time_learner_ceiling",
]

DEFAULT_BENCH_ACTORS = 2
"""Actors of ``bench throughput --algo impala`` unless ``--impala.num-actors`` is given (issue 12: 2 actors)."""


def synthetic_unroll(agent: Any, obs_shape: tuple[int, ...], num_actions: int, T: int, B: int,
                     seed: int = 0, cfg: TrainConfig | None = None) -> Any:
    """An Unroll of the real shapes ([T + 1, B, *obs] uint8 frames, [T, B] actions, ...) with random content
    and the agent's zero core state: what the learner's compute costs does not depend on the values. With
    ``cfg``, a critic that has a reward transform (``--critic multi``'s VWR) gets its ``extra_rewards``, stepped
    over the random rewards as an actor would."""
    from multiscene.algos.impala.learner import Unroll

    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(T, B, generator=gen)
    transform = agent.critic.make_reward_transform(B, cfg) if cfg is not None else None
    extra_rewards = None
    if transform is not None:
        # No episode end in the synthetic unroll: only its first step starts an episode.
        extra_rewards = torch.stack([transform.step(rewards[t], torch.full((B,), t == 0)) for t in range(T)])
        extra_rewards = extra_rewards[..., None]
    return Unroll(
        obs=torch.randint(0, 256, (T + 1, B, *obs_shape), dtype=torch.uint8, generator=gen),
        first=torch.zeros(T + 1, B, dtype=torch.bool), prev_action=torch.zeros(T + 1, B, dtype=torch.long),
        prev_reward=torch.zeros(T + 1, B), actions=torch.randint(0, num_actions, (T, B), generator=gen),
        behaviour_logp=torch.full((T, B), -float(torch.log(torch.tensor(float(num_actions))))),
        rewards=rewards, dones=torch.zeros(T, B, dtype=torch.bool),
        level_seeds=torch.zeros(T + 1, B, dtype=torch.int64),
        initial_state=tuple(s.cpu() for s in agent.initial_state(B, "cpu")), episodes=(), policy_version=0,
        actor_index=0, actor_pid=0, actor_seconds=0.0, extra_rewards=extra_rewards,
    )


def _probe_shapes(cfg: TrainConfig) -> tuple[tuple[int, ...], int]:
    from multiscene.envs import make_env
    from multiscene.runtime import env_spec

    probe = make_env(env_spec(cfg, "train", 1))
    try:
        return tuple(probe.obs_shape), int(probe.num_actions)
    finally:
        probe.close()


def time_learner_ceiling(cfg: TrainConfig, impala: Any, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of one ``learner_step`` on a batch of ``impala.batch_size`` unrolls of
    ``impala.unroll_length`` steps for ``cfg``'s agent (with its VAE under ``--aux vae``), nothing else running.
    """
    from multiscene.algos.impala.learner import learner_step
    from multiscene.auxloss.vae import scales as vae_scales_of
    from multiscene.critics.schedule import make_cc_schedule
    from multiscene.runtime import make_agent, resolve_device

    device = resolve_device(cfg.device)
    obs_shape, num_actions = _probe_shapes(cfg)
    agent = make_agent(cfg, obs_shape, num_actions, device)
    vae = getattr(agent, "aux", None) if cfg.aux == "vae" else None
    vae_scales = vae_scales_of(cfg.vae) if vae is not None else None  # type: ignore[attr-defined]
    optimizer = torch.optim.Adam(agent.parameters(), lr=impala.learning_rate,
                                 betas=(impala.adam_beta1, impala.adam_beta2), eps=impala.adam_eps)
    aux_scales = make_cc_schedule(cfg).scales(0)
    batch = synthetic_unroll(agent, obs_shape, num_actions, impala.unroll_length, impala.batch_size, cfg.seed,
                             cfg)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        learner_step(agent, optimizer, batch, cfg.gamma, impala, aux_scales, vae, vae_scales, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_sps(run_dir: Path, skip: int) -> float:
    """Env steps/s of a run between its ``skip``-th training record and its last (start-up excluded)."""
    from multiscene.logger import read_metrics

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
    if len(records) <= skip:
        raise ConfigError(f"--updates: the run logged {len(records)} updates, the timing needs more than {skip} "
                          "(the warm-up ones are not timed).")
    a, b = records[max(skip, 1) - 1], records[-1]
    return (b["global_step"] - a["global_step"]) / (b["time"] - a["time"])


@dataclass(frozen=True)
class ImpalaThroughputResult:
    """One IMPALA config's figures; every rate is env steps per second (see the module docstring)."""

    env: str
    critic: str
    core: str
    aux: str
    num_actors: int
    envs_per_actor: int
    unroll_length: int
    batch_size: int
    device: str
    updates: int
    train_sps: float
    actor_sps: float
    actor_sps_since_start: float
    learner_sps: float
    ceiling_sps: float
    ratio: float
    """train_sps / ceiling_sps: the learner's ratio to its compute ceiling."""
    learner_busy: float
    """train_sps / learner_sps: share of wall time inside the learner step."""
    policy_lag_mean: float
    unroll_get_ms: float
    weights_put_ms: float

    def lines(self) -> list[str]:
        """``name: value`` lines, the format the command prints (as ``bench throughput`` for on-policy)."""
        from multiscene.bench.throughput import result_lines

        return result_lines(self)


def run_impala_throughput(cfg: TrainConfig, updates: int, warmup_updates: int = 1,
                          ceiling_repeats: int = 3) -> ImpalaThroughputResult:
    """Train ``cfg`` (``--algo impala``) for ``warmup_updates + updates`` learner updates in a temporary run
    directory and measure it (see the module docstring)."""
    import numpy as np

    from multiscene.algos.impala.loop import train as train_impala
    from multiscene.config import replace
    from multiscene.logger import read_metrics

    if updates < 2:
        raise ConfigError(f"--updates must be at least 2 for --algo impala (steps/s is taken between two logged "
                          f"updates), got {updates}.")
    if warmup_updates < 0:
        raise ConfigError(f"--warmup-updates must be >= 0, got {warmup_updates}.")
    impala = cfg.impala  # type: ignore[attr-defined]
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    with tempfile.TemporaryDirectory(prefix="multiscene-bench-impala-") as tmp:
        run_cfg = replace(cfg, run_dir=f"{tmp}/run", total_timesteps=(updates + warmup_updates) * impala.steps_per_update,
                          final_eval=False, tensorboard=False, progress="none", checkpoint_interval=10**9,
                          resume=False, overwrite=False)
        run_dir = train_impala(run_cfg, impala, cfg.vae if cfg.aux == "vae" else None)  # type: ignore[attr-defined]
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "impala/learner_sps" in r]
        train_sps = run_sps(run_dir, max(warmup_updates, 1))
    timed = records[warmup_updates:] or records
    last = records[-1]
    first = records[max(warmup_updates, 1) - 1]
    # Actor steps delivered by the time of a record: the loop logs actor_sps = actor_steps / elapsed and
    # charts/SPS = global_step / elapsed (fresh run), so actor_steps = actor_sps * global_step / SPS.
    delivered = [r["impala/actor_sps"] * r["global_step"] / r["charts/SPS"] for r in (first, last)]
    actor_sps = (delivered[1] - delivered[0]) / (last["time"] - first["time"])
    learner_sps = float(np.median([r["impala/learner_sps"] for r in timed]))
    ceiling_sps = impala.steps_per_update / time_learner_ceiling(cfg, impala, repeats=ceiling_repeats)
    from multiscene.runtime import resolve_device

    return ImpalaThroughputResult(
        env=cfg.env, critic=cfg.critic, core=cfg.core, aux=cfg.aux, num_actors=impala.num_actors,
        envs_per_actor=impala.envs_per_actor, unroll_length=impala.unroll_length, batch_size=impala.batch_size,
        device=str(resolve_device(cfg.device)), updates=updates, train_sps=train_sps,
        actor_sps=float(actor_sps), actor_sps_since_start=float(last["impala/actor_sps"]), learner_sps=learner_sps, ceiling_sps=ceiling_sps,
        ratio=train_sps / ceiling_sps, learner_busy=train_sps / learner_sps,
        policy_lag_mean=float(np.mean([r["impala/policy_lag_mean"] for r in timed])),
        unroll_get_ms=float(np.mean([r.get("impala/unroll_get_ms", float("nan")) for r in timed])),
        weights_put_ms=float(np.mean([r["impala/weights_put_ms"] for r in timed])),
    )


# ----------------------------------------------------------------------------------------------------------
# benchmarks/impala_overhead.py


def ray_cost(env: str, unroll_length: int, envs_per_actor: int, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` of what Ray costs per call, per unroll and per weight broadcast, with one actor
    holding a ready-made unroll of the real shapes and the real agent's weights (docs/impala.md)."""
    import ray

    from multiscene.models.agent import Agent

    cfg = TrainConfig(env=env, num_levels=500 if env[0].islower() else 10)
    obs_shape, num_actions = _probe_shapes(cfg)
    agent = Agent(obs_shape, num_actions, cfg)
    weights = agent.state_dict()
    unroll = synthetic_unroll(agent, obs_shape, num_actions, unroll_length, envs_per_actor)

    class Holder:
        def __init__(self, unroll: Any) -> None:
            self.unroll = unroll

        def nothing(self) -> None:
            return None

        def give(self) -> Any:
            return self.unroll

        def fetch(self, refs: list[Any]) -> float:
            start = time.perf_counter()
            ray.get(refs[0])
            return time.perf_counter() - start

    def median_ms(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)

    def pickle_round_trip() -> None:
        buf = io.BytesIO()
        pickle.dump(unroll, buf, protocol=5)
        pickle.loads(buf.getvalue())

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        holder = ray.remote(num_cpus=0.5)(Holder).remote(unroll)
        ray.get(holder.nothing.remote())  # started
        put_times, get_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            ref = ray.put(weights)
            put_times.append(time.perf_counter() - start)
            get_times.append(ray.get(holder.fetch.remote([ref])))
        return {
            "call_ms": median_ms(lambda: ray.get(holder.nothing.remote())),
            "unroll_ms": median_ms(lambda: ray.get(holder.give.remote())),
            "unroll_pickle_ms": median_ms(pickle_round_trip),
            "weights_put_ms": 1000.0 * statistics.median(put_times),
            "weights_get_ms": 1000.0 * statistics.median(get_times),
            "unroll_mb": unroll.obs.numel() * unroll.obs.element_size() / 2**20,
            "weights_mb": sum(v.numel() * v.element_size() for v in weights.values()) / 2**20,
        }
    finally:
        ray.shutdown()


def impala_vs_onpolicy(env: str, updates: int, hidden_size: int) -> dict[str, float]:
    """The same network on the same envs, ``updates`` updates of 16 envs x 80 steps: the on-policy loop with one
    epoch and one minibatch (one gradient step per batch, like the IMPALA learner), then IMPALA with 2 actors
    x 8 envs; steps/s between update 5 and the last (issue 12: IMPALA must reach >= 0.8x)."""
    from multiscene.algos.impala import ImpalaConfig
    from multiscene.algos.impala.loop import train as train_impala
    from multiscene.logger import read_metrics
    from multiscene.trainer import train as train_onpolicy

    T, envs = 80, 16
    common: dict[str, Any] = dict(
        env=env, critic="scalar", num_levels=500, distribution_mode="hard", total_timesteps=updates * T * envs,
        hidden_size=hidden_size, max_episode_steps=None if env[0].islower() else 64, final_eval=False,
        tensorboard=False, progress="none", torch_threads=1, num_threads=1, checkpoint_interval=10**6, gamma=0.99)
    with tempfile.TemporaryDirectory() as tmp:
        onpolicy = train_onpolicy(TrainConfig(run_dir=f"{tmp}/onpolicy", num_envs=envs, num_steps=T, update_epochs=1,
                                              num_minibatches=1, **common))
        impala = train_impala(TrainConfig(run_dir=f"{tmp}/impala", **common),
                              ImpalaConfig(num_actors=2, envs_per_actor=envs // 2, unroll_length=T, batch_size=envs))
        out = {"onpolicy_sps": run_sps(onpolicy, 5), "impala_sps": run_sps(impala, 5)}
        last = [r for r in read_metrics(impala / "metrics.jsonl") if "impala/learner_sps" in r][-1]
        out.update({k: last[k] for k in ("impala/actor_sps", "impala/learner_sps", "impala/policy_lag_mean",
                                         "impala/unroll_get_ms", "impala/weights_put_ms")})
    out["ratio"] = out["impala_sps"] / out["onpolicy_sps"]
    return out
