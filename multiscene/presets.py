"""Named presets (``--preset NAME``): plain functions returning a TrainConfig; every field stays overridable."""

from __future__ import annotations

from collections.abc import Callable

from multiscene.config import ConfigError, DVEConfig, TrainConfig, replace

# Seed 000 §5.1: class-1 games explore fast (pre-boost), class-2 games slowly (post-boost).
CLASS1_GAMES = ("coinrun", "caveflyer", "climber", "jumper")
CLASS2_GAMES = ("plunder", "dodgeball", "fruitbot", "starpilot")


def quickstart() -> TrainConfig:
    """MiniGrid-HiddenPayoff made multi-scene (200 training levels, disjoint test levels), LSTM agent, Sparse DVE.

    Every level starts with the same observation; the level decides a cue colour and what the goal pays
    (three value clusters; ``multiscene/envs/scenes.py``). Sized to finish, evaluation and report included,
    in a few minutes on a 2-core CPU, with a held-out return far above a random policy's.
    """
    return TrainConfig(
        preset="quickstart",
        env="MiniGrid-HiddenPayoff-v0",
        critic="sparse-dve",
        num_envs=16,
        num_steps=64,
        total_timesteps=150_000,
        num_levels=200,
        start_level=0,
        hidden_size=64,
        learning_rate=1e-3,
        gamma=0.99,
        update_epochs=4,
        num_minibatches=4,
        ent_coef=0.01,
        eval_episodes=64,
        checkpoint_interval=20,
        torch_threads=1,
        # Issue 14's recipe (docs/dve_benchmark.md): cluster means on the per-frame encoder output, L_CC with the
        # normalized contribution term, switched on at half the budget, once plain DVE's clusters have spread.
        dve=DVEConfig(cluster_input="encoder", schedule="post-boost", postboost_fraction=0.5,
                      contribution="normalized"),
    )


def procgen_easy() -> TrainConfig:
    """SPEC §2 easy protocol: RL² (IMPALA-CNN + LSTM, scalar critic), 25M steps on 200 levels."""
    return TrainConfig(
        preset="procgen-easy",
        bootstrap_truncation=False,  # Procgen (gym3) cannot tell time limits apart; train-procgen/CleanRL do not
        env="coinrun",
        critic="scalar",
        num_envs=64,
        num_steps=256,
        total_timesteps=25_000_000,
        distribution_mode="easy",
        num_levels=200,
        num_minibatches=8,
        update_epochs=3,
        gamma=0.999,
        eval_interval=50,
        eval_episodes=64,
        eval_num_envs=32,
        checkpoint_interval=25,
    )


def procgen_hard() -> TrainConfig:
    """SPEC §2 hard protocol: 200M steps on 500 levels (the paper ran 4 workers x 64 envs)."""
    return TrainConfig(
        preset="procgen-hard",
        bootstrap_truncation=False,  # Procgen (gym3) cannot tell time limits apart; train-procgen/CleanRL do not
        env="coinrun",
        critic="scalar",
        num_envs=64,
        num_steps=256,
        total_timesteps=200_000_000,
        distribution_mode="hard",
        num_levels=500,
        num_minibatches=8,
        update_epochs=3,
        gamma=0.999,
        eval_interval=200,
        eval_episodes=64,
        eval_num_envs=32,
        checkpoint_interval=50,
    )


def cleanrl_procgen() -> TrainConfig:
    """CleanRL ppo_procgen.py's hyperparameters: feed-forward IMPALA-CNN, scalar critic, 64 envs, easy mode,
    all levels (num_levels=0), lr 5e-4 annealed, 256 steps, 8 minibatches, 3 epochs, gamma 0.999.

    Differences we keep: CleanRL also clips normalized rewards to [-10, 10]; we do not clip. CleanRL's
    minibatches are random transitions, ours are whole env sequences (the same for a feed-forward agent up
    to which samples share a minibatch).
    """
    return TrainConfig(
        preset="cleanrl-procgen",
        bootstrap_truncation=False,  # Procgen (gym3) cannot tell time limits apart; train-procgen/CleanRL do not
        env="starpilot",
        critic="scalar",
        core="none",
        prev_action_reward=False,
        num_envs=64,
        num_steps=256,
        total_timesteps=25_000_000,
        distribution_mode="easy",
        num_levels=0,
        test_num_levels=0,
        learning_rate=5e-4,
        anneal_lr=True,
        num_minibatches=8,
        update_epochs=3,
        gamma=0.999,
        gae_lambda=0.95,
        clip_coef=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        eval_episodes=64,
        eval_num_envs=32,
        checkpoint_interval=50,
    )


def seed000_game(game: str, method: str) -> Callable[[], TrainConfig]:
    """Seed 000 Table 1 setting for one game: hard mode, 500 training levels, 200M steps.

    Sparse DVE uses pre-boost for class-1 games (L_CC ramped over the first quarter) and post-boost for
    class-2 games, switched on at 50M steps (the paper pre-trains plain DVE for 50M steps per worker; our
    reading counts them as env steps of the run). Class-2 RL² and DVE runs use the same budget.
    """

    def preset() -> TrainConfig:
        base = procgen_hard()
        critic = {"rl2": "scalar", "dve": "dve", "sparse-dve": "sparse-dve"}[method]
        if game in CLASS1_GAMES:
            dve = DVEConfig(schedule="pre-boost", preboost_fraction=0.25)
        else:
            dve = DVEConfig(schedule="post-boost", postboost_step=50_000_000)
        from multiscene.config import replace

        return replace(base, preset=f"{method}-{game}", env=game, critic=critic, dve=dve)

    preset.__doc__ = f"Seed 000 Table 1, {game}, {method}: hard mode, 500 levels, 200M steps."
    return preset


def minigrid() -> TrainConfig:
    """A MiniGrid default: the quickstart's agent and PPO settings with the scalar critic (RL²), 500k steps."""
    return replace(quickstart(), preset="minigrid", env="MiniGrid-DoorKey-5x5-v0", critic="scalar",
                   total_timesteps=500_000)


def ppo_atari() -> TrainConfig:
    """CleanRL ppo_atari.py's settings (truncation treated as termination, as there): Nature-CNN, no recurrence, 8 envs x 128 steps, lr 2.5e-4 annealed,
    4 minibatches x 4 epochs, clip 0.1, entropy 0.01, gamma 0.99, lambda 0.95, 10M steps."""
    return TrainConfig(
        preset="ppo-atari", env="BreakoutNoFrameskip-v4", bootstrap_truncation=False, algo="ppo", critic="scalar", core="none",
        prev_action_reward=False, hidden_size=512, num_envs=8, num_steps=128, total_timesteps=10_000_000,
        learning_rate=2.5e-4, anneal_lr=True, num_minibatches=4, update_epochs=4, clip_coef=0.1, ent_coef=0.01,
        vf_coef=0.5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, norm_reward=False, num_levels=1,
        eval_episodes=10, eval_num_envs=5, checkpoint_interval=100,
    )


def a2c_atari() -> TrainConfig:
    """A2C as the ACKTR paper's Atari baseline: 32 envs x 20 steps (n-step 20; baselines' a2c uses 16 x 5),
    RMSprop lr 7e-4 (alpha 0.99, eps 1e-5) annealed linearly as baselines' default schedule, entropy 0.01,
    value coefficient 0.5, gradient clip 0.5, gamma 0.99, no advantage or reward normalization (rewards are
    clipped by the Atari wrapper), 10M steps."""
    return replace(ppo_atari(), preset="a2c-atari", algo="a2c", bootstrap_truncation=True, num_envs=32, num_steps=20, learning_rate=7e-4,
                   anneal_lr=True, num_minibatches=1, update_epochs=1, norm_adv=False)


def acktr_atari() -> TrainConfig:
    """ACKTR paper settings on Atari (Wu et al. 2017, baselines acktr): 32 envs x 20 steps, K-FAC lr 0.25
    annealed, momentum 0.9, KL clip 0.001, entropy 0.01, value coefficient 0.5, gradient clip 0.5, gamma 0.99."""
    return replace(a2c_atari(), preset="acktr-atari", algo="acktr", learning_rate=0.25)


def ppo_mujoco() -> TrainConfig:
    """CleanRL ppo_continuous_action.py's settings (truncation treated as termination, as there): separate actor and
    critic MLPs 64x64 tanh, Gaussian policy with state-independent
    log-std, 1 env x 2048 steps, 32 minibatches of transitions x 10 epochs, lr 3e-4 annealed, gamma 0.99,
    lambda 0.95, clip 0.2, no entropy bonus, observation and reward normalization, 1M steps. Ours: torch's fused
    Adam kernel (``--adam-fused``; the same Adam, rounded differently in the last bit), ~5% of a step on the CPU."""
    return TrainConfig(
        preset="ppo-mujoco", env="HalfCheetah-v5", bootstrap_truncation=False, algo="ppo", critic="scalar", core="none",
        value_net="separate", adam_fused=True,
        prev_action_reward=False, hidden_size=64, num_envs=1, num_steps=2048, total_timesteps=1_000_000,
        learning_rate=3e-4, anneal_lr=True, num_minibatches=32, minibatch_by="step", update_epochs=10,
        clip_coef=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95,
        num_levels=1, eval_episodes=10, eval_num_envs=5, checkpoint_interval=50,
    )


def a2c_mujoco() -> TrainConfig:
    """A2C on MuJoCo as seed 004's baseline family: the ppo-mujoco agent, 8 envs x 20 steps, RMSprop 7e-4."""
    return replace(ppo_mujoco(), preset="a2c-mujoco", algo="a2c", bootstrap_truncation=True, num_envs=8, num_steps=20, learning_rate=7e-4, adam_fused=False,
                   num_minibatches=1, minibatch_by="env", update_epochs=1, norm_adv=False, ent_coef=0.0)


def acktr_mujoco() -> TrainConfig:
    """ACKTR on MuJoCo with seed 004 §6.2's batch of 2500 steps per update (5 envs x 500 steps; the split is
    ours), K-FAC lr 0.03 and GAE lambda 0.97 as baselines' continuous ACKTR (acktr_cont), KL clip 0.001."""
    cfg = replace(ppo_mujoco(), preset="acktr-mujoco", algo="acktr", bootstrap_truncation=True, num_envs=5, num_steps=500, adam_fused=False,
                  learning_rate=0.03, anneal_lr=False, num_minibatches=1, minibatch_by="env", update_epochs=1,
                  ent_coef=0.0, norm_adv=True)
    return replace(cfg, acktr={"gae_lambda": 0.97})


def gym_classic() -> TrainConfig:
    """Any other Gymnasium id (CartPole-v1, Pendulum-v1, ...): CleanRL ppo.py's settings, 4 envs x 128 steps,
    MLP 64x64, lr 2.5e-4 annealed, 4 minibatches x 4 epochs, gamma 0.99, 500k steps."""
    return TrainConfig(
        preset="gym", env="CartPole-v1", algo="ppo", critic="scalar", core="none", prev_action_reward=False,
        hidden_size=64, num_envs=4, num_steps=128, total_timesteps=500_000, learning_rate=2.5e-4,
        anneal_lr=True, num_minibatches=4, minibatch_by="step", update_epochs=4, clip_coef=0.2, ent_coef=0.01,
        gamma=0.99, gae_lambda=0.95, norm_reward=False, num_levels=1, eval_episodes=10, eval_num_envs=5,
        checkpoint_interval=50,
    )


def a2c_gym() -> TrainConfig:
    """A2C on any other Gymnasium id: the gym agent, 8 envs x 20 steps (n-step 20), RMSprop 7e-4 annealed."""
    return replace(gym_classic(), preset="a2c-gym", algo="a2c", num_envs=8, num_steps=20, learning_rate=7e-4,
                   num_minibatches=1, minibatch_by="env", update_epochs=1, norm_adv=False)


def acktr_gym() -> TrainConfig:
    """ACKTR on any other Gymnasium id: the a2c-gym settings with K-FAC at lr 0.25 (the ACKTR paper's)."""
    return replace(a2c_gym(), preset="acktr-gym", algo="acktr", learning_rate=0.25)


# Seed 004's comparisons (its Table 2 and the sparse-reward Atari games of §6.1).
SEED004_ATARI = ("Boxing", "Freeway", "Enduro", "WizardOfWor", "Robotank", "Breakout", "Pong", "Seaquest")
SEED004_MUJOCO = ("Ant", "HalfCheetah", "Hopper", "InvertedDoublePendulum", "InvertedPendulum", "Reacher",
                  "Swimmer", "Walker2d")


def seed004_preset(name: str, family: str, task: str) -> Callable[[], TrainConfig]:
    """Seed 004's runs: ``a2mc`` (A2MC: ACKTR + multi-critic), ``acktr``, ``mcppo`` (PPO + multi-critic), ``ppo``.

    Atari at 15M steps (``--total-timesteps 50000000`` for the seed's longer runs), MuJoCo ``-v5`` at 1M steps.
    The base settings are the ``acktr-*`` and ``ppo-*`` presets; the multi-critic adds the VWR head with the
    defaults of SPEC §4 (T = 20, sigma_max 1, kappa 2, beta 1). Hot-wiring is seed 004's Atari booster; the A2MC
    Atari presets switch it on (first 5% of training, epsilon 0.2).
    """

    def preset() -> TrainConfig:
        algo = {"a2mc": "acktr", "acktr": "acktr", "mcppo": "ppo", "ppo": "ppo"}[name]
        base = {"atari": {"acktr": acktr_atari, "ppo": ppo_atari}, "mujoco": {"acktr": acktr_mujoco, "ppo": ppo_mujoco}}
        cfg = base[family][algo]()
        env = f"{task}NoFrameskip-v4" if family == "atari" else f"{task}-v5"
        budget = 15_000_000 if family == "atari" else 1_000_000
        critic = "multi" if name in ("a2mc", "mcppo") else "scalar"
        return replace(cfg, preset=f"{name}-{family}-{task.lower()}", env=env, critic=critic, total_timesteps=budget,
                       hotwire=name == "a2mc" and family == "atari")

    preset.__doc__ = f"Seed 004: {name} on {task} ({family})."
    return preset


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "quickstart": quickstart,
    "minigrid": minigrid,
    "procgen-easy": procgen_easy,
    "procgen-hard": procgen_hard,
    "cleanrl-procgen": cleanrl_procgen,
    "ppo-atari": ppo_atari,
    "a2c-atari": a2c_atari,
    "acktr-atari": acktr_atari,
    "ppo-mujoco": ppo_mujoco,
    "a2c-mujoco": a2c_mujoco,
    "acktr-mujoco": acktr_mujoco,
    "gym": gym_classic,
    "a2c-gym": a2c_gym,
    "acktr-gym": acktr_gym,
}
for _task in SEED004_ATARI:
    for _name in ("a2mc", "acktr"):
        PRESETS[f"{_name}-atari-{_task.lower()}"] = seed004_preset(_name, "atari", _task)
for _task in SEED004_MUJOCO:
    for _name in ("a2mc", "acktr", "mcppo", "ppo"):
        PRESETS[f"{_name}-mujoco-{_task.lower()}"] = seed004_preset(_name, "mujoco", _task)


def seed002_preset(vae: bool) -> Callable[[], TrainConfig]:
    """Seed 002 (Table A-2): IMPALA (+ VAE) on Procgen hard mode, 500 training levels, zero-shot test on the full
    distribution seeded from level 1 (the seed's "disjoint" start level; the full distribution can contain a
    training level, with a tiny probability), 1e8 steps; ``--env`` picks the game (coinrun, starpilot, chaser,
    maze)."""

    def preset() -> TrainConfig:
        return replace(procgen_hard(), preset="impala-vae-hard" if vae else "impala-hard", algo="impala",
                       critic="scalar", aux="vae" if vae else "none", num_levels=500, start_level=0,
                       test_start_level=1, test_num_levels=0, total_timesteps=100_000_000, gamma=0.99)

    preset.__doc__ = f"Seed 002: IMPALA{' + VAE' if vae else ''} on Procgen hard, 500 levels, 1e8 steps."
    return preset


PRESETS["impala-hard"] = seed002_preset(vae=False)
PRESETS["impala-vae-hard"] = seed002_preset(vae=True)

for _game in CLASS1_GAMES + CLASS2_GAMES:
    for _method in ("rl2", "dve", "sparse-dve"):
        PRESETS[f"{_method}-{_game}"] = seed000_game(_game, _method)


MUJOCO_TASKS = ("HalfCheetah", "Hopper", "Walker2d", "Swimmer", "Ant", "Reacher", "InvertedPendulum",
                "InvertedDoublePendulum", "Humanoid", "HumanoidStandup", "Pusher")


def env_family(env_id: str) -> str:
    """procgen, minigrid, atari, mujoco or gym (any other Gymnasium id), from the id alone (nothing built)."""
    from multiscene.envs import is_procgen

    if is_procgen(env_id):
        return "procgen"
    if env_id.startswith("MiniGrid"):
        return "minigrid"
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id or env_id.endswith("Deterministic-v4"):
        return "atari"
    if env_id.split("-v")[0] in MUJOCO_TASKS:
        return "mujoco"
    return "gym"


def default_preset(env_id: str | None, algo: str | None) -> str:
    """The preset used when ``--preset`` is not given (issue 15): quickstart without ``--env``; otherwise the
    env family's, with the algorithm's own variant where one exists (``a2c-atari``, ``acktr-mujoco``)."""
    if env_id is None:
        return "quickstart"
    family = env_family(env_id)
    algo = algo or "ppo"
    if f"{algo}-{family}" in PRESETS:
        return f"{algo}-{family}"
    if family == "gym" and algo == "ppo":
        return "gym"
    return {"procgen": "procgen-easy", "minigrid": "minigrid", "atari": "ppo-atari", "mujoco": "ppo-mujoco",
            "gym": "gym"}[family]


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of: {', '.join(PRESETS)}; got {name!r}.")
    return PRESETS[name]()
