"""The IMPALA run: actors on Ray feed unrolls to one learner (Espeholt et al. 2018; seed 002; issue 12).

Read it top to bottom, like the on-policy loop: set up the run directory, agent and optimizer (resume from the
last checkpoint) -> connect to Ray (start a local instance, or join ``--impala.ray-address``) -> start the
actors with the current weights -> repeat: gather ``batch_size`` unrolls -> V-trace learner step -> publish the
new weights -> log -> checkpoint -> after the loop, stop the actors, shut Ray down and evaluate.

Faults: an actor that dies (killed process, env crash) is restarted by Ray (``max_restarts``) or, after an
exception inside it, killed and restarted by us; its in-flight unroll is dropped and it is asked for a new
one. Each death (a failed request, or a new process id on an actor's unroll) counts once in
``impala/actor_restarts``.
SIGINT / SIGTERM: the learner checkpoints at the next update boundary, the actors are killed, Ray is shut down
when we started it; ``--resume`` continues (actors restart with fresh envs and a zero LSTM state).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiscene.algos.impala import ImpalaConfig, check_impala_config
from multiscene.algos.impala.actors import remote_actor_class
from multiscene.algos.impala.learner import Unroll, learner_step, stack_unrolls
from multiscene.algos.onpolicy.loop import eval_record
from multiscene.auxloss.vae import (
    VAEAux,
    VAEConfig,
    check_vae_config,
    check_vae_observations,
    write_reconstructions,
)
from multiscene.auxloss.vae import scales as vae_scales_of
from multiscene.checkpoint import load_latest_checkpoint, save_checkpoint
from multiscene.config import ConfigError, TrainConfig, validate
from multiscene.critics.schedule import make_cc_schedule
from multiscene.envs import check_env_id, make_env
from multiscene.logger import METRICS_FILE, MetricsLogger, Progress, truncate_metrics
from multiscene.rundir import atomic_write_json, prepare_run_dir
from multiscene.runtime import (
    CONFIG_FILE,
    SignalFlag,
    config_record,
    env_spec,
    load_config,
    make_agent,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = ["ActorFailed", "ActorPool", "connect_ray", "train"]


class ActorFailed(RuntimeError):
    """An actor kept failing past ``--impala.max-actor-restarts``; the learner state was saved."""


# ----------------------------------------------------------------------------------------------------------
# Ray


def connect_ray(impala: ImpalaConfig) -> bool:
    """Start a local Ray instance, or join ``impala.ray_address``; True when we must ``ray.shutdown()``.

    A Ray already initialized in this process (a notebook, the tests) is used as it is and left running.
    """
    import ray

    if ray.is_initialized():
        return False
    need = impala.num_actors * impala.actor_num_cpus
    if impala.ray_address is None:
        cpus = os.cpu_count() or 1
        if need > cpus:
            warnings.warn(
                f"--impala.num-actors {impala.num_actors} x --impala.actor-num-cpus {impala.actor_num_cpus} "
                f"ask for more than the {cpus} CPUs of this machine. Ray is started with "
                f"{math.ceil(need) + 1} logical CPUs so that every actor runs; the OS time-shares the cores, so "
                f"actor throughput stops growing past ~{cpus} actors and the learner competes with them.",
                stacklevel=2,
            )
        ray.init(num_cpus=max(cpus, math.ceil(need) + 1), include_dashboard=False, configure_logging=False)
        return True
    address = impala.ray_address
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--impala.ray-address must be 'auto' or HOST:PORT, got {address!r}.")
        try:
            socket.create_connection((host, int(port)), timeout=5.0).close()
        except OSError as e:
            raise ConfigError(
                f"--impala.ray-address {address}: cannot reach a Ray head there ({e}). Start one with "
                "`ray start --head --port PORT`, check host and port, or leave --impala.ray-address unset to "
                "run a local Ray instance."
            ) from e
    try:
        ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"--impala.ray-address {address}: could not join a Ray cluster ({e}). Start one with "
            "`ray start --head`, or leave --impala.ray-address unset to run a local Ray instance."
        ) from e
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if need > cluster_cpus:
        warnings.warn(
            f"--impala.num-actors {impala.num_actors} need {need:g} CPUs, the Ray cluster has {cluster_cpus:g}: "
            "the actors that do not fit stay pending until CPUs free up; the learner trains on the unrolls of "
            "the others.",
            stacklevel=2,
        )
    return True


class ActorPool:
    """The Ray actors, their in-flight unroll requests, the queue of finished unrolls, and restarts."""

    def __init__(self, cfg: TrainConfig, impala: ImpalaConfig, incarnation: int) -> None:
        actor_class = remote_actor_class(impala)
        self.impala = impala
        self.handles = [actor_class.remote(cfg, impala, i, incarnation) for i in range(impala.num_actors)]
        self.inflight: dict[Any, int] = {}
        self.queue: deque[Unroll] = deque()
        self.weights_ref: Any = None
        self.version = -1
        self.pids: list[int | None] = [None] * impala.num_actors
        self.restarts = 0
        """Actor deaths so far (a failed request, or a new pid for the same actor index); Ray restarts them."""
        self.errors_in_row = [0] * impala.num_actors
        self.messages: list[str] = []
        """Lines for the progress display (actor deaths); the loop prints and clears them."""
        self.actor_steps = 0
        self.put_seconds: list[float] = []
        self.get_seconds: list[float] = []

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Put the weights in the object store once; actors fetch them with their next request."""
        import ray

        start = time.perf_counter()
        self.weights_ref = ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        self.put_seconds.append(time.perf_counter() - start)
        self.version = version

    def start(self) -> None:
        for i in range(len(self.handles)):
            self._submit(i)

    def _submit(self, index: int) -> None:
        # The reference travels inside a list, so Ray passes it unresolved: the actor fetches the weights
        # only when the version changed, not on every request.
        ref = self.handles[index].unroll.remote([self.weights_ref], self.version)
        self.inflight[ref] = index

    def _receive(self, ref: Any) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        index = self.inflight.pop(ref)
        try:
            start = time.perf_counter()
            unroll: Unroll = ray.get(ref)
            self.get_seconds.append(time.perf_counter() - start)
        except (RayActorError, ActorUnavailableError, RayTaskError) as e:
            if self.errors_in_row[index] == 0:
                # One death can answer several requests with errors while Ray restarts it: count it once.
                self.restarts += 1
                self.pids[index] = None
            self.errors_in_row[index] += 1
            if isinstance(e, RayTaskError) and not isinstance(e, RayActorError):
                # An exception inside the actor (an env crash): its envs may be broken, so restart the process.
                ray.kill(self.handles[index], no_restart=False)
            self.messages.append(f"actor {index}: {type(e).__name__}; it is restarted and asked again")
            if self.errors_in_row[index] > self.impala.max_actor_restarts + 2:
                raise ActorFailed(
                    f"actor {index} failed {self.errors_in_row[index]} times in a row (last: {e}); more than "
                    f"--impala.max-actor-restarts ({self.impala.max_actor_restarts}) allows."
                ) from e
            time.sleep(0.2)  # a restarting actor answers "unavailable" at once; do not spin
            self._submit(index)
            return
        self.errors_in_row[index] = 0
        if self.pids[index] is not None and unroll.actor_pid != self.pids[index]:
            self.restarts += 1  # a new process without an error seen (it died between two requests)
        self.pids[index] = unroll.actor_pid
        self.actor_steps += unroll.num_steps
        self.queue.append(unroll)
        self._submit(index)

    def next_batch(self, num_columns: int, should_stop: Callable[[], bool]) -> list[Unroll] | None:
        """Whole unrolls holding ``num_columns`` env columns, oldest first; None if ``should_stop()`` while
        waiting. Every finished request is taken in (and its actor asked again) before returning."""
        import ray

        while sum(u.actions.shape[1] for u in self.queue) < num_columns:
            if should_stop():
                return None
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
            for ref in done:
                self._receive(ref)
        done, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        for ref in done:
            self._receive(ref)
        batch, columns = [], 0
        while columns < num_columns:
            unroll = self.queue.popleft()
            batch.append(unroll)
            columns += unroll.actions.shape[1]
        return batch

    @property
    def queue_depth(self) -> int:
        """Finished unrolls waiting for the learner."""
        return len(self.queue)

    def kill_actor(self, index: int) -> None:
        """Kill one actor's process the way a crash would (Ray restarts it); for fault tests and drills."""
        import ray

        ray.kill(self.handles[index], no_restart=False)

    def stop(self) -> None:
        """Kill every actor for good (no restart) and drop the in-flight requests."""
        import ray

        for handle in self.handles:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001  (already dead; nothing left to stop)
                pass
        self.inflight.clear()
        self.queue.clear()


# ----------------------------------------------------------------------------------------------------------
# The run


def default_impala_run_dir(cfg: TrainConfig) -> Path:
    """runs/<env>-impala-<critic>-s<seed>: beside, never over, the on-policy run of the same settings."""
    return Path("runs") / f"{cfg.env.replace(',', '+')}-impala-{cfg.critic}-s{cfg.seed}"


def _validate_common(cfg: TrainConfig) -> None:
    """``validate`` without the on-policy rollout-size checks (--num-envs x --num-steps, --num-minibatches):
    IMPALA's sizes are --impala.*, checked by ``check_impala_config``."""
    validate(dataclasses.replace(cfg, num_envs=1, num_steps=1, num_minibatches=1))


def _save_record(run_dir: Path, cfg: TrainConfig, impala: ImpalaConfig, vae: VAEConfig | None) -> None:
    record = config_record(cfg)
    record["algo"] = "impala"
    record["impala"] = dataclasses.asdict(impala)
    record["vae"] = None if vae is None else dataclasses.asdict(vae)
    atomic_write_json(run_dir / CONFIG_FILE, record)


def _load_record(run_dir: Path) -> tuple[ImpalaConfig, VAEConfig | None]:
    data = json.loads((run_dir / CONFIG_FILE).read_text())
    if data.get("algo") != "impala":
        raise ConfigError(f"--resume: {run_dir} holds a run of another algorithm, not impala.")
    vae = data.get("vae")
    return ImpalaConfig(**data["impala"]), None if vae is None else VAEConfig(**vae)


def train(
    cfg: TrainConfig,
    impala: ImpalaConfig | None = None,
    vae: VAEConfig | None = None,
    *,
    on_update: Callable[[int, ActorPool], None] | None = None,
) -> Path:
    """Train with IMPALA per ``cfg`` (common options) and ``impala`` (``--impala.*``); ``vae`` switches the
    VAE auxiliary loss on (``--aux vae``). Returns the run directory. ``on_update(update, pool)`` is called
    after every update (tests use it to kill an actor mid-run)."""
    from multiscene.evaluate import evaluate_run_splits

    impala = impala or ImpalaConfig()
    if vae is not None and (cfg.aux != "vae" or cfg.vae != vae):  # type: ignore[attr-defined]
        # The VAE lives in the agent (``agent.aux``), which the actors rebuild from ``cfg``: say so in cfg.
        cfg = dataclasses.replace(cfg, aux="vae", vae=vae)
    if cfg.algo != "impala" or cfg.impala != impala:  # type: ignore[attr-defined]
        cfg = dataclasses.replace(cfg, algo="impala", impala=impala)  # config.json says what ran
    _validate_common(cfg)
    check_impala_config(impala)
    if vae is not None:
        check_vae_config(vae)
    check_env_id(cfg.env)
    if cfg.total_timesteps < impala.steps_per_update:
        raise ConfigError(
            f"--total-timesteps ({cfg.total_timesteps}) is smaller than one IMPALA update (--impala.batch-size x "
            f"--impala.unroll-length = {impala.steps_per_update} env steps)."
        )
    # The env's shapes before any file is written: a bad --aux is refused without leaving a run directory.
    probe = make_env(env_spec(cfg, "train", 1))
    obs_shape, num_actions = probe.obs_shape, probe.num_actions
    probe.close()
    if vae is not None:
        check_vae_observations(obs_shape)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_impala_run_dir(cfg)
    resume = cfg.resume
    backup = prepare_run_dir(run_dir, resume=resume, overwrite=cfg.overwrite)
    if resume:
        saved = load_config(run_dir)
        saved_impala, vae = _load_record(run_dir)
        # A resumed run keeps its own config; the budget and run-time switches may change (as on-policy).
        cfg = dataclasses.replace(
            saved, total_timesteps=cfg.total_timesteps, resume=True, overwrite=False, run_dir=str(run_dir),
            progress=cfg.progress, device=cfg.device,
        )
        impala = dataclasses.replace(saved_impala, ray_address=impala.ray_address)
        _validate_common(cfg)
    else:
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        _save_record(run_dir, cfg, impala, vae)
    num_updates = cfg.total_timesteps // impala.steps_per_update

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)
    agent = make_agent(cfg, obs_shape, num_actions, device)
    # With --aux vae the agent carries the VAE (``agent.aux``), so its weights travel and load with the agent's.
    vae_module: VAEAux | None = getattr(agent, "aux", None) if vae is not None else None
    vae_scales = None if vae is None else vae_scales_of(vae)
    params = list(agent.parameters())
    optimizer = torch.optim.Adam(
        params, lr=impala.learning_rate, betas=(impala.adam_beta1, impala.adam_beta2), eps=impala.adam_eps
    )
    schedule = make_cc_schedule(cfg)
    progress = Progress(num_updates * impala.steps_per_update, cfg.progress)
    if backup is not None:
        progress.message(f"--overwrite: the previous run was moved to {backup}")
    if cfg.max_episode_steps is not None and impala.unroll_length > cfg.max_episode_steps:
        progress.message(
            f"--impala.unroll-length {impala.unroll_length} is longer than an episode ({cfg.max_episode_steps} "
            "steps): fine, unrolls cross episode ends; V-trace stops at each end and the LSTM state resets."
        )

    update, global_step, nonfinite_in_row, incarnation, restarts_before = 0, 0, 0, 0, 0
    if resume:
        ckpt = load_latest_checkpoint(run_dir, warn=progress.message)
        if ckpt is not None:
            agent.load_state_dict({k[len("agent."):]: v for k, v in ckpt.tensors.items() if k.startswith("agent.")})
            optimizer.load_state_dict(ckpt.state["optimizer"])
            schedule.load_state_dict(ckpt.state["schedule"])
            set_rng_state(ckpt.state["rng"])
            update, global_step = ckpt.update, int(ckpt.state["global_step"])
            nonfinite_in_row = int(ckpt.state.get("nonfinite_in_row", 0))
            incarnation = int(ckpt.state["incarnation"]) + 1
            restarts_before = int(ckpt.state["actor_restarts"])
            progress.message(f"resumed from {ckpt.path.name} (update {update}, step {global_step})")
        else:
            progress.message("--resume: no good checkpoint found; starting from update 0")
        truncate_metrics(run_dir / METRICS_FILE, update)
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, purge_step=global_step if resume else None)

    pool: ActorPool | None = None

    def checkpoint() -> None:
        tensors = {f"agent.{k}": v for k, v in agent.state_dict().items()}
        state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng_state(),
            "global_step": global_step,
            "nonfinite_in_row": nonfinite_in_row,
            "incarnation": incarnation,
            "actor_restarts": restarts_before + (pool.restarts if pool is not None else 0),
            "config": dataclasses.asdict(cfg),
            "impala": dataclasses.asdict(impala),
        }
        logger.sync()
        save_checkpoint(run_dir, update, tensors, state, keep=cfg.keep_checkpoints)

    import ray

    stop_reason: str | None = None
    started_ray = False
    try:
        # Ray first: our SIGINT/SIGTERM handlers must be the ones in force while the loop runs.
        started_ray = connect_ray(impala)
        with SignalFlag() as signals:
            pool = ActorPool(cfg, impala, incarnation)
            pool.publish(agent.state_dict(), update)
            pool.start()
            start_time, start_step = time.time(), global_step
            while update < num_updates:
                # 1. Gather a batch of unrolls (the actors keep acting while the learner trains)
                batch_unrolls = pool.next_batch(impala.batch_size, lambda: signals.signum is not None)
                for line in pool.messages:
                    progress.message(line)
                pool.messages.clear()
                if batch_unrolls is None or signals.signum is not None:
                    stop_reason = f"received {signal.Signals(signals.signum or signal.SIGINT).name}"
                    break
                batch = stack_unrolls(batch_unrolls)
                lags = [update - u.policy_version for u in batch_unrolls]

                # 2. V-trace learner step, then publish the new weights
                learn_start = time.perf_counter()
                aux_scales = schedule.scales(global_step)
                result = learner_step(agent, optimizer, batch, cfg.gamma, impala, aux_scales, vae_module,
                                      vae_scales, device)
                learn_seconds = time.perf_counter() - learn_start
                update += 1
                global_step += batch.num_steps
                pool.publish(agent.state_dict(), update)
                lengths = [e.length for e in batch.episodes]
                schedule.observe(global_step, float(np.mean(lengths)) if lengths else None)

                # 3. Log
                record: dict[str, Any] = {"update": update, "global_step": global_step, "time": time.time()}
                if result.skipped:
                    nonfinite_in_row += 1
                    record["nonfinite/skipped_update"] = 1
                    record["nonfinite/term"] = result.bad_term
                    progress.message(f"update {update}: non-finite {result.bad_term}; update skipped")
                    if nonfinite_in_row >= cfg.max_nonfinite_updates:
                        logger.log(record)
                        checkpoint()
                        raise RuntimeError(
                            f"stopped at update {update}: {nonfinite_in_row} updates in a row had a non-finite "
                            f"'{result.bad_term}'. The last good state is saved in {run_dir}; lower "
                            "--impala.learning-rate, then continue with --resume."
                        )
                else:
                    nonfinite_in_row = 0
                record.update(result.metrics)
                if batch.episodes:
                    record["charts/episodic_return"] = float(np.mean([e.episode_return for e in batch.episodes]))
                    record["charts/episodic_length"] = float(np.mean(lengths))
                    successes = [e.success for e in batch.episodes if e.success is not None]
                    if successes:
                        record["charts/success_rate"] = float(np.mean(successes))
                    record["charts/episodes"] = len(batch.episodes)
                for name, scale in aux_scales.items():
                    record[f"schedule/{name}"] = scale
                elapsed = max(time.time() - start_time, 1e-9)
                record["charts/SPS"] = (global_step - start_step) / elapsed
                record["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
                record["impala/policy_lag_mean"] = float(np.mean(lags))
                record["impala/policy_lag_max"] = int(max(lags))
                record["impala/queue_depth"] = pool.queue_depth
                record["impala/actor_sps"] = pool.actor_steps / elapsed
                record["impala/learner_sps"] = batch.num_steps / max(learn_seconds, 1e-9)
                record["impala/actor_restarts"] = restarts_before + pool.restarts
                record["impala/weights_put_ms"] = 1000.0 * pool.put_seconds[-1]
                if pool.get_seconds:
                    record["impala/unroll_get_ms"] = 1000.0 * float(np.mean(pool.get_seconds[-len(batch_unrolls):]))
                logger.log(record)
                progress.update(global_step, {
                    "SPS": round(record["charts/SPS"]),
                    "return": record.get("charts/episodic_return"),
                    "lag": record["impala/policy_lag_mean"],
                    "restarts": record["impala/actor_restarts"],
                })

                # 4. Checkpoint
                if update % cfg.checkpoint_interval == 0 or update == num_updates:
                    checkpoint()
                if on_update is not None:
                    on_update(update, pool)
            if stop_reason is not None:
                checkpoint()
                progress.message(f"{stop_reason}: checkpoint saved at update {update}; continue with --resume")
    except ActorFailed:
        checkpoint()
        raise
    finally:
        if pool is not None:
            pool.stop()
        if started_ray:
            ray.shutdown()
        progress.close()
        logger.close()

    if stop_reason is not None or not cfg.final_eval:
        return run_dir
    # Rewards are raw in IMPALA (no running normalizer), hence reward scale 1.
    summary = evaluate_run_splits(agent, cfg, device, tag="final", run_dir=run_dir, reward_scale=1.0,
                                  global_step=global_step)
    if vae_module is not None:
        write_reconstructions(agent.encoder, vae_module, cfg, device, run_dir)
    final_logger = MetricsLogger(run_dir, tensorboard=False)
    final_logger.log({"update": update, "global_step": global_step, **eval_record(summary)})
    final_logger.close()
    return run_dir
