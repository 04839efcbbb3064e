"""Hot-wiring exploration of A2MC (seed 004, §5, eq. 11; SPEC §4): a boost for envs that look trapped.

"Being handed a game-stick, a human would try out all the buttons": during an initial stage of training, an env
that has not received one non-zero reward yet may, at the start of an n-step segment (one rollout), press one
uniformly random button for the whole segment instead of sampling the policy. The seed's footnote: the
mechanism is *enabled*, not *enforced*, so it fires only for envs that look trapped, and never once they have
seen a reward.

Choices that are ours (the seed gives the mechanism, not these details):

- initial stage: the first ``fraction`` (default 0.05) of ``--total-timesteps``, judged at each segment start
  (a segment that starts inside the stage runs to its end); probability ``epsilon`` (default 0.2) per trapped
  env per segment, drawn independently from a generator seeded by the run's seed;
- "trapped": no non-zero raw env reward since the start of training, in any episode. The forced action keeps
  going across an episode end inside the segment;
- the policy loss: steps of a hot-wired segment are **excluded** from the policy-gradient and entropy terms
  (``policy_mask``), while both value heads still learn from them. The forced actions come from a different
  behaviour (for steps after the first, a deterministic repeat) for which no useful importance ratio exists:
  pi(a|s) / 1 would be tiny and unbounded in the other direction at the first step, and clipping it as PPO does
  would hide the problem rather than correct it. Excluding them keeps the policy gradient on-policy; the
  rewards hot-wiring discovers still reach the policy through the value heads' targets (the returns of those
  steps are the realized rewards, and they are what the boost is for), which then shape the advantages of the
  on-policy segments that follow. A segment of a hot-wired env is all-or-nothing, so the mask is per env.
- Discrete actions only (a "button" is a discrete action); continuous actions raise ConfigError naming
  --hotwire, as does an algorithm without n-step segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from multiscene.config import ConfigError

__all__ = ["SEGMENT_ALGOS", "HotWire", "HotwireConfig", "policy_mask", "validate_hotwire"]

SEGMENT_ALGOS: tuple[str, ...] = ("ppo", "a2c", "acktr")
"""Algorithms that collect n-step segments (rollouts), the unit hot-wiring repeats an action over."""


@dataclass(frozen=True)
class HotwireConfig:
    """Hot-wiring exploration (seed 004, §5; SPEC §4), flags ``--hotwire-cfg.*``; ``--hotwire`` switches it on."""

    fraction: float = 0.05
    """Initial stage: hot-wiring may fire only at segments that start within this fraction of
    --total-timesteps (seed 004, §6: "the first [...] of the total training period"; 5% is SPEC §4's choice)."""
    epsilon: float = 0.2
    """Probability that a trapped env is hot-wired at the start of a segment (SPEC §4's choice: 0.2)."""

    def validate(self, cfg: Any) -> None:
        """Called by ``multiscene.config.validate``: checks ``--algo`` when ``cfg.hotwire`` is on. Continuous
        actions are only known once the env exists; ``HotWire(..., continuous=True)`` refuses them then."""
        if getattr(cfg, "hotwire", False):
            validate_hotwire(self, algo=getattr(cfg, "algo", None))
        else:
            validate_hotwire(self)


def validate_hotwire(cfg: HotwireConfig, *, continuous: bool = False, algo: str | None = None) -> None:
    """Raise ConfigError for a hot-wiring set-up that cannot work, naming the flag and what is allowed.

    ``continuous``: the env's actions are continuous (MuJoCo); ``algo``: the ``--algo`` name, if known.
    """
    if continuous:
        raise ConfigError(
            "--hotwire needs discrete actions (it presses one random button for a whole segment); this env's "
            "actions are continuous. Drop --hotwire for MuJoCo tasks."
        )
    if algo is not None and algo not in SEGMENT_ALGOS:
        raise ConfigError(
            f"--hotwire needs an algorithm that collects n-step segments ({', '.join(SEGMENT_ALGOS)}); got "
            f"--algo {algo}."
        )
    if not 0.0 <= cfg.fraction <= 1.0:
        raise ConfigError(f"--hotwire-cfg.fraction must be in [0, 1] (share of training), got {cfg.fraction}.")
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise ConfigError(f"--hotwire-cfg.epsilon must be a probability in [0, 1], got {cfg.epsilon}.")


def policy_mask(hotwired: torch.Tensor, num_steps: int) -> torch.Tensor:
    """hotwired [B] bool (envs forced this segment) -> [T, B] bool, true where a step enters the policy loss.

    The loop multiplies the per-step policy-gradient and entropy terms by this mask and averages over its true
    entries (and normalizes advantages over them); the value loss keeps every step.
    """
    assert hotwired.dim() == 1, f"hotwired must be [B], got {tuple(hotwired.shape)}"
    return (~hotwired.to(torch.bool)).unsqueeze(0).expand(num_steps, hotwired.shape[0]).clone()


class HotWire:
    """Per-env hot-wiring state, vectorized over envs.

    Per segment the loop calls ``begin_segment(global_step, total_timesteps)`` before the first step, then at
    every step replaces the sampled actions with ``apply(actions)`` (or ``torch.where(hotwired, forced_actions(),
    actions)``) and, after the env step, ``observe(raw_reward)``. ``metrics()`` gives the counters to log.
    """

    def __init__(
        self, num_envs: int, num_actions: int, cfg: HotwireConfig, seed: int, *, continuous: bool = False
    ) -> None:
        validate_hotwire(cfg, continuous=continuous)
        if num_envs < 1 or num_actions < 1:
            raise ValueError(f"HotWire needs num_envs, num_actions >= 1; got {num_envs}, {num_actions}")
        self.num_envs = num_envs
        self.num_actions = num_actions
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)
        self.trapped = torch.ones(num_envs, dtype=torch.bool)
        """[B] no non-zero reward seen yet."""
        self.hotwired = torch.zeros(num_envs, dtype=torch.bool)
        """[B] forced during the current segment."""
        self._forced = torch.full((num_envs,), -1, dtype=torch.long)
        self.segments_hotwired_total = 0
        """Env-segments hot-wired since the start of training."""

    def in_initial_stage(self, global_step: int, total_timesteps: int) -> bool:
        """True when a segment starting at ``global_step`` lies in the first ``fraction`` of training."""
        return global_step < self.cfg.fraction * total_timesteps

    def begin_segment(self, global_step: int, total_timesteps: int) -> torch.Tensor:
        """Decide which envs are hot-wired for the segment starting now -> hotwired [B] bool.

        Inside the initial stage each trapped env is hot-wired with probability epsilon and gets one uniformly
        random action for the whole segment; outside it nothing fires. The draws are made for every env at
        every segment (also outside the stage), so the generator's stream does not depend on who is trapped.
        """
        coins = torch.rand(self.num_envs, generator=self.generator)
        buttons = torch.randint(self.num_actions, (self.num_envs,), generator=self.generator)
        active = self.in_initial_stage(global_step, total_timesteps)
        self.hotwired = self.trapped & (coins < self.cfg.epsilon) if active else torch.zeros_like(self.trapped)
        self._forced = torch.where(self.hotwired, buttons, torch.full_like(buttons, -1))
        self.segments_hotwired_total += int(self.hotwired.sum())
        return self.hotwired.clone()

    def forced_actions(self) -> torch.Tensor:
        """[B] long: the repeated action of each hot-wired env; -1 where the env samples its policy."""
        return self._forced.clone()

    def apply(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [B] sampled from the policy -> [B] with the forced action where the env is hot-wired."""
        assert actions.shape == (self.num_envs,), f"actions must be [{self.num_envs}], got {tuple(actions.shape)}"
        hotwired = self.hotwired.to(actions.device)
        return torch.where(hotwired, self._forced.to(device=actions.device, dtype=actions.dtype), actions)

    def observe(self, raw_reward: torch.Tensor) -> None:
        """raw_reward [B] of the last env step: an env that received a non-zero reward is never trapped again."""
        reward = torch.as_tensor(raw_reward).reshape(-1).cpu()
        assert reward.shape == (self.num_envs,), f"raw_reward must be [{self.num_envs}], got {tuple(reward.shape)}"
        self.trapped &= reward == 0

    def policy_mask(self, num_steps: int) -> torch.Tensor:
        """[T, B] bool for the current segment: see the module-level ``policy_mask``."""
        return policy_mask(self.hotwired, num_steps)

    def metrics(self) -> dict[str, float]:
        """Counters to log per update: envs hot-wired this segment, envs still trapped, and the running total."""
        return {
            "hotwire/envs_hotwired": float(self.hotwired.sum()),
            "hotwire/envs_trapped": float(self.trapped.sum()),
            "hotwire/segments_hotwired_total": float(self.segments_hotwired_total),
        }

    def state_dict(self) -> dict[str, object]:
        return {
            "generator": self.generator.get_state(),
            "trapped": self.trapped.clone(),
            "hotwired": self.hotwired.clone(),
            "forced": self._forced.clone(),
            "segments_hotwired_total": self.segments_hotwired_total,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        trapped = state["trapped"]
        assert isinstance(trapped, torch.Tensor)
        if trapped.shape != (self.num_envs,):
            raise ValueError(
                f"HotWire state is for {trapped.shape[0]} envs, this run has {self.num_envs} (--num-envs must match)."
            )
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.trapped = trapped.clone()
        self.hotwired = state["hotwired"].clone()  # type: ignore[attr-defined]
        self._forced = state["forced"].clone()  # type: ignore[attr-defined]
        self.segments_hotwired_total = int(state["segments_hotwired_total"])  # type: ignore[call-overload]
