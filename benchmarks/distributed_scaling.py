"""Steps/s of 1 vs N torchrun processes on the same global config (issue 15, "Data-parallel PPO" item 3).

Both runs train the same global batch (``--num-envs`` is global, split over the ranks) for the same budget;
the steps/s compared is the loop's own ``charts/SPS`` of the last update (env steps since the loop started, so
process start-up and the final evaluation are excluded). One invocation runs both, one after the other, and
prints their ratio: compare ratios measured in one run, not absolute rates across machines or loads.

    python benchmarks/distributed_scaling.py --nproc 2 [--env coinrun] [--updates 6] [--out DIR] [--json]

Any further arguments are passed to ``multiscene train`` in both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multiscene.children import end_with_this_process

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(nproc: int, run_dir: Path, train_args: list[str]) -> dict[str, float]:
    """One training run with ``nproc`` processes; returns its last update's SPS and the wall time."""
    if nproc == 1:
        launcher = [sys.executable, "-m", "multiscene"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "multiscene"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.time()
    res = subprocess.run([*launcher, "train", *train_args, "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, preexec_fn=end_with_this_process())
    wall = time.time() - start
    if res.returncode != 0:
        raise SystemExit(f"{nproc}-process run failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "charts/SPS" in r][-1]
    return {"sps": float(last["charts/SPS"]), "wall_s": wall, "global_step": int(last["global_step"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--num-envs", type=int, default=16, help="GLOBAL envs (split over the ranks)")
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    ns, extra = parser.parse_known_args(argv)
    train_args = [
        "--env", ns.env, "--num-envs", str(ns.num_envs), "--num-steps", str(ns.num_steps),
        "--total-timesteps", str(ns.num_envs * ns.num_steps * ns.updates), "--num-minibatches", "4",
        "--no-final-eval", "--no-tensorboard", "--progress", "none", "--torch-threads", "1", "--num-threads", "1",
        "--checkpoint-interval", "1000000", *extra,
    ]
    out = ns.out or Path(tempfile.mkdtemp(prefix="multiscene-scaling-"))
    results = {n: run(n, out / f"nproc{n}", train_args) for n in (1, ns.nproc)}
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "train_args": train_args,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "results": {str(n): r for n, r in results.items()},
        "sps_ratio": results[ns.nproc]["sps"] / results[1]["sps"],
    }
    if ns.json:
        print(json.dumps(summary, indent=2))
    else:
        for n, r in results.items():
            print(f"{n} process(es): {r['sps']:8.1f} steps/s (loop), {r['wall_s']:6.1f} s wall incl. start-up")
        print(f"ratio {ns.nproc} vs 1: {summary['sps_ratio']:.2f}  (load average {summary['load_average_1min']:.1f} "
              f"on {summary['cpus']} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
