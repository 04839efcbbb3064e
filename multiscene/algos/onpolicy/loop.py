"""The on-policy loop shared by PPO, A2C and ACKTR over the critic interface (SPEC §2-§3; issue 10).

Read it top to bottom: collect a rollout -> per-head returns and advantages (the algorithm's) -> the
algorithm's update -> log -> checkpoint -> evaluate. Everything an algorithm changes lives in its own module
(multiscene/algos/onpolicy/{ppo,a2c,acktr}.py); everything every loop shares, in multiscene/runtime.py.

Under ``torchrun`` (issue 15) every rank runs this loop on its share of the envs; the calls into
``multiscene.scale.distributed`` (``dist.*`` below) are where ranks meet, and each is a no-op in one process.
``cfg`` stays the global config (budget, steps, logging); ``local`` is this rank's share (its envs).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from multiscene.algos.onpolicy.base import Advantages, OnPolicyAlgorithm, scheduled_terms
from multiscene.algos.onpolicy.ppo import explained_variance
from multiscene.algos.onpolicy.rollout import Rollout, RolloutCollector
from multiscene.checkpoint import load_latest_checkpoint, save_checkpoint
from multiscene.config import ConfigError, validate
from multiscene.critics.schedule import make_cc_schedule
from multiscene.envs import check_env_id, make_env
from multiscene.envs.base import EnvError
from multiscene.logger import METRICS_FILE, MetricsLogger, Progress, truncate_metrics
from multiscene.models.agent import Agent
from multiscene.rundir import atomic_write_json, prepare_run_dir
from multiscene.runtime import (
    CONFIG_FILE,
    SignalFlag,
    TrainingStopped,
    agent_tensors,
    config_record,
    default_run_dir,
    env_spec,
    load_agent_tensors,
    load_config,
    make_agent,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from multiscene.scale import distributed as dist

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

__all__ = ["CONFIG_FILE", "TrainingStopped", "train"]



def reward_normalizer_tensors(collector: RolloutCollector) -> dict[str, torch.Tensor]:
    norm = collector.normalizer
    return {
        "reward_normalizer.mean": torch.tensor(norm.rms.mean, dtype=torch.float64),
        "reward_normalizer.var": torch.tensor(norm.rms.var, dtype=torch.float64),
        "reward_normalizer.count": torch.tensor(norm.rms.count, dtype=torch.float64),
    }


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, Path | None]:
    """Validate, make or reopen the run directory, write config.json; a resumed run keeps its own config
    (only the budget and run-time switches may change). Returns (cfg, run_dir, backup of an overwritten run)."""
    validate(cfg)
    check_env_id(cfg.env)
    if not cfg.resume:
        check_agent_fits_env(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    backup = prepare_run_dir(run_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.resume:
        saved = load_config(run_dir)
        cfg = dataclasses.replace(
            saved, total_timesteps=cfg.total_timesteps, resume=True, overwrite=False, run_dir=str(run_dir),
            progress=cfg.progress, device=cfg.device,
        )
        validate(cfg)
    else:
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        atomic_write_json(run_dir / CONFIG_FILE, config_record(cfg))
    return cfg, run_dir, backup


def prepare_run_on_main(cfg: TrainConfig, ctx: dist.DistContext) -> tuple[TrainConfig, Path, Path | None]:
    """``prepare_run`` on rank 0 alone (it owns the run directory); the other ranks receive its result, or
    raise the same ConfigError when it failed (instead of waiting for a broadcast that never comes)."""
    if not ctx.enabled:
        return prepare_run(cfg)
    result: tuple[Any, ...]
    if ctx.is_main:
        try:
            result = ("ok", *prepare_run(cfg))
        except Exception as e:
            dist.broadcast_object(("error", f"{e}"))
            raise
        dist.broadcast_object(result)
    else:
        result = dist.broadcast_object(None)
        if result[0] == "error":
            raise ConfigError(result[1])
    return result[1], result[2], result[3]


def train(cfg: TrainConfig, algo: OnPolicyAlgorithm) -> Path:
    """Train per ``cfg`` with the on-policy ``algo``; returns the run directory (config, metrics, checkpoints,
    eval/). Under torchrun, joins the job's process group first and leaves it at the end."""
    ctx, device = dist.init_distributed(resolve_device(cfg.device))
    try:
        return _train(cfg, algo, ctx, device)
    finally:
        dist.shutdown()


def _train(cfg: TrainConfig, algo: OnPolicyAlgorithm, ctx: dist.DistContext, device: torch.device) -> Path:
    from multiscene.evaluate import evaluate_run_splits, final_eval_step_cap

    if cfg.dve.cc_grad_ratio > 0:  # type: ignore[attr-defined]
        raise ConfigError(
            "--dve.cc-grad-ratio is applied by the critic-fit benchmark (multiscene sweep --task critic-fit, "
            "benchmarks/dve_critic_fit.py); the training loops do not apply it yet. Leave it at 0 for training."
        )
    if ctx.enabled:
        if algo.not_data_parallel is not None:
            raise ConfigError(
                f"--algo {cfg.algo} does not run under torchrun ({ctx.world_size} processes): "
                f"{algo.not_data_parallel}. Run it in one process, or use --algo ppo or a2c."
            )
        if not cfg.resume:
            dist.local_config(cfg, ctx.world_size)  # fail before rank 0 creates the run directory
    cfg, run_dir, backup = prepare_run_on_main(cfg, ctx)
    local = dist.local_config(cfg, ctx.world_size)
    resume = cfg.resume
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    seed_offset = dist.RANK_SEED_OFFSET + ctx.rank if ctx.rank > 0 else 0
    envs = make_env(env_spec(local, "train", local.num_envs, seed_offset=seed_offset))
    check_truncation_support(cfg, envs)
    agent = make_agent(local, envs, device=device)
    dist.broadcast_module(agent)
    if ctx.rank > 0:
        # Same weights on every rank (seeded above), but each rank's own stream of sampled actions.
        seed_everything(cfg.seed * 1000 + seed_offset, cfg.deterministic_torch)
    if cfg.init_from and not resume:
        load_initial_weights(agent, Path(cfg.init_from), progress_message=print if ctx.is_main else None)
    optimizer = algo.make_optimizer(agent, local)
    schedule = make_cc_schedule(cfg)
    collector = RolloutCollector(envs, agent, local, device)
    sync_normalizers(agent, collector, None)
    progress = Progress(cfg.num_updates * cfg.batch_size, cfg.progress if ctx.is_main else "none")
    if ctx.enabled:
        progress.message(
            f"torchrun: {ctx.world_size} processes ({ctx.backend}), {local.num_envs} of --num-envs "
            f"{cfg.num_envs} envs each; rank 0 writes logs, checkpoints and evaluations"
        )
    progress.message(f"preset {cfg.preset}: --algo {cfg.algo} --critic {cfg.critic} --env {cfg.env}")
    if backup is not None:
        progress.message(f"--overwrite: the previous run was moved to {backup}")

    update, global_step, nonfinite_in_row = 0, 0, 0
    if resume:
        ckpt = load_latest_checkpoint(run_dir, warn=progress.message) if ctx.is_main else None
        ckpt = dist.broadcast_object(ckpt)  # the run directory need not be shared between nodes
        if ckpt is not None:
            own = rank_state(ckpt.state, ctx)
            load_agent_tensors(agent, ckpt.tensors)
            optimizer.load_state_dict(ckpt.state["optimizer"])
            schedule.load_state_dict(ckpt.state["schedule"])
            collector.load_carry_state(own["carry"])
            set_rng_state(own["rng"])
            update, global_step = ckpt.update, int(ckpt.state["global_step"])
            nonfinite_in_row = int(ckpt.state.get("nonfinite_in_row", 0))
            progress.message(f"resumed from {ckpt.path.name} (update {update}, step {global_step})")
        else:
            progress.message("--resume: no good checkpoint found; starting from update 0")
        if ctx.is_main:
            truncate_metrics(run_dir / METRICS_FILE, update)
    tracking = tracking_args(cfg, run_dir)
    logger: MetricsLogger | NullLogger = (
        MetricsLogger(run_dir, tensorboard=cfg.tensorboard, purge_step=global_step if resume else None,
                      **tracking)
        if ctx.is_main else NullLogger()
    )
    last_checkpoint = update if resume and update > 0 else None

    def checkpoint(with_envs: bool = True) -> None:
        """A collective under torchrun: every rank's carry and RNG state go to rank 0, which writes."""
        nonlocal last_checkpoint
        own = {
            "carry": collector.carry_state() if with_envs else {"normalizer": collector.normalizer.state_dict(), "envs": None},
            "rng": rng_state(),
        }
        ranks = dist.gather_to_main(own)
        if ranks is None:
            last_checkpoint = update
            return
        state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "carry": own["carry"],
            "rng": own["rng"],
            "global_step": global_step,
            "nonfinite_in_row": nonfinite_in_row,
            "config": dataclasses.asdict(cfg),
        }
        if ctx.enabled:
            state["world_size"] = ctx.world_size
            state["ranks"] = ranks  # rank r resumes from ranks[r] (its envs, carry, RNG streams)
        logger.sync()
        tensors = agent_tensors(agent, reward_normalizer_tensors(collector))
        save_checkpoint(run_dir, update, tensors, state, keep=cfg.keep_checkpoints)
        last_checkpoint = update

    start_time, start_step = time.time(), global_step
    recent_returns: list[float] = []
    stop_reason: str | None = None
    with SignalFlag() as signals:
        try:
            while update < cfg.num_updates:
                # One small collective per update: a signal on any rank stops every rank at the same update.
                signum = signals.signum if signals.signum is not None else 0
                signum = dist.max_int(signum)
                if signum:
                    stop_reason = f"received {signal.Signals(signum).name}"
                    break
                if cfg.anneal_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.learning_rate * (1.0 - update / cfg.num_updates) * group.get("lr_scale", 1.0)

                # 1. Collect
                try:
                    before = normalizer_moments(agent, collector) if ctx.enabled else None
                    rollout = collector.collect(agent, global_step=global_step)
                except EnvError as e:
                    if ctx.enabled:  # a checkpoint is a collective the other ranks are not in: stop them instead
                        raise
                    checkpoint(with_envs=False)
                    raise EnvError(f"{e} (state saved at update {update}; continue with --resume)") from e
                sync_normalizers(agent, collector, before)
                global_step += cfg.batch_size
                update += 1

                # 2. Per-head returns and advantages, combined into the policy's advantage
                adv = algo.advantages(agent.critic, rollout, local)
                seen, seen_adv = dist.global_rollout_view(rollout, adv)  # what statistics read: every rank's

                # 3. Schedules, then the algorithm's update
                lengths = [e.length for e in seen.episodes]
                schedule.observe(global_step, float(np.mean(lengths)) if lengths else None)
                aux_scales = scheduled_terms(agent, schedule, global_step, cfg)
                result = algo.update(agent, optimizer, rollout, adv, aux_scales, local, device)
                result = dataclasses.replace(result, metrics=dist.mean_metrics(result.metrics))

                # 4. Log
                record: dict[str, Any] = {"update": update, "global_step": global_step, "time": time.time()}
                if result.skipped:
                    nonfinite_in_row += 1
                    record["nonfinite/skipped_update"] = 1
                    record["nonfinite/term"] = result.bad_term
                    progress.message(f"update {update}: non-finite {result.bad_term}; update skipped")
                    if nonfinite_in_row >= cfg.max_nonfinite_updates:
                        logger.log(record)
                        checkpoint()
                        hint = "lower --learning-rate or check the reward scale"
                        if str(result.bad_term).startswith("parameters after"):
                            hint = ("the loss and gradients were finite but the optimizer's step was not: lower "
                                    "--learning-rate (--algo acktr: or raise --acktr.damping)")
                        raise TrainingStopped(
                            f"stopped at update {update}: {nonfinite_in_row} updates in a row had a non-finite "
                            f"value in '{result.bad_term}'. The last good state is saved in {run_dir}; {hint}, "
                            "then continue with --resume."
                        )
                else:
                    nonfinite_in_row = 0
                record.update(result.metrics)
                if ctx.is_main:
                    record.update(rollout_metrics(seen, seen_adv, agent, schedule))
                if collector.hotwire is not None:
                    record.update(collector.hotwire.metrics())
                for name, scale in aux_scales.items():
                    record[f"schedule/{name}"] = scale
                schedule.observe_spread(global_step, record.get("dve/cluster_spread"))
                sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
                record["charts/SPS"] = sps
                record["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
                recent_returns = ([e.episode_return for e in seen.episodes] + recent_returns)[:100]
                logger.log(record)
                warning = schedule.early_collapse_warning(record.get("dve/confusion_mean"), global_step)
                if warning:
                    progress.message(warning)
                progress.update(
                    global_step,
                    {
                        "SPS": round(sps),
                        "return": float(np.mean(recent_returns)) if recent_returns else None,
                        "v_loss": record.get("losses/value_loss"),
                        "entropy": record.get("losses/entropy"),
                        "confusion": record.get("dve/confusion_mean"),
                    },
                )

                # 5. Checkpoint and periodic evaluation
                if update % cfg.checkpoint_interval == 0 or update == cfg.num_updates:
                    checkpoint()
                if (ctx.is_main and cfg.eval_interval > 0 and update % cfg.eval_interval == 0
                        and update < cfg.num_updates):
                    summary = evaluate_run_splits(
                        agent, cfg, device, tag=f"update-{update:08d}", run_dir=run_dir,
                        reward_scale=collector.normalizer.scale, global_step=global_step,
                    )
                    logger.log({"update": update, "global_step": global_step, **eval_record(summary)})
            if stop_reason is not None:
                checkpoint()
                dist.wait_for_all()
                progress.message(f"{stop_reason}: checkpoint saved at update {update}; continue with --resume")
                return run_dir
            dist.wait_for_all()  # the last checkpoint's collective has finished on every rank
        except Exception as e:
            if ctx.enabled and dist.is_peer_failure(e):
                where = (f"the last checkpoint is at update {last_checkpoint} in {run_dir}; continue with the "
                         "same torchrun command plus --resume") if last_checkpoint else f"no checkpoint in {run_dir} yet"
                raise dist.PeerLost(
                    f"rank {ctx.rank}: another process of the job died or stopped answering at update {update} "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {where}."
                ) from e
            raise
        finally:
            progress.close()
            logger.close()
            envs.close()

    if cfg.aux == "vae" and ctx.is_main:
        # Seed 002 Figs 3 and 5: frames of training and held-out levels next to their reconstructions, read by
        # `multiscene report` (issue 12 item 5); the IMPALA loop writes the same file after its final evaluation.
        from multiscene.auxloss.vae import write_reconstructions

        write_reconstructions(agent.encoder, agent.aux, cfg, device, run_dir)
    if not cfg.final_eval or not ctx.is_main:
        return run_dir
    cap = final_eval_step_cap(cfg)
    summary = evaluate_run_splits(
        agent, cfg, device, tag="final", run_dir=run_dir, reward_scale=collector.normalizer.scale,
        global_step=global_step, max_steps=cap,
    )
    capped = [split for split, stats in summary.items() if isinstance(stats, dict)
              and (stats.get("capped") or stats.get("deterministic", {}).get("capped"))]
    if capped:
        progress.message(
            f"final evaluation capped at {cap} env steps per pass (--final-eval-steps) in {', '.join(capped)}; "
            f"`multiscene eval {run_dir} --episodes {cfg.eval_episodes}` runs the full one"
        )
    final_logger = MetricsLogger(run_dir, tensorboard=False, **tracking)
    final_logger.log({"update": update, "global_step": global_step, **eval_record(summary)})
    final_logger.close()
    return run_dir


def load_initial_weights(agent: Agent, source: Path, progress_message: Any = None) -> None:
    """``--init-from RUN_DIR``: the weights of that run's latest good checkpoint, for a new run (seed 003's
    fine-tuning and transfer). The agents must match (same env spaces, critic, core and sizes)."""
    from multiscene.config import ConfigError

    ckpt = load_latest_checkpoint(source, load_state=False)
    if ckpt is None:
        raise ConfigError(f"--init-from {source}: no readable checkpoint there (is it a run directory?).")
    try:
        load_agent_tensors(agent, ckpt.tensors)
    except RuntimeError as e:
        raise ConfigError(
            f"--init-from {source}: its agent does not match this run's (env spaces, --critic, --core, "
            f"--hidden-size and the other agent settings must agree): {str(e).splitlines()[0]}"
        ) from e
    if progress_message is not None:
        progress_message(f"--init-from: weights of {ckpt.path} (update {ckpt.update})")


def check_agent_fits_env(cfg: TrainConfig) -> None:
    """Build the agent once on a one-env probe, before any file is written: an encoder, action distribution or
    auxiliary loss that cannot take the env's spaces is refused with its ConfigError and no run directory."""
    probe = make_env(env_spec(cfg, "train", len(cfg.env.split(",")) if cfg.is_procgen else 1))
    try:
        Agent.for_env(probe, cfg)
    finally:
        probe.close()


def tracking_args(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """MetricsLogger's Weights & Biases arguments (``--track``; the saved run id makes a resume continue it)."""
    return {"track": cfg.track, "wandb_project": cfg.wandb_project_name, "wandb_entity": cfg.wandb_entity,
            "config": dataclasses.asdict(cfg), "run_name": run_dir.name}


def check_truncation_support(cfg: TrainConfig, envs: Any) -> None:
    """--bootstrap-truncation needs an env that tells time limits from terminations (issue 16)."""
    if cfg.bootstrap_truncation and not getattr(envs, "truncation_known", True):
        envs.close()
        raise ConfigError(
            f"--bootstrap-truncation: {cfg.env} cannot tell a time-limit cut from a termination (Procgen's gym3 "
            "interface reports both as done); pass --no-bootstrap-truncation (the Procgen presets do)."
        )


class NullLogger:
    """The logger of ranks other than 0: they compute the same global statistics but write nothing."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def rank_state(state: dict[str, Any], ctx: dist.DistContext) -> dict[str, Any]:
    """This rank's carry and RNG state in a checkpoint's state (written by the same number of processes)."""
    saved = int(state.get("world_size", 1))
    if saved != ctx.world_size:
        raise ConfigError(
            f"--resume: the checkpoint was written by {saved} process(es) and this job has {ctx.world_size}: "
            f"each rank's envs are saved with it, so resume with the same number of processes "
            f"(torchrun --nproc_per_node x --nnodes = {saved})."
        )
    return state["ranks"][ctx.rank] if ctx.enabled else {"carry": state["carry"], "rng": state["rng"]}


def normalizer_moments(agent: Agent, collector: RolloutCollector) -> dict[str, tuple[Any, Any, Any]]:
    """The running statistics the ranks must share, as (mean, var, count): the reward normalizer's and, for
    float observations, the agent's observation normalizer's."""
    rms = collector.normalizer.rms
    out: dict[str, tuple[Any, Any, Any]] = {
        "reward": (torch.tensor(rms.mean, dtype=torch.float64), torch.tensor(rms.var, dtype=torch.float64),
                   float(rms.count)),
    }
    obs_norm = getattr(agent, "obs_norm", None)
    if obs_norm is not None:
        out["obs"] = (obs_norm.mean.clone(), obs_norm.var.clone(), float(obs_norm.count))
    return out


def sync_normalizers(agent: Agent, collector: RolloutCollector, before: dict[str, tuple[Any, Any, Any]] | None) -> None:
    """Under torchrun, merge the running statistics every rank updated on its own envs (``before``: their
    common value before the rollout; None at start, where each rank saw its first observations only), so that
    every rank normalizes observations and rewards alike. Nothing happens in one process."""
    if not dist.is_distributed():
        return
    now = normalizer_moments(agent, collector)
    if before is None:  # at start: the common state every rank started from (RunningMeanStd's and the buffers' init)
        before = {k: (torch.zeros_like(m), torch.ones_like(v), 1e-4) for k, (m, v, _) in now.items()}
    merged = {k: dist.merge_running_moments(*now[k], before[k]) for k in now}
    mean, var, count = merged["reward"]
    collector.normalizer.rms.mean, collector.normalizer.rms.var = float(mean), float(var)
    collector.normalizer.rms.count = count
    if "obs" in merged:
        mean, var, count = merged["obs"]
        agent.obs_norm.mean.copy_(mean)
        agent.obs_norm.var.copy_(var)
        agent.obs_norm.count.fill_(count)


def eval_record(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for split, stats in summary.items():
        if isinstance(stats, dict):
            for key in ("return_mean", "return_std", "length_mean", "success_rate", "x_pos_mean"):
                if key in stats and stats[key] is not None:
                    out[f"eval/{split}/{key}"] = stats[key]
    return out


def rollout_metrics(rollout: Rollout, adv: Advantages, agent: Agent, schedule: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rollout.episodes:
        out["charts/episodic_return"] = float(np.mean([e.episode_return for e in rollout.episodes]))
        out["charts/episodic_length"] = float(np.mean([e.length for e in rollout.episodes]))
        successes = [e.success for e in rollout.episodes if e.success is not None]
        if successes:
            out["charts/success_rate"] = float(np.mean(successes))
        out["charts/episodes"] = len(rollout.episodes)
        # Sparse games (seed 004 §5, hot-wiring): how many of them scored at all, which the mean hides.
        out["charts/episodes_nonzero_return"] = sum(1 for e in rollout.episodes if e.episode_return != 0)
        # Time limits (issue 16): how many of them were cut rather than ended (None where the env cannot tell).
        out["charts/episodes_truncated"] = sum(1 for e in rollout.episodes if getattr(e, "truncated", None))
    for h, head in enumerate(agent.head_names):
        ev = explained_variance(rollout.values[..., h].flatten(), adv.returns[..., h].flatten())
        key = "losses/explained_variance" if h == 0 else f"losses/explained_variance/{head}"
        out[key] = None if math.isnan(ev) else ev
        if len(agent.head_names) > 1 and h == 0:
            out[f"losses/explained_variance/{head}"] = out[key]
    if rollout.alpha is not None:
        from multiscene.critics.dve import confusion, confusion_histogram

        delta = confusion(rollout.alpha)
        out["dve/confusion_mean"] = float(delta.mean())
        out["dve/confusion_hist"] = confusion_histogram(rollout.alpha, torch.ones(rollout.alpha.shape[:2]))
        out["dve/confusion_hist_low"] = 1.0 / rollout.alpha.shape[-1]  # the bins span [1/N_b, 1]
        share = torch.bincount(rollout.alpha.argmax(-1).flatten(), minlength=rollout.alpha.shape[-1]).float()
        for i, s in enumerate((share / share.sum()).tolist()):
            out[f"dve/argmax_share/{i}"] = s
    if schedule.fired_step is not None:
        out["schedule/cc_fired_step"] = schedule.fired_step
    return out
