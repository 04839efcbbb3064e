"""Seed 003's protocol: the planned runs, bad input, refusal of a foreign folder, resume after interruption,
and one end-to-end pass with tiny Dreamer runs on MiniGrid levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config

from multiscene.algos.dreamer import DreamerConfig
from multiscene.config import ConfigError, TrainConfig
from multiscene.protocol.pretrain import ProtocolConfig, plan_runs, run_protocol

LEVELS = "MiniGrid-Empty-5x5-v0,MiniGrid-DoorKey-5x5-v0"
TRANSFER = "MiniGrid-Empty-6x6-v0"


def test_plan_has_every_run_of_the_seed() -> None:
    plans = plan_runs(ProtocolConfig("mario:3-1,3-2", "mario:1-1", steps=100, seeds=2, out="x"))
    names = [p.name for p in plans]
    assert len(names) == len(set(names)) == 2 * (2 + 1 + 2 + 2)
    seed1 = [p for p in plans if p.seed == 1]
    assert [p.kind for p in seed1] == ["baseline", "baseline", "joint", "finetune", "finetune", "transfer",
                                        "baseline"]
    joint = next(p for p in seed1 if p.kind == "joint")
    assert joint.env == "mario:3-1,mario:3-2"
    assert all(p.init_from == "joint/s1" for p in seed1 if p.kind in ("finetune", "transfer"))
    assert all(p.init_from is None for p in seed1 if p.kind in ("baseline", "joint"))
    # every fine-tune/transfer run comes after the joint run it starts from
    order = {p.name: i for i, p in enumerate(plans)}
    assert all(order[p.init_from] < order[p.name] for p in plans if p.init_from)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="--transfer-levels.*3-1"):
        plan_runs(ProtocolConfig("mario:3-1,3-2", "mario:1-1,3-1", steps=10, seeds=1, out="x"))
    with pytest.raises(ConfigError, match="--levels.*more than once"):
        plan_runs(ProtocolConfig("mario:3-1,3-1", None, steps=10, seeds=1, out="x"))
    with pytest.raises(ConfigError, match="unknown Super Mario Bros level '9-1'"):
        plan_runs(ProtocolConfig("mario:3-1,9-1", None, steps=10, seeds=1, out="x"))
    with pytest.raises(ConfigError, match="--steps"):
        plan_runs(ProtocolConfig("mario:3-1,3-2", None, steps=0, seeds=1, out="x"))


class FakeRunner:
    """Records calls, writes a minimal run dir, and can be 'interrupted' at the n-th call."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, str, bool, str | None]] = []
        self.fail_at = fail_at

    def __call__(self, cfg: TrainConfig, algo_cfg: Any, init_from: str | None) -> Path:
        run_dir = Path(str(cfg.run_dir))
        self.calls.append((str(run_dir), cfg.env, cfg.resume, init_from))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text("{}")
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        if init_from is not None:
            assert (Path(init_from) / "eval" / "final.json").exists()  # the joint run is complete first
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "final.json").write_text("{}")
        return run_dir


def test_interrupted_protocol_continues_where_it_stopped(tmp_path: Path) -> None:
    cfg = ProtocolConfig(LEVELS, TRANSFER, steps=50, seeds=1, out=str(tmp_path / "out"))
    base = tiny_config(str(tmp_path / "unused"))
    first = FakeRunner(fail_at=4)  # dies inside the first fine-tune run
    with pytest.raises(KeyboardInterrupt):
        run_protocol(cfg, base, DreamerConfig(size="small"), run_fn=first, log=lambda _: None)
    assert json.loads((tmp_path / "out" / "status.json").read_text())["finished"] == [
        "baseline/MiniGrid-Empty-5x5-v0/s1", "baseline/MiniGrid-DoorKey-5x5-v0/s1", "joint/s1"]
    second = FakeRunner()
    dirs = run_protocol(cfg, base, DreamerConfig(size="small"), run_fn=second, log=lambda _: None)
    assert len(dirs) == 7
    names = [Path(c[0]).relative_to(tmp_path / "out" / "runs").as_posix() for c in second.calls]
    assert names[0] == "finetune/MiniGrid-Empty-5x5-v0/s1" and len(names) == 4  # finished runs are skipped
    assert second.calls[0][2] is True  # the interrupted run is resumed
    assert all(c[2] is False for c in second.calls[1:])
    # nothing left to do: a third call runs nothing
    third = FakeRunner()
    run_protocol(cfg, base, DreamerConfig(size="small"), run_fn=third, log=lambda _: None)
    assert third.calls == []


def test_folder_of_another_config_is_refused(tmp_path: Path) -> None:
    base = tiny_config(str(tmp_path / "unused"))
    cfg = ProtocolConfig(LEVELS, None, steps=50, seeds=1, out=str(tmp_path / "out"))
    run_protocol(cfg, base, DreamerConfig(size="small"), run_fn=FakeRunner(), log=lambda _: None)
    other = ProtocolConfig(LEVELS, None, steps=60, seeds=1, out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="another config.*protocol.steps"):
        run_protocol(other, base, DreamerConfig(size="small"), run_fn=FakeRunner(), log=lambda _: None)
    with pytest.raises(ConfigError, match="algo_config.seq_len"):
        run_protocol(cfg, base, DreamerConfig(size="small", seq_len=10), run_fn=FakeRunner(), log=lambda _: None)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a protocol folder"):
        run_protocol(ProtocolConfig(LEVELS, None, 50, 1, str(tmp_path / "stranger")), base,
                     DreamerConfig(size="small"), run_fn=FakeRunner(), log=lambda _: None)


def test_end_to_end_with_tiny_dreamer_runs(tmp_path: Path) -> None:
    """Real Dreamer runs (MiniGrid levels, a few dozen steps each): every run dir complete, the fine-tune and
    transfer runs start from the joint run's weights."""
    base = tiny_config(str(tmp_path / "unused"), critic="scalar", num_envs=1, tensorboard=False,
                       max_episode_steps=6, eval_episodes=1, eval_num_envs=1)
    dreamer = DreamerConfig(size="small", batch_size=2, seq_len=4, train_every=8, prefill=8, horizon=2,
                            log_every=8, checkpoint_every=16, replay_capacity=500)
    cfg = ProtocolConfig(LEVELS, TRANSFER, steps=16, seeds=1, out=str(tmp_path / "out"))
    dirs = run_protocol(cfg, base, dreamer, log=lambda _: None)
    assert len(dirs) == 7
    for run_dir in dirs:
        assert (run_dir / "eval" / "final.json").exists(), run_dir
    joint = json.loads((tmp_path / "out" / "runs" / "joint" / "s1" / "eval" / "final.json").read_text())
    assert joint["level_names"] == LEVELS.split(",")
    init = json.loads((tmp_path / "out" / "runs" / "transfer" / "MiniGrid-Empty-6x6-v0" / "s1" /
                       "init_from.json").read_text())
    assert init["run_dir"].endswith("joint/s1")
    from multiscene.logger import read_metrics

    records = read_metrics(tmp_path / "out" / "runs" / "joint" / "s1" / "metrics.jsonl")
    level_keys = {k for r in records for k in r if k.startswith("levels/")}
    assert any(k.endswith("/image_loss") for k in level_keys)  # per-level image loss (seed 003 Fig. 4)
    assert all(k.split("/")[1] in LEVELS.split(",") for k in level_keys)

    from multiscene.protocol.pretrain import protocol_figures

    lines: list[str] = []
    figures = protocol_figures(tmp_path / "out", log=lines.append)
    assert [f.name for f in figures] == ["pretrain_returns.png", "finetune_returns.png", "transfer_returns.png",
                                         "combined_returns.png", "image_loss.png",
                                         "reconstructions_MiniGrid-Empty-6x6-v0.png"]
    assert all(f.stat().st_size > 1000 for f in figures)
    assert lines == []  # every agent is a Dreamer agent with a checkpoint: none skipped

    # Fig. 8: one row of observed frames, then one row per agent that did not train on the level, then the
    # transfer level's own baseline as a reference; the same frames in every row.
    import numpy as np

    report = tmp_path / "out" / "report"
    recon = json.loads((report / "reconstructions.json").read_text())["levels"][TRANSFER]
    assert [r["run"] for r in recon["rows"]] == [
        "joint/s1", "baseline/MiniGrid-Empty-5x5-v0/s1", "baseline/MiniGrid-DoorKey-5x5-v0/s1",
        f"baseline/{TRANSFER}/s1"]
    assert recon["skipped"] == [] and len(recon["shown_steps"]) == 5
    # the frames follow the policy of the agent that trained on the level
    assert recon["policy"] == f"sampled policy of baseline/{TRANSFER}/s1"
    assert all(r["mse_shown"] > 0 and np.isfinite(r["mse_all_steps"]) for r in recon["rows"])
    arrays = np.load(report / recon["arrays"])
    assert list(arrays) == ["observed"] + [r["run"].replace("/", "__") for r in recon["rows"]]
    assert all(arrays[k].shape == (5, 7, 7, 3) and arrays[k].dtype == np.uint8 for k in arrays)


def test_protocol_command_runs_on_policy_runs_with_init_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`multiscene protocol pretrain --algo ppo ...`: the on-policy loop takes --init-from, so the protocol
    works with PPO too (issue 13 item 5); a second call finds everything finished; the report skips the
    reconstructions (Fig. 8), which need a world model."""
    from safetensors.torch import load_file

    from multiscene.cli import main

    out = tmp_path / "out"
    argv = ["protocol", "pretrain", "--algo", "ppo", "--levels", LEVELS, "--transfer-levels", TRANSFER, "--steps",
            "64", "--seeds", "1",
            "--out", str(out), "--critic", "scalar", "--num-envs", "2", "--num-steps", "16", "--num-minibatches",
            "1", "--hidden-size", "16", "--eval-episodes", "1", "--eval-num-envs", "1", "--progress", "none",
            "--max-episode-steps", "8"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    runs = out / "runs"
    joint = load_file(str(runs / "joint" / "s1" / "checkpoints" / sorted(
        p.name for p in (runs / "joint" / "s1" / "checkpoints").iterdir())[-1] / "model.safetensors"))
    assert joint and (runs / "finetune").exists()
    for run_dir in [p for p in runs.glob("*/*/s1")] + [runs / "joint" / "s1"]:
        assert (run_dir / "eval" / "final.json").exists(), run_dir
    with pytest.raises(SystemExit) as again:
        main(argv)
    assert again.value.code == 0

    # The report: PPO agents have no image decoder, so Fig. 8 skips each of them with a line saying so.
    capsys.readouterr()
    with pytest.raises(SystemExit) as report:
        main(["protocol", "report", str(out)])
    assert report.value.code == 0
    printed = capsys.readouterr().out
    assert printed.count("not a Dreamer run") == 4 and "skipped joint/s1" in printed
    recon = json.loads((out / "report" / "reconstructions.json").read_text())["levels"][TRANSFER]
    assert recon["rows"] == [] and [s["run"] for s in recon["skipped"]] == [
        "joint/s1", "baseline/MiniGrid-Empty-5x5-v0/s1", "baseline/MiniGrid-DoorKey-5x5-v0/s1",
        f"baseline/{TRANSFER}/s1"]
    assert not list((out / "report").glob("reconstructions_*"))


def test_reconstruction_error_falls_as_the_world_model_learns_the_frames() -> None:
    """Fig. 8's reconstruction (posterior over the observed sequence, decoder mean): a world model trained on a
    sequence reconstructs it with a fraction of an untrained model's error, and the reconstruction comes back in
    the observation's own format."""
    import numpy as np
    import torch

    from multiscene.algos.dreamer.loop import DreamerAgent
    from multiscene.algos.dreamer.world_model import symbol_classes_for
    from multiscene.envs import make_env
    from multiscene.envs.base import EnvSpec, LevelSet
    from multiscene.protocol.reconstruct import collect_sequence, reconstruct

    envs = make_env(EnvSpec("MiniGrid-Empty-5x5-v0", 1, seed=3, levels=LevelSet(0, 5), max_episode_steps=12))
    try:
        seq = collect_sequence(envs, 30, seed=3)
        torch.manual_seed(0)
        cfg = DreamerConfig(size="small")
        agent = DreamerAgent(envs.obs_shape, envs.num_actions, cfg, symbol_classes_for(envs.obs_shape, np.uint8))
        # Driven by an agent's sampled policy: the actions it took are what the RSSM reads, and a seed fixes it.
        driven = [collect_sequence(envs, 30, seed=s, driver=agent) for s in (4, 4, 5)]
    finally:
        envs.close()
    assert seq.obs.shape == (30, 7, 7, 3) and seq.first[0] and seq.prev_action.shape == (30, 3 + 4)
    assert (seq.prev_action[seq.first] == 0).all() and (seq.prev_action[~seq.first].sum(1) == 1).all()
    for d in driven:
        assert (d.prev_action[d.first] == 0).all() and (d.prev_action[~d.first].sum(1) == 1).all()
    assert np.array_equal(driven[0].prev_action, driven[1].prev_action) and np.array_equal(driven[0].obs, driven[1].obs)
    assert not np.array_equal(driven[0].prev_action, driven[2].prev_action)
    frames, before = reconstruct(agent, seq)
    assert frames.shape == seq.obs.shape and frames.dtype == np.uint8 and before.shape == (30,)

    wm = agent.world_model
    optimizer = torch.optim.Adam(wm.parameters(), lr=3e-3)
    obs, action = torch.as_tensor(seq.obs)[:, None], torch.as_tensor(seq.prev_action)[:, None]
    first = torch.as_tensor(seq.first)[:, None]
    for _ in range(40):
        out = wm.loss(obs, action, torch.zeros(30, 1), torch.ones(30, 1), first, cfg)
        optimizer.zero_grad()
        out.terms["image"].backward()
        optimizer.step()
    frames, after = reconstruct(agent, seq)
    assert after.mean() < 0.3 * before.mean(), (after.mean(), before.mean())
    assert (frames == seq.obs).mean() > 0.9  # most cells' codes come back
