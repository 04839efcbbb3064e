"""Steps per second of our ``--preset ppo-mujoco`` against CleanRL's ``ppo_continuous_action.py``, in one run.

Issue 10 ("Speed"): same machine, same env, same envs x steps and budget, in one run, and the ratio ours/theirs.
Both programs are started as subprocesses, alternating (ours, theirs, ours, theirs, ... -- "ABAB") so that a
change in the machine's load hits both sides alike. Each side runs with one torch/OpenMP thread
(``OMP_NUM_THREADS=1``; ours also ``--torch-threads 1``).

What is read:

- ours: ``charts/SPS`` of the last record of the run's ``metrics.jsonl`` (env steps since the start of the
  training loop divided by the wall time since then; multiscene/algos/onpolicy/loop.py);
- CleanRL: the last ``SPS:`` line it prints (``global_step / (time.time() - start_time)``, the same
  definition, started after its envs and agent are built).

Env versions differ: ours runs HalfCheetah-v5 (gymnasium 1.x in the project's venv); CleanRL pins gymnasium
0.29.1, whose newest HalfCheetah is v4. Both simulate the same half-cheetah model with the same 17-dim
observation and 6-dim action (v5 mostly added constructor arguments); the per-step simulation cost may still
differ a little through the gymnasium and wrapper versions, which this script does not separate out.

CleanRL runs in its own venv (``/work/peer_venvs/cleanrl_mujoco``: torch 2.13.0 CPU, numpy<2,
gymnasium[mujoco] 0.29.1, tyro, tensorboard), never in the project's.

``--profile`` additionally runs ours once under cProfile and prints the top functions by cumulative and by
own time, to see where our time goes. ``--breakdown`` instead times the parts of our collection and update
in this process (microseconds per env step; no CleanRL run, no profiler distortion beyond ~1 us per timed
call). ``--ours-arg=FLAG`` (repeatable) adds a flag to our side only, e.g. ``--ours-arg=--no-adam-fused``.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/ppo_mujoco_vs_cleanrl.py [--total-timesteps 6144] [--rounds 2] \
        [--num-envs 1] [--num-steps 2048] [--json out.json] [--profile] [--ours-arg=FLAG ...]
    PYTHONPATH=. python benchmarks/ppo_mujoco_vs_cleanrl.py --breakdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from multiscene.children import end_with_this_process

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLEANRL_PYTHON = "/work/peer_venvs/cleanrl_mujoco/bin/python"
DEFAULT_CLEANRL_SCRIPT = "/work/shared/peers/cleanrl/ppo_continuous_action.py"
SPS_LINE = re.compile(r"^SPS:\s*([0-9.]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Measurement:
    """One run of one side."""

    side: str
    """``ours`` or ``cleanrl``."""
    round: int
    """Index of the ABAB round (0-based)."""
    sps: float
    """The side's own steps-per-second figure at the end of its run."""
    wall_seconds: float
    """Wall time of the whole subprocess (start-up, env creation and, for ours, the run directory included)."""
    load_before: float
    """1-minute load average just before the run."""
    load_after: float
    """1-minute load average just after the run."""


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def ours_command(python: str, args: argparse.Namespace, run_dir: Path, profile_out: Path | None = None) -> list[str]:
    """The ``multiscene train`` command for our side."""
    prefix = [python, "-m", "cProfile", "-o", str(profile_out)] if profile_out else [python]
    return [
        *prefix, "-m", "multiscene", "train", "--preset", "ppo-mujoco", "--env", args.ours_env,
        "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
        "--total-timesteps", str(args.total_timesteps), "--seed", str(args.seed),
        "--torch-threads", str(args.threads), "--device", "cpu", "--no-final-eval", "--progress", "none",
        "--run-dir", str(run_dir), "--overwrite", *args.ours_arg,
    ]


def cleanrl_command(args: argparse.Namespace) -> list[str]:
    """CleanRL's command: its own defaults are already ppo-mujoco's settings (the preset copies them)."""
    return [
        args.cleanrl_python, args.cleanrl_script, "--env-id", args.cleanrl_env, "--num-envs", str(args.num_envs),
        "--num-steps", str(args.num_steps), "--total-timesteps", str(args.total_timesteps),
        "--seed", str(args.seed), "--no-cuda",
    ]


def _load() -> float:
    return os.getloadavg()[0]


def run_ours(args: argparse.Namespace, work: Path, round_index: int) -> Measurement:
    run_dir = work / f"ours-{round_index}"
    load0, t0 = _load(), time.perf_counter()
    proc = subprocess.run(ours_command(sys.executable, args, run_dir), env=_env(args.threads), preexec_fn=end_with_this_process(), cwd=work,
                          capture_output=True, text=True, check=False)
    wall, load1 = time.perf_counter() - t0, _load()
    if proc.returncode != 0:
        raise RuntimeError(f"our run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sps = [r["charts/SPS"] for r in records if "charts/SPS" in r]
    if not sps:
        raise RuntimeError(f"no charts/SPS in {run_dir / 'metrics.jsonl'}")
    return Measurement("ours", round_index, float(sps[-1]), wall, load0, load1)


def run_cleanrl(args: argparse.Namespace, work: Path, round_index: int) -> Measurement:
    cwd = work / f"cleanrl-{round_index}"  # CleanRL writes runs/ (TensorBoard) into its working directory
    cwd.mkdir(parents=True, exist_ok=True)
    load0, t0 = _load(), time.perf_counter()
    proc = subprocess.run(cleanrl_command(args), env=_env(args.threads), preexec_fn=end_with_this_process(), cwd=cwd, capture_output=True, text=True,
                          check=False)
    wall, load1 = time.perf_counter() - t0, _load()
    if proc.returncode != 0:
        raise RuntimeError(f"CleanRL failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    found = SPS_LINE.findall(proc.stdout)
    if not found:
        raise RuntimeError(f"no 'SPS:' line in CleanRL's output:\n{proc.stdout[-2000:]}")
    return Measurement("cleanrl", round_index, float(found[-1]), wall, load0, load1)


def profile_ours(args: argparse.Namespace, work: Path, top: int = 25) -> str:
    """Run ours once under cProfile; the top functions by cumulative and by own time, as text."""
    import cProfile  # noqa: F401  (the subprocess uses it; imported to fail early if missing)
    import io
    import pstats

    out = work / "ours.prof"
    proc = subprocess.run(ours_command(sys.executable, args, work / "ours-profile", out), env=_env(args.threads), preexec_fn=end_with_this_process(),
                          cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"profiled run failed:\n{proc.stderr[-4000:]}")
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


@contextlib.contextmanager
def _timed(owner: Any, name: str, key: str, acc: dict[str, float]) -> Iterator[None]:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``acc[key]``; restore it on exit."""
    original = getattr(owner, name)

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def breakdown(preset_args: list[str], rounds: int = 2) -> dict[str, dict[str, float]]:
    """Where our side's time goes, in-process: microseconds per env step of each part of one collection and one
    update of ``--preset ppo-mujoco`` plus ``preset_args`` (the last of ``rounds`` rollout+update rounds).

    Collection: the env step (``VecEnv.step``), the acting forward (``Agent.forward``), observation
    normalization, and the rest of the collector's loop (storage, sampling, log-probabilities, the reward
    normalizer). Update: forward, loss, backward, gradient clipping, optimizer step, and the rest (clearing
    gradients, finiteness checks, metrics). Each timed call pays ~1 us for its timer."""
    import torch

    from multiscene import registry
    from multiscene.algos.onpolicy import base, ppo
    from multiscene.algos.onpolicy.rollout import RolloutCollector
    from multiscene.cli import parse_train_args
    from multiscene.envs import make_env
    from multiscene.runtime import env_spec, make_agent, seed_everything

    cfg = parse_train_args(["--preset", "ppo-mujoco", *preset_args])
    if cfg.algo != "ppo":
        raise ValueError(f"the breakdown times PPO's update; got --algo {cfg.algo}")
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed, cfg.deterministic_torch)
    device = torch.device("cpu")
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        agent = make_agent(cfg, envs, device=device)
        algo = registry.load("algorithm", cfg.algo)()
        optimizer = algo.make_optimizer(agent, cfg)
        collector = RolloutCollector(envs, agent, cfg, device)
        steps = cfg.num_envs * cfg.num_steps
        collect: dict[str, float] = {}
        update: dict[str, float] = {}
        for _ in range(rounds):
            collect.clear()
            update.clear()
            with _timed(envs, "step", "env step", collect), _timed(agent, "forward", "acting forward", collect), \
                    _timed(agent, "normalize_obs", "observation normalization", collect):
                t = time.perf_counter()
                rollout = collector.collect(agent)
                collect["total"] = time.perf_counter() - t
            adv = algo.advantages(agent.critic, rollout, cfg)
            with _timed(base.DeviceRollout, "forward", "forward", update), _timed(ppo, "ppo_loss", "loss", update), \
                    _timed(torch.Tensor, "backward", "backward", update), \
                    _timed(base, "clip_grad_norm", "gradient clipping", update), \
                    _timed(optimizer, "step", "optimizer step", update):
                t = time.perf_counter()
                algo.update(agent, optimizer, rollout, adv, {}, cfg, device)
                update["total"] = time.perf_counter() - t
    finally:
        envs.close()
    out = {}
    for name, parts in (("collect", collect), ("update", update)):
        rest = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        out[name] = {k: v / steps * 1e6 for k, v in {**parts, "rest": rest}.items()}
    return out


def summarize(measurements: list[Measurement]) -> dict[str, float]:
    """Median SPS per side over the rounds and their ratio ours / CleanRL (the median resists one round hit by
    a load spike)."""
    ours = [m.sps for m in measurements if m.side == "ours"]
    theirs = [m.sps for m in measurements if m.side == "cleanrl"]
    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    paired = [o / t for o, t in zip(ours, theirs, strict=True)]
    return {"ours_sps": med_ours, "cleanrl_sps": med_theirs, "ratio": med_ours / med_theirs,
            "ratio_per_round_min": min(paired), "ratio_per_round_max": max(paired)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total-timesteps", type=int, default=3 * 2048, help="env steps per run (default 3 x 2048)")
    p.add_argument("--num-envs", type=int, default=1, help="envs on both sides (ppo-mujoco and CleanRL: 1)")
    p.add_argument("--num-steps", type=int, default=2048, help="steps per env per update (both: 2048)")
    p.add_argument("--rounds", type=int, default=2, help="ABAB rounds: each side runs this many times (default 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per side (default 1)")
    p.add_argument("--ours-env", default="HalfCheetah-v5")
    p.add_argument("--cleanrl-env", default="HalfCheetah-v4", help="gymnasium 0.29 has no -v5")
    p.add_argument("--cleanrl-python", default=DEFAULT_CLEANRL_PYTHON)
    p.add_argument("--cleanrl-script", default=DEFAULT_CLEANRL_SCRIPT)
    p.add_argument("--json", type=Path, default=None, help="write every measurement and the summary here")
    p.add_argument("--profile", action="store_true", help="also cProfile one run of ours and print the top")
    p.add_argument("--breakdown", action="store_true",
                   help="only time the parts of our collection and update in-process (us per env step), no CleanRL")
    p.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    p.add_argument("--ours-arg", action="append", default=[], metavar="FLAG",
                   help="an extra flag for our side, after the preset's (repeatable; write it with =, e.g. --ours-arg=--no-adam-fused)")
    args = p.parse_args(argv)
    if args.total_timesteps < args.num_envs * args.num_steps:
        p.error("--total-timesteps must allow one update (>= --num-envs x --num-steps)")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    for name in ("cleanrl_python", "cleanrl_script"):
        if not args.breakdown and not Path(getattr(args, name)).exists():
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist (see /work/shared/peers/README.md)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.breakdown:
        parts = breakdown([f"--env={args.ours_env}", f"--num-envs={args.num_envs}", f"--num-steps={args.num_steps}",
                           f"--seed={args.seed}", f"--torch-threads={args.threads}", *args.ours_arg])
        for phase, times in parts.items():
            print(f"{phase}: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()) + "  (us per env step)")
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="ppo_vs_cleanrl_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    measurements: list[Measurement] = []
    try:
        for r in range(args.rounds):
            for side in (run_ours, run_cleanrl):
                m = side(args, work, r)
                measurements.append(m)
                print(f"round {r} {m.side:8s} SPS {m.sps:8.1f}  wall {m.wall_seconds:6.1f} s  "
                      f"load {m.load_before:.1f} -> {m.load_after:.1f}", flush=True)
        summary = summarize(measurements)
        print(f"ours ({args.ours_env}) median SPS: {summary['ours_sps']:.1f}")
        print(f"CleanRL ({args.cleanrl_env}) median SPS: {summary['cleanrl_sps']:.1f}")
        print(f"ratio ours / CleanRL: {summary['ratio']:.3f} (per round {summary['ratio_per_round_min']:.3f}"
              f"-{summary['ratio_per_round_max']:.3f}; the issue's aim is >= 1.5)")
        profile = profile_ours(args, work) if args.profile else None
        if profile:
            print(profile)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "started": started, "command": sys.argv, "machine_cpus": os.cpu_count(),
                "settings": {k: str(v) for k, v in vars(args).items()},
                "measurements": [asdict(m) for m in measurements], "summary": summary,
            }, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
