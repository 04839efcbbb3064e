"""Recurrent PPO over a critic interface: one loop for every critic and auxiliary loss (SPEC §2-§3).

Read it top to bottom: collect a rollout -> bootstrap -> per-head rewards and GAE -> combine advantages ->
epochs x minibatches of whole environment sequences -> log -> checkpoint -> evaluate.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Categorical

import multiscene
from multiscene.checkpoint import load_latest_checkpoint, save_checkpoint
from multiscene.config import ConfigError, TrainConfig, validate
from multiscene.critics.base import CriticOutput
from multiscene.critics.schedule import make_cc_schedule
from multiscene.envs import check_env_id, make_env
from multiscene.envs.base import EnvError, EnvSpec, EpisodeStats, LevelSet, VecEnv
from multiscene.gae import compute_gae
from multiscene.logger import METRICS_FILE, MetricsLogger, Progress, truncate_metrics
from multiscene.models.agent import Agent
from multiscene.models.core import CoreState
from multiscene.normalize import RewardNormalizer
from multiscene.algos.onpolicy.ppo import explained_variance, ppo_loss
from multiscene.rundir import atomic_write_json, prepare_run_dir

CONFIG_FILE = "config.json"


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (too many non-finite updates); the last good state was saved."""


# ----------------------------------------------------------------------------------------------------------
# Setup helpers


def default_run_dir(cfg: TrainConfig) -> Path:
    env = cfg.env.replace(",", "+")
    return Path("runs") / f"{env}-{cfg.critic}-s{cfg.seed}"


def env_spec(cfg: TrainConfig, split: str, num_envs: int, seed_offset: int = 0) -> EnvSpec:
    """Train levels [start_level, start_level + num_levels); test levels a disjoint range after them."""
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
    """Rebuild the TrainConfig saved in ``run_dir/config.json``."""
    from multiscene.config import DVEConfig

    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a multiscene run directory (no {CONFIG_FILE}).")
    data = json.loads(path.read_text())["config"]
    dve = DVEConfig(**data.pop("dve"))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known}, dve=dve)


# ----------------------------------------------------------------------------------------------------------
# Rollout storage and collection


@dataclass(frozen=True)
class Rollout:
    """One rollout, time-major. T = num_steps, B = num_envs, H = critic heads."""

    obs: torch.Tensor  # [T, B, *obs] uint8
    first: torch.Tensor  # [T, B] bool: obs[t] starts an episode
    prev_action: torch.Tensor  # [T, B] long
    prev_reward: torch.Tensor  # [T, B] float, raw env reward of the previous step
    actions: torch.Tensor  # [T, B] long
    logprobs: torch.Tensor  # [T, B]
    values: torch.Tensor  # [T, B, H]
    rewards: torch.Tensor  # [T, B] normalized env reward
    raw_rewards: torch.Tensor  # [T, B]
    dones: torch.Tensor  # [T, B] bool: the episode ended after the action at t
    initial_state: CoreState  # core state before obs[0]
    next_value: torch.Tensor  # [B, H]
    alpha: torch.Tensor | None  # [T, B, N_b] DVE attention, when the critic has one
    episodes: list[EpisodeStats]


class RolloutCollector:
    """Steps the training envs with the current policy and carries everything between rollouts."""

    def __init__(self, envs: VecEnv, agent: Agent, cfg: TrainConfig, device: torch.device) -> None:
        self.envs = envs
        self.cfg = cfg
        self.device = device
        self.normalizer = RewardNormalizer(envs.num_envs, cfg.gamma, enabled=cfg.norm_reward)
        start = envs.reset()
        B = envs.num_envs
        self.obs = torch.as_tensor(start.obs)
        self.first = torch.ones(B, dtype=torch.bool)
        self.prev_action = torch.zeros(B, dtype=torch.long)
        self.prev_reward = torch.zeros(B)
        self.core_state = agent.initial_state(B, device)

    def carry_state(self) -> dict[str, Any]:
        return {
            "obs": self.obs.clone(),
            "first": self.first.clone(),
            "prev_action": self.prev_action.clone(),
            "prev_reward": self.prev_reward.clone(),
            "core_state": tuple(s.cpu() for s in self.core_state),
            "normalizer": self.normalizer.state_dict(),
            "envs": self.envs.get_state(),
        }

    def load_carry_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        if state.get("envs") is None:
            return  # saved after an env error: keep the fresh envs and carry
        self.envs.set_state(state["envs"])
        self.obs = state["obs"]
        self.first = state["first"]
        self.prev_action = state["prev_action"]
        self.prev_reward = state["prev_reward"]
        self.core_state = tuple(s.to(self.device) for s in state["core_state"])

    @torch.no_grad()
    def collect(self, agent: Agent, should_stop: Any = None) -> Rollout:
        cfg, T, B, dev = self.cfg, self.cfg.num_steps, self.envs.num_envs, self.device
        H = agent.critic.num_heads
        obs = torch.empty((T, B, *self.envs.obs_shape), dtype=torch.uint8)
        first = torch.empty((T, B), dtype=torch.bool)
        prev_action = torch.empty((T, B), dtype=torch.long)
        prev_reward = torch.empty((T, B))
        actions = torch.empty((T, B), dtype=torch.long)
        logprobs = torch.empty((T, B))
        values = torch.empty((T, B, H))
        rewards = torch.empty((T, B))
        raw_rewards = torch.empty((T, B))
        dones = torch.empty((T, B), dtype=torch.bool)
        alphas: list[torch.Tensor] = []
        episodes: list[EpisodeStats] = []
        initial_state = tuple(s.clone() for s in self.core_state)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        for t in range(T):
            obs[t], first[t], prev_action[t], prev_reward[t] = self.obs, self.first, self.prev_action, self.prev_reward
            with autocast:
                out = agent(
                    self.obs.to(dev, non_blocking=True)[None],
                    self.first.to(dev)[None],
                    self.prev_action.to(dev)[None],
                    self.prev_reward.to(dev)[None],
                    self.core_state,
                )
            logits = out.logits[0].float()
            dist = Categorical(logits=logits)
            action = dist.sample()
            # One device->host copy per step instead of one per tensor: on CUDA each copy waits for the device.
            # The action travels as a float, exact for any action count below 2**24.
            parts = [action.to(logits.dtype)[:, None], dist.log_prob(action)[:, None], out.values[0].float()]
            if "alpha" in out.extras:
                parts.append(out.extras["alpha"][0].float())
            host = torch.cat(parts, dim=1).cpu()
            actions[t] = host[:, 0].long()
            logprobs[t] = host[:, 1]
            values[t] = host[:, 2 : 2 + H]
            if "alpha" in out.extras:
                alphas.append(host[:, 2 + H :])
            self.core_state = out.state
            step = self.envs.step(actions[t].numpy())
            done = step.first
            raw_rewards[t] = torch.as_tensor(step.reward)
            rewards[t] = torch.as_tensor(self.normalizer(step.reward.astype(np.float64), done))
            dones[t] = torch.as_tensor(done)
            episodes.extend(step.episodes)
            self.obs = torch.as_tensor(step.obs)
            self.first = torch.as_tensor(done)
            self.prev_action = torch.where(self.first, 0, actions[t])
            self.prev_reward = torch.where(self.first, 0.0, raw_rewards[t])
        with autocast:
            out = agent(
                self.obs.to(dev)[None], self.first.to(dev)[None], self.prev_action.to(dev)[None],
                self.prev_reward.to(dev)[None], self.core_state,
            )
        return Rollout(
            obs=obs, first=first, prev_action=prev_action, prev_reward=prev_reward, actions=actions,
            logprobs=logprobs, values=values, rewards=rewards, raw_rewards=raw_rewards, dones=dones,
            initial_state=tuple(s.cpu() for s in initial_state), next_value=out.values[0].float().cpu(),
            alpha=torch.stack(alphas) if alphas else None, episodes=episodes,
        )


# ----------------------------------------------------------------------------------------------------------
# Update


@dataclass(frozen=True)
class UpdateResult:
    metrics: dict[str, float]
    skipped: bool
    bad_term: str | None


def ppo_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    aux_scales: dict[str, float],
    cfg: TrainConfig,
    device: torch.device,
) -> UpdateResult:
    """Epochs x minibatches of whole env sequences. A non-finite loss or gradient anywhere restores the
    parameters and optimizer from before the update and reports the update as skipped (issue #6)."""
    B = rollout.actions.shape[1]
    params_before = copy.deepcopy(agent.state_dict())
    optim_before = copy.deepcopy(optimizer.state_dict())
    sums: dict[str, float] = {}
    count = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    mask = None  # every stored step is valid: rollouts have fixed length
    stop_early = False
    # The rollout goes to the device once per update, not once per minibatch and epoch (on CUDA the uint8
    # observations of 64 envs x 256 steps are 200 MB); on the CPU these are no-ops.
    obs, first, prev_action, prev_reward = (
        x.to(device, non_blocking=True) for x in (rollout.obs, rollout.first, rollout.prev_action, rollout.prev_reward)
    )
    initial_state = tuple(s.to(device) for s in rollout.initial_state)
    for _epoch in range(cfg.update_epochs):
        perm = torch.randperm(B)
        for mb in perm.chunk(cfg.num_minibatches):
            with autocast:
                out = agent(
                    obs[:, mb], first[:, mb], prev_action[:, mb], prev_reward[:, mb],
                    tuple(s[:, mb] for s in initial_state),
                )
            values = out.values.float()
            loss, metrics = ppo_loss(
                out.logits.float(), rollout.actions[:, mb].to(device), rollout.logprobs[:, mb].to(device),
                advantages[:, mb].to(device), values, rollout.values[:, mb].to(device), returns[:, mb].to(device),
                clip_coef=cfg.clip_coef, clip_vloss=cfg.clip_vloss, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                norm_adv=cfg.norm_adv, mask=mask,
            )
            critic_out = CriticOutput(values, {k: v.float() for k, v in out.extras.items()})
            valid = torch.ones_like(rollout.first[:, mb], device=device)
            aux = agent.critic.aux_losses(critic_out, valid, first=rollout.first[:, mb].to(device))
            assert set(aux) == set(aux_scales), f"aux terms {sorted(aux)} != scheduled {sorted(aux_scales)}"
            for name, term in aux.items():
                loss = loss + aux_scales[name] * term
                metrics[f"losses/{name}"] = term.detach()
            bad = _first_nonfinite({**metrics, "loss": loss})  # name the loss term, not just the total
            if bad is None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    bad = "gradients"
            if bad is not None:
                agent.load_state_dict(params_before)
                optimizer.load_state_dict(optim_before)
                optimizer.zero_grad(set_to_none=True)
                return UpdateResult({}, skipped=True, bad_term=bad)
            optimizer.step()
            metrics["losses/grad_norm"] = grad_norm.detach()
            for k, v in agent.critic.diagnostics(critic_out, valid, first=rollout.first[:, mb].to(device)).items():
                metrics[f"dve/{k}"] = torch.tensor(v)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if cfg.target_kl is not None and float(metrics["losses/approx_kl"]) > cfg.target_kl:
                stop_early = True
                break
        if stop_early:
            break
    return UpdateResult({k: v / count for k, v in sums.items()}, skipped=False, bad_term=None)


def _first_nonfinite(terms: dict[str, torch.Tensor]) -> str | None:
    for name, value in terms.items():
        if not bool(torch.isfinite(value).all()):
            return name
    return None


# ----------------------------------------------------------------------------------------------------------
# The run


class _SignalFlag:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the next update boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
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


def make_agent(cfg: TrainConfig, obs_shape: tuple[int, ...], num_actions: int, device: torch.device) -> Agent:
    agent = Agent(obs_shape, num_actions, cfg).to(device)
    if device.type == "cuda":
        agent = agent.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return agent


def agent_tensors(agent: Agent, collector: RolloutCollector) -> dict[str, torch.Tensor]:
    tensors = {f"agent.{k}": v for k, v in agent.state_dict().items()}
    norm = collector.normalizer
    tensors["reward_normalizer.mean"] = torch.tensor(norm.rms.mean, dtype=torch.float64)
    tensors["reward_normalizer.var"] = torch.tensor(norm.rms.var, dtype=torch.float64)
    tensors["reward_normalizer.count"] = torch.tensor(norm.rms.count, dtype=torch.float64)
    return tensors


def load_agent_tensors(agent: Agent, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len("agent."):]: v for k, v in tensors.items() if k.startswith("agent.")}
    agent.load_state_dict(state)


def train(cfg: TrainConfig) -> Path:
    """Train per ``cfg``; returns the run directory (config, metrics, checkpoints, eval/)."""
    from multiscene.evaluate import evaluate_run_splits

    validate(cfg)
    check_env_id(cfg.env)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    resume = cfg.resume
    backup = prepare_run_dir(run_dir, resume=resume, overwrite=cfg.overwrite)
    if resume:
        saved = load_config(run_dir)
        # A resumed run keeps its own config; only the budget and these run-time switches may change.
        cfg = dataclasses.replace(
            saved, total_timesteps=cfg.total_timesteps, resume=True, overwrite=False, run_dir=str(run_dir),
            progress=cfg.progress, device=cfg.device,
        )
        validate(cfg)
    else:
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        atomic_write_json(run_dir / CONFIG_FILE, config_record(cfg))

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    agent = make_agent(cfg, envs.obs_shape, envs.num_actions, device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    schedule = make_cc_schedule(cfg)
    collector = RolloutCollector(envs, agent, cfg, device)
    progress = Progress(cfg.num_updates * cfg.batch_size, cfg.progress)
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
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, purge_step=global_step if resume else None)

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
        save_checkpoint(run_dir, update, agent_tensors(agent, collector), state, keep=cfg.keep_checkpoints)

    start_time, start_step = time.time(), global_step
    recent_returns: list[float] = []
    stop_reason: str | None = None
    with _SignalFlag() as signals:
        try:
            while update < cfg.num_updates:
                if signals.signum is not None:
                    stop_reason = f"received {signal.Signals(signals.signum).name}"
                    break
                if cfg.anneal_lr:
                    optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - update / cfg.num_updates)

                # 1. Collect
                try:
                    rollout = collector.collect(agent)
                except EnvError as e:
                    checkpoint(with_envs=False)
                    raise EnvError(f"{e} (state saved at update {update}; continue with --resume)") from e
                global_step += cfg.batch_size
                update += 1

                # 2. Bootstrap, per-head rewards, GAE, combined advantage
                head_rewards = agent.critic.head_rewards(rollout.rewards)
                adv_heads, returns = compute_gae(
                    head_rewards, rollout.values, rollout.dones, rollout.next_value, cfg.gamma, cfg.gae_lambda
                )
                advantages = agent.critic.combine_advantages(adv_heads)

                # 3. Schedules, then the PPO epochs
                lengths = [e.length for e in rollout.episodes]
                schedule.observe(global_step, float(np.mean(lengths)) if lengths else None)
                aux_scales = schedule.scales(global_step)
                result = ppo_update(agent, optimizer, rollout, advantages, returns, aux_scales, cfg, device)

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
                record.update(_rollout_metrics(rollout, returns, agent, cfg, schedule, global_step))
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
                    logger.log({"update": update, "global_step": global_step, **_eval_record(summary)})
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
    final_logger = MetricsLogger(run_dir, tensorboard=False)
    final_logger.log({"update": update, "global_step": global_step, **_eval_record(summary)})
    final_logger.close()
    return run_dir


def _eval_record(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for split, stats in summary.items():
        if isinstance(stats, dict):
            for key in ("return_mean", "return_std", "length_mean", "success_rate"):
                if key in stats and stats[key] is not None:
                    out[f"eval/{split}/{key}"] = stats[key]
    return out


def _rollout_metrics(
    rollout: Rollout, returns: torch.Tensor, agent: Agent, cfg: TrainConfig, schedule: Any, global_step: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rollout.episodes:
        out["charts/episodic_return"] = float(np.mean([e.episode_return for e in rollout.episodes]))
        out["charts/episodic_length"] = float(np.mean([e.length for e in rollout.episodes]))
        successes = [e.success for e in rollout.episodes if e.success is not None]
        if successes:
            out["charts/success_rate"] = float(np.mean(successes))
        out["charts/episodes"] = len(rollout.episodes)
    out["losses/explained_variance"] = explained_variance(rollout.values[..., 0].flatten(), returns[..., 0].flatten())
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
    if math.isnan(out["losses/explained_variance"]):
        out["losses/explained_variance"] = None
    return out
