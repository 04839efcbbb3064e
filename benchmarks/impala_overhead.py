"""What Ray costs IMPALA per unroll, and IMPALA's steps/s against the on-policy loop (issue 12, "Speed").

    python benchmarks/impala_overhead.py ray-cost  [--env coinrun] [--unroll-length 80] [--envs-per-actor 1]
    python benchmarks/impala_overhead.py throughput [--env coinrun] [--updates 20] [--hidden-size 256]

``ray-cost`` starts a local Ray with one actor holding a ready-made unroll of the real shapes and the real
agent's weights, and times (medians over repeats):

- ``call_ms``: a round trip to the actor returning nothing (Ray's per-call cost);
- ``unroll_ms``: a round trip returning the unroll (call + serialization + object store + deserialization);
- ``unroll_pickle_ms``: pickling and unpickling the same unroll in-process, without Ray (the floor);
- ``weights_put_ms``: ``ray.put`` of the learner's state dict (once per update);
- ``weights_get_ms``: the actor's ``ray.get`` of it (once per update and actor).

``throughput`` trains the same network on the same envs twice for ``--updates`` updates of equal size
(16 envs x 80 steps): the on-policy loop with one epoch and one minibatch (one gradient step per batch, like
the IMPALA learner), and IMPALA with 2 actors x 8 envs; steps/s are taken from metrics.jsonl between update 5
and the last (start-up excluded).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _unroll(obs_shape: tuple[int, ...], T: int, B: int, hidden: int) -> Any:
    from multiscene.algos.impala.learner import Unroll

    return Unroll(
        obs=torch.randint(0, 256, (T + 1, B, *obs_shape), dtype=torch.uint8),
        first=torch.zeros(T + 1, B, dtype=torch.bool), prev_action=torch.zeros(T + 1, B, dtype=torch.long),
        prev_reward=torch.zeros(T + 1, B), actions=torch.zeros(T, B, dtype=torch.long),
        behaviour_logp=torch.zeros(T, B), rewards=torch.zeros(T, B), dones=torch.zeros(T, B, dtype=torch.bool),
        level_seeds=torch.zeros(T + 1, B, dtype=torch.int64),
        initial_state=(torch.zeros(1, B, hidden), torch.zeros(1, B, hidden)), episodes=(), policy_version=0,
        actor_index=0, actor_pid=0, actor_seconds=0.0,
    )


def ray_cost(env: str, unroll_length: int, envs_per_actor: int, repeats: int) -> dict[str, float]:
    import ray

    from multiscene.config import TrainConfig
    from multiscene.envs import make_env
    from multiscene.models.agent import Agent
    from multiscene.trainer import env_spec

    cfg = TrainConfig(env=env, num_levels=500 if env[0].islower() else 10)
    probe = make_env(env_spec(cfg, "train", 1))
    obs_shape, num_actions = probe.obs_shape, probe.num_actions
    probe.close()
    weights = Agent(obs_shape, num_actions, cfg).state_dict()
    unroll = _unroll(obs_shape, unroll_length, envs_per_actor, cfg.hidden_size)

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
        out = {
            "call_ms": median_ms(lambda: ray.get(holder.nothing.remote())),
            "unroll_ms": median_ms(lambda: ray.get(holder.give.remote())),
            "unroll_pickle_ms": median_ms(pickle_round_trip),
            "weights_put_ms": 1000.0 * statistics.median(put_times),
            "weights_get_ms": 1000.0 * statistics.median(get_times),
            "unroll_mb": sum(t.numel() * t.element_size() for t in (unroll.obs,)) / 2**20,
            "weights_mb": sum(v.numel() * v.element_size() for v in weights.values()) / 2**20,
        }
    finally:
        ray.shutdown()
    return out


def _sps(run_dir: Path, skip: int) -> float:
    from multiscene.logger import read_metrics

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "losses/policy_loss" in r]
    a, b = records[skip - 1], records[-1]
    return (b["global_step"] - a["global_step"]) / (b["time"] - a["time"])


def throughput(env: str, updates: int, hidden_size: int) -> dict[str, float]:
    from multiscene.algos.impala import ImpalaConfig
    from multiscene.algos.impala.loop import train as train_impala
    from multiscene.config import TrainConfig
    from multiscene.trainer import train as train_onpolicy

    T, envs = 80, 16
    common = dict(env=env, critic="scalar", num_levels=500, distribution_mode="hard", total_timesteps=updates * T * envs,
                  hidden_size=hidden_size, max_episode_steps=None if env[0].islower() else 64,
                  final_eval=False, tensorboard=False, progress="none", torch_threads=1, num_threads=1,
                  checkpoint_interval=10**6, gamma=0.99)
    with tempfile.TemporaryDirectory() as tmp:
        onpolicy = train_onpolicy(TrainConfig(run_dir=f"{tmp}/onpolicy", num_envs=envs, num_steps=T, update_epochs=1,
                                              num_minibatches=1, **common))
        impala = train_impala(TrainConfig(run_dir=f"{tmp}/impala", **common),
                              ImpalaConfig(num_actors=2, envs_per_actor=envs // 2, unroll_length=T, batch_size=envs))
        out = {"onpolicy_sps": _sps(onpolicy, 5), "impala_sps": _sps(impala, 5)}
        from multiscene.logger import read_metrics

        last = [r for r in read_metrics(impala / "metrics.jsonl") if "impala/learner_sps" in r][-1]
        out.update({k: last[k] for k in ("impala/actor_sps", "impala/learner_sps", "impala/policy_lag_mean",
                                         "impala/unroll_get_ms", "impala/weights_put_ms")})
    out["ratio"] = out["impala_sps"] / out["onpolicy_sps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["ray-cost", "throughput"])
    parser.add_argument("--env", default="coinrun")
    parser.add_argument("--unroll-length", type=int, default=80)
    parser.add_argument("--envs-per-actor", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "ray-cost":
        result = ray_cost(args.env, args.unroll_length, args.envs_per_actor, args.repeats)
    else:
        result = throughput(args.env, args.updates, args.hidden_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
