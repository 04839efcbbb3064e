"""Train-step time of our DreamerV2 against a public PyTorch Dreamer, ``dreamkit`` 0.1.0 (PyPI; a packaging of
NM512/dreamerv3-torch, so DreamerV3), at the same sizes, in one run on the same machine (issue 13).

One train step on each side = one world-model update on a batch of ``batch x seq_len`` 64x64x1 frames (the
Mario path of seed 003) + one imagination actor-critic update from every posterior state, horizon 15:

- ours: ``DreamerLearner.train_step`` (``--dreamer.size small``: GRU 128, 32 x 32 latents, MLPs 2 x 128,
  CNN depth 16), in this process, sampling from an ``EpisodeReplay`` of random episodes;
- peer: ``benchmarks/peer_dreamkit_step.py`` in a subprocess under the peer venv's python (dreamkit never
  enters the project venv): ``WorldModel._train`` + ``ImagBehavior._train`` on random batches, widths set to
  the same numbers (see that file's ``peer_config``).

Both sides run with one torch thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), 12 discrete
actions, after ``--warmup`` untimed steps and one step under ``torch.utils.flop_counter.FlopCounterMode``
(FLOPs per step, forward + backward). Then ``--rounds`` rounds, each timing ``--steps`` train steps of ours,
then of the peer's (ABAB), so that a change in the machine's load hits both sides alike; the peer process
stays alive between rounds and waits on its stdin while ours runs. Per round it prints wall and CPU seconds
per step of each side, the ratio ours / peer and the load average. CPU seconds (``time.process_time`` of
each process) are the better figure on a shared machine; only ratios from one run are comparable.

The architectures are not the same, only the sizes: ``SIZE_TABLE`` and ``UNMATCHED`` list what differs
(DreamerV3's LayerNorm + SiLU, symlog two-hot reward/critic heads, unimix, return normalization, same-padded
CNN down to 4x4, ...), and the JSON also has the parameter counts and FLOPs of both sides, so the comparison
can be read per FLOP as well as per step.

Usage (from the repository root, project venv; the peer venv is made as docs/dreamer.md "Measurements" says)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/dreamer_vs_peer.py [--shapes 16x50 16x16] \
        [--rounds 3] [--steps 2] [--peer-python /work/peer_venvs/dreamkit/bin/python] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from multiscene.algos.dreamer import DreamerConfig
from multiscene.algos.dreamer.loop import DreamerAgent, DreamerLearner
from multiscene.algos.dreamer.replay import Episode, EpisodeReplay

OBS_SHAPE = (64, 64, 1)
NUM_ACTIONS = 12
PEER_SCRIPT = Path(__file__).with_name("peer_dreamkit_step.py")
DEFAULT_PEER_PYTHON = "/work/peer_venvs/dreamkit/bin/python"

SIZE_TABLE: list[tuple[str, str, str]] = [
    ("observation", "64x64x1 uint8, 12 discrete actions", "same"),
    ("batch x seq_len", "B x L (per run)", "same"),
    ("deterministic state (GRU)", "128, torch nn.GRUCell", "128 (dyn_deter), layer-normed GRU (dreamkit GRUCell)"),
    ("RSSM hidden", "128", "128 (dyn_hidden)"),
    ("stochastic latents", "32 x 32 categorical", "32 x 32 categorical (dyn_stoch, dyn_discrete), 1% unimix"),
    ("feature (h, z)", "128 + 1024 = 1152", "128 + 1024 = 1152"),
    ("MLP heads (reward, continue, actor, critic)", "2 x 128, ELU, bias", "2 x 128 (layers, units), SiLU + LayerNorm, no bias"),
    ("CNN encoder", "depth 16: 4 convs k4 s2 valid, 64->31->14->6->2, embed 512",
     "cnn_depth 16: 4 convs k4 s2 same-padded + LayerNorm, 64->32->16->8->4 (minres 4), embed 2048"),
    ("CNN decoder", "Linear 1152->512 (1x1), deconvs k5,5,6,6 s2: 1->5->13->30->64",
     "Linear 1152->2048 (4x4x128), deconvs k4 s2 + LayerNorm: 4->8->16->32->64"),
    ("reward head output", "1 (Gaussian, unit variance, on tanh(r))", "255 bins, symlog two-hot (symlog_disc)"),
    ("critic output", "1 (Gaussian) + target critic copied every 100 steps",
     "255 bins, symlog two-hot + slow critic (EMA 0.02 every step, also a regularizer term)"),
    ("imagination horizon", "15 from all B x L posterior states", "15 from all B x L posterior states"),
    ("actor gradient", "Reinforce (discrete)", "Reinforce (imag_gradient reinforce)"),
    ("optimizers", "AdamW x 3 (model, actor, critic), clip 100", "Adam x 3, clip 1000 (model) / 100"),
]
"""(item, ours, peer): the widths are matched; the rest is what each algorithm is."""

UNMATCHED: list[str] = [
    "DreamerV3 LayerNorm after every hidden Linear (GRU, MLPs, convs) and SiLU; ours ELU without norms (DreamerV2).",
    "DreamerV3 reward and critic heads predict 255-bin two-hot distributions over symlog values (output layer "
    "128 x 255 instead of 128 x 1; a softmax over 255 per state in imagination); ours Gaussian scalars.",
    "DreamerV3 CNN is same-padded down to 4x4 (minres 4): encoder output 4x4x128 = 2048 wide (ours 2x2x128 = 512),"
    " decoder input Linear 1152 -> 2048 (ours 1152 -> 512) and larger deconv maps; so more conv FLOPs and"
    " parameters at the same depth multiplier.",
    "DreamerV3 layer-normed GRU: one bias-free Linear [input, h] -> 3h + LayerNorm; ours torch nn.GRUCell "
    "(two Linears with biases, fused kernel).",
    "DreamerV3 1% unimix on the latent and actor categoricals; learned initial state (tanh(W)); free bits 1 nat "
    "with dyn 0.5 / rep 0.1 KL scales (ours balance 0.8, free 0, scale 0.1): the same KL cost either way.",
    "DreamerV3 return normalization: 5th/95th percentile EMA (torch.quantile over B x L x 15 returns) each step.",
    "DreamerV3 slow critic: EMA update of all critic weights every step and its forward pass as an extra loss "
    "term; ours a hard copy every 100 steps (bootstrap only).",
    "dreamkit backpropagates the actor and the critic losses separately (retain_graph=True); ours one backward "
    "for both.",
    "dreamkit's Optimizer keeps a (disabled) GradScaler and computes metrics (tensorstats, entropies, .numpy()) "
    "every step; ours computes a few scalar metrics.",
    "Data: ours samples sequences from an EpisodeReplay (time-major copies); the peer draws a fresh random "
    "batch with numpy each step and converts it with torch.tensor (dreamkit's preprocess); both are small "
    "next to the networks.",
]
"""Differences that the peer's config cannot remove (they are the algorithms, DreamerV2 vs DreamerV3)."""


@dataclass
class SideTimes:
    """Per-step times of one side, one list per round."""

    wall: list[list[float]] = field(default_factory=list)
    cpu: list[list[float]] = field(default_factory=list)


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` prints first)."""
    return os.getloadavg()[0]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class OurStep:
    """Our ``DreamerAgent`` + ``DreamerLearner`` at ``--dreamer.size small`` and a replay of random episodes."""

    def __init__(self, batch: int, seq_len: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.cfg = DreamerConfig(size="small", batch_size=batch, seq_len=seq_len)
        self.agent = DreamerAgent(OBS_SHAPE, NUM_ACTIONS, self.cfg)
        self.learner = DreamerLearner(self.agent, self.cfg)
        self.rng = np.random.default_rng(seed)
        self.replay = EpisodeReplay(100_000, seq_len, NUM_ACTIONS, True)
        for _ in range(10):
            n = 200
            self.replay.add(Episode(
                self.rng.integers(0, 256, (n, *OBS_SHAPE), dtype=np.uint8),
                np.eye(NUM_ACTIONS, dtype=np.float32)[self.rng.integers(NUM_ACTIONS, size=n)],
                self.rng.normal(size=n).astype(np.float32), np.ones(n, np.float32), 0))
        self.device = torch.device("cpu")

    def step(self) -> None:
        if self.learner.train_step(self.replay, self.rng, self.device) is None:
            raise RuntimeError("our train step skipped its update (non-finite loss or gradient)")

    def parameters(self) -> dict[str, int]:
        wm, beh = self.agent.world_model, self.agent.behavior
        return {"encoder": count(wm.encoder), "rssm": count(wm.rssm), "decoder": count(wm.decoder),
                "reward": count(wm.reward_head), "continue": count(wm.discount_head), "actor": count(beh.actor),
                "critic": count(beh.critic), "world_model": count(wm),
                "total_trained": count(wm) + count(beh.actor) + count(beh.critic)}

    def flops(self) -> tuple[int, dict[str, int]]:
        """FLOPs of one train step: the total and by aten op (matmuls vs convolutions)."""
        with FlopCounterMode(display=False) as counter:
            self.step()
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
        return int(counter.get_total_flops()), by_op

    def time(self, steps: int) -> tuple[list[float], list[float]]:
        wall, cpu = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            self.step()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return wall, cpu


class PeerProcess:
    """``peer_dreamkit_step.py`` under the peer venv, driven line by line (see its docstring)."""

    def __init__(self, python: str, batch: int, seq_len: int, seed: int, warmup: int, log: IO[str]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
        env.pop("PYTHONPATH", None)  # the peer imports dreamkit from its own venv, nothing of ours
        self.proc = subprocess.Popen(
            [python, str(PEER_SCRIPT), "--batch-size", str(batch), "--seq-len", str(seq_len),
             "--obs-shape", *map(str, OBS_SHAPE), "--actions", str(NUM_ACTIONS), "--seed", str(seed),
             "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.ready: dict[str, Any] = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"the peer process ended (exit code {self.proc.wait()}); see its log")

    def time(self, steps: int) -> tuple[list[float], list[float]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        return out["wall"], out["cpu"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def run_shape(ns: argparse.Namespace, batch: int, seq_len: int, log: IO[str]) -> dict[str, Any]:
    """Build both sides for one ``batch x seq_len``, warm up, count FLOPs, then time ABAB."""
    print(f"== {batch} x {seq_len}: starting the peer (build, {ns.warmup} warm-up step(s), 1 FLOP-counted step)",
          flush=True)
    peer = PeerProcess(ns.peer_python, batch, seq_len, ns.seed, ns.warmup, log)
    try:
        ours = OurStep(batch, seq_len, ns.seed)
        for _ in range(ns.warmup):
            ours.step()
        our_flops, our_by_op = ours.flops()
        peer_flops = peer.ready["flops_per_step"]
        print(f"   FLOPs/step: ours {our_flops / 1e9:.1f} G, peer {peer_flops / 1e9:.1f} G; parameters: "
              f"ours {ours.parameters()['total_trained']:,}, peer {peer.ready['parameters']['total_trained']:,}",
              flush=True)
        times = {"ours": SideTimes(), "peer": SideTimes()}
        rounds = []
        for r in range(ns.rounds):
            load = load_average()
            wall, cpu = ours.time(ns.steps)
            times["ours"].wall.append(wall)
            times["ours"].cpu.append(cpu)
            p_wall, p_cpu = peer.time(ns.steps)
            times["peer"].wall.append(p_wall)
            times["peer"].cpu.append(p_cpu)
            row = {"round": r + 1, "load_1min": load, "ours_wall_s": mean(wall), "peer_wall_s": mean(p_wall),
                   "ours_cpu_s": mean(cpu), "peer_cpu_s": mean(p_cpu),
                   "ratio_wall": mean(wall) / mean(p_wall), "ratio_cpu": mean(cpu) / mean(p_cpu)}
            rounds.append(row)
            print(f"   round {r + 1}: ours {row['ours_wall_s']:.2f} s/step wall ({row['ours_cpu_s']:.2f} CPU), "
                  f"peer {row['peer_wall_s']:.2f} s/step wall ({row['peer_cpu_s']:.2f} CPU), ours/peer "
                  f"{row['ratio_wall']:.2f} wall, {row['ratio_cpu']:.2f} CPU; load {load:.2f}", flush=True)
        ours_cpu = mean([x for r in times["ours"].cpu for x in r])
        peer_cpu = mean([x for r in times["peer"].cpu for x in r])
        summary = {
            "ours_cpu_s_per_step": ours_cpu, "peer_cpu_s_per_step": peer_cpu,
            "ours_wall_s_per_step": mean([x for r in times["ours"].wall for x in r]),
            "peer_wall_s_per_step": mean([x for r in times["peer"].wall for x in r]),
            "ratio_cpu_ours_over_peer": ours_cpu / peer_cpu,
            "ratio_cpu_per_round": [r["ratio_cpu"] for r in rounds],
            "ours_gflop_per_step": our_flops / 1e9, "peer_gflop_per_step": peer_flops / 1e9,
            "ours_gflops_per_cpu_s": our_flops / ours_cpu / 1e9, "peer_gflops_per_cpu_s": peer_flops / peer_cpu / 1e9,
        }
        print(f"   mean: ours {ours_cpu:.2f} CPU s/step ({summary['ours_gflops_per_cpu_s']:.1f} GFLOP/s), peer "
              f"{peer_cpu:.2f} CPU s/step ({summary['peer_gflops_per_cpu_s']:.1f} GFLOP/s), ours/peer "
              f"{summary['ratio_cpu_ours_over_peer']:.2f}", flush=True)
        return {"batch_size": batch, "seq_len": seq_len, "rounds": rounds, "summary": summary,
                "times": {k: {"wall": v.wall, "cpu": v.cpu} for k, v in times.items()},
                "parameters": {"ours": ours.parameters(), "peer": peer.ready["parameters"]},
                "flops_per_step": {"ours": our_flops, "peer": peer_flops},
                "flops_by_op": {"ours": our_by_op, "peer": peer.ready["flops_by_op"]}, "peer_ready": peer.ready}
    finally:
        peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["16x50", "16x16"], help="batch x seq_len, e.g. 16x50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed train steps per side and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed train steps per side before FLOP counting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = []
    with tempfile.NamedTemporaryFile("w+", prefix="peer_dreamkit_", suffix=".log", delete=False) as log:
        try:
            for shape in ns.shapes:
                batch, seq_len = (int(x) for x in shape.split("x"))
                results.append(run_shape(ns, batch, seq_len, log))
        except Exception:
            log.flush()
            log.seek(0)
            sys.stderr.write("peer log (tail):\n" + log.read()[-3000:] + "\n")
            raise
    out = {
        "started_utc": started, "machine": os.uname().nodename, "cpu_count": os.cpu_count(),
        "torch_ours": torch.__version__, "python_ours": sys.version.split()[0], "peer_python": ns.peer_python,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "size_table": [{"item": i, "ours": o, "peer": p} for i, o, p in SIZE_TABLE],
        "unmatched": UNMATCHED, "results": results,
    }
    print("\n| B x L | ours CPU s/step | peer CPU s/step | ours/peer (per round) | GFLOP/step ours, peer | "
          "GFLOP/s ours, peer | params ours, peer |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        s, p = res["summary"], res["parameters"]
        rounds = ", ".join(f"{x:.2f}" for x in s["ratio_cpu_per_round"])
        print(f"| {res['batch_size']} x {res['seq_len']} | {s['ours_cpu_s_per_step']:.2f} | "
              f"{s['peer_cpu_s_per_step']:.2f} | {s['ratio_cpu_ours_over_peer']:.2f} ({rounds}) | "
              f"{s['ours_gflop_per_step']:.1f}, {s['peer_gflop_per_step']:.1f} | "
              f"{s['ours_gflops_per_cpu_s']:.1f}, {s['peer_gflops_per_cpu_s']:.1f} | "
              f"{p['ours']['total_trained'] / 1e6:.2f} M, {p['peer']['total_trained'] / 1e6:.2f} M |")
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {ns.json}")


if __name__ == "__main__":
    main()
