from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from multiscene.config import DVEConfig, TrainConfig, replace
from multiscene.presets import get_preset

# Tests run many tiny models; one thread avoids OpenMP spin contention on small CI machines.
torch.set_num_threads(1)


def tiny_config(run_dir: str, env: str = "MiniGrid-DoorKey-5x5-v0", critic: str = "sparse-dve", **changes: object) -> TrainConfig:
    """A few updates of a small agent: enough to exercise every code path in seconds."""
    procgen = not env.startswith("MiniGrid")
    base = get_preset("procgen-easy" if procgen else "quickstart")
    cfg = replace(
        base,
        env=env,
        critic=critic,
        run_dir=run_dir,
        num_envs=4,
        num_steps=16,
        num_minibatches=2,
        update_epochs=2,
        total_timesteps=4 * 16 * 3,
        hidden_size=32,
        num_levels=20,
        eval_episodes=2,
        eval_num_envs=2,
        checkpoint_interval=1,
        keep_checkpoints=2,
        num_threads=1,
        torch_threads=1,
        progress="none",
        max_episode_steps=None if procgen else 24,
        dve=DVEConfig(schedule="pre-boost", k1=0.05, k2=0.05),
    )
    return replace(cfg, **changes) if changes else cfg


def load_benchmark_script(filename: str) -> ModuleType:
    """benchmarks/ is not a package: load one of its scripts as a module by path (registered in sys.modules)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def assert_resume_matches_one_go(run, tmp_path: Path, total: int = 96) -> None:  # type: ignore[no-untyped-def]
    """``run(path, total=..., resume=..., final_eval=False) -> run_dir``: ``total`` steps in one go and
    ``total / 2`` + a resumed ``total / 2`` end with the same weights (env, replay, RNG and optimizers restored)."""
    from multiscene.checkpoint import load_latest_checkpoint

    whole = run(tmp_path / "a", total=total, final_eval=False)
    run(tmp_path / "b", total=total // 2, final_eval=False)
    parts = run(tmp_path / "b", total=total, resume=True, final_eval=False)
    a, b = load_latest_checkpoint(whole), load_latest_checkpoint(parts)
    assert a is not None and b is not None
    for key in a.tensors:
        assert torch.allclose(a.tensors[key], b.tensors[key], atol=1e-6), key


def frozen_world_model_and_starts(discrete: bool, cfg):  # type: ignore[no-untyped-def]
    """A small world model with frozen weights, a ``Behavior`` for 2 actions (``discrete`` or continuous) and 12
    detached posterior states to imagine from: the set-up of the behavior-gradient tests."""
    from multiscene.algos.dreamer import DreamerConfig
    from multiscene.algos.dreamer.behavior import Behavior
    from multiscene.algos.dreamer.rssm import flatten_time
    from multiscene.algos.dreamer.world_model import WorldModel

    torch.manual_seed(0)
    wm = WorldModel((5,), 2, DreamerConfig(size="small"))
    wm.requires_grad_(False)
    beh = Behavior(wm.rssm.feature_size, 2, discrete, cfg)
    post, _ = wm.rssm.observe(torch.randn(3, 4, wm.encoder.out_size), torch.zeros(3, 4, 2),
                              torch.zeros(3, 4, dtype=torch.bool))
    start = flatten_time(post)
    return wm, beh, type(start)(*(x.detach() for x in start))
