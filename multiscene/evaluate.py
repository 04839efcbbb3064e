"""Evaluation on training levels and on held-out test levels, with sampled and deterministic policies.

Writes ``eval/<tag>.json``::

    {"train": {"return_mean", "return_std", "length_mean", "episodes", "success_rate", "per_level": {...},
               "deterministic": {same statistics for the argmax policy}},
     "test": {...}, "random_policy_test": {...} (final only), "global_step": ..., "reward_scale": ...}

The top-level statistics of each split are those of the sampled policy (Procgen's usual protocol). For the
final evaluation it also writes ``eval/final_steps_<split>.npz``: one row per recorded step of the sampled-policy
episodes (episode, t, level_seed, action, reward, value per head, DVE alpha, core latent, agent position, done),
and ``eval/final_frames_<split>.npz`` with rendered frames of the first few episodes. The report (issue #4)
reads only these files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiscene.config import TrainConfig
from multiscene.envs import make_env
from multiscene.envs.base import EpisodeStats, VecEnv
from multiscene.models.agent import Agent
from multiscene.rundir import atomic_write_json

FRAME_EPISODES = 4
"""Episodes per split whose rendered frames are kept (filmstrips, trajectories, videos)."""
MAX_FRAMES_PER_EPISODE = 400


@dataclass
class EpisodeRecorder:
    """Per-step arrays of the recorded episodes (numpy, appended per step)."""

    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **arrays: np.ndarray) -> None:
        for k, v in arrays.items():
            self.columns.setdefault(k, []).append(v)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.columns.items()}


@dataclass
class EpisodeResult:
    episodes: list[EpisodeStats]
    recorder: EpisodeRecorder | None


@torch.no_grad()
def run_episodes(
    agent: Agent,
    envs: VecEnv,
    num_episodes: int,
    deterministic: bool,
    device: torch.device,
    generator: torch.Generator,
    record: bool = False,
    frame_episodes: int = 0,
    random_policy: bool = False,
) -> EpisodeResult:
    """Run exactly ``num_episodes`` episodes, each env owning a fixed quota (no bias towards short episodes).

    With ``record``, every step of the counted episodes is kept; frames are kept for episodes whose index
    (in order of env, then quota slot) is below ``frame_episodes``. With ``random_policy``, actions are uniform
    (the baseline a trained agent must beat) and nothing is recorded.
    """
    B = envs.num_envs
    quota = np.full(B, num_episodes // B)
    quota[: num_episodes % B] += 1
    slot_offset = np.concatenate([[0], np.cumsum(quota)[:-1]])
    done_count = np.zeros(B, dtype=np.int64)
    t_in_episode = np.zeros(B, dtype=np.int64)
    step = envs.reset()
    obs, first = torch.as_tensor(step.obs), torch.ones(B, dtype=torch.bool)
    level = step.level_seed.copy()
    continuous = agent.continuous
    prev_action = torch.zeros(B, envs.num_actions) if continuous else torch.zeros(B, dtype=torch.long)
    prev_reward = torch.zeros(B)
    state = agent.initial_state(B, device)
    episodes: list[EpisodeStats] = []
    recorder = EpisodeRecorder() if record else None
    while (done_count < quota).any():
        if random_policy:
            action = random_actions(envs, B, generator)
            result = envs.step(action.numpy())
            for ep in result.episodes:
                if done_count[ep.env_index] < quota[ep.env_index]:
                    episodes.append(ep)
                done_count[ep.env_index] += 1
            continue
        out = agent(obs.to(device)[None], first.to(device)[None], prev_action.to(device)[None],
                    prev_reward.to(device)[None], state)
        state = out.state
        logits = out.logits[0].float()
        if deterministic:
            action = agent.distribution(logits).mode()
        elif continuous:
            noise = torch.randn(logits.shape, generator=generator).to(logits.device)
            action = logits + agent.log_std.exp() * noise
        else:
            probs = torch.softmax(logits, dim=-1)
            action = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
        action = action.cpu()
        active = done_count < quota
        episode_id = slot_offset + np.minimum(done_count, np.maximum(quota - 1, 0))
        if recorder is not None:
            frames_wanted = active & (episode_id < frame_episodes) & (t_in_episode < MAX_FRAMES_PER_EPISODE)
            if frames_wanted.any() and getattr(envs, "supports_render", True):
                rendered = envs.render()
                for i in np.flatnonzero(frames_wanted):
                    recorder.frames.setdefault(int(episode_id[i]), []).append(rendered[i].copy())
            positions = envs.agent_positions()
        result = envs.step(action.numpy())
        if recorder is not None and active.any():
            idx = np.flatnonzero(active)
            row: dict[str, np.ndarray] = {
                "episode": episode_id[idx],
                "t": t_in_episode[idx],
                "level_seed": level[idx],
                "action": action.numpy()[idx],
                "reward": result.reward[idx].astype(np.float32),
                "done": result.first[idx],
                "value": out.values[0].float().cpu().numpy()[idx],
                "core_out": out.extras["core_out"][0].float().cpu().numpy()[idx].astype(np.float16),
            }
            cut = np.asarray(result.truncated & ~result.terminated)
            row["truncated"] = cut[idx]
            if cut[idx].any() and result.final_obs is not None:
                # The value of the cut episode's last observation: the value-error analysis bootstraps the
                # realized return from it instead of leaving the last steps out (issue 16).
                with torch.no_grad():
                    last = agent(torch.as_tensor(result.final_obs).to(device)[None],
                                 torch.zeros(1, B, dtype=torch.bool, device=device), action.to(device)[None],
                                 torch.as_tensor(result.reward, dtype=torch.float32).to(device)[None], state)
                final_value = last.values[0].float().cpu().numpy()
                final_value[~cut] = np.nan
                row["final_value"] = final_value[idx]
            else:
                row["final_value"] = np.full((len(idx), out.values.shape[-1]), np.nan, dtype=np.float32)
            if "alpha" in out.extras:
                row["alpha"] = out.extras["alpha"][0].float().cpu().numpy()[idx]
                row["cluster_values"] = out.extras["cluster_values"][0].float().cpu().numpy()[idx]
            if positions is not None:
                row["agent_pos"] = np.asarray(positions)[idx]
            recorder.add(**row)
        for ep in result.episodes:
            i = ep.env_index
            if done_count[i] < quota[i]:
                episodes.append(ep)
            done_count[i] += 1
        t_in_episode = np.where(result.first, 0, t_in_episode + 1)
        obs = torch.as_tensor(result.obs)
        first = torch.as_tensor(result.first)
        prev_action = torch.where(first[:, None] if continuous else first, 0, action)
        prev_reward = torch.where(first, 0.0, torch.as_tensor(result.reward, dtype=torch.float32))
        level = result.level_seed.copy()
    return EpisodeResult(episodes, recorder)


def random_actions(envs: VecEnv, num: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random actions: integers below num_actions, or uniform in the action box (a continuous env
    whose box is unbounded gets N(0, 1) samples)."""
    spec = getattr(envs, "action_spec", None)
    if spec is None or spec.kind == "discrete":
        return torch.randint(envs.num_actions, (num,), generator=generator)
    u = torch.rand((num, spec.n), generator=generator)
    low, high = np.asarray(spec.low, dtype=np.float64), np.asarray(spec.high, dtype=np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return torch.randn((num, spec.n), generator=generator)
    return torch.as_tensor(low, dtype=torch.float32) + u * torch.as_tensor(high - low, dtype=torch.float32)


def summarize(episodes: list[EpisodeStats]) -> dict[str, Any]:
    returns = np.array([e.episode_return for e in episodes], dtype=np.float64)
    lengths = np.array([e.length for e in episodes], dtype=np.float64)
    successes = [e.success for e in episodes if e.success is not None]
    per_level: dict[str, dict[str, float]] = {}
    for e in episodes:
        d = per_level.setdefault(str(e.level_seed), {"episodes": 0, "return_sum": 0.0, "successes": 0})
        d["episodes"] += 1
        d["return_sum"] += e.episode_return
        d["successes"] += int(bool(e.success))
    return {
        "return_mean": float(returns.mean()) if len(returns) else None,
        "return_std": float(returns.std()) if len(returns) else None,
        "length_mean": float(lengths.mean()) if len(lengths) else None,
        "episodes": len(episodes),
        "success_rate": float(np.mean(successes)) if successes else None,
        "per_level": {
            seed: {
                "episodes": d["episodes"],
                "return_mean": d["return_sum"] / d["episodes"],
                "success_rate": d["successes"] / d["episodes"],
            }
            for seed, d in sorted(per_level.items(), key=lambda kv: int(kv[0]))
        },
    }


def evaluate_run_splits(
    agent: Agent,
    cfg: TrainConfig,
    device: torch.device,
    tag: str,
    run_dir: Path,
    reward_scale: float = 1.0,
    global_step: int | None = None,
    num_episodes: int | None = None,
) -> dict[str, Any]:
    """Evaluate on train and test levels (sampled and deterministic); write eval/<tag>.json and, for the
    final evaluation, the per-step and frame files."""
    from multiscene.trainer import env_spec

    n = num_episodes or cfg.eval_episodes
    record = tag == "final"
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"global_step": global_step, "reward_scale": reward_scale, "gamma": cfg.gamma}
    was_training = agent.training
    agent.eval()
    try:
        for split in ("train", "test"):
            stats: dict[str, Any] = {}
            for deterministic in (False, True):
                envs = make_env(env_spec(cfg, split, min(cfg.eval_num_envs, n), seed_offset=101 + int(deterministic),
                                            training=False))
                try:
                    gen = torch.Generator().manual_seed(cfg.seed * 7 + int(deterministic))
                    res = run_episodes(agent, envs, n, deterministic, device, gen,
                                       record=record and not deterministic,
                                       frame_episodes=FRAME_EPISODES if record else 0)
                finally:
                    envs.close()
                if deterministic:
                    stats["deterministic"] = summarize(res.episodes)
                else:
                    stats.update(summarize(res.episodes))
                if res.recorder is not None:
                    _write_steps(eval_dir, split, res.recorder, reward_scale, cfg.gamma)
            summary[split] = stats
        if record:
            # The uniform-random policy on the same test levels: the floor a trained agent must clear.
            envs = make_env(env_spec(cfg, "test", min(cfg.eval_num_envs, n), seed_offset=101, training=False))
            try:
                res = run_episodes(agent, envs, n, False, device, torch.Generator().manual_seed(cfg.seed),
                                   random_policy=True)
            finally:
                envs.close()
            summary["random_policy_test"] = {k: v for k, v in summarize(res.episodes).items() if k != "per_level"}
    finally:
        agent.train(was_training)
    atomic_write_json(eval_dir / f"{tag}.json", summary)
    return summary


def _write_steps(eval_dir: Path, split: str, recorder: EpisodeRecorder, reward_scale: float, gamma: float) -> None:
    arrays = recorder.arrays()
    arrays["reward_scale"] = np.array(reward_scale, dtype=np.float64)
    arrays["gamma"] = np.array(gamma, dtype=np.float64)
    np.savez_compressed(eval_dir / f"final_steps_{split}.npz", **arrays)
    if recorder.frames:
        ids = sorted(recorder.frames)
        np.savez_compressed(
            eval_dir / f"final_frames_{split}.npz",
            **{f"episode_{i}": np.stack(recorder.frames[i]) for i in ids},
        )


def load_eval(run_dir: Path, tag: str = "final") -> dict[str, Any]:
    return json.loads((run_dir / "eval" / f"{tag}.json").read_text())


def evaluate_checkpoint(
    run_dir: Path,
    episodes: int | None = None,
    tag: str = "eval",
    video: bool = False,
    video_episodes: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    """``multiscene eval RUN_DIR``: rebuild the agent from config.json and the latest good checkpoint."""
    import dataclasses

    from multiscene.checkpoint import load_latest_checkpoint
    from multiscene.config import ConfigError
    from multiscene.trainer import env_spec, load_agent_tensors, load_config, make_agent, resolve_device

    cfg = load_config(run_dir)
    ckpt = load_latest_checkpoint(run_dir, load_state=False)
    if ckpt is None:
        raise ConfigError(f"{run_dir} has no readable checkpoint to evaluate (checkpoints/ is empty or corrupted).")
    dev = resolve_device(device)
    probe = make_env(env_spec(cfg, "test", 1, training=False))
    try:
        agent = make_agent(cfg, probe, device=dev)
    finally:
        probe.close()
    load_agent_tensors(agent, ckpt.tensors)
    var = float(ckpt.tensors["reward_normalizer.var"]) if "reward_normalizer.var" in ckpt.tensors else 1.0
    scale = float(np.sqrt(var + 1e-8)) if cfg.norm_reward else 1.0
    summary = evaluate_run_splits(agent, cfg, dev, tag=tag, run_dir=run_dir, reward_scale=scale,
                                  num_episodes=episodes)
    if video:
        write_videos(agent, dataclasses.replace(cfg), dev, run_dir / "eval" / "videos", video_episodes)
    return summary


def write_videos(agent: Agent, cfg: TrainConfig, device: torch.device, out_dir: Path, episodes: int) -> list[Path]:
    """mp4s of sampled-policy episodes on train and test levels (imageio + its bundled ffmpeg)."""
    import imageio.v3 as imageio

    from multiscene.trainer import env_spec

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    agent.eval()
    for split in ("train", "test"):
        envs = make_env(env_spec(cfg, split, min(episodes, cfg.eval_num_envs), seed_offset=303, training=False))
        if not getattr(envs, "supports_render", True):
            envs.close()
            from multiscene.config import ConfigError

            raise ConfigError(f"--video: {cfg.env} cannot render on this machine (no GL backend for it); "
                              "evaluate without --video.")
        try:
            res = run_episodes(agent, envs, episodes, False, device, torch.Generator().manual_seed(cfg.seed),
                               record=True, frame_episodes=episodes)
        finally:
            envs.close()
        assert res.recorder is not None
        for ep_id, frames in sorted(res.recorder.frames.items()):
            path = out_dir / f"{split}_episode{ep_id}.mp4"
            imageio.imwrite(path, np.stack([_upscale(f) for f in frames]), plugin="pyav", fps=15, codec="libx264")
            written.append(path)
    return written


def _upscale(frame: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale to about ``min_size`` px, cropped to even sides (H.264 wants them)."""
    k = max(1, min_size // max(frame.shape[:2]))
    big = np.repeat(np.repeat(frame, k, axis=0), k, axis=1)
    return big[: big.shape[0] // 2 * 2, : big.shape[1] // 2 * 2]
