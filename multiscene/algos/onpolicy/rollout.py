"""Rollout storage and collection for the on-policy family (PPO, A2C, ACKTR): the first of the three jobs of
STYLE.md (collect; returns; update), joined to the others by the typed ``Rollout`` record."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from multiscene.algos.onpolicy.hotwire import HotWire
from multiscene.envs.base import EpisodeStats, VecEnv
from multiscene.models.agent import Agent
from multiscene.models.core import CoreState
from multiscene.normalize import RewardNormalizer

if TYPE_CHECKING:
    from multiscene.config import TrainConfig


@dataclass(frozen=True)
class Rollout:
    """One rollout, time-major. T = num_steps, B = num_envs, H = critic heads, A = action dims (continuous)."""

    obs: torch.Tensor  # [T, B, *obs] uint8 (images) or float32 (vectors, already normalized by the agent)
    first: torch.Tensor  # [T, B] bool: obs[t] starts an episode
    prev_action: torch.Tensor  # [T, B] long, or [T, B, A] float for continuous actions
    prev_reward: torch.Tensor  # [T, B] float, raw env reward of the previous step
    actions: torch.Tensor  # [T, B] long, or [T, B, A] float (the unclipped Gaussian sample)
    logprobs: torch.Tensor  # [T, B]
    values: torch.Tensor  # [T, B, H]
    rewards: torch.Tensor  # [T, B] normalized env reward
    raw_rewards: torch.Tensor  # [T, B]
    dones: torch.Tensor  # [T, B] bool: the episode ended after the action at t
    initial_state: CoreState  # core state before obs[0]
    next_value: torch.Tensor  # [B, H]
    alpha: torch.Tensor | None  # [T, B, N_b] DVE attention, when the critic has one
    episodes: list[EpisodeStats]
    extra_rewards: torch.Tensor | None = None  # [T, B, E] rewards of the critic's reward transform (A2MC's VWR)
    truncated: torch.Tensor | None = None  # [T, B] bool: the episode was cut by a time limit after step t
    final_values: torch.Tensor | None = None  # [T, B, H] value of the last observation where truncated[t]
    policy_mask: torch.Tensor | None = None  # [T, B] bool: steps in the policy loss (False: hot-wired, seed 004 §5)

    @property
    def num_steps(self) -> int:
        return int(self.first.shape[0])


class RolloutCollector:
    """Steps the training envs with the current policy and carries everything between rollouts."""

    def __init__(self, envs: VecEnv, agent: Agent, cfg: TrainConfig, device: torch.device) -> None:
        self.envs = envs
        self.agent = agent
        self.cfg = cfg
        self.device = device
        self.continuous = agent.continuous
        self.normalizer = RewardNormalizer(envs.num_envs, cfg.gamma, enabled=cfg.norm_reward)
        self.reward_transform = agent.critic.make_reward_transform(envs.num_envs, cfg)
        self.hotwire = (
            HotWire(envs.num_envs, envs.num_actions, cfg.hotwire_cfg, cfg.seed, continuous=self.continuous)
            if cfg.hotwire
            else None
        )
        start = envs.reset()
        B = envs.num_envs
        self.obs = agent.normalize_obs(start.obs, update=True)
        self.first = torch.ones(B, dtype=torch.bool)
        self.prev_action = self._zero_actions(B)
        self.prev_reward = torch.zeros(B)
        self.core_state = agent.initial_state(B, device)

    def _zero_actions(self, *leading: int) -> torch.Tensor:
        if self.continuous:
            return torch.zeros(*leading, self.envs.num_actions)
        return torch.zeros(*leading, dtype=torch.long)

    def carry_state(self) -> dict[str, Any]:
        state = {
            "obs": self.obs.clone(),
            "first": self.first.clone(),
            "prev_action": self.prev_action.clone(),
            "prev_reward": self.prev_reward.clone(),
            "core_state": tuple(s.cpu() for s in self.core_state),
            "normalizer": self.normalizer.state_dict(),
            "envs": self.envs.get_state(),
        }
        if self.reward_transform is not None:
            state["reward_transform"] = self.reward_transform.state_dict()
        if self.hotwire is not None:
            state["hotwire"] = self.hotwire.state_dict()
        return state

    def load_carry_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        if self.reward_transform is not None and "reward_transform" in state:
            self.reward_transform.load_state_dict(state["reward_transform"])
        if self.hotwire is not None and "hotwire" in state:
            self.hotwire.load_state_dict(state["hotwire"])
        if state.get("envs") is None:
            return  # saved after an env error: keep the fresh envs and carry
        self.envs.set_state(state["envs"])
        if not getattr(self.envs, "restores_exactly", True):
            # Envs that cannot be copied (e.g. Box2D) restart every env on a new episode after a resume.
            start = self.envs.reset()
            self.obs = self.agent.normalize_obs(start.obs, update=False)
            self.first = torch.ones(self.envs.num_envs, dtype=torch.bool)
            self.prev_action = self._zero_actions(self.envs.num_envs)
            self.prev_reward = torch.zeros(self.envs.num_envs)
            self.core_state = self.agent.initial_state(self.envs.num_envs, self.device)
            return
        self.obs = state["obs"]
        self.first = state["first"]
        self.prev_action = state["prev_action"]
        self.prev_reward = state["prev_reward"]
        self.core_state = tuple(s.to(self.device) for s in state["core_state"])

    @torch.no_grad()
    def collect(self, agent: Agent, num_steps: int | None = None, global_step: int = 0) -> Rollout:
        cfg, B, dev = self.cfg, self.envs.num_envs, self.device
        T = num_steps or cfg.num_steps
        H = agent.critic.num_heads
        A = self.envs.num_actions if self.continuous else 1
        obs = torch.empty((T, B, *self.obs.shape[1:]), dtype=self.obs.dtype)
        first = torch.empty((T, B), dtype=torch.bool)
        prev_action = torch.empty((T, *self.prev_action.shape), dtype=self.prev_action.dtype)
        prev_reward = torch.empty((T, B))
        actions = self._zero_actions(T, B)
        logprobs = torch.empty((T, B))
        values = torch.empty((T, B, H))
        rewards = torch.empty((T, B))
        raw_rewards = torch.empty((T, B))
        dones = torch.empty((T, B), dtype=torch.bool)
        extra = [] if self.reward_transform is not None else None
        bootstrap = cfg.bootstrap_truncation
        truncated = torch.zeros((T, B), dtype=torch.bool) if bootstrap else None
        final_values = torch.zeros((T, B, H)) if bootstrap else None
        alphas: list[torch.Tensor] = []
        episodes: list[EpisodeStats] = []
        initial_state = tuple(s.clone() for s in self.core_state)
        if self.hotwire is not None:
            self.hotwire.begin_segment(global_step, cfg.total_timesteps)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        # A core that does not read the previous action and reward gets zeros (what it would ignore anyway):
        # two tensor ops less per step where steps are cheapest (MuJoCo's one env).
        feed_prev = getattr(agent.core, "prev_action_reward", False)
        # The per-step writes go through numpy views of the buffers (a numpy store costs a fraction of a torch
        # one); on the CPU the agent reads the carried tensors as they are. With one MuJoCo env the collector's
        # own per-step cost is what separates us from a plain loop (benchmarks/ppo_mujoco_vs_cleanrl.py).
        on_cpu = dev.type == "cpu"
        obs_np, first_np, prev_action_np, prev_reward_np = obs.numpy(), first.numpy(), prev_action.numpy(), prev_reward.numpy()
        actions_np, logprobs_np, values_np = actions.numpy(), logprobs.numpy(), values.numpy()
        rewards_np, raw_rewards_np, dones_np = rewards.numpy(), raw_rewards.numpy(), dones.numpy()
        to_float = (lambda x: x.float()) if cfg.bf16 else (lambda x: x)  # outputs are float32 without autocast
        # Inference mode (no autograd bookkeeping on any tensor made here) takes ~7% off a MuJoCo step; what
        # leaves this block for the update (initial state above, next value, alphas, extra rewards) is made or
        # copied outside it, because an inference tensor cannot be saved for a backward pass.
        with torch.inference_mode():
            if not feed_prev:  # the carried previous action and reward stay as they are for the whole rollout
                prev_action_np[:], prev_reward_np[:] = self.prev_action.numpy(), self.prev_reward.numpy()
                prev_inputs = (self.prev_action.to(dev)[None], self.prev_reward.to(dev)[None])
            for t in range(T):
                obs_np[t], first_np[t] = self.obs.numpy(), self.first.numpy()
                if feed_prev:
                    prev_action_np[t], prev_reward_np[t] = self.prev_action.numpy(), self.prev_reward.numpy()
                    prev_inputs = (self.prev_action.to(dev)[None], self.prev_reward.to(dev)[None])
                if on_cpu:
                    inputs = (self.obs[None], self.first[None], *prev_inputs)
                else:
                    inputs = (self.obs.to(dev, non_blocking=True)[None], self.first.to(dev)[None], *prev_inputs)
                with autocast:
                    out = agent(*inputs, self.core_state, normalized=True)
                logits = to_float(out.logits[0])
                dist = agent.distribution(logits)
                action = dist.sample()
                if self.hotwire is not None:
                    action = self.hotwire.apply(action)
                # One device->host copy per step instead of one per tensor: on CUDA each copy waits for the device.
                # A discrete action travels as a float, exact for any action count below 2**24.
                action_cols = action if self.continuous else action.to(logits.dtype)[:, None]
                parts = [action_cols, dist.log_prob(action)[:, None], to_float(out.values[0])]
                if "alpha" in out.extras:
                    parts.append(to_float(out.extras["alpha"][0]))
                host = (torch.cat(parts, dim=1) if on_cpu else torch.cat(parts, dim=1).cpu()).numpy()
                if self.continuous:
                    actions_np[t] = host[:, :A]
                else:
                    actions_np[t] = host[:, 0]  # float -> int64, exact (see above)
                logprobs_np[t] = host[:, A]
                values_np[t] = host[:, A + 1 : A + 1 + H]
                if "alpha" in out.extras:
                    alphas.append(torch.from_numpy(host[:, A + 1 + H :]))
                self.core_state = out.state
                step = self.envs.step(actions_np[t])
                done = step.first
                raw_rewards_np[t] = step.reward
                rewards_np[t] = self.normalizer(step.reward.astype(np.float64), done)
                dones_np[t] = done
                if self.hotwire is not None:
                    self.hotwire.observe(raw_rewards[t])
                if extra is not None:
                    extra.append(self.reward_transform.step(raw_rewards[t], self.first))
                if step.episodes:
                    episodes.extend(step.episodes)
                final_obs = getattr(step, "final_obs", None)
                if bootstrap and final_obs is not None and (step.truncated & ~step.terminated).any():
                    # A time limit is not a terminal state: the return goes on past the cut, so the value of the
                    # episode's last observation (not the reset one) bootstraps it (issue 16; SB3 does the same).
                    cut = torch.as_tensor(step.truncated & ~step.terminated)  # a termination wins
                    last = agent.normalize_obs(final_obs, update=False)
                    with autocast:
                        out_final = agent(
                            last.to(dev)[None], torch.zeros(1, B, dtype=torch.bool, device=dev),
                            actions[t].to(dev)[None], raw_rewards[t].to(dev)[None], self.core_state, normalized=True,
                        )
                    truncated[t] = cut
                    final_values[t] = torch.where(cut[:, None], out_final.values[0].float().cpu(), 0.0)
                self.obs = agent.normalize_obs(step.obs, update=True)
                self.first = torch.as_tensor(done)
                if feed_prev:
                    keep = self.first[:, None] if self.continuous else self.first
                    self.prev_action = torch.where(keep, 0, actions[t])
                    self.prev_reward = torch.where(self.first, 0.0, raw_rewards[t])
            with autocast:
                out = agent(
                    self.obs.to(dev)[None], self.first.to(dev)[None], self.prev_action.to(dev)[None],
                    self.prev_reward.to(dev)[None], self.core_state, normalized=True,
                )
        return Rollout(
            obs=obs, first=first, prev_action=prev_action, prev_reward=prev_reward, actions=actions,
            logprobs=logprobs, values=values, rewards=rewards, raw_rewards=raw_rewards, dones=dones,
            initial_state=tuple(s.cpu() for s in initial_state), next_value=out.values[0].float().cpu().clone(),
            alpha=torch.stack(alphas) if alphas else None, episodes=episodes,
            extra_rewards=torch.stack(extra)[..., None] if extra else None,
            policy_mask=self.hotwire.policy_mask(T) if self.hotwire is not None else None,
            truncated=truncated, final_values=final_values,
        )
