"""The DreamerV2 training loop (issue 13): its own loop, the library's shared run machinery.

Read it top to bottom: prefill the replay with a uniformly random policy (counted in the budget) -> act in the
envs with the actor on the filtered RSSM state -> every ``--dreamer.train-every`` env steps a world-model step
and a behavior step on sequences from the replay -> log -> checkpoint (weights, optimizers, RNGs, replay) ->
evaluate into ``eval/final.json`` in the layout of ``multiscene.evaluate.evaluate_run_splits``.

Shared parts used as they are: ``multiscene.rundir.prepare_run_dir`` (refuse/resume/overwrite),
``multiscene.checkpoint`` (atomic, checksummed, last N), ``multiscene.logger.MetricsLogger`` (CleanRL names
``charts/episodic_return``, ``charts/SPS``; world-model terms under ``dreamer/*``, the image loss as
``dreamer/image_loss``), ``multiscene.evaluate.summarize``. The ``update`` counter of metrics and checkpoints is
the number of vectorized env steps (it grows by one per ``envs.step``, so a resume truncates metrics exactly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import multiscene
from multiscene.algos.dreamer import DreamerConfig, validate_dreamer
from multiscene.algos.dreamer.behavior import Behavior
from multiscene.algos.dreamer.replay import EpisodeBuilder, EpisodeReplay
from multiscene.algos.dreamer.rssm import RSSMState, flatten_time
from multiscene.algos.dreamer.world_model import WorldModel, symbol_classes_for
from multiscene.checkpoint import load_latest_checkpoint, save_checkpoint
from multiscene.config import ConfigError, TrainConfig, check_critic_choice
from multiscene.envs import make_env
from multiscene.envs.base import ActionSpec, EnvError, EnvStep, EpisodeStats, VecEnv
from multiscene.evaluate import step_extras, summarize
from multiscene.logger import METRICS_FILE, MetricsLogger, Progress, truncate_metrics
from multiscene.rundir import atomic_write_json, prepare_run_dir
from multiscene.runtime import (
    SignalFlag,
    env_spec,
    load_config,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

CONFIG_FILE = "config.json"


class PolicyState(NamedTuple):
    """What the acting policy carries between env steps, per env: the RSSM state and the last action."""

    rssm: RSSMState
    prev_action: torch.Tensor
    """[B, A] action taken at the previous step as the RSSM reads it: one-hot (discrete) or in [-1, 1]^A
    (continuous); reset to zeros where an episode starts."""


class DreamerAgent(nn.Module):
    """World model + behavior, with an ``act`` method for the env loop and evaluation.

    ``action_spec`` (the env's ``VecEnv.action_spec``; None: ``num_actions`` discrete actions) picks the actor:
    a categorical over ``num_actions`` actions, or for a continuous spec a tanh-Gaussian over its ``n``
    dimensions. Continuous actions live in [-1, 1]^n everywhere inside the agent (actor, RSSM input, replay),
    as DreamerV2's ``NormalizeAction`` wrapper arranges; ``env_actions`` maps them to the Box's [low, high]
    only on their way to the env, so the world model never sees the env's units."""

    def __init__(
        self, obs_shape: tuple[int, ...], num_actions: int, cfg: DreamerConfig, symbol_classes: int | None = None,
        action_spec: ActionSpec | None = None,
    ) -> None:
        super().__init__()
        self.discrete = action_spec is None or action_spec.kind == "discrete"
        if action_spec is not None and action_spec.n != num_actions:
            raise ValueError(f"num_actions {num_actions} does not match the action spec's {action_spec.n}")
        self.num_actions = num_actions
        """Number of discrete actions, or the dimension of a continuous action."""
        self.action_low: np.ndarray | None = None
        self.action_high: np.ndarray | None = None
        if not self.discrete:
            assert action_spec is not None and action_spec.low is not None and action_spec.high is not None
            low = np.asarray(action_spec.low, dtype=np.float32)
            high = np.asarray(action_spec.high, dtype=np.float32)
            # A dimension with an infinite bound maps [-1, 1] onto itself (DreamerV2's NormalizeAction).
            finite = np.isfinite(low) & np.isfinite(high)
            self.action_low = np.where(finite, low, -1.0).astype(np.float32)
            self.action_high = np.where(finite, high, 1.0).astype(np.float32)
        self.world_model = WorldModel(obs_shape, num_actions, cfg, symbol_classes)
        self.behavior = Behavior(self.world_model.rssm.feature_size, num_actions, self.discrete, cfg)

    def initial_state(self, batch: int, device: torch.device) -> PolicyState:
        return PolicyState(self.world_model.rssm.initial_state(batch, device),
                           torch.zeros(batch, self.num_actions, device=device))

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, first: torch.Tensor, state: PolicyState, deterministic: bool = False,
        random_action: bool = False,
    ) -> tuple[torch.Tensor, PolicyState]:
        """Filter one observation ``obs`` [B, *obs] (``first`` [B] bool) and pick actions: the actor's sample,
        its mode, or uniformly random (prefill). Discrete: [B] long; continuous: [B, A] float in [-1, 1]
        (pass them through ``env_actions`` before ``envs.step``). The level id is never an input."""
        embed = self.world_model.encoder(obs)
        post, _ = self.world_model.rssm.obs_step(state.rssm, state.prev_action, embed, first)
        if not self.discrete:
            if random_action:
                # Uniform over the normalized box, as DreamerV2's prefill samples the (normalized) action space.
                action = torch.rand(obs.shape[0], self.num_actions, device=obs.device) * 2.0 - 1.0
            else:
                dist = self.behavior.policy(torch.cat([post.deter, post.stoch.flatten(-2)], -1))
                # The mode is tanh of the Gaussian's mean (behavior.py ``ActionDist.mode``).
                action = dist.mode() if deterministic else dist.sample()
            return action, PolicyState(post, action)
        if random_action:
            action = torch.randint(self.num_actions, (obs.shape[0],), device=obs.device)
        else:
            dist = self.behavior.policy(torch.cat([post.deter, post.stoch.flatten(-2)], -1))
            action = dist.mode().argmax(-1) if deterministic else dist.sample().argmax(-1)
        return action, PolicyState(post, F.one_hot(action, self.num_actions).float())

    def env_actions(self, action: torch.Tensor) -> np.ndarray:
        """What ``envs.step`` takes for ``act``'s actions: the indices [B] (discrete), or [B, A] float32 mapped
        linearly from [-1, 1] to the Box's [low, high]. Dimensions with an infinite bound are passed as they are
        (DreamerV2's ``NormalizeAction`` does the same); the env then clips to its bounds (``check_actions``)."""
        out = action.cpu().numpy()
        if self.discrete:
            return out
        assert self.action_low is not None and self.action_high is not None
        low, high = self.action_low, self.action_high
        return (low + (out + 1.0) * 0.5 * (high - low)).astype(np.float32)

    def replay_actions(self, action: torch.Tensor) -> np.ndarray:
        """[B, A] float32 as the replay stores ``act``'s actions: one-hot (discrete) or the [-1, 1] vector the
        RSSM was fed (continuous), never the env's rescaled units."""
        out = action.cpu().numpy()
        if self.discrete:
            return np.eye(self.num_actions, dtype=np.float32)[out]
        return out.astype(np.float32)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters without gradients inside the block: the behavior losses must not train the world model."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def transform_reward(reward: torch.Tensor, kind: str) -> torch.Tensor:
    """``tanh`` (DreamerV2 Atari ``clip_rewards: tanh``) or ``identity``."""
    return torch.tanh(reward) if kind == "tanh" else reward


class DreamerLearner:
    """The three optimizers and one train step (world model, then behavior on imagined rollouts)."""

    def __init__(self, agent: DreamerAgent, cfg: DreamerConfig) -> None:
        self.agent, self.cfg = agent, cfg

        def adam(params: Any, lr: float) -> torch.optim.Optimizer:
            # configs.yaml *_opt: adam with eps 1e-5, clip 100 and weight decay 1e-6 (decoupled, as AdamW).
            return torch.optim.AdamW(params, lr=lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)

        self.model_opt = adam(agent.world_model.parameters(), cfg.model_lr)
        self.actor_opt = adam(agent.behavior.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam(agent.behavior.critic.parameters(), cfg.critic_lr)
        self.train_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"model_opt": self.model_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "train_steps": self.train_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model_opt.load_state_dict(state["model_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.train_steps = int(state["train_steps"])

    def train_step(self, replay: EpisodeReplay, rng: np.random.Generator, device: torch.device) -> dict[str, float] | None:
        """One world-model + behavior update; None (nothing applied) when a loss or gradient is non-finite."""
        cfg, wm, beh = self.cfg, self.agent.world_model, self.agent.behavior
        batch = replay.sample(cfg.batch_size, rng)
        obs = torch.as_tensor(batch.obs, device=device)
        action = torch.as_tensor(batch.action, device=device)
        reward = transform_reward(torch.as_tensor(batch.reward, device=device), cfg.reward_transform)
        discount = torch.as_tensor(batch.discount, device=device)
        first = torch.as_tensor(batch.first, device=device)
        valid = torch.as_tensor(batch.valid, device=device)

        out = wm.loss(obs, action, reward, discount, first, cfg, valid=valid)
        if not torch.isfinite(out.total):
            return None
        self.model_opt.zero_grad(set_to_none=True)
        out.total.backward()
        model_norm = nn.utils.clip_grad_norm_(wm.parameters(), cfg.max_grad_norm)
        if not torch.isfinite(model_norm):
            self.model_opt.zero_grad(set_to_none=True)
            return None
        self.model_opt.step()

        start = RSSMState(*(x.detach() for x in flatten_time(out.posterior)))
        with frozen(wm):
            actor_loss, critic_loss, behavior_metrics = beh.losses(wm, start, discount.flatten(), cfg)
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        actor_norm = nn.utils.clip_grad_norm_(beh.actor.parameters(), cfg.max_grad_norm)
        critic_norm = nn.utils.clip_grad_norm_(beh.critic.parameters(), cfg.max_grad_norm)
        if not (torch.isfinite(actor_norm) and torch.isfinite(critic_norm)):
            return None
        self.actor_opt.step()
        self.critic_opt.step()
        self.train_steps += 1
        if self.train_steps % cfg.slow_target_update == 0:
            beh.update_target(cfg.slow_target_fraction)

        metrics = {f"dreamer/{k}_loss": float(v.detach()) for k, v in out.terms.items()}
        metrics.update({f"dreamer/{k}": v for k, v in out.metrics.items()})
        metrics.update({f"dreamer/{k}": v for k, v in behavior_metrics.items()})
        metrics["dreamer/model_loss"] = float(out.total.detach())
        metrics["dreamer/actor_loss"] = float(actor_loss.detach())
        metrics["dreamer/critic_loss"] = float(critic_loss.detach())
        metrics["dreamer/model_grad_norm"] = float(model_norm)
        metrics["dreamer/padded_fraction"] = float(batch.padded.mean())
        # Image loss per level of the sampled sequences (seed 003 Fig. 4); levels absent from a batch are absent.
        per_sequence = out.image_nll.mean(0).cpu().numpy()
        for level in np.unique(batch.level).tolist():
            metrics[f"dreamer/image_loss_level/{level}"] = float(per_sequence[batch.level == level].mean())
        return metrics


def store_step(
    builder: EpisodeBuilder, replay: EpisodeReplay, result: EnvStep, actions: np.ndarray, bootstrap_truncation: bool,
) -> None:
    """Add one vectorized env step (``actions`` [B, A], the actions that led to it) to the running episodes; an
    episode that ended goes to the replay whole and its slot starts the next one.

    The discount label of an episode's last step is 0 after a termination only: a time-limit cut ends the
    episode, not the MDP, so the discount head learns continuation 1 there and the padding after it is left out
    of the losses (``EpisodeReplay.sample``), with the flag on or off (DreamerV2 does the same). With
    ``bootstrap_truncation`` (``--bootstrap-truncation``, issue 16) the cut episode's last step holds its true
    final observation where the env hands it over (``EnvStep.final_obs``) instead of the previous observation
    repeated, so the world model does not learn a transition that did not happen."""
    for i in range(len(result.first)):
        if not result.first[i]:
            builder.append(i, result.obs[i], actions[i], float(result.reward[i]), 1.0)
            continue
        terminated = bool(result.terminated[i])
        final_obs = None
        if bootstrap_truncation and result.final_obs is not None and bool(result.truncated[i]) and not terminated:
            final_obs = result.final_obs[i]
        replay.add(builder.finish(i, actions[i], float(result.reward[i]), terminated, final_obs=final_obs))
        builder.start(i, result.obs[i], int(result.level_seed[i]))


# ----------------------------------------------------------------------------------------------------------
# Setup helpers


def default_run_dir(cfg: TrainConfig) -> Path:
    env = cfg.env.replace(",", "+").replace(":", "_")
    return Path("runs") / f"{env}-dreamer-s{cfg.seed}"


def config_record(cfg: TrainConfig, dreamer: DreamerConfig) -> dict[str, Any]:
    return {"config": dataclasses.asdict(cfg), "algo": "dreamer", "dreamer": dataclasses.asdict(dreamer),
            "multiscene_version": multiscene.__version__}


def load_dreamer_config(run_dir: Path) -> DreamerConfig:
    data = json.loads((run_dir / CONFIG_FILE).read_text())
    if "dreamer" not in data:
        raise ConfigError(f"{run_dir} holds a run of another algorithm (no 'dreamer' section in {CONFIG_FILE}).")
    known = {f.name for f in dataclasses.fields(DreamerConfig)}
    return DreamerConfig(**{k: v for k, v in data["dreamer"].items() if k in known})


def validate_run(cfg: TrainConfig, dreamer: DreamerConfig) -> None:
    """The TrainConfig fields this loop reads (the PPO ones it ignores), then the --dreamer.* group."""
    if cfg.total_timesteps <= 0:
        raise ConfigError(f"--total-timesteps must be a positive number of env steps, got {cfg.total_timesteps}.")
    for name in ("num_envs", "eval_episodes", "eval_num_envs", "keep_checkpoints", "max_nonfinite_updates"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}.")
    validate_dreamer(dreamer)


def refuse_unused_choices(cfg: TrainConfig) -> None:
    """Refuse the common choices this loop would silently ignore: a ``--critic`` other than scalar (DreamerV2
    has its own critic), ``--hotwire`` (an on-policy segment mechanism), ``--aux`` and ``--encoder`` (the world
    model has its own encoder and decoder), each with a message naming the flag and what --algo dreamer allows."""
    from multiscene.algos.onpolicy.hotwire import validate_hotwire

    check_critic_choice(cfg, algo="dreamer")
    if cfg.hotwire:
        validate_hotwire(cfg.hotwire_cfg, algo="dreamer")  # type: ignore[attr-defined]
    if cfg.aux != "none":
        raise ConfigError(
            f"--aux {cfg.aux} is not used by --algo dreamer: the world model's image decoder already reconstructs "
            "the frames from its latent state. Allowed --aux with --algo dreamer: none; --aux works with --algo "
            "ppo, a2c, acktr, impala."
        )
    if cfg.encoder != "auto":
        raise ConfigError(
            f"--encoder {cfg.encoder} is not used by --algo dreamer: the world model has its own encoder (a CNN for "
            "images, an MLP for vectors; --dreamer.size sets its width). Allowed --encoder with --algo dreamer: auto."
        )


def check_action_space(env_id: str) -> None:
    """ConfigError naming ``--env`` when a Gymnasium id has an action space this loop cannot drive: it takes
    ``Discrete`` and 1-D ``Box`` actions (a categorical actor, or a tanh-Gaussian one trained by dynamics
    backprop), and a multi-level list takes discrete actions only (``MultiLevelVecEnv`` steps integer actions).
    Procgen, MiniGrid and Mario are discrete. Checked before the run directory is touched; builds each
    Gymnasium env once."""
    import gymnasium

    from multiscene.envs import env_family
    from multiscene.envs.gymnasium import register_atari
    from multiscene.envs.multilevel import is_multilevel, split_env_ids

    multilevel = is_multilevel(env_id)
    parts = split_env_ids(env_id) if multilevel else [env_id]
    for part in parts:
        if env_family(part) != "gymnasium":
            continue
        register_atari()
        probe = gymnasium.make(part)
        try:
            space = probe.action_space
        finally:
            probe.close()
        discrete = isinstance(space, gymnasium.spaces.Discrete)
        box = isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1
        if multilevel and not discrete:
            raise ConfigError(
                f"--env {env_id}: {part} has the action space {space}, and a multi-level --env list takes "
                "Discrete actions only (the multi-level env steps integer actions). Run a continuous-action env "
                "on its own: --algo dreamer takes a Discrete or a 1-D Box action space for a single --env."
            )
        if not (discrete or box):
            raise ConfigError(
                f"--env {part}: its action space is {space}, and --algo dreamer takes a Discrete action space "
                "(categorical actor) or a 1-D Box (tanh-Gaussian actor, actions rescaled from [-1, 1] to the "
                "Box's bounds)."
            )


def agent_tensors(agent: DreamerAgent) -> dict[str, torch.Tensor]:
    return {f"agent.{k}": v for k, v in agent.state_dict().items()}


def load_agent_tensors(agent: DreamerAgent, tensors: dict[str, torch.Tensor]) -> None:
    agent.load_state_dict({k[len("agent."):]: v for k, v in tensors.items() if k.startswith("agent.")})


def init_agent_from(agent: DreamerAgent, run_dir: Path) -> int:
    """Load the weights of another Dreamer run's latest good checkpoint (``--init-from``; seed 003 §4.2-4.3:
    fine-tuning and transfer start from the pre-trained parameters, with fresh optimizers and replay).
    Returns that checkpoint's update."""
    ckpt = load_latest_checkpoint(run_dir, load_state=False)
    if ckpt is None:
        raise ConfigError(f"--init-from {run_dir}: no readable checkpoint there.")
    try:
        load_agent_tensors(agent, ckpt.tensors)
    except RuntimeError as e:
        raise ConfigError(
            f"--init-from {run_dir}: its networks do not fit this run (other --dreamer.size, observation or "
            f"action space): {str(e).splitlines()[0]}"
        ) from e
    return ckpt.update


# ----------------------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainConfig, dreamer: DreamerConfig, init_from: str | None = None) -> Path:
    """Train DreamerV2 per ``cfg`` (env, budget, run dir, eval) and ``dreamer``; returns the run directory."""
    validate_run(cfg, dreamer)
    # The caller's choices only: a resumed run's saved config is not refused for a critic it never used.
    refuse_unused_choices(cfg)
    if not cfg.resume:
        check_action_space(cfg.env)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    resume = cfg.resume
    backup = prepare_run_dir(run_dir, resume=resume, overwrite=cfg.overwrite)
    if resume:
        saved = load_config(run_dir)
        dreamer = load_dreamer_config(run_dir)
        # A resumed run keeps its own config; only the budget and run-time switches may change.
        cfg = dataclasses.replace(saved, total_timesteps=cfg.total_timesteps, resume=True, overwrite=False,
                                  run_dir=str(run_dir), progress=cfg.progress, device=cfg.device)
        validate_run(cfg, dreamer)
    else:
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
        atomic_write_json(run_dir / CONFIG_FILE, config_record(cfg, dreamer))

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = resolve_device(cfg.device)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    B, A = envs.num_envs, envs.num_actions
    # MiniGrid's symbol grids are one-hot encoded (world_model.py: as raw integers the model learned nothing).
    symbols = symbol_classes_for(envs.obs_shape, getattr(envs, "obs_dtype", np.uint8))
    # Envs without an ``action_spec`` (Mario, the multi-level env) take discrete actions.
    agent = DreamerAgent(envs.obs_shape, A, dreamer, symbols, getattr(envs, "action_spec", None)).to(device)
    learner = DreamerLearner(agent, dreamer)
    replay = EpisodeReplay(dreamer.replay_capacity, dreamer.seq_len, A, discrete=agent.discrete)
    builder = EpisodeBuilder(B, A)
    replay_rng = np.random.default_rng(cfg.seed)
    progress = Progress(cfg.total_timesteps, cfg.progress)
    if backup is not None:
        progress.message(f"--overwrite: the previous run was moved to {backup}")

    start = envs.reset()
    obs, first = torch.as_tensor(start.obs), torch.ones(B, dtype=torch.bool)
    for i in range(B):
        builder.start(i, start.obs[i], int(start.level_seed[i]))
    policy_state = agent.initial_state(B, device)
    update, global_step, nonfinite_in_row = 0, 0, 0

    if resume:
        ckpt = load_latest_checkpoint(run_dir, warn=progress.message)
        if ckpt is not None:
            load_agent_tensors(agent, ckpt.tensors)
            s = ckpt.state
            learner.load_state_dict(s["learner"])
            replay.load_state_dict(s["replay"])
            replay_rng.bit_generator.state = s["replay_rng"]
            set_rng_state(s["rng"])
            update, global_step = ckpt.update, int(s["global_step"])
            nonfinite_in_row = int(s.get("nonfinite_in_row", 0))
            if s["carry"]["envs"] is not None:
                envs.set_state(s["carry"]["envs"])
                builder.load_state_dict(s["carry"]["builder"])
                obs, first = s["carry"]["obs"], s["carry"]["first"]
                policy_state = PolicyState(RSSMState(*(x.to(device) for x in s["carry"]["rssm"])),
                                           s["carry"]["prev_action"].to(device))
            else:
                progress.message("resume: the envs could not be saved; their running episodes start afresh")
            progress.message(
                f"resumed from {ckpt.path.name} (step {global_step}, {learner.train_steps} train steps, replay "
                f"{replay.num_steps} of {s['replay']['total_steps']} steps restored)"
            )
        else:
            progress.message("--resume: no good checkpoint found; starting from step 0")
        truncate_metrics(run_dir / METRICS_FILE, update)
    if init_from is not None and global_step == 0:
        # A fresh start (or a resume before the first checkpoint) of a fine-tune/transfer run (seed 003 §4.2-4.3).
        update_from = init_agent_from(agent, Path(init_from))
        progress.message(f"--init-from {init_from}: weights of its update {update_from}")
        atomic_write_json(run_dir / "init_from.json", {"run_dir": str(init_from), "update": update_from})
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, purge_step=global_step if resume else None)

    def checkpoint() -> None:
        # An env that cannot snapshot itself (Mario's emulator) saves None: its episodes restart on resume.
        env_state = envs.get_state() if getattr(envs, "restores_exactly", True) else None
        state = {
            "learner": learner.state_dict(),
            "replay": replay.state_dict(dreamer.checkpoint_replay_steps),
            "replay_rng": replay_rng.bit_generator.state,
            "rng": rng_state(),
            "global_step": global_step,
            "nonfinite_in_row": nonfinite_in_row,
            "carry": {
                "envs": env_state,
                "builder": builder.state_dict() if env_state is not None else None,
                "obs": obs.clone(), "first": first.clone(),
                "rssm": tuple(x.cpu() for x in policy_state.rssm), "prev_action": policy_state.prev_action.cpu(),
            },
            "config": dataclasses.asdict(cfg),
            "dreamer": dataclasses.asdict(dreamer),
        }
        logger.sync()
        save_checkpoint(run_dir, update, agent_tensors(agent), state, keep=cfg.keep_checkpoints)

    start_time, start_step = time.time(), global_step
    train_time, train_steps_at_start = 0.0, learner.train_steps
    episodes: list[EpisodeStats] = []
    extras: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    level_names: list[str] | None = getattr(envs, "level_names", None)
    stop_reason: str | None = None
    with SignalFlag() as signals:
        try:
            while global_step < cfg.total_timesteps:
                if signals.signum is not None:
                    stop_reason = "received a stop signal"
                    break
                # 1. Act: random during the prefill (seed 003 §5.2 keeps DreamerV2's prefill), else the actor.
                prefill = global_step < dreamer.prefill
                action, policy_state = agent.act(obs.to(device), first.to(device), policy_state,
                                                 random_action=prefill)
                try:
                    result = envs.step(agent.env_actions(action))
                except EnvError as e:
                    raise EnvError(f"{e} (last checkpoint kept; continue with --resume)") from e
                previous_step = global_step
                global_step += B
                update += 1

                # 2. Store: whole episodes go to the replay when they end.
                store_step(builder, replay, result, agent.replay_actions(action), cfg.bootstrap_truncation)
                episodes.extend(result.episodes)
                pop = getattr(envs, "pop_episode_extras", None)
                if pop is not None:
                    extras.extend(pop())
                obs, first = torch.as_tensor(result.obs), torch.as_tensor(result.first)

                # 3. Train every train_every env steps once the prefill is done.
                if global_step >= dreamer.prefill and len(replay) > 0:
                    due = global_step // dreamer.train_every - max(previous_step, dreamer.prefill) // dreamer.train_every
                    tick = time.time()
                    for _ in range(max(due, 0) * dreamer.train_steps):
                        metrics = learner.train_step(replay, replay_rng, device)
                        if metrics is None:
                            nonfinite_in_row += 1
                            sums["nonfinite/skipped_update"] = sums.get("nonfinite/skipped_update", 0.0) + 1
                            if nonfinite_in_row >= cfg.max_nonfinite_updates:
                                checkpoint()
                                raise RuntimeError(
                                    f"stopped at step {global_step}: {nonfinite_in_row} Dreamer train steps in a "
                                    f"row were non-finite; the last good state is saved in {run_dir}."
                                )
                            continue
                        nonfinite_in_row = 0
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + v
                            counts[k] = counts.get(k, 0) + 1
                    train_time += time.time() - tick

                # 4. Log every log_every env steps (and at the end).
                done = global_step >= cfg.total_timesteps
                if global_step // dreamer.log_every > previous_step // dreamer.log_every or done:
                    record = _record(update, global_step, episodes, extras, sums, counts, level_names)
                    elapsed = max(time.time() - start_time, 1e-9)
                    record["charts/SPS"] = (global_step - start_step) / elapsed
                    record["dreamer/train_steps"] = learner.train_steps
                    record["dreamer/train_steps_per_s"] = (learner.train_steps - train_steps_at_start) / max(train_time, 1e-9)
                    record["dreamer/replay_steps"] = replay.num_steps
                    record["dreamer/replay_episodes"] = len(replay)
                    logger.log(record)
                    progress.update(global_step, {"SPS": round(record["charts/SPS"]),
                                                  "return": record.get("charts/episodic_return"),
                                                  "image_loss": record.get("dreamer/image_loss")})
                    episodes, extras, sums, counts = [], [], {}, {}

                # 5. Checkpoint.
                if global_step // dreamer.checkpoint_every > previous_step // dreamer.checkpoint_every or done:
                    checkpoint()
            if stop_reason is not None:
                checkpoint()
                progress.message(f"{stop_reason}: checkpoint saved at step {global_step}; continue with --resume")
                return run_dir
        finally:
            progress.close()
            logger.close()
            envs.close()

    if cfg.final_eval:
        summary = evaluate_dreamer(agent, cfg, device, run_dir, tag="final", global_step=global_step,
                                   gamma=dreamer.gamma)
        final_logger = MetricsLogger(run_dir, tensorboard=False)
        final_logger.log({"update": update, "global_step": global_step, **_eval_record(summary)})
        final_logger.close()
    return run_dir


def _record(
    update: int, global_step: int, episodes: list[EpisodeStats], extras: list[dict[str, Any]],
    sums: dict[str, float], counts: dict[str, int], level_names: list[str] | None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"update": update, "global_step": global_step, "time": time.time()}
    for k, v in sums.items():
        if k.startswith("dreamer/image_loss_level/") and level_names is not None:
            record[f"levels/{level_names[int(k.rsplit('/', 1)[1])]}/image_loss"] = v / counts[k]
        elif k.startswith("dreamer/image_loss_level/"):
            continue  # plain level seeds (MiniGrid, Procgen): too many to log one curve each
        else:
            record[k] = v if k.startswith("nonfinite/") else v / max(counts.get(k, 1), 1)
    if episodes:
        record["charts/episodic_return"] = float(np.mean([e.episode_return for e in episodes]))
        record["charts/episodic_length"] = float(np.mean([e.length for e in episodes]))
        record["charts/episodes"] = len(episodes)
        successes = [e.success for e in episodes if e.success is not None]
        if successes:
            record["charts/success_rate"] = float(np.mean(successes))
        if level_names is not None:
            # Per-level train returns (seed 003 Figs. 3, 5, 6): the level id is logged, never an input.
            for index, name in enumerate(level_names):
                returns = [e.episode_return for e in episodes if e.level_seed == index]
                if returns:
                    record[f"levels/{name}/episodic_return"] = float(np.mean(returns))
    for key in ("x_pos", "flag_get"):
        values = [float(x[key]) for x in extras if key in x]
        if values:
            record[f"charts/{key}"] = float(np.mean(values))
    return record


def _eval_record(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for split, stats in summary.items():
        if isinstance(stats, dict):
            for key in ("return_mean", "return_std", "length_mean", "success_rate", "x_pos_mean"):
                if stats.get(key) is not None:
                    out[f"eval/{split}/{key}"] = stats[key]
    return out


# ----------------------------------------------------------------------------------------------------------
# Evaluation (the layout of multiscene.evaluate.evaluate_run_splits)


@torch.no_grad()
def run_policy_episodes(
    agent: DreamerAgent, envs: VecEnv, num_episodes: int, deterministic: bool, device: torch.device,
    random_policy: bool = False, extras: list[dict[str, Any] | None] | None = None,
) -> list[EpisodeStats]:
    """Exactly ``num_episodes`` episodes, each env owning a fixed quota (no bias towards short episodes), as
    ``multiscene.evaluate.run_episodes`` counts them. ``extras``, where given, is filled with the env's extras of
    each returned episode, in their order (``multiscene.evaluate.step_extras``; Mario's x_pos and flag_get), so
    the evaluation can report the distance travelled over exactly the counted episodes."""
    B = envs.num_envs
    quota = np.full(B, num_episodes // B)
    quota[: num_episodes % B] += 1
    done_count = np.zeros(B, dtype=np.int64)
    step = envs.reset()
    step_extras(envs, [])  # drop extras of episodes from before this pass
    obs, first = torch.as_tensor(step.obs), torch.ones(B, dtype=torch.bool)
    state = agent.initial_state(B, device)
    episodes: list[EpisodeStats] = []
    while (done_count < quota).any():
        action, state = agent.act(obs.to(device), first.to(device), state, deterministic, random_policy)
        result = envs.step(agent.env_actions(action))
        for ep, extra in zip(result.episodes, step_extras(envs, result.episodes)):
            if done_count[ep.env_index] < quota[ep.env_index]:
                episodes.append(ep)
                if extras is not None:
                    extras.append(extra)
            done_count[ep.env_index] += 1
        obs, first = torch.as_tensor(result.obs), torch.as_tensor(result.first)
    return episodes


def evaluate_dreamer(
    agent: DreamerAgent, cfg: TrainConfig, device: torch.device, run_dir: Path, tag: str,
    global_step: int | None = None, num_episodes: int | None = None, gamma: float | None = None,
    random_floor: bool | None = None,
) -> dict[str, Any]:
    """Train and test splits, sampled and deterministic, plus the random policy on test levels (``random_floor``;
    default: for the final evaluation only); writes ``eval/<tag>.json``. On Mario (one level or a multi-level set) every pass's statistics also hold the
    distance travelled, ``x_pos_mean`` and ``x_pos_std``, and ``flag_rate`` (issue 13 measures Mario 1-1 by
    distance; ``multiscene.evaluate.summarize``). Per-step and frame files (``final_steps_*.npz``) are not
    written yet."""
    n = num_episodes or cfg.eval_episodes
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"global_step": global_step, "reward_scale": 1.0, "gamma": gamma, "algo": "dreamer"}
    was_training = agent.training
    agent.eval()
    try:
        for split in ("train", "test"):
            stats: dict[str, Any] = {}
            for deterministic in (False, True):
                torch.manual_seed(cfg.seed * 7 + int(deterministic))
                envs = make_env(env_spec(cfg, split, min(cfg.eval_num_envs, n), seed_offset=101 + int(deterministic)))
                try:
                    summary.setdefault("level_names", getattr(envs, "level_names", None))
                    extras: list[dict[str, Any] | None] = []
                    episodes = run_policy_episodes(agent, envs, n, deterministic, device, extras=extras)
                finally:
                    envs.close()
                if deterministic:
                    stats["deterministic"] = summarize(episodes, extras)
                else:
                    stats.update(summarize(episodes, extras))
            summary[split] = stats
        if tag == "final" if random_floor is None else random_floor:
            envs = make_env(env_spec(cfg, "test", min(cfg.eval_num_envs, n), seed_offset=101))
            extras = []
            try:
                episodes = run_policy_episodes(agent, envs, n, False, device, random_policy=True, extras=extras)
            finally:
                envs.close()
            summary["random_policy_test"] = {k: v for k, v in summarize(episodes, extras).items()
                                             if k != "per_level"}
    finally:
        agent.train(was_training)
    atomic_write_json(eval_dir / f"{tag}.json", summary)
    return summary


def load_dreamer_agent(run_dir: Path, envs: VecEnv, device: torch.device) -> DreamerAgent:
    """The Dreamer agent of ``run_dir`` (its ``--dreamer.*`` config, its latest good checkpoint) for ``envs``'
    spaces, in eval mode; ConfigError for a run of another algorithm or one without a readable checkpoint. Used
    by ``multiscene eval`` and the protocol's Fig. 8."""
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE} (the run has not started)")
    dreamer = load_dreamer_config(run_dir)
    symbols = symbol_classes_for(tuple(envs.obs_shape), getattr(envs, "obs_dtype", np.uint8))
    agent = DreamerAgent(tuple(envs.obs_shape), int(envs.num_actions), dreamer, symbols,
                         getattr(envs, "action_spec", None)).to(device)
    init_agent_from(agent, run_dir)
    agent.eval()
    return agent


def evaluate_checkpoint(run_dir: Path, episodes: int | None = None, tag: str = "eval",
                        device: str = "auto") -> dict[str, Any]:
    """``multiscene eval RUN_DIR`` of a Dreamer run: the latest good checkpoint evaluated as at the end of
    training (train and test levels, sampled and deterministic), plus the random policy's floor on the test
    levels, into ``eval/<tag>.json``."""
    cfg = load_config(run_dir)
    dreamer = load_dreamer_config(run_dir)
    ckpt = load_latest_checkpoint(run_dir, load_state=False)
    if ckpt is None:
        raise ConfigError(f"{run_dir} has no readable checkpoint to evaluate (checkpoints/ is empty or corrupted).")
    dev = resolve_device(device)
    probe = make_env(env_spec(cfg, "test", 1))
    try:
        agent = load_dreamer_agent(run_dir, probe, dev)
    finally:
        probe.close()
    # The step count lives in the checkpoint's state, with the whole replay: not read for an evaluation.
    summary = evaluate_dreamer(agent, cfg, dev, run_dir, tag, num_episodes=episodes, gamma=dreamer.gamma,
                               random_floor=True)
    return summary
