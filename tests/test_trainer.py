"""End-to-end trainer behaviour: run directory, determinism, save/load, every critic, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from multiscene.checkpoint import list_checkpoints, load_latest_checkpoint
from multiscene.config import ConfigError
from multiscene.evaluate import evaluate_checkpoint
from multiscene.logger import read_metrics
from multiscene.trainer import load_agent_tensors, load_config, make_agent, train


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def test_minigrid_run_directory_is_complete(tmp_path):
    run = train(tiny_config(str(tmp_path / "run")))
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "trainer_state.pt", "eval/final.json",
                 "eval/final_steps_test.npz", "eval/final_frames_test.npz"):
        assert (run / name).exists(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events missing"
    assert len(list_checkpoints(run)) == 2  # keep_checkpoints=2 of 3 written
    final = json.loads((run / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        for key in ("return_mean", "return_std", "length_mean", "episodes"):
            assert final[split][key] is not None, (split, key)
        assert final[split]["episodes"] == 2
        assert "deterministic" in final[split]
    assert final["random_policy_test"]["episodes"] == 2
    records = read_metrics(run / "metrics.jsonl")
    train_records = [r for r in records if "losses/policy_loss" in r]
    assert [r["update"] for r in train_records] == [1, 2, 3]
    assert all("dve/confusion_mean" in r and "losses/cc_confusion" in r for r in train_records)
    assert "eval/test/return_mean" in records[-1]
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["critic"] == "sparse-dve" and "multiscene_version" in config
    steps = np.load(run / "eval" / "final_steps_test.npz")
    assert steps["alpha"].shape[1] == 3 and steps["value"].shape[0] == steps["level_seed"].shape[0]
    # Test episodes come from the held-out range only.
    cfg = load_config(run)
    assert steps["level_seed"].min() >= cfg.test_levels_start


@pytest.mark.parametrize("critic", ["scalar", "dve", "sparse-dve"])
def test_same_seed_gives_identical_parameters_minigrid(tmp_path, critic):
    a = train(tiny_config(str(tmp_path / "a"), critic=critic, eval_episodes=1, eval_num_envs=1))
    b = train(tiny_config(str(tmp_path / "b"), critic=critic, eval_episodes=1, eval_num_envs=1))
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(tiny_config(str(tmp_path / "c"), critic=critic, seed=2, eval_episodes=1, eval_num_envs=1))
    assert not all(torch.equal(wa[k], _weights(c)[k]) for k in wa)


@pytest.mark.parametrize("critic", ["scalar", "dve", "sparse-dve"])
def test_same_seed_gives_identical_parameters_procgen(tmp_path, critic):
    kw = dict(env="coinrun", critic=critic, total_timesteps=4 * 16 * 2, final_eval=False)
    a = train(tiny_config(str(tmp_path / "a"), **kw))
    b = train(tiny_config(str(tmp_path / "b"), **kw))
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Training moved the weights away from the initialization of the same seed.
    init = make_agent(tiny_config("x", **kw), (64, 64, 3), 15, torch.device("cpu"))
    torch.manual_seed(1)
    assert any(not torch.equal(wa[f"agent.{k}"], v) for k, v in init.state_dict().items())


def test_feedforward_procgen_trains(tmp_path):
    run = train(tiny_config(str(tmp_path / "ff"), env="coinrun", critic="scalar", core="none",
                            prev_action_reward=False, total_timesteps=64, final_eval=False))
    assert (run / "model.safetensors").exists() and not (run / "eval" / "final.json").exists()


def test_save_load_gives_identical_outputs(tmp_path):
    run = train(tiny_config(str(tmp_path / "run"), eval_episodes=1, eval_num_envs=1))
    cfg = load_config(run)
    ckpt = load_latest_checkpoint(run)
    assert ckpt is not None
    agent = make_agent(cfg, (7, 7, 3), 7, torch.device("cpu"))
    load_agent_tensors(agent, ckpt.tensors)
    fresh = make_agent(cfg, (7, 7, 3), 7, torch.device("cpu"))
    load_agent_tensors(fresh, load_file(str(run / "model.safetensors")))
    T, B = 5, 3
    obs = torch.randint(0, 11, (T, B, 7, 7, 3), dtype=torch.uint8)
    first = torch.rand(T, B) < 0.3
    args = (obs, first, torch.randint(0, 7, (T, B)), torch.randn(T, B))
    out_a = agent(*args, agent.initial_state(B, "cpu"))
    out_b = fresh(*args, fresh.initial_state(B, "cpu"))
    assert torch.equal(out_a.logits, out_b.logits) and torch.equal(out_a.values, out_b.values)
    assert torch.equal(out_a.extras["alpha"], out_b.extras["alpha"])


def test_existing_run_is_refused_and_overwrite_keeps_a_backup(tmp_path):
    run = train(tiny_config(str(tmp_path / "run"), total_timesteps=64, eval_episodes=1, eval_num_envs=1))
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        train(tiny_config(str(run), total_timesteps=64))
    assert (run / "model.safetensors").read_bytes() == before
    train(tiny_config(str(run), total_timesteps=64, overwrite=True, eval_episodes=1, eval_num_envs=1))
    backups = list(tmp_path.glob("run.backup-*"))
    assert len(backups) == 1 and (backups[0] / "model.safetensors").read_bytes() == before


def test_resume_continues_to_identical_weights(tmp_path):
    """Training 3 updates, or 1 update then --resume to 3, ends with bit-identical weights (issue #6)."""
    full = train(tiny_config(str(tmp_path / "full"), eval_episodes=1, eval_num_envs=1))
    part = train(tiny_config(str(tmp_path / "part"), total_timesteps=64, eval_episodes=1, eval_num_envs=1))
    resumed = train(tiny_config(str(part), resume=True, eval_episodes=1, eval_num_envs=1))
    assert (full / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    updates = [r["update"] for r in read_metrics(resumed / "metrics.jsonl") if "losses/policy_loss" in r]
    assert updates == [1, 2, 3]


def test_eval_command_reevaluates_and_writes_video(tmp_path):
    run = train(tiny_config(str(tmp_path / "run"), eval_episodes=1, eval_num_envs=1))
    summary = evaluate_checkpoint(run, episodes=2, tag="again", video=True, video_episodes=1)
    assert summary["test"]["episodes"] == 2
    assert (run / "eval" / "again.json").exists()
    videos = list((run / "eval" / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)


def test_cli_short_runs_produce_the_run_directory(tmp_path):
    for env, extra in (("MiniGrid-DoorKey-5x5-v0", ["--max-episode-steps", "24"]), ("coinrun", [])):
        run_dir = tmp_path / env
        res = subprocess.run(
            [sys.executable, "-m", "multiscene", "train", "--critic", "sparse-dve", "--preset", "quickstart",
             "--env", env, "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2",
             "--total-timesteps", "64", "--hidden-size", "16", "--eval-episodes", "1", "--eval-num-envs", "1",
             "--num-threads", "1", "--run-dir", str(run_dir), *extra],
            capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert (run_dir / "eval" / "final.json").exists() and (run_dir / "model.safetensors").exists()
        assert "final eval test" in res.stdout


def test_procgen_resume_continues_from_restored_env_states(tmp_path):
    """Procgen envs are restored through get_state/set_state, so a resumed run matches an uninterrupted one."""
    kw = dict(env="coinrun", critic="sparse-dve", final_eval=False)
    full = train(tiny_config(str(tmp_path / "full"), total_timesteps=4 * 16 * 2, **kw))
    part = train(tiny_config(str(tmp_path / "part"), total_timesteps=4 * 16, **kw))
    resumed = train(tiny_config(str(part), total_timesteps=4 * 16 * 2, resume=True, **kw))
    assert (full / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
