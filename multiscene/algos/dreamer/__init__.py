"""DreamerV2 (Hafner et al. 2020, arXiv 2010.02193) for multi-level pre-training (seed 003, SPEC §6; issue 13).

Parts, in the order a train step uses them:

- ``replay.py``      whole episodes; sequences of ``seq_len`` padded past the end with an absorbing state
- ``rssm.py``        the recurrent state-space model (GRU + 32 categorical latents of 32 classes)
- ``world_model.py`` encoder, decoder, reward and discount heads, KL balancing; the loss as named terms
- ``behavior.py``    actor and critic trained on imagined rollouts with lambda-returns
- ``loop.py``        prefill -> collect -> train every ``train_every`` env steps -> log -> checkpoint -> evaluate

``DreamerConfig`` (the ``--dreamer.*`` flags) lives here so every part can read it without importing the loop.
Defaults are DreamerV2's Atari settings: ``danijar/dreamerv2`` ``dreamerv2/configs.yaml``, section ``atari``
over ``defaults`` (the last version of that file); each field's docstring names its key there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from multiscene.config import ConfigError

if TYPE_CHECKING:
    from multiscene.config import TrainConfig

DreamerSize = Literal["small", "paper"]
ActorGrad = Literal["auto", "reinforce", "dynamics", "both"]
RewardTransform = Literal["tanh", "identity"]


@dataclass(frozen=True)
class SizeSpec:
    """Network widths picked by ``--dreamer.size`` (derived, never written into the config)."""

    deter: int
    """GRU state size (configs.yaml ``rssm.deter``)."""
    hidden: int
    """Width of the RSSM's input/output layers (``rssm.hidden``)."""
    stoch: int
    """Number of categorical latents (``rssm.stoch``)."""
    classes: int
    """Classes per latent (``rssm.discrete``)."""
    cnn_depth: int
    """Channels of the first conv layer; doubled at each of the 4 layers (``encoder.cnn_depth``)."""
    mlp_units: int
    """Width of the reward/discount heads, actor, critic and the vector encoder/decoder (``*.units``)."""
    mlp_layers: int
    """Hidden layers of those MLPs (``*.layers``)."""


SIZES: dict[str, SizeSpec] = {
    # configs.yaml atari: rssm {hidden: 600, deter: 600, stoch: 32, discrete: 32}; heads 4 x 400; cnn_depth 48.
    "paper": SizeSpec(deter=600, hidden=600, stoch=32, classes=32, cnn_depth=48, mlp_units=400, mlp_layers=4),
    # Ours, for the 2-core CPU: the same latent layout (32 x 32, issue 13 asks for it), narrower networks.
    "small": SizeSpec(deter=128, hidden=128, stoch=32, classes=32, cnn_depth=16, mlp_units=128, mlp_layers=2),
}


@dataclass(frozen=True)
class DreamerConfig:
    """DreamerV2 options (``--dreamer.*``); defaults are DreamerV2's Atari settings unless a docstring says
    otherwise."""

    size: DreamerSize = "paper"
    """Network widths: ``paper`` (DreamerV2 Atari: GRU 600, MLPs 4 x 400, CNN depth 48) or ``small`` (ours for
    the CPU: GRU 128, MLPs 2 x 128, CNN depth 16; both keep 32 latents x 32 classes)."""
    batch_size: int = 16
    """Sequences per world-model batch (configs.yaml ``dataset.batch``)."""
    seq_len: int = 50
    """Length L of each sampled sequence (``dataset.length``)."""
    train_every: int = 16
    """One train step every this many env steps (``atari.train_every``; env steps after action repeat)."""
    train_steps: int = 1
    """Train steps each time (``train_steps``)."""
    prefill: int = 50_000
    """Env steps of a uniformly random policy before training starts; counted in --total-timesteps
    (``atari.prefill``)."""
    replay_capacity: int = 2_000_000
    """Replay size in env steps; the oldest whole episodes are dropped beyond it (``replay.capacity``)."""
    horizon: int = 15
    """Imagination horizon H (``imag_horizon``)."""
    gamma: float = 0.999
    """Discount of imagined returns; multiplies the discount head's continuation probability
    (``atari.discount``)."""
    return_lambda: float = 0.95
    """Lambda of the lambda-returns (``discount_lambda``)."""
    kl_balance: float = 0.8
    """KL balancing alpha: weight of KL(sg(post) || prior), which trains the prior (``kl.balance``)."""
    kl_free: float = 0.0
    """Free nats: each side of the balanced KL is clipped below at this many nats, after averaging over the
    batch (``kl.free`` 0.0 and ``kl.free_avg`` True for Atari)."""
    kl_scale: float = 0.1
    """Weight of the KL term in the world-model loss (``atari.loss_scales.kl``)."""
    image_scale: float = 1.0
    """Weight of the image (decoder) term (``loss_scales`` default 1)."""
    reward_scale: float = 1.0
    """Weight of the reward term (``loss_scales.reward``)."""
    discount_scale: float = 5.0
    """Weight of the discount term (``atari.loss_scales.discount``)."""
    model_lr: float = 2e-4
    """World-model Adam learning rate (``atari.model_opt.lr``)."""
    actor_lr: float = 4e-5
    """Actor Adam learning rate (``atari.actor_opt.lr``)."""
    critic_lr: float = 1e-4
    """Critic Adam learning rate (``atari.critic_opt.lr``)."""
    adam_eps: float = 1e-5
    """Adam epsilon of all three optimizers (``*_opt.eps``)."""
    max_grad_norm: float = 100.0
    """Global gradient-norm clip of each optimizer (``*_opt.clip``)."""
    weight_decay: float = 1e-6
    """Decoupled weight decay of each optimizer (``*_opt.wd``; AdamW here)."""
    actor_ent: float = 1e-3
    """Entropy regularization eta of the actor (``atari.actor_ent``)."""
    actor_grad: ActorGrad = "auto"
    """Actor gradient: Reinforce, dynamics backprop, or a mix; ``auto`` = Reinforce for discrete actions and
    dynamics for continuous ones (``actor_grad: auto``)."""
    actor_grad_mix: float = 0.1
    """With ``both``: weight of the dynamics gradient, 1 - it for Reinforce (``actor_grad_mix``)."""
    slow_target_update: int = 100
    """Copy the critic into the slow target critic every this many train steps (``slow_target_update``)."""
    slow_target_fraction: float = 1.0
    """Fraction of the copy (1 = hard copy; ``slow_target_fraction``)."""
    reward_transform: RewardTransform = "tanh"
    """Transform of env rewards before the world model sees them (``atari.clip_rewards: tanh``; seed 003
    §5.2 reuses every Atari setting, so Mario's [-15, 15] rewards are also squashed). Logged returns are raw."""
    log_every: int = 10_000
    """Write a metrics record every this many env steps (``atari.log_every``)."""
    checkpoint_every: int = 100_000
    """Write a checkpoint (weights, optimizers, replay) every this many env steps, and at the end (ours)."""
    checkpoint_replay_steps: int = 100_000
    """Resume: the newest whole episodes up to this many steps are saved with each checkpoint (ours; the full
    2M-step replay of 64x64 frames would be 8 GB). A resumed run has lost the older episodes; 0 saves none."""

    @property
    def widths(self) -> SizeSpec:
        return SIZES[self.size]

    def validate(self, cfg: TrainConfig) -> None:
        validate_dreamer(self)
        if cfg.algo == "dreamer":
            from multiscene.algos.dreamer.loop import refuse_unused_choices

            refuse_unused_choices(cfg)


def validate_dreamer(d: DreamerConfig) -> None:
    """Raise ConfigError naming the ``--dreamer.*`` flag and what is allowed."""
    if d.size not in SIZES:
        raise ConfigError(f"--dreamer.size must be one of {', '.join(SIZES)}; got {d.size!r}.")
    for name in ("batch_size", "seq_len", "train_every", "train_steps", "replay_capacity", "horizon",
                 "slow_target_update", "log_every", "checkpoint_every"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"--dreamer.{name.replace('_', '-')} must be positive, got {getattr(d, name)}.")
    if d.prefill < 0 or d.checkpoint_replay_steps < 0:
        raise ConfigError("--dreamer.prefill and --dreamer.checkpoint-replay-steps must be >= 0.")
    if d.seq_len > d.replay_capacity:
        raise ConfigError(
            f"--dreamer.seq-len ({d.seq_len}) is longer than the replay holds (--dreamer.replay-capacity "
            f"{d.replay_capacity} steps); lower the sequence length or raise the capacity."
        )
    if not 0.0 < d.gamma <= 1.0 or not 0.0 <= d.return_lambda <= 1.0:
        raise ConfigError("--dreamer.gamma must lie in (0, 1] and --dreamer.return-lambda in [0, 1].")
    if not 0.0 <= d.kl_balance <= 1.0:
        raise ConfigError(f"--dreamer.kl-balance must lie in [0, 1], got {d.kl_balance}.")
    if not 0.0 <= d.actor_grad_mix <= 1.0:
        raise ConfigError(f"--dreamer.actor-grad-mix must lie in [0, 1], got {d.actor_grad_mix}.")
    if d.actor_grad not in ("auto", "reinforce", "dynamics", "both"):
        raise ConfigError(
            f"--dreamer.actor-grad must be one of auto, reinforce, dynamics, both; got {d.actor_grad!r}."
        )
    if d.reward_transform not in ("tanh", "identity"):
        raise ConfigError(f"--dreamer.reward-transform must be tanh or identity; got {d.reward_transform!r}.")
    for name in ("kl_free", "kl_scale", "image_scale", "reward_scale", "discount_scale", "actor_ent",
                 "weight_decay"):
        if getattr(d, name) < 0:
            raise ConfigError(f"--dreamer.{name.replace('_', '-')} must be >= 0, got {getattr(d, name)}.")
    for name in ("model_lr", "actor_lr", "critic_lr", "adam_eps", "max_grad_norm"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"--dreamer.{name.replace('_', '-')} must be positive, got {getattr(d, name)}.")
    if not 0.0 < d.slow_target_fraction <= 1.0:
        raise ConfigError(f"--dreamer.slow-target-fraction must lie in (0, 1], got {d.slow_target_fraction}.")


__all__ = ["SIZES", "DreamerConfig", "SizeSpec", "validate_dreamer"]


class Dreamer:
    """``--algo dreamer``: DreamerV2's own loop (replay -> world model -> imagination -> actor-critic;
    multiscene/algos/dreamer/loop.py); options in ``--dreamer.*``."""

    name = "dreamer"
    family = "dreamer"
    config_group = ("dreamer", DreamerConfig)
    critics = ("scalar",)
    """The only ``--critic`` accepted (``multiscene.config.check_critic_choice``); it names DreamerV2's own."""
    critics_reason = (
        "DreamerV2 trains its own value network, a scalar MLP on the RSSM state fitted to imagined lambda-returns "
        "(multiscene/algos/dreamer/behavior.py), and builds no critic of the registry"
    )
    not_data_parallel = "DreamerV2 trains from one process's replay"

    @classmethod
    def train(cls, cfg: TrainConfig) -> Path:
        from multiscene.algos.dreamer.loop import train

        return train(cfg, cfg.dreamer, cfg.init_from)  # type: ignore[attr-defined]
