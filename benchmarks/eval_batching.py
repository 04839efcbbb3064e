"""Wall time of an evaluation's passes run side by side (one batched forward per step, as
``evaluate_run_splits`` does) vs one after the other (issue 15, "The first day" 2). Untrained agent.

    python benchmarks/eval_batching.py [--env coinrun] [--episodes 8] [--eval-num-envs 8] [--max-steps 2000]
"""

from __future__ import annotations

import argparse
import time

import torch

from multiscene.config import replace
from multiscene.envs import make_env
from multiscene.evaluate import EvalPass, run_passes
from multiscene.presets import default_preset, get_preset
from multiscene.runtime import env_spec, make_agent


def passes(cfg, episodes: int) -> list[EvalPass]:
    """The five passes of a final evaluation."""
    out = [EvalPass(f"{split}/{det}", make_env(env_spec(cfg, split, cfg.eval_num_envs, seed_offset=101 + int(det))),
                    episodes, deterministic=det, generator=torch.Generator().manual_seed(7 + int(det)))
           for split in ("train", "test") for det in (False, True)]
    out.append(EvalPass("test/random", make_env(env_spec(cfg, "test", cfg.eval_num_envs, seed_offset=101)),
                        episodes, generator=torch.Generator().manual_seed(1), random_policy=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--eval-num-envs", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=2000, help="env steps per pass")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    cfg = replace(get_preset(default_preset(ns.env, None)), env=ns.env, eval_num_envs=ns.eval_num_envs,
                  num_threads=1)
    probe = make_env(env_spec(cfg, "test", 1))
    agent = make_agent(cfg, probe).eval()
    probe.close()
    times = {}
    for mode in ("one after the other", "side by side", "one after the other ", "side by side "):
        specs = passes(cfg, ns.episodes)
        start = time.perf_counter()
        if mode.startswith("side"):
            run_passes(agent, specs, torch.device("cpu"), ns.max_steps)
        else:
            for spec in specs:
                run_passes(agent, [spec], torch.device("cpu"), ns.max_steps)
        times[mode] = time.perf_counter() - start
        for spec in specs:
            spec.envs.close()
    for mode, t in times.items():
        print(f"{ns.env}: {mode.strip():20s} {t:6.2f} s")
    seq = min(times["one after the other"], times["one after the other "])
    side = min(times["side by side"], times["side by side "])
    print(f"{ns.env}: speed-up side by side x{seq / side:.2f} (best of two each)")


if __name__ == "__main__":
    main()
