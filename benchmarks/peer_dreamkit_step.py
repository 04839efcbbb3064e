"""Peer side of ``benchmarks/dreamer_vs_peer.py``: one DreamerV3 train step of ``dreamkit`` 0.1.0 (PyPI; a
packaging of NM512/dreamerv3-torch), timed on synthetic data. Runs under the peer venv's python, never ours:

    /work/peer_venvs/dreamkit/bin/python benchmarks/peer_dreamkit_step.py --batch-size 16 --seq-len 50

It only imports and calls dreamkit: ``world.WorldModel._train`` (world-model update) then
``world.ImagBehavior._train`` (imagination actor-critic update, horizon 15), exactly what dreamkit's
``Dreamer._train`` does for the ``greedy`` behaviour, without the env, logger and dataset machinery around it.
The config is built here (the wheel ships no configs.yaml): dreamerv3-torch's ``defaults`` with the widths
set to our ``--dreamer.size small`` (see ``peer_config``).

Two modules dreamkit imports at package import but never calls on this path are stubbed, so that neither has
to be installed: ``torch.utils.tensorboard`` (its ``Logger``) and ``gym`` (its env wrappers).

Protocol with the parent (one JSON object per line on stdout, each prefixed with ``@@``; dreamkit's own prints
go to stderr): after building the model, warming up and counting FLOPs it writes ``{"ready": ...}``; then for
each stdin line ``{"steps": N}`` it times N train steps and writes ``{"wall": [...], "cpu": [...]}``; an empty
line or EOF ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import types
from typing import Any

import numpy as np
import torch


def _stub_unused_modules() -> None:
    """Stand-ins for modules imported at ``import dreamkit`` but unused by the world model and behaviour."""
    tb = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:  # dreamkit.utils.tools.Logger only
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("tensorboard is stubbed in this benchmark")

    tb.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    sys.modules["torch.utils.tensorboard"] = tb
    gym = types.ModuleType("gym")
    for name in ("Wrapper", "ObservationWrapper", "ActionWrapper", "RewardWrapper", "Env"):
        setattr(gym, name, type(name, (), {}))
    gym.spaces = types.SimpleNamespace()  # type: ignore[attr-defined]
    sys.modules["gym"] = gym


def peer_config(ns: argparse.Namespace) -> types.SimpleNamespace:
    """NM512/dreamerv3-torch ``configs.yaml`` (commit 2c7a81a) ``defaults`` -- the keys WorldModel and
    ImagBehavior read -- with its ``atari100k`` actor (``dist: onehot, std: none``) and ``imag_gradient:
    reinforce`` (discrete actions; ours is Reinforce too), and the widths of our ``small`` size: GRU 128
    (``dyn_deter``), RSSM hidden 128, 32 x 32 latents, MLPs 2 x 128 (``units``, every ``layers``), CNN depth
    16, horizon 15. ``compile: False`` (its default is True; ours is not compiled either) and ``device: cpu``."""
    units, layers = ns.units, ns.layers
    return types.SimpleNamespace(
        device="cpu", precision=32, compile=False, num_actions=ns.actions,
        dyn_stoch=32, dyn_discrete=32, dyn_deter=ns.deter, dyn_hidden=ns.hidden, dyn_rec_depth=1,
        dyn_mean_act="none", dyn_std_act="sigmoid2", dyn_min_std=0.1, unimix_ratio=0.01, initial="learned",
        act="SiLU", norm=True, units=units,
        encoder=dict(mlp_keys="$^", cnn_keys="image", act="SiLU", norm=True, cnn_depth=ns.cnn_depth,
                     kernel_size=4, minres=4, mlp_layers=layers, mlp_units=units, symlog_inputs=True),
        decoder=dict(mlp_keys="$^", cnn_keys="image", act="SiLU", norm=True, cnn_depth=ns.cnn_depth,
                     kernel_size=4, minres=4, mlp_layers=layers, mlp_units=units, cnn_sigmoid=False,
                     image_dist="mse", vector_dist="symlog_mse", outscale=1.0),
        reward_head=dict(layers=layers, dist="symlog_disc", loss_scale=1.0, outscale=0.0),
        cont_head=dict(layers=layers, loss_scale=1.0, outscale=1.0),
        actor=dict(layers=layers, dist="onehot", entropy=3e-4, unimix_ratio=0.01, std="none", min_std=0.1,
                   max_std=1.0, temp=0.1, lr=3e-5, eps=1e-5, grad_clip=100.0, outscale=1.0),
        critic=dict(layers=layers, dist="symlog_disc", slow_target=True, slow_target_update=1,
                    slow_target_fraction=0.02, lr=3e-5, eps=1e-5, grad_clip=100.0, outscale=0.0),
        reward_EMA=True, imag_gradient="reinforce", imag_gradient_mix=0.0, imag_horizon=ns.horizon,
        kl_free=1.0, dyn_scale=0.5, rep_scale=0.1, grad_heads=["decoder", "reward", "cont"],
        model_lr=1e-4, opt_eps=1e-8, grad_clip=1000.0, weight_decay=0.0, opt="adam",
        discount=0.997, discount_lambda=0.95,
    )


def synthetic_batch(rng: np.random.Generator, ns: argparse.Namespace) -> dict[str, np.ndarray]:
    """A batch in dreamerv3-torch's layout (batch-major ``[B, T, ...]``): random frames and actions."""
    b, t = ns.batch_size, ns.seq_len
    is_first = np.zeros((b, t), np.float32)
    is_first[:, 0] = 1.0
    return {
        "image": rng.integers(0, 256, (b, t, *ns.obs_shape), dtype=np.uint8),
        "action": np.eye(ns.actions, dtype=np.float32)[rng.integers(ns.actions, size=(b, t))],
        "reward": rng.normal(size=(b, t)).astype(np.float32),
        "discount": np.ones((b, t), np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((b, t), np.float32),
    }


class PeerStep:
    """dreamkit's WorldModel + ImagBehavior and one train step of both."""

    def __init__(self, ns: argparse.Namespace) -> None:
        from dreamkit.agents.models.dreamerv3 import world

        self.ns = ns
        self.rng = np.random.default_rng(ns.seed)
        config = peer_config(ns)
        obs_space = types.SimpleNamespace(spaces={"image": types.SimpleNamespace(shape=tuple(ns.obs_shape))})
        self.wm = world.WorldModel(obs_space, None, 0, config)
        self.behavior = world.ImagBehavior(config, self.wm)

        def reward(feat: torch.Tensor, state: dict[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
            # dreamkit's Dreamer._train: the reward head's mode at the imagined state.
            return self.wm.heads["reward"](self.wm.dynamics.get_feat(state)).mode()

        self.reward = reward

    def step(self) -> None:
        data = synthetic_batch(self.rng, self.ns)
        post, _, _ = self.wm._train(data)
        self.behavior._train(post, self.reward)

    def parameters(self) -> dict[str, int]:
        def count(module: torch.nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        heads = {name: count(head) for name, head in self.wm.heads.items()}
        return {"encoder": count(self.wm.encoder), "rssm": count(self.wm.dynamics), "decoder": heads["decoder"],
                "reward": heads["reward"], "continue": heads["cont"], "actor": count(self.behavior.actor),
                "critic": count(self.behavior.value), "world_model": count(self.wm),
                "total_trained": count(self.wm) + count(self.behavior.actor) + count(self.behavior.value)}


def emit(obj: dict[str, Any]) -> None:
    sys.__stdout__.write("@@" + json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--obs-shape", type=int, nargs=3, default=[64, 64, 1])
    parser.add_argument("--actions", type=int, default=12)
    parser.add_argument("--deter", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cnn-depth", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flops", action="store_true")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(ns.seed)
    _stub_unused_modules()
    import dreamkit  # noqa: F401  (the package __init__ imports dreamkit.agent -> tools, envs.wrappers)

    with contextlib.redirect_stdout(sys.stderr):
        peer = PeerStep(ns)
        for _ in range(ns.warmup):
            peer.step()
        flops, flops_by_op = None, None
        if not ns.no_flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                peer.step()
            flops = counter.get_total_flops()
            flops_by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    emit({"ready": {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                    "dreamkit": _dreamkit_version(), "threads": torch.get_num_threads(),
                    "parameters": peer.parameters(), "flops_per_step": flops, "flops_by_op": flops_by_op,
                    "config": {k: v for k, v in vars(peer_config(ns)).items()}}})
    for line in sys.stdin:
        if not line.strip():
            break
        steps = int(json.loads(line)["steps"])
        wall, cpu = [], []
        with contextlib.redirect_stdout(sys.stderr):
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                peer.step()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        emit({"wall": wall, "cpu": cpu})


def _dreamkit_version() -> str:
    from importlib.metadata import version

    return version("dreamkit")


if __name__ == "__main__":
    main()
