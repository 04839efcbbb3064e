"""Evaluation on training levels and on held-out test levels, with sampled and deterministic policies.

Writes ``eval/<tag>.json``::

    {"train": {"return_mean", "return_std", "length_mean", "episodes", "success_rate", "per_level": {...},
               "deterministic": {same statistics for the argmax policy}},
     "test": {...}, "random_policy_test": {...} (final only), "global_step": ..., "reward_scale": ...}

The top-level statistics of each split are those of the sampled policy (Procgen's usual protocol). On envs
that hand out per-episode extras (``pop_episode_extras``: Mario and multi-level sets of Mario levels), each
split's statistics, its ``deterministic`` ones and ``random_policy_test`` also hold ``x_pos_mean``,
``x_pos_std`` (the distance travelled, Mario's last ``x_pos``) and ``flag_rate`` (the share that reached the
flag) over exactly the counted episodes, and each ``per_level`` entry its ``x_pos_mean`` (``summarize``). A pass
stopped by the final evaluation's step cap (``--final-eval-steps``; issue 15) has ``"capped": true`` and counts
only the episodes that finished; the top level then holds ``"step_cap"``. For the
final evaluation it also writes ``eval/final_steps_<split>.npz``: one row per recorded step of the sampled-policy
episodes (episode, t, level_seed, action, reward, value per head, DVE alpha, core latent, agent position, done),
and ``eval/final_frames_<split>.npz`` with rendered frames of the first few episodes. The report (issue #4)
reads only these files.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
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
MIN_CAP_STEPS_PER_ENV = 32
"""The final evaluation's default step cap is never below this many steps per eval env (a short episode on
each env still finishes in a tiny run)."""


SLOW_RENDER_FRAMES = 50
"""Default frames per recorded episode on MuJoCo, whose offscreen rendering costs 0.1-0.3 s a frame on a CPU."""


def eval_frames(cfg: TrainConfig) -> int:
    """Frames kept per recorded episode of the final evaluation: ``--eval-frames``, or 400 (50 on MuJoCo)."""
    if cfg.eval_frames is not None:
        return cfg.eval_frames
    from multiscene.envs import env_family

    if env_family(cfg.env) == "gymnasium":
        from multiscene.envs.gymnasium import env_family as gymnasium_family

        if gymnasium_family(cfg.env) == "mujoco":
            return SLOW_RENDER_FRAMES
    return MAX_FRAMES_PER_EPISODE


def final_eval_step_cap(cfg: TrainConfig) -> int | None:
    """Env steps each pass of the final evaluation may take (None: no cap). ``--final-eval-steps``, or by
    default a tenth of the training budget (the five passes together take at most half the budget's env
    steps, each without a backward pass), but at least ``MIN_CAP_STEPS_PER_ENV`` steps per eval env."""
    if cfg.final_eval_steps is not None:
        return cfg.final_eval_steps or None
    return max(cfg.total_timesteps // 10, MIN_CAP_STEPS_PER_ENV * min(cfg.eval_num_envs, cfg.eval_episodes))


class EvalProgress:
    """Episodes done per pass of an evaluation (issue 15, "The first day" 2): a rich bar per pass on a
    terminal; otherwise plain lines, at most one per ``line_interval_s`` with every pass's count, and one as
    each pass ends; nothing with mode ``none``. Modes as ``--progress``."""

    def __init__(self, tag: str, passes: list[str], episodes: int, mode: str = "auto",
                 line_interval_s: float = 10.0) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode, self.tag, self.episodes, self.line_interval_s = mode, tag, episodes, line_interval_s
        self.done = dict.fromkeys(passes, 0)
        self._last_line = time.monotonic()
        self._bar = None
        self._tasks: dict[str, Any] = {}
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]eval {tag}" + " {task.description:<28}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("episodes"), TimeElapsedColumn())
            self._bar.start()
            self._tasks = {name: self._bar.add_task(name, total=episodes) for name in passes}

    def update(self, name: str, done: int) -> None:
        self.done[name] = done
        if self._bar is not None:
            self._bar.update(self._tasks[name], completed=done)
        elif self.mode == "plain" and time.monotonic() - self._last_line >= self.line_interval_s:
            self._last_line = time.monotonic()
            counts = ", ".join(f"{n} {d}/{self.episodes}" for n, d in self.done.items())
            print(f"[multiscene] eval {self.tag}: {counts} episodes", flush=True)

    def finish(self, name: str, done: int, capped_at: int | None) -> None:
        self.done[name] = done
        if self._bar is not None:
            self._bar.update(self._tasks[name], completed=done,
                             description=name + (" (capped)" if capped_at is not None else ""))
        elif self.mode == "plain":
            note = f" (stopped at the cap of {capped_at} env steps)" if capped_at is not None else ""
            print(f"[multiscene] eval {self.tag}: {name} {done}/{self.episodes} episodes{note}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


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


    def keep_episodes(self, ids: set[int]) -> None:
        """Drop the rows and frames of episodes not in ``ids`` (those a step cap cut off)."""
        if "episode" in self.columns:
            keep = [np.isin(e, list(ids)) for e in self.columns["episode"]]
            self.columns = {k: [v[m] for v, m in zip(vs, keep)] for k, vs in self.columns.items()}
        self.frames = {i: f for i, f in self.frames.items() if i in ids}


@dataclass
class EpisodeResult:
    episodes: list[EpisodeStats]
    recorder: EpisodeRecorder | None
    capped: bool = False
    """True when ``max_steps`` stopped the run before every env finished its quota."""
    extras: list[dict[str, Any] | None] = field(default_factory=list)
    """The env's extras of each counted episode, in the order of ``episodes`` (``step_extras``)."""


@dataclass
class EvalPass:
    """One pass of an evaluation: ``num_episodes`` episodes on ``envs`` with one policy."""

    name: str
    """Shown by the progress display, e.g. ``test/deterministic``."""
    envs: VecEnv
    num_episodes: int
    deterministic: bool = False
    """Argmax (mode) actions instead of sampled ones."""
    generator: torch.Generator = field(default_factory=torch.Generator)
    """Draws this pass's sampled (or random) actions, so passes run together draw what they would alone."""
    record: bool = False
    """Keep every step of the counted episodes (and frames of the first ``frame_episodes``)."""
    frame_episodes: int = 0
    max_frames: int = MAX_FRAMES_PER_EPISODE
    """Frames kept per recorded episode (its first ``max_frames`` steps)."""
    random_policy: bool = False
    """Uniform random actions (the floor a trained agent must beat); nothing recorded."""


class _Lane:
    """The running state of one pass inside ``run_passes``."""

    def __init__(self, spec: EvalPass, agent: Agent, device: torch.device) -> None:
        self.spec = spec
        B = self.num_envs = spec.envs.num_envs
        self.quota = np.full(B, spec.num_episodes // B)
        self.quota[: spec.num_episodes % B] += 1
        self.slot_offset = np.concatenate([[0], np.cumsum(self.quota)[:-1]])
        self.done_count = np.zeros(B, dtype=np.int64)
        self.t_in_episode = np.zeros(B, dtype=np.int64)
        step = spec.envs.reset()
        self.obs, self.first = torch.as_tensor(step.obs), torch.ones(B, dtype=torch.bool)
        self.level = step.level_seed.copy()
        self.prev_action = (torch.zeros(B, spec.envs.num_actions) if agent.continuous
                            else torch.zeros(B, dtype=torch.long))
        self.prev_reward = torch.zeros(B)
        self.state = agent.initial_state(B, device)
        self.episodes: list[EpisodeStats] = []
        self.extras: list[dict[str, Any] | None] = []
        step_extras(spec.envs, [])  # drop extras of episodes from before this pass
        self.recorder = EpisodeRecorder() if spec.record else None
        self.finished_ids: set[int] = set()
        self.steps = 0
        self.capped = False
        self._kept = False

    def running(self, max_steps: int | None) -> bool:
        if not (self.done_count < self.quota).any():
            return False
        if max_steps is not None and self.steps + self.num_envs > max_steps:
            self.capped = True
            return False
        return True

    def count(self, finished: list[EpisodeStats]) -> bool:
        """Count the episodes that ended (each env's first ``quota`` only), with their extras; True when the
        count grew. Call right after the env step that ended them (the extras are popped from the env here)."""
        before = len(self.episodes)
        for ep, extra in zip(finished, step_extras(self.spec.envs, finished)):
            i = ep.env_index
            if self.done_count[i] < self.quota[i]:
                self.episodes.append(ep)
                self.extras.append(extra)
                self.finished_ids.add(int(self.slot_offset[i] + self.done_count[i]))
            self.done_count[i] += 1
        return len(self.episodes) > before

    def result(self) -> EpisodeResult:
        if self.capped and self.recorder is not None and not self._kept:
            self.recorder.keep_episodes(self.finished_ids)
            self._kept = True
        return EpisodeResult(self.episodes, self.recorder, self.capped, self.extras)


@torch.no_grad()
def run_passes(
    agent: Agent,
    passes: list[EvalPass],
    device: torch.device,
    max_steps: int | None = None,
    on_episode: Callable[[str, int], None] | None = None,
    on_finish: Callable[[str, EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run several evaluation passes side by side, one batched forward of the agent per step for all their
    envs (issue 15: fewer, larger forwards; benchmarks/eval_batching.py measures the gain), each env owning a
    fixed quota of its pass's episodes (no bias towards short episodes).

    With ``record``, every step of the counted episodes is kept; frames are kept for episodes whose index
    (in order of env, then quota slot) is below ``frame_episodes``. With ``max_steps``, a pass stops before its
    env steps (``num_envs`` per step) would pass it: only finished episodes count, the recorder keeps only
    theirs, and its result is ``capped``. ``on_episode(name, n)`` gets a pass's count of counted episodes
    whenever it grows, ``on_finish(name, result)`` its result as it ends. A pass run alone gives what it gives
    side by side, up to the float rounding of a larger batch.
    """
    lanes = [_Lane(spec, agent, device) for spec in passes]
    continuous = agent.continuous
    live = lanes
    while True:
        still = [lane for lane in live if lane.running(max_steps)]
        if on_finish is not None:
            for lane in live:
                if lane not in still:
                    on_finish(lane.spec.name, lane.result())
        live = still
        if not live:
            break
        acting = [lane for lane in live if not lane.spec.random_policy]
        outputs: dict[int, tuple[Any, ...]] = {}
        if acting:
            out = agent(
                torch.cat([lane.obs for lane in acting]).to(device)[None],
                torch.cat([lane.first for lane in acting]).to(device)[None],
                torch.cat([lane.prev_action for lane in acting]).to(device)[None],
                torch.cat([lane.prev_reward for lane in acting]).to(device)[None],
                tuple(torch.cat(parts, dim=1) for parts in zip(*(lane.state for lane in acting))),
            )
            offset = 0
            for lane in acting:
                cut = slice(offset, offset + lane.num_envs)
                offset += lane.num_envs
                outputs[id(lane)] = (
                    out.logits[0, cut].float(), out.values[0, cut].float(),
                    {k: v[0, cut] for k, v in out.extras.items()}, tuple(s[:, cut] for s in out.state),
                )
        for lane in live:
            lane.steps += lane.num_envs
            grew = _step_lane(lane, agent, continuous, outputs.get(id(lane)), device)
            if grew and on_episode is not None:
                on_episode(lane.spec.name, len(lane.episodes))
    return [lane.result() for lane in lanes]


def _step_lane(lane: _Lane, agent: Agent, continuous: bool, output: tuple[Any, ...] | None,
               device: torch.device) -> bool:
    """One env step of one pass, given its slice of the batched forward (None: a random-policy pass)."""
    spec, envs, B = lane.spec, lane.spec.envs, lane.num_envs
    if output is None:
        return lane.count(envs.step(random_actions(envs, B, spec.generator).numpy()).episodes)
    logits, values, extras, lane.state = output
    if spec.deterministic:
        action = agent.distribution(logits).mode()
    elif continuous:
        noise = torch.randn(logits.shape, generator=spec.generator).to(logits.device)
        action = logits + agent.log_std.exp() * noise
    else:
        probs = torch.softmax(logits, dim=-1)
        action = torch.multinomial(probs.cpu(), 1, generator=spec.generator).squeeze(-1).to(logits.device)
    action = action.cpu()
    active = lane.done_count < lane.quota
    episode_id = lane.slot_offset + np.minimum(lane.done_count, np.maximum(lane.quota - 1, 0))
    recorder = lane.recorder
    if recorder is not None:
        frames_wanted = active & (episode_id < spec.frame_episodes) & (lane.t_in_episode < spec.max_frames)
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
            "t": lane.t_in_episode[idx],
            "level_seed": lane.level[idx],
            "action": action.numpy()[idx],
            "reward": result.reward[idx].astype(np.float32),
            "done": result.first[idx],
            "value": values.cpu().numpy()[idx],
            "core_out": extras["core_out"].float().cpu().numpy()[idx].astype(np.float16),
        }
        cut = np.asarray(result.truncated & ~result.terminated)
        row["truncated"] = cut[idx]
        final_value = np.full(values.shape, np.nan, dtype=np.float32)
        if cut[idx].any() and result.final_obs is not None:
            # The value of the cut episode's last observation: the value-error analysis bootstraps the realized
            # return from it instead of leaving the episode's last steps out (issue 16).
            last = agent(torch.as_tensor(result.final_obs).to(device)[None],
                         torch.zeros(1, B, dtype=torch.bool, device=device), action.to(device)[None],
                         torch.as_tensor(result.reward, dtype=torch.float32).to(device)[None], lane.state)
            final_value[cut] = last.values[0].float().cpu().numpy()[cut]
        row["final_value"] = final_value[idx]
        if "alpha" in extras:
            row["alpha"] = extras["alpha"].float().cpu().numpy()[idx]
            row["cluster_values"] = extras["cluster_values"].float().cpu().numpy()[idx]
        if positions is not None:
            row["agent_pos"] = np.asarray(positions)[idx]
        recorder.add(**row)
    grew = lane.count(result.episodes)
    lane.t_in_episode = np.where(result.first, 0, lane.t_in_episode + 1)
    lane.obs = torch.as_tensor(result.obs)
    lane.first = torch.as_tensor(result.first)
    lane.prev_action = torch.where(lane.first[:, None] if continuous else lane.first, 0, action)
    lane.prev_reward = torch.where(lane.first, 0.0, torch.as_tensor(result.reward, dtype=torch.float32))
    lane.level = result.level_seed.copy()
    return grew


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
    max_steps: int | None = None,
    on_episode: Callable[[int], None] | None = None,
) -> EpisodeResult:
    """Run exactly ``num_episodes`` episodes on ``envs`` (one pass of ``run_passes``, which see)."""
    spec = EvalPass("episodes", envs, num_episodes, deterministic, generator, record=record,
                    frame_episodes=frame_episodes, random_policy=random_policy)
    callback = None if on_episode is None else (lambda _name, n: on_episode(n))
    return run_passes(agent, [spec], device, max_steps, callback)[0]


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


def step_extras(envs: VecEnv, finished: list[EpisodeStats]) -> list[dict[str, Any] | None]:
    """The env's extras of each episode in ``finished`` (the episodes of the step just taken), in their order:
    what ``pop_episode_extras`` hands out (Mario: ``x_pos``, ``flag_get``; a multi-level set passes its
    sub-envs' on). None for each where the env keeps no extras, or where their count differs from the episodes'
    (they could not be paired). Pops them, so call it once per step; with ``finished`` empty it only drops them.

    Both envs that keep extras add an episode's extras in the same loop, in the same order, as its
    ``EpisodeStats``, so one step's extras pair with its episodes by position."""
    pop = getattr(envs, "pop_episode_extras", None)
    extras = pop() if pop is not None else []
    if len(extras) != len(finished):
        return [None] * len(finished)
    return list(extras)


def extras_stats(extras: list[dict[str, Any] | None]) -> dict[str, Any]:
    """``x_pos_mean``, ``x_pos_std`` and ``flag_rate`` (Mario's distance travelled and share of flags reached)
    of the episodes whose extras hold them; empty when none does, so other envs' summaries keep their keys."""
    out: dict[str, Any] = {}
    x_pos = np.array([float(x["x_pos"]) for x in extras if x is not None and "x_pos" in x], dtype=np.float64)
    if len(x_pos):
        out["x_pos_mean"] = float(x_pos.mean())
        out["x_pos_std"] = float(x_pos.std())
    flags = [bool(x["flag_get"]) for x in extras if x is not None and "flag_get" in x]
    if flags:
        out["flag_rate"] = float(np.mean(flags))
    return out


def summarize(episodes: list[EpisodeStats], extras: list[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Return, length and success statistics of ``episodes``, overall and per level; with ``extras`` (the env's
    extras of each episode, in order: ``step_extras``) also those of ``extras_stats``, overall and ``x_pos_mean``
    per level."""
    returns = np.array([e.episode_return for e in episodes], dtype=np.float64)
    lengths = np.array([e.length for e in episodes], dtype=np.float64)
    successes = [e.success for e in episodes if e.success is not None]
    per_level: dict[str, dict[str, float]] = {}
    for e in episodes:
        d = per_level.setdefault(str(e.level_seed), {"episodes": 0, "return_sum": 0.0, "successes": 0})
        d["episodes"] += 1
        d["return_sum"] += e.episode_return
        d["successes"] += int(bool(e.success))
    summary = {
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
    if extras is not None:
        if len(extras) != len(episodes):
            raise ValueError(f"summarize: {len(extras)} extras for {len(episodes)} episodes")
        summary.update(extras_stats(extras))
        for seed, level in summary["per_level"].items():
            x_pos = extras_stats([x for e, x in zip(episodes, extras) if str(e.level_seed) == seed])
            if "x_pos_mean" in x_pos:
                level["x_pos_mean"] = x_pos["x_pos_mean"]
    return summary


def evaluate_run_splits(
    agent: Agent,
    cfg: TrainConfig,
    device: torch.device,
    tag: str,
    run_dir: Path,
    reward_scale: float = 1.0,
    global_step: int | None = None,
    num_episodes: int | None = None,
    max_steps: int | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Evaluate on train and test levels (sampled and deterministic); write eval/<tag>.json and, for the
    final evaluation, the per-step and frame files.

    ``max_steps`` caps the env steps of each pass (the final evaluation's ``final_eval_step_cap``); progress
    (episodes done per pass) is shown per ``progress`` (default: the run's ``--progress``)."""
    from multiscene.trainer import env_spec

    n = num_episodes or cfg.eval_episodes
    record = tag == "final"
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"global_step": global_step, "reward_scale": reward_scale, "gamma": cfg.gamma}
    if max_steps is not None:
        summary["step_cap"] = max_steps
    # Every pass at once (one batched forward per step; benchmarks/eval_batching.py measures the gain): train
    # and test levels x sampled and deterministic, and for the final evaluation the random policy's floor.
    frames = eval_frames(cfg) if record else 0
    specs = [
        EvalPass(f"{split}/{'deterministic' if deterministic else 'sampled'}",
                 make_env(env_spec(cfg, split, min(cfg.eval_num_envs, n), seed_offset=101 + int(deterministic),
                                           training=False)), n,
                 deterministic, torch.Generator().manual_seed(cfg.seed * 7 + int(deterministic)),
                 record=record and not deterministic, frame_episodes=FRAME_EPISODES if frames else 0,
                 max_frames=frames)
        for split in ("train", "test") for deterministic in (False, True)
    ]
    if record:
        specs.append(EvalPass("test/random-policy",
                              make_env(env_spec(cfg, "test", min(cfg.eval_num_envs, n), seed_offset=101,
                                                       training=False)), n,
                              generator=torch.Generator().manual_seed(cfg.seed), random_policy=True))
    bar = EvalProgress(tag, [spec.name for spec in specs], n, progress or cfg.progress)
    was_training = agent.training
    agent.eval()
    try:
        results = run_passes(
            agent, specs, device, max_steps, on_episode=bar.update,
            on_finish=lambda name, res: bar.finish(name, len(res.episodes), max_steps if res.capped else None),
        )
    finally:
        bar.close()
        for spec in specs:
            spec.envs.close()
        agent.train(was_training)
    for (split, mode), res in zip([tuple(spec.name.split("/")) for spec in specs], results):
        stats = summarize(res.episodes, res.extras)
        if max_steps is not None:
            stats["capped"] = res.capped
        if mode == "random-policy":
            summary["random_policy_test"] = {k: v for k, v in stats.items() if k != "per_level"}
        elif mode == "deterministic":
            summary.setdefault(split, {})["deterministic"] = stats
        else:
            summary.setdefault(split, {}).update(stats)
            if res.recorder is not None:
                _write_steps(eval_dir, split, res.recorder, reward_scale, cfg.gamma)
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
    # The Dreamer loop marks its runs at the top of config.json (a run started from Python may keep algo "ppo").
    record = json.loads((Path(run_dir) / "config.json").read_text())
    if cfg.algo == "dreamer" or record.get("algo") == "dreamer":
        # A world-model agent: its own networks and evaluation (multiscene/algos/dreamer/loop.py).
        if video:
            raise ConfigError(f"multiscene eval --video: not available for --algo dreamer runs ({run_dir}).")
        from multiscene.algos.dreamer.loop import evaluate_checkpoint as evaluate_dreamer_checkpoint

        return evaluate_dreamer_checkpoint(run_dir, episodes=episodes, tag=tag, device=device)
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
