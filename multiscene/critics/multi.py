"""The multi-critic of A2MC and MC-PPO (seed 004, §4.2; SPEC §3.5): an env-reward head and a VWR head.

Two value heads share the trunk (the core output): V on the environment reward and V_vwr on the
variability-weighted reward (``multiscene.rewards.vwr``). Each head gets its own returns from its own reward
with the same gamma (seed 004, eqs. 8-9: n-step returns for A2C/ACKTR, GAE for PPO; the loop's
``compute_gae`` takes the trailing head dimension), the value loss is summed over the heads (seed eq. 10),
and the policy advantage is ``A_env + beta * A_vwr`` (``--multi.beta``, default 1, ours: the seed adds the two).

The env head may be a plain scalar head (the seed's) or a DVE mixture (``--multi.env-head dve`` or
``sparse-dve``; SPEC §3.2-3.4), a composition no paper has tried: its extras (``alpha``, ``cluster_values``),
L_CC terms and diagnostics pass through unchanged, so the loop's CC schedule and DVE logging work as for
``--critic sparse-dve``.

Reward scaling of the VWR head (ours; the seed does not say): the VWR of ``multiscene.rewards.vwr`` is
asinh(r_t) / T times a weight in [0, 1], about 20 times smaller than a reward of 1, while the env head learns the
trainer's normalized reward. Left as is, A_vwr would be a rounding error beside A_env and beta would lose its
meaning. With ``--multi.vwr-norm match-env`` (default) the critic multiplies the VWR by the ratio of the running
RMS of the env-head reward to the running RMS of the VWR (both over every step seen so far, float64 buffers
saved with the weights), so that both heads learn rewards of the same size and beta = 1 weighs them equally.
The ratio is 1 until a non-zero VWR has been seen; VWR is 0 exactly where the env reward is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from multiscene.config import ConfigError, DVEConfig
from multiscene.critics.base import Critic, CriticOutput
from multiscene.critics.dve import DVECritic
from multiscene.critics.scalar import ScalarCritic
from multiscene.rewards.vwr import RunningVWR, VWRConfig

__all__ = ["ENV_HEADS", "MultiConfig", "MultiCritic", "validate_multi"]

EnvHeadName = Literal["scalar", "dve", "sparse-dve"]
ENV_HEADS: tuple[str, ...] = ("scalar", "dve", "sparse-dve")


@dataclass(frozen=True)
class MultiConfig:
    """Multi-critic of A2MC / MC-PPO (seed 004, §4.2; SPEC §3.5), flags ``--multi.*``."""

    beta: float = 1.0
    """Weight of the VWR head's advantage in the policy advantage A_env + beta * A_vwr (ours: the seed sums
    them, i.e. 1)."""
    env_head: EnvHeadName = "scalar"
    """The env-reward head: scalar (seed 004), dve or sparse-dve (the DVE mixture of SPEC §3.2, read from the
    ``--dve.*`` group; sparse-dve adds L_CC). The VWR head is always scalar."""
    vwr_norm: Literal["match-env", "none"] = "match-env"
    """Scale of the VWR head's reward (ours): match-env rescales VWR to the running RMS of the env-head reward;
    none uses VWR as computed."""

    def validate(self, cfg: Any) -> None:
        """Called by ``multiscene.config.validate`` with the whole training config (reads ``cfg.dve``)."""
        validate_multi(self)
        if self.env_head == "sparse-dve" and cfg.dve.num_clusters < 2:
            raise ConfigError(
                f"--multi.env-head sparse-dve needs --dve.num-clusters >= 2 (L_CC sparsifies the choice among "
                f"clusters), got {cfg.dve.num_clusters}."
            )


def validate_multi(cfg: MultiConfig) -> None:
    """Raise ConfigError naming the ``--multi.*`` flag and what is allowed."""
    if cfg.env_head not in ENV_HEADS:
        raise ConfigError(f"--multi.env-head must be one of {', '.join(ENV_HEADS)}; got {cfg.env_head!r}.")
    if not (math.isfinite(cfg.beta) and cfg.beta >= 0):
        raise ConfigError(f"--multi.beta must be a finite number >= 0 (default 1), got {cfg.beta}.")
    if cfg.vwr_norm not in ("match-env", "none"):
        raise ConfigError(f"--multi.vwr-norm must be match-env or none; got {cfg.vwr_norm!r}.")


class MultiCritic(Critic):
    """Heads ``("env", "vwr")`` on the shared core output; see the module docstring.

    ``forward`` returns values [T, B, 2] and the env head's extras (DVE: ``attention_logits``, ``alpha``,
    ``cluster_values``, each [T, B, N_b]). The loop's collector steps ``make_reward_transform``'s RunningVWR on
    the raw env reward and stores its output as ``extra[..., 0]``; ``head_rewards`` turns that into the VWR
    head's reward.
    """

    head_names: tuple[str, ...] = ("env", "vwr")
    config_group: tuple[str, type] | None = ("multi", MultiConfig)

    def __init__(self, core_dim: int, encoder_dim: int, multi: MultiConfig, dve: DVEConfig) -> None:
        super().__init__()
        validate_multi(multi)
        self.multi = multi
        self.beta = multi.beta
        self.env_head: Critic
        if multi.env_head == "scalar":
            self.env_head = ScalarCritic(core_dim)
        else:
            self.env_head = DVECritic(core_dim, encoder_dim, dve, sparse=multi.env_head == "sparse-dve")
        # Initialized as the scalar critic's (and CleanRL's) value head: orthogonal, gain 1, zero bias.
        self.vwr_head = nn.Linear(core_dim, 1)
        nn.init.orthogonal_(self.vwr_head.weight, 1.0)
        nn.init.constant_(self.vwr_head.bias, 0.0)
        # Running sums of squares of the env-head and VWR rewards (match-env scaling; their ratio is the
        # ratio of the RMS, so no count is needed); float64 buffers so they
        # are saved with the weights and a resumed run scales exactly as the uninterrupted one.
        self.register_buffer("reward_sq_sum", torch.zeros(2, dtype=torch.float64))
        self._last_vwr_mean = 0.0
        self._last_vwr_nonzero = 0.0

    @classmethod
    def from_config(cls, cfg: Any, core_dim: int, encoder_dim: int) -> MultiCritic:
        """Build from a training config with ``multi`` (MultiConfig) and ``dve`` (DVEConfig) groups."""
        return cls(core_dim, encoder_dim, cfg.multi, cfg.dve)

    @property
    def sparse(self) -> bool:
        """True when the env head is Sparse DVE (the loop then schedules the L_CC terms)."""
        return isinstance(self.env_head, DVECritic) and self.env_head.sparse

    def make_reward_transform(self, num_envs: int, cfg: Any) -> RunningVWR:
        """The collector's per-env VWR: ``cfg`` is a VWRConfig or a training config with a ``vwr`` group."""
        vwr = cfg if isinstance(cfg, VWRConfig) else cfg.vwr
        return RunningVWR.from_config(num_envs, vwr)

    def forward(self, core_out: torch.Tensor, encoder_out: torch.Tensor) -> CriticOutput:
        """core_out [T, B, D_core], encoder_out [T, B, D_enc] -> values [T, B, 2] (env, vwr) and the env
        head's extras."""
        assert core_out.dim() == 3, f"core_out must be [T, B, D_core], got {tuple(core_out.shape)}"
        env = self.env_head(core_out, encoder_out)
        values = torch.cat([env.values, self.vwr_head(core_out)], dim=-1)
        return CriticOutput(values=values, extras=env.extras)

    def vwr_reward_scale(self) -> float:
        """Factor applied to the VWR before the VWR head learns it (1 with --multi.vwr-norm none)."""
        if self.multi.vwr_norm == "none":
            return 1.0
        env_sq, vwr_sq = (float(v) for v in self.reward_sq_sum)
        if vwr_sq <= 0.0 or env_sq <= 0.0:
            return 1.0
        return math.sqrt(env_sq / vwr_sq)

    @torch.no_grad()
    def head_rewards(self, reward: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """reward [T, B] (the trainer's normalized env reward), extra [T, B, E] with the VWR in
        ``extra[..., 0]`` -> [T, B, 2]: (reward, scaled VWR).

        In training mode the call also folds this rollout into the running RMS of both rewards (match-env
        scaling), so the loop calls it once per rollout; in eval mode the statistics stay as they are.
        """
        if extra is None:
            raise ValueError(
                "MultiCritic.head_rewards needs the VWR as extra[..., 0]: the collector must step the critic's "
                "make_reward_transform() (RunningVWR) on the raw env reward each step (--critic multi)."
            )
        assert extra.shape[:2] == reward.shape and extra.dim() == 3, (
            f"extra {tuple(extra.shape)} must be [T, B, E] with [T, B] = {tuple(reward.shape)}"
        )
        vwr = extra[..., 0].to(reward.dtype)
        if self.training:
            squares = torch.stack([reward.double().pow(2).sum(), vwr.double().pow(2).sum()])
            self.reward_sq_sum += squares.to(self.reward_sq_sum.device)
        self._last_vwr_mean = float(vwr.float().mean())
        self._last_vwr_nonzero = float((vwr != 0).float().mean())
        return torch.stack([reward, vwr * self.vwr_reward_scale()], dim=-1)

    def combine_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """[T, B, 2] per-head advantages -> [T, B] policy advantage A_env + beta * A_vwr (SPEC §3.5)."""
        assert advantages.shape[-1] == 2, f"advantages must be [T, B, 2], got {tuple(advantages.shape)}"
        return advantages[..., 0] + self.beta * advantages[..., 1]

    def aux_losses(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The env head's terms unchanged: L_CC's ``cc_confusion``, ``cc_contribution`` for sparse-dve, none
        otherwise."""
        return self.env_head.aux_losses(out, mask, first)

    @torch.no_grad()
    def diagnostics(
        self, out: CriticOutput, mask: torch.Tensor, first: torch.Tensor | None = None
    ) -> dict[str, float]:
        """The env head's diagnostics (DVE: confusion, contribution, ...), plus ``vwr_mean`` (mean VWR of the
        last rollout given to ``head_rewards``, before scaling), ``vwr_nonzero`` (its share of non-zero steps)
        and ``vwr_reward_scale``. Per-head explained variance is the loop's, by head name."""
        metrics = dict(self.env_head.diagnostics(out, mask, first))
        metrics["vwr_mean"] = self._last_vwr_mean
        metrics["vwr_nonzero"] = self._last_vwr_nonzero
        metrics["vwr_reward_scale"] = self.vwr_reward_scale()
        return metrics
