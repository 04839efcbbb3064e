"""The on-policy loop shared by PPO, A2C and ACKTR over the critic interface (SPEC §2-§3; issue 10).

Read it top to bottom: collect a rollout -> per-head returns and advantages (the algorithm's) -> the
algorithm's update -> log -> checkpoint -> evaluate. Everything an algorithm changes lives in its own module
(multiscene/algos/onpolicy/{ppo,a2c,acktr}.py); everything every loop shares, in multiscene/runtime.py.
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


def train(cfg: TrainConfig, algo: OnPolicyAlgorithm) -> Path:
    """Train per ``cfg`` with the on-policy ``algo``; returns the run directory (config, metrics, checkpoints,
    eval/)."""
    from multiscene.evaluate import evaluate_run_splits

    cfg, run_dir, backup = prepare_run(cfg)
    resume = cfg.resume
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    check_truncation_support(cfg, envs)
    agent = make_agent(cfg, envs, device=device)
    optimizer = algo.make_optimizer(agent, cfg)
    schedule = make_cc_schedule(cfg)
    collector = RolloutCollector(envs, agent, cfg, device)
    progress = Progress(cfg.num_updates * cfg.batch_size, cfg.progress)
    progress.message(f"preset {cfg.preset}: --algo {cfg.algo} --critic {cfg.critic} --env {cfg.env}")
    if backup is not None:
        progress.message(f"--overwrite: the previous run was moved to {backup}")

    update, global_step, nonfinite_in_row = 0, 0, 0
    if resume:
        ckpt = load_latest_checkpoint(run_dir, warn=progress.message)
        if ckpt is not None:
            load_agent_tensors(agent, ckpt.tensors)
            optimizer.load_state_dict(ckpt.state["optimizer"])
            schedule.load_state_dict(ckpt.state["schedule"])
            collector.load_carry_state(ckpt.state["carry"])
            set_rng_state(ckpt.state["rng"])
            update, global_step = ckpt.update, int(ckpt.state["global_step"])
            nonfinite_in_row = int(ckpt.state.get("nonfinite_in_row", 0))
            progress.message(f"resumed from {ckpt.path.name} (update {update}, step {global_step})")
        else:
            progress.message("--resume: no good checkpoint found; starting from update 0")
        truncate_metrics(run_dir / METRICS_FILE, update)
    tracking = tracking_args(cfg, run_dir)
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, purge_step=global_step if resume else None,
                           **tracking)

    def checkpoint(with_envs: bool = True) -> None:
        state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "carry": collector.carry_state() if with_envs else {"normalizer": collector.normalizer.state_dict(), "envs": None},
            "rng": rng_state(),
            "global_step": global_step,
            "nonfinite_in_row": nonfinite_in_row,
            "config": dataclasses.asdict(cfg),
        }
        logger.sync()
        tensors = agent_tensors(agent, reward_normalizer_tensors(collector))
        save_checkpoint(run_dir, update, tensors, state, keep=cfg.keep_checkpoints)

    start_time, start_step = time.time(), global_step
    recent_returns: list[float] = []
    stop_reason: str | None = None
    with SignalFlag() as signals:
        try:
            while update < cfg.num_updates:
                if signals.signum is not None:
                    stop_reason = f"received {signal.Signals(signals.signum).name}"
                    break
                if cfg.anneal_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.learning_rate * (1.0 - update / cfg.num_updates)

                # 1. Collect
                try:
                    rollout = collector.collect(agent, global_step=global_step)
                except EnvError as e:
                    checkpoint(with_envs=False)
                    raise EnvError(f"{e} (state saved at update {update}; continue with --resume)") from e
                global_step += cfg.batch_size
                update += 1

                # 2. Per-head returns and advantages, combined into the policy's advantage
                adv = algo.advantages(agent.critic, rollout, cfg)

                # 3. Schedules, then the algorithm's update
                lengths = [e.length for e in rollout.episodes]
                schedule.observe(global_step, float(np.mean(lengths)) if lengths else None)
                aux_scales = scheduled_terms(agent, schedule, global_step, cfg)
                result = algo.update(agent, optimizer, rollout, adv, aux_scales, cfg, device)

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
                        raise TrainingStopped(
                            f"stopped at update {update}: {nonfinite_in_row} updates in a row had a non-finite "
                            f"value in '{result.bad_term}'. The last good state is saved in {run_dir}; lower "
                            "--learning-rate or check the reward scale, then continue with --resume."
                        )
                else:
                    nonfinite_in_row = 0
                record.update(result.metrics)
                record.update(rollout_metrics(rollout, adv, agent, schedule))
                if collector.hotwire is not None:
                    record.update(collector.hotwire.metrics())
                for name, scale in aux_scales.items():
                    record[f"schedule/{name}"] = scale
                sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
                record["charts/SPS"] = sps
                record["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
                recent_returns = ([e.episode_return for e in rollout.episodes] + recent_returns)[:100]
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
                if cfg.eval_interval > 0 and update % cfg.eval_interval == 0 and update < cfg.num_updates:
                    summary = evaluate_run_splits(
                        agent, cfg, device, tag=f"update-{update:08d}", run_dir=run_dir,
                        reward_scale=collector.normalizer.scale, global_step=global_step,
                    )
                    logger.log({"update": update, "global_step": global_step, **eval_record(summary)})
            if stop_reason is not None:
                checkpoint()
                progress.message(f"{stop_reason}: checkpoint saved at update {update}; continue with --resume")
                return run_dir
        finally:
            progress.close()
            logger.close()
            envs.close()

    if not cfg.final_eval:
        return run_dir
    summary = evaluate_run_splits(
        agent, cfg, device, tag="final", run_dir=run_dir, reward_scale=collector.normalizer.scale,
        global_step=global_step,
    )
    final_logger = MetricsLogger(run_dir, tensorboard=False, **tracking)
    final_logger.log({"update": update, "global_step": global_step, **eval_record(summary)})
    final_logger.close()
    return run_dir


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


def eval_record(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for split, stats in summary.items():
        if isinstance(stats, dict):
            for key in ("return_mean", "return_std", "length_mean", "success_rate"):
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
