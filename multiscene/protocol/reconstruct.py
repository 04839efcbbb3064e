"""Seed 003's Fig. 8: frames of an unseen level next to their reconstructions by each agent's world model.

Seed 003 §6 shows "five frames taken from a trajectory in 1-3, and their reconstructions by agents trained on one
level (4-1), 4 levels and 10 levels": agents that never saw the level, to show how far each world model overfits
to the levels it trained on. Here, per transfer level (E^tau, ``--transfer-levels``) and one seed, the rows are

1. the observed frames;
2. the joint agent (pre-trained on all of E^pre);
3. each baseline of a pre-training level (an agent trained on that one level);
4. the transfer level's own baseline, the one agent that trained on it: a reference for how close a world model
   gets to these frames when it has seen the level (not in the seed's figure).

Fine-tuned agents are left out (the seed does not show them; each is the joint agent further trained on one level
of E^pre, so it adds rows, not a new kind of agent), and so are the transfer runs (they trained on the level).

The observed sequence is ``steps`` env steps on one env of the level (built from the runs' own config with
``--env`` set to the level), the same frames for every agent: the sampled policy of the level's own baseline (it
trained on the level, so it moves through it), else of the joint agent, else (no such run, or ``policy="random"``)
a uniformly random policy, with a fixed seed. The JSON names the policy per level. (The first version used the
random policy only: on Mario it barely leaves the start, and the five frames were nearly the same.) Each agent's
reconstruction is its world model's posterior over the whole sequence (encoder, then the RSSM filtering the
embeddings with the actions taken, a seeded posterior sample per step), decoded by the image decoder's mean. The
frames shown are ``frames`` time steps spread over the second half to the end of the sequence, so the RSSM has
filtered some context before each (the first frame of an episode is reconstructed from the encoder alone).

Agents are loaded with the Dreamer loop's own code (``load_dreamer_config`` and ``init_agent_from``, the latest
good checkpoint). A run of another algorithm (``--algo ppo``: no world model, no decoder), a run not started yet
or one without a checkpoint is skipped with a line saying why, in the log and in the JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiscene.config import ConfigError
from multiscene.rundir import atomic_write_json

RECON_STEPS = 40
"""Env steps of the observed sequence (a few dozen: the RSSM filters some context before the frames shown)."""
RECON_FRAMES = 5
"""Frames shown per row (seed 003 Fig. 8 shows five)."""


@dataclasses.dataclass
class ObservedSequence:
    """One episode-or-more of one policy on one env: what every world model is shown."""

    obs: np.ndarray
    """[T, *obs_shape] observations as the env gives them."""
    prev_action: np.ndarray
    """[T, A] the action that led to each observation (one-hot for discrete actions; zeros at an episode start)."""
    first: np.ndarray
    """[T] bool, True where an episode starts."""


def collect_sequence(envs: Any, steps: int, seed: int, driver: Any = None) -> ObservedSequence:
    """``steps`` observations on the one-env set ``envs`` (reset here): of a uniformly random policy, or with
    ``driver`` (a ``DreamerAgent``) of that agent's sampled policy, seeded by ``seed`` either way."""
    from multiscene.evaluate import random_actions

    generator = torch.Generator().manual_seed(seed)
    spec = getattr(envs, "action_spec", None)
    discrete = spec is None or spec.kind == "discrete"
    size = int(envs.num_actions)
    start = envs.reset()
    obs, prev, first = [start.obs[0]], [np.zeros(size, np.float32)], [True]
    state = driver.initial_state(1, torch.device("cpu")) if driver is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the driver's samples draw from the global generator
        while len(obs) < steps:
            if driver is not None:
                action_t, state = driver.act(torch.as_tensor(obs[-1][None]), torch.tensor([first[-1]]), state)
                action = driver.env_actions(action_t)
                # What the RSSM reads: the one-hot or the [-1, 1] vector the actor emitted.
                taken = state.prev_action[0].numpy().astype(np.float32)
            else:
                action = random_actions(envs, 1, generator).numpy()
                if discrete:
                    taken = np.eye(size, dtype=np.float32)[int(action[0])]
                else:
                    # The RSSM reads the [-1, 1] vector the actor emits, not the env's units (env_actions).
                    low = np.where(np.isfinite(spec.low), spec.low, -1.0)
                    high = np.where(np.isfinite(spec.high), spec.high, 1.0)
                    taken = ((np.asarray(action[0], np.float64) - low) / (high - low) * 2.0 - 1.0).astype(np.float32)
            result = envs.step(action)
            obs.append(result.obs[0])
            first.append(bool(result.first[0]))
            prev.append(np.zeros(size, np.float32) if result.first[0] else taken)
    return ObservedSequence(np.stack(obs), np.stack(prev), np.array(first))


@torch.no_grad()
def reconstruct(agent: Any, seq: ObservedSequence, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The world model's posterior reconstruction of every step of ``seq``: (frames [T, *obs_shape] in the
    observation's own format, squared error [T] per element of the decoder's target, averaged per step).

    Images come back as uint8 pixels (the decoder's mean, clipped); symbol grids (MiniGrid) as the most likely code
    of each cell. The error is measured in the decoder's target scale (pixels in [-0.5, 0.5], one-hot codes), the
    scale of the training image loss."""
    wm = agent.world_model
    device = next(wm.parameters()).device
    obs = torch.as_tensor(seq.obs, device=device)[:, None]
    action = torch.as_tensor(seq.prev_action, device=device)[:, None]
    first = torch.as_tensor(seq.first, device=device)[:, None]
    generator = torch.Generator(device=device).manual_seed(seed)
    post, _ = wm.rssm.observe(wm.embed(obs), action, first, generator=generator)
    mean = wm.decode(wm.rssm.features(post))[:, 0]
    target = wm.obs_target(obs[:, 0])
    error = (mean - target).pow(2).flatten(1).mean(1)
    if wm.image:
        frames = ((mean + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)
    elif wm.symbol_classes is not None:
        frames = mean.argmax(-1).to(torch.uint8)
    else:
        frames = mean.to(torch.float32)
    return frames.cpu().numpy(), error.cpu().numpy()


def display_image(frame: np.ndarray, symbol_classes: int | None) -> tuple[np.ndarray, str | None]:
    """An array and colormap for ``imshow``: gray frames as they are, RGB frames as they are, symbol grids as
    their codes scaled to [0, 1] per channel (a colour per object/colour/state code triple)."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0], "gray"
    if symbol_classes is not None:
        return np.clip(frame.astype(np.float32) / (symbol_classes - 1), 0.0, 1.0), None
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame, None
    flat = frame.reshape(frame.shape[0], -1) if frame.ndim > 1 else frame[None]
    return flat, "viridis"


def shown_steps(steps: int, frames: int) -> list[int]:
    """``frames`` time steps spread evenly from the middle to the end of a ``steps``-long sequence."""
    return sorted({int(round(t)) for t in np.linspace(steps // 2, steps - 1, frames)})


def reconstruction_figures(
    out: Path, transfer: list[str], pre: list[str], plans: list[Any], report: Path, seed: int = 1,
    steps: int = RECON_STEPS, frames: int = RECON_FRAMES, log: Callable[[str], None] = print,
    policy: str = "agent",
) -> list[Path]:
    """Seed 003 Fig. 8 per transfer level into ``report/reconstructions_<level>.png``, the shown frames and
    reconstructions into ``reconstructions_<level>.npz`` (``observed``, one array per drawn agent, in row order)
    and the numbers into ``report/reconstructions.json`` (per level: the drawn rows with each agent's mean squared
    reconstruction error on the shown frames and on the whole sequence, the skipped runs and why). Returns the
    PNGs written (none without transfer levels or without a Dreamer agent to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multiscene.algos.dreamer.loop import load_dreamer_agent
    from multiscene.envs import make_env
    from multiscene.protocol.pretrain import _dir_name
    from multiscene.runtime import env_spec, load_config

    runs = out / "runs"
    if policy not in ("agent", "random"):
        raise ValueError(f"policy must be 'agent' or 'random', got {policy!r}")
    record: dict[str, Any] = {"seed": seed, "steps": steps, "policy": policy, "levels": {}}
    written: list[Path] = []
    if not transfer:
        log("reconstructions (Fig. 8): no --transfer-levels in this protocol; nothing to reconstruct")
    by_name = {p.name: p for p in plans if p.seed == seed}
    device = torch.device("cpu")
    for level in transfer:
        candidates = [(f"joint/s{seed}", "joint")]
        candidates += [(f"baseline/{_dir_name(lv)}/s{seed}", f"baseline {lv}") for lv in pre]
        candidates.append((f"baseline/{_dir_name(level)}/s{seed}", f"baseline {level} (trained on it)"))
        candidates = [(name, label) for name, label in candidates if name in by_name]
        configs = [runs / name / "config.json" for name, _ in candidates if (runs / name / "config.json").exists()]
        entry: dict[str, Any] = {"rows": [], "skipped": []}
        record["levels"][level] = entry
        if not configs:
            log(f"reconstructions (Fig. 8) of {level}: no run has started yet; skipped")
            continue
        cfg = dataclasses.replace(load_config(configs[0].parent), env=level, seed=seed)
        envs = make_env(env_spec(cfg, "test", 1, seed_offset=808, training=False))
        try:
            agents: list[tuple[str, str, Any]] = []
            for name, label in candidates:
                try:
                    agents.append((name, label, load_dreamer_agent(runs / name, envs, device)))
                except ConfigError as e:
                    reason = str(e)
                    if "another algorithm" in reason:
                        reason = "not a Dreamer run: no world model, no image decoder to reconstruct with"
                    entry["skipped"].append({"run": name, "reason": reason})
                    log(f"reconstructions (Fig. 8) of {level}: skipped {name}: {reason}")
            if not agents:
                continue
            # The frames follow the policy of the agent that trained on this level (it moves through the level,
            # where a random policy barely leaves the start, e.g. on Mario), else the joint agent's.
            drivers = [(name, agent) for name, label, agent in agents if name == candidates[-1][0]] or \
                [(name, agent) for name, label, agent in agents if name.startswith("joint/")]
            driver_name, driver = drivers[0] if drivers and policy == "agent" else (None, None)
            entry["policy"] = f"sampled policy of {driver_name}" if driver_name else "uniform random"
            seq = collect_sequence(envs, steps, seed, driver=driver)
        finally:
            envs.close()
        symbols = getattr(agents[0][2].world_model, "symbol_classes", None)
        shown = shown_steps(len(seq.obs), frames)
        entry["shown_steps"] = shown
        arrays: dict[str, np.ndarray] = {"observed": seq.obs[shown]}
        rows: list[tuple[str, np.ndarray]] = [("observed", seq.obs[shown])]
        for name, label, agent in agents:
            recon, error = reconstruct(agent, seq, seed)
            arrays[name.replace("/", "__")] = recon[shown]
            rows.append((label, recon[shown]))
            entry["rows"].append({"run": name, "label": label, "mse_shown": float(error[shown].mean()),
                                  "mse_all_steps": float(error.mean())})
        fig, axes = plt.subplots(len(rows), len(shown), figsize=(1.6 * len(shown), 1.6 * len(rows)), squeeze=False)
        for r, (label, images) in enumerate(rows):
            for c, t in enumerate(shown):
                ax = axes[r][c]
                image, cmap = display_image(images[c], symbols)
                ax.imshow(image, cmap=cmap, vmin=0 if cmap == "gray" else None, vmax=255 if cmap == "gray" else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"t={t}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(label.replace(" ", "\n", 1), fontsize=7)
        fig.suptitle(f"{level} (unseen in pre-training): observed frames and world-model reconstructions, seed {seed}",
                     fontsize=9)
        stem = f"reconstructions_{_dir_name(level)}"
        path = report / f"{stem}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        np.savez_compressed(report / f"{stem}.npz", **arrays)
        entry["figure"] = path.name
        entry["arrays"] = f"{stem}.npz"
        written.append(path)
    atomic_write_json(report / "reconstructions.json", record)
    return written
