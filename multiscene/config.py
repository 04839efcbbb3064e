"""Typed, frozen configuration for training (tyro turns it into the CLI).

Common fields are flat, CleanRL-style flags (``--env``, ``--num-envs``, ``--algo``, ``--critic``...). Each
algorithm's, critic's and auxiliary loss's own options live in their own group (``--dve.num-clusters``,
``--a2c.rms-alpha``). ``TrainConfig`` is ``CommonConfig`` plus one field per group, assembled from
``multiscene.registry`` at import: registering a part with a ``config_group`` is all it takes to add its flags.
Derived numbers are properties, never written back. Presets (``--preset NAME``) are plain Python functions
returning a config; every field stays overridable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from multiscene import registry as _registry

ScheduleName = Literal["off", "pre-boost", "post-boost", "post-boost-auto", "spread"]
SCHEDULES: tuple[str, ...] = ("off", "pre-boost", "post-boost", "post-boost-auto", "spread")
CONTRIBUTION_FORMS: tuple[str, ...] = ("paper", "normalized")


class ConfigError(ValueError):
    """Bad user input; the message names the field and what is allowed."""


@dataclass(frozen=True)
class DVEConfig:
    """Dynamic Value Estimation and Sparse DVE (SPEC §3.2-§3.4; seeds 000, 001)."""

    num_clusters: int = 3
    """N_b, the number of value clusters. Default 3: the CoinRun skill figure of seed 000 shows three."""
    cluster_input: Literal["core", "encoder"] = "core"
    """What the cluster means V_i read: the core output (trajectory latent, the seeds' choice) or the
    per-frame encoder output. The attention alpha always reads the core output."""
    k1: float = 0.02
    """Weight of the confusion term E[log delta] of L_CC (per game in seed 000 and unpublished; ours)."""
    k2: float = 0.02
    """Weight of the contribution term E[log sum_i rho_i^2] of L_CC (unpublished; ours)."""
    schedule: ScheduleName = "pre-boost"
    """When L_CC is on (sparse-dve only): off; pre-boost (ramped from step 0); post-boost (from a fixed
    step); post-boost-auto (once episode-length growth has flattened); spread (once the cluster means have
    spread apart: ``dve/cluster_spread`` >= --dve.spread-threshold; issue 14)."""
    preboost_fraction: float = 0.25
    """Pre-boost: fraction of the budget over which k1, k2 ramp linearly from 0 to their values."""
    postboost_step: int = 0
    """Post-boost: the env step at which L_CC switches on (unless --dve.postboost-fraction is set)."""
    postboost_fraction: float = 0.0
    """Post-boost: if > 0, L_CC switches on at this fraction of --total-timesteps instead of at
    --dve.postboost-step (a budget-independent setting; issue 14)."""
    auto_window: int = 10
    """Post-boost-auto: number of updates in each of the two windows whose mean episode lengths are compared."""
    auto_threshold: float = 0.05
    """Post-boost-auto: switch on once the relative growth of the mean episode length between the two
    windows falls below this."""
    auto_min_fraction: float = 0.1
    """Post-boost-auto: never switch on before this fraction of the budget (the state space must be
    explored first; seed 000 §4.1)."""
    trajectory: Literal["column", "episode"] = "column"
    """A trajectory tau for the contribution term: one environment's sequence in a minibatch (default) or
    that sequence split at episode starts."""
    contribution: Literal["paper", "normalized"] = "paper"
    """Form of L_CC's contribution term: paper (seed 000, eq. 3: log sum_i rho_i^2, which falls as confusion
    falls) or normalized (log sum_i (rho_i / sum_j rho_j)^2: collapse onto one cluster is its maximum)."""
    spread_threshold: float = 0.01
    """Spread schedule: L_CC switches on (for good) once the variance of the cluster means V_i across clusters,
    averaged over steps, reaches this (in squared units of the critic's value target)."""
    attention_trunk_grad: bool = True
    """Whether the attention's gradient (value loss through alpha, and L_CC) reaches the shared trunk (encoder and
    core). Off: alpha reads the trunk's output detached, so only the cluster means' gradient shapes the trunk, as a
    critic of N_b value heads would (for telling the attention's effect on the policy's features apart)."""
    attention_lr_scale: float = 1.0
    """Learning rate of the attention layer (alpha) relative to --learning-rate (its own optimizer param
    group; issue 14, lead 1). 1 = one group."""
    cc_grad_ratio: float = 0.0
    """If > 0: scale L_CC down so that its gradient norm on the attention layer is at most this multiple of the
    value loss's there (issue 14, lead 1; Adam otherwise turns any k into a full-size step). 0 = off."""


@dataclass(frozen=True)
class CommonConfig:
    """The fields every algorithm shares; ``TrainConfig`` adds one field per config group of the registry."""

    preset: str = "quickstart"
    """Named preset the other fields start from (quickstart, procgen-easy, procgen-hard, cleanrl-procgen,
    and one per seed-000 game, e.g. sparse-dve-coinrun)."""
    env: str = "MiniGrid-DoorKey-5x5-v0"
    """A Procgen game (coinrun, starpilot, ...; comma-separated for several) or a MiniGrid id."""
    seed: int = 1
    """Run seed: torch, numpy, Procgen's rand_seed and MiniGrid level draws derive from it."""
    num_envs: int = 16
    """Parallel environments for training."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    total_timesteps: int = 150_000
    """Training budget in environment steps."""
    run_dir: str | None = None
    """Where the run is written; default runs/<env>-<algo>-<critic>-s<seed>."""
    hotwire: bool = False
    """Hot-wiring exploration of A2MC (seed 004, §5; options in --hotwire-cfg.*). Discrete actions and the
    on-policy algorithms (ppo, a2c, acktr) only; impala and dreamer refuse it."""
    algo: str = "ppo"
    """Algorithm (multiscene/registry.py): ppo, a2c, acktr, impala, dreamer."""
    critic: str = "scalar"
    """Critic (multiscene/registry.py): scalar (RL² baseline), dve, sparse-dve, multi (A2MC's two heads). Every
    one works with ppo, a2c, acktr and impala; dreamer has its own value network and takes only scalar."""
    aux: str = "none"
    """Auxiliary loss trained with the RL loss (multiscene/registry.py): none."""
    encoder: str = "auto"
    """Per-frame encoder (multiscene/registry.py): auto picks by observation shape (64x64 images: impala,
    84x84 Atari stacks: nature, MiniGrid grids: minigrid, vectors: mlp)."""
    resume: bool = False
    """Continue the run in --run-dir from its last good checkpoint."""
    init_from: str | None = None
    """Start a NEW run from the weights of another run directory's latest good checkpoint (fine-tuning and
    transfer, seed 003); the optimizer and the counters start afresh."""
    overwrite: bool = False
    """Start afresh in a --run-dir that already holds a run (its old files are moved to a backup folder)."""

    # Environments
    distribution_mode: str = "easy"
    """Procgen distribution mode (easy, hard, ...)."""
    num_levels: int = 200
    """Training levels: seeds [start_level, start_level + num_levels); 0 = full distribution (Procgen)."""
    start_level: int = 0
    """First training level seed."""
    test_start_level: int | None = None
    """First test level seed; default right after the training range (disjoint)."""
    test_num_levels: int = 100_000
    """Test levels; 0 = full distribution (Procgen)."""
    num_threads: int = 4
    """Procgen worker threads per env set."""
    max_episode_steps: int | None = None
    """MiniGrid: override the env's step limit."""

    # Agent
    core: Literal["lstm", "none"] = "lstm"
    """Recurrent core (LSTM reset at episode starts; RL²) or none (feed-forward)."""
    hidden_size: int = 256
    """Width of the encoder output and of the LSTM."""
    prev_action_reward: bool = True
    """Feed the previous action and reward to the core (seed 002; SPEC §2)."""
    value_net: Literal["shared", "separate", "detached"] = "shared"
    """shared: the critic heads read the policy's encoder and core (one trunk, SPEC §2); separate: the critic
    has its own encoder of the same kind (CleanRL's ppo_continuous_action and baselines' MuJoCo agents have
    separate actor and critic MLPs), needs --core none; detached: the critic heads read the shared trunk but
    send no gradient into it (the trunk learns from the policy and auxiliary losses only; the value and critic
    losses train the heads), to tell what a critic's heads do to the shared features from what they predict."""

    # PPO (CleanRL names)
    learning_rate: float = 5e-4
    """Adam learning rate."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    adam_fused: bool = False
    """torch's fused Adam kernel (one kernel over every parameter; on the CPU ~3x faster per step than the
    per-tensor loop for small networks). The same algorithm, but it rounds differently in the last bit, so a
    run differs from an unfused one of the same seed; off by default to keep PPO's pinned results."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0."""
    update_epochs: int = 3
    """PPO epochs per rollout."""
    num_minibatches: int = 8
    """Minibatches per epoch; split by environment (whole sequences), or by step with --minibatch-by step."""
    minibatch_by: Literal["env", "step"] = "env"
    """env: minibatches of whole env sequences (needed by a recurrent core); step: of single transitions, as
    CleanRL's feed-forward scripts (only with --core none)."""
    clip_coef: float = 0.2
    """Policy ratio clip."""
    clip_vloss: bool = True
    """Clip the value loss around the old values."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    gamma: float = 0.999
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    norm_reward: bool = True
    """Divide rewards by a running std of the discounted return (same gamma)."""
    bootstrap_truncation: bool = True
    """At a time-limit truncation, bootstrap the return from the value of the episode's last observation
    (issue 16; GAE, n-step and V-trace targets); --no-bootstrap-truncation treats it as a termination, as
    CleanRL and train-procgen do (the Procgen and CleanRL-parity presets). Dreamer's discount head learns
    continuation at a time limit either way; the flag stores the cut episode's final frame. Envs that cannot
    tell truncation apart (Procgen) need it off."""
    target_kl: float | None = None
    """Stop the epochs of an update early past this approximate KL."""

    # Evaluation, checkpoints, logging
    eval_interval: int = 0
    """Evaluate every this many updates (0: only at the end)."""
    eval_episodes: int = 32
    """Episodes per split and per mode in an evaluation."""
    eval_num_envs: int = 16
    """Parallel envs for evaluation."""
    final_eval: bool = True
    """Evaluate on train and test levels at the end of training (eval/final.json)."""
    final_eval_steps: int | None = None
    """Cap on the env steps of each pass of the final evaluation (train and test x sampled and deterministic,
    and the random floor); a capped pass counts only the episodes that finished and eval/final.json marks it
    ``capped``. None: a tenth of --total-timesteps, at least 32 steps per eval env, so a small run's evaluation
    stays well under its training time (issue 15); 0: no cap. ``multiscene eval RUN --episodes N`` runs the
    full evaluation later."""
    eval_frames: int | None = None
    """Rendered frames kept per recorded episode of the final evaluation (the report's filmstrips and the frames
    of each cluster's states). None: 400, but 50 on MuJoCo, whose offscreen rendering costs 0.1-0.3 s a frame on
    a CPU (400 frames x 4 episodes x 2 splits took longer than the evaluation itself); 0: no frames."""
    checkpoint_interval: int = 10
    """Write a checkpoint every this many updates (and always at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept; older ones are deleted."""
    max_nonfinite_updates: int = 5
    """Stop after this many consecutive updates skipped for NaN/Inf (issue #6)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device; auto picks CUDA when available."""
    torch_threads: int = 0
    """torch.set_num_threads; 0 leaves torch's default."""
    bf16: bool = False
    """bf16 autocast for forward passes (fp32 master weights)."""
    deterministic_torch: bool = True
    """Ask torch for deterministic kernels (same seed -> same parameters)."""
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    """Progress display: rich bar on a terminal, plain log lines otherwise."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    track: bool = False
    """Log every metrics record also to Weights & Biases (CleanRL's --track); metrics.jsonl stays the source of
    truth; WANDB_MODE=offline logs without network."""
    wandb_project_name: str = "multiscene"
    """W&B project (CleanRL's --wandb-project-name)."""
    wandb_entity: str | None = None
    """W&B team or user (CleanRL's --wandb-entity); None: your default entity."""

    # Derived numbers (never written back into the config)
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def envs_per_minibatch(self) -> int:
        return self.num_envs // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    @property
    def env_family(self) -> str:
        """procgen, minigrid or gymnasium (multiscene.envs.env_family; from the id alone)."""
        from multiscene.envs import env_family

        return env_family(self.env)

    @property
    def is_procgen(self) -> bool:
        return self.env_family == "procgen"

    @property
    def is_minigrid(self) -> bool:
        return self.env_family == "minigrid"

    @property
    def test_levels_start(self) -> int:
        if self.test_start_level is not None:
            return self.test_start_level
        return self.start_level + self.num_levels

    @property
    def uses_cc_loss(self) -> bool:
        return self.critic == "sparse-dve" and self.dve.schedule != "off"  # type: ignore[attr-defined]


def _assemble_train_config() -> type:
    """CommonConfig + ``--algo``/``--critic``/``--aux`` as choices of the registry + one field per group."""
    registry = _registry

    def choices(names: list[str]) -> Any:
        return Literal[tuple(names)]  # type: ignore[valid-type]

    fields: list[tuple[str, Any, Any]] = [
        ("algo", choices(list(registry.ALGORITHMS)), field(default="ppo")),
        ("critic", choices(list(registry.CRITICS)), field(default="scalar")),
        ("aux", choices(["none", *registry.AUX_LOSSES]), field(default="none")),
        ("encoder", choices(["auto", *registry.ENCODERS]), field(default="auto")),
    ]
    for name, group in registry.config_groups().items():
        fields.append((name, group, field(default_factory=group)))  # type: ignore[arg-type]
    cls = dataclasses.make_dataclass(
        "TrainConfig", fields, bases=(CommonConfig,), frozen=True,
        namespace={"__doc__": "Train one agent across many levels of a game (``multiscene train``)."},
    )
    cls.__module__ = __name__
    return cls


if TYPE_CHECKING:
    TrainConfig = CommonConfig
else:
    TrainConfig = _assemble_train_config()

CRITICS: tuple[str, ...] = tuple(_registry.CRITICS)
ALGORITHMS: tuple[str, ...] = tuple(_registry.ALGORITHMS)


def group_names() -> tuple[str, ...]:
    """The config groups of TrainConfig (``dve``, ``a2c``, ...)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.type))


def replace(cfg: TrainConfig, **changes: object) -> TrainConfig:
    """dataclasses.replace that also accepts a dict of field changes for a group: ``dve={"k1": 0.1}``."""
    for name, value in list(changes.items()):
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(cfg, name, None)):
            changes[name] = dataclasses.replace(getattr(cfg, name), **value)
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from ``dataclasses.asdict`` output (config.json). Unknown keys are dropped and
    missing groups take their defaults, so runs written by older versions still load (they ran PPO)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            continue
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(default)}
            value = dataclasses.replace(default, **{k: v for k, v in value.items() if k in known})
        kwargs[name] = value
    return TrainConfig(**kwargs)


def critics_of(algo: str) -> tuple[str, ...]:
    """The ``--critic`` names ``--algo algo`` uses: its class's ``critics``, or every registered critic."""
    from multiscene import registry

    allowed = getattr(registry.load("algorithm", algo), "critics", None)
    return tuple(registry.CRITICS) if allowed is None else tuple(allowed)


def check_critic_choice(cfg: TrainConfig, algo: str | None = None) -> None:
    """Refuse a ``--critic`` that the algorithm (``algo``, default ``cfg.algo``) would silently ignore.

    An algorithm class declares ``critics`` (and ``critics_reason``) when it builds no critic of the registry:
    DreamerV2 learns its own value network in imagination, so it accepts only ``scalar``, which stands for it."""
    from multiscene import registry

    algo = algo or cfg.algo
    allowed = critics_of(algo)
    if cfg.critic in allowed:
        return
    every = [name for name in registry.ALGORITHMS if critics_of(name) == tuple(registry.CRITICS)]
    reason = getattr(registry.load("algorithm", algo), "critics_reason", "")
    raise ConfigError(
        f"--critic {cfg.critic} is not used by --algo {algo}{': ' + reason if reason else ''}. Allowed --critic "
        f"with --algo {algo}: {', '.join(allowed)}. Every critic ({', '.join(registry.CRITICS)}) works with "
        f"--algo {', '.join(every)}."
    )


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the field and what is allowed. Env ids are checked when envs are made."""
    if cfg.total_timesteps <= 0:
        raise ConfigError(f"--total-timesteps must be a positive number of env steps, got {cfg.total_timesteps}.")
    if cfg.num_envs <= 0:
        raise ConfigError(f"--num-envs must be positive, got {cfg.num_envs}.")
    if cfg.num_steps <= 0:
        raise ConfigError(f"--num-steps must be positive, got {cfg.num_steps}.")
    if cfg.minibatch_by == "step":
        if cfg.core != "none":
            raise ConfigError("--minibatch-by step needs --core none: a recurrent core trains on whole sequences.")
        if cfg.num_minibatches <= 0 or cfg.batch_size % cfg.num_minibatches != 0:
            raise ConfigError(
                f"--num-envs x --num-steps ({cfg.batch_size}) must be divisible by --num-minibatches "
                f"({cfg.num_minibatches}) with --minibatch-by step."
            )
    elif cfg.num_minibatches <= 0 or cfg.num_envs % cfg.num_minibatches != 0:
        raise ConfigError(
            f"--num-envs ({cfg.num_envs}) must be divisible by --num-minibatches ({cfg.num_minibatches}): "
            "minibatches are whole environment sequences. Allowed --num-minibatches: "
            f"{[d for d in range(1, cfg.num_envs + 1) if cfg.num_envs % d == 0]}."
        )
    if cfg.total_timesteps < cfg.batch_size:
        raise ConfigError(
            f"--total-timesteps ({cfg.total_timesteps}) is smaller than one rollout "
            f"(--num-envs x --num-steps = {cfg.batch_size}); at least one update needs {cfg.batch_size} steps."
        )
    from multiscene import registry

    for kind, attr in (("algorithm", "algo"), ("critic", "critic")):
        names = registry.KINDS[kind]
        if getattr(cfg, attr) not in names:
            raise ConfigError(f"--{attr} must be one of {', '.join(names)}; got {getattr(cfg, attr)!r}.")
    check_critic_choice(cfg)
    if cfg.aux != "none" and cfg.aux not in registry.AUX_LOSSES:
        raise ConfigError(f"--aux must be one of {', '.join(['none', *registry.AUX_LOSSES])}; got {cfg.aux!r}.")
    if cfg.num_levels < 0 or cfg.test_num_levels < 0 or cfg.start_level < 0:
        raise ConfigError("--num-levels, --test-num-levels and --start-level must be >= 0.")
    if cfg.is_minigrid and cfg.num_levels == 0:
        raise ConfigError("--num-levels must be > 0 for MiniGrid (a fixed set of training level seeds).")
    for name in ("update_epochs", "eval_episodes", "eval_num_envs", "checkpoint_interval", "keep_checkpoints",
                 "max_nonfinite_updates", "hidden_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}.")
    if cfg.value_net == "separate" and cfg.core != "none":
        raise ConfigError(
            "--value-net separate needs --core none (a separate critic trunk is an encoder of its own; with an "
            "LSTM core the critic reads the shared recurrent state); got --core " + cfg.core + "."
        )
    if cfg.bootstrap_truncation:
        from multiscene.envs import knows_truncation

        if not knows_truncation(cfg.env):
            raise ConfigError(
                f"--bootstrap-truncation: {cfg.env} cannot tell a time-limit cut from a termination (Procgen's "
                "gym3 interface reports both as done); pass --no-bootstrap-truncation (the Procgen presets do)."
            )
    if cfg.track:
        from multiscene.logger import require_wandb

        require_wandb()
    if cfg.eval_frames is not None and cfg.eval_frames < 0:
        raise ConfigError(f"--eval-frames must be >= 0 (0: no frames), got {cfg.eval_frames}.")
    if cfg.final_eval_steps is not None and cfg.final_eval_steps < 0:
        raise ConfigError(f"--final-eval-steps must be >= 0 (0: no cap), got {cfg.final_eval_steps}.")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"--learning-rate must be positive, got {cfg.learning_rate}.")
    if not 0.0 < cfg.gamma <= 1.0 or not 0.0 <= cfg.gae_lambda <= 1.0:
        raise ConfigError("--gamma must lie in (0, 1] and --gae-lambda in [0, 1].")
    for name in group_names():
        group = getattr(cfg, name)
        if hasattr(group, "validate"):
            group.validate(cfg)
    d = cfg.dve
    if d.num_clusters < 1:
        raise ConfigError(f"--dve.num-clusters must be >= 1, got {d.num_clusters}.")
    if cfg.critic == "sparse-dve" and d.num_clusters < 2:
        raise ConfigError(
            f"--dve.num-clusters must be >= 2 with --critic sparse-dve (L_CC needs clusters to choose "
            f"between), got {d.num_clusters}."
        )
    if d.k1 < 0 or d.k2 < 0:
        raise ConfigError(f"--dve.k1 and --dve.k2 must be >= 0, got k1={d.k1}, k2={d.k2}.")
    if d.schedule not in SCHEDULES:
        raise ConfigError(f"--dve.schedule must be one of {', '.join(SCHEDULES)}; got {d.schedule!r}.")
    if not 0.0 < d.preboost_fraction <= 1.0:
        raise ConfigError(f"--dve.preboost-fraction must lie in (0, 1], got {d.preboost_fraction}.")
    if d.postboost_step < 0:
        raise ConfigError(f"--dve.postboost-step must be >= 0, got {d.postboost_step}.")
    if not 0.0 <= d.postboost_fraction < 1.0:
        raise ConfigError(f"--dve.postboost-fraction must lie in [0, 1) (0 = use --dve.postboost-step), "
                          f"got {d.postboost_fraction}.")
    if d.postboost_fraction > 0 and d.postboost_step > 0:
        raise ConfigError(
            f"--dve.postboost-step ({d.postboost_step}) and --dve.postboost-fraction ({d.postboost_fraction}) are "
            "both set; set one of them (--dve.postboost-fraction 0 makes --dve.postboost-step count)."
        )
    if (cfg.critic == "sparse-dve" and d.schedule == "post-boost" and d.postboost_fraction == 0.0
            and d.postboost_step >= cfg.total_timesteps):
        raise ConfigError(
            f"--dve.postboost-step ({d.postboost_step}) must be below --total-timesteps "
            f"({cfg.total_timesteps}), or L_CC never switches on."
        )
    if d.contribution not in CONTRIBUTION_FORMS:
        raise ConfigError(
            f"--dve.contribution must be one of {', '.join(CONTRIBUTION_FORMS)}; got {d.contribution!r}."
        )
    if d.spread_threshold < 0:
        raise ConfigError(f"--dve.spread-threshold must be >= 0, got {d.spread_threshold}.")
    if d.attention_lr_scale <= 0:
        raise ConfigError(f"--dve.attention-lr-scale must be positive, got {d.attention_lr_scale}.")
    if d.cc_grad_ratio < 0:
        raise ConfigError(f"--dve.cc-grad-ratio must be >= 0 (0 = off), got {d.cc_grad_ratio}.")
    if d.auto_window < 1 or d.auto_threshold < 0 or not 0.0 <= d.auto_min_fraction < 1.0:
        raise ConfigError(
            "--dve.auto-window must be >= 1, --dve.auto-threshold >= 0, --dve.auto-min-fraction in [0, 1)."
        )
