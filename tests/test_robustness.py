"""Runs that survive crashes, bad input and numerical trouble (issue #6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import multiscene.algos.onpolicy.ppo as ppo_module
from multiscene.checkpoint import list_checkpoints, load_latest_checkpoint
from multiscene.config import ConfigError
from multiscene.envs.base import EnvError
from multiscene.logger import read_metrics
from multiscene.trainer import TrainingStopped, train

TINY_FLAGS = [
    "--preset", "quickstart", "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2",
    "--update-epochs", "2", "--hidden-size", "32", "--num-levels", "20", "--max-episode-steps", "24",
    "--checkpoint-interval", "2", "--torch-threads", "1", "--progress", "plain", "--no-final-eval",
]


def _cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "multiscene", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, update: int, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    target = run_dir / "checkpoints" / f"update-{update:08d}"
    deadline = time.time() + timeout
    while not target.exists():
        assert proc.poll() is None, f"run ended before update {update}: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out waiting for a checkpoint"
        time.sleep(0.02)


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    total = ["--total-timesteps", str(4 * 16 * 24)]
    ref = _cli([*TINY_FLAGS, *total, "--run-dir", str(tmp_path / "ref")])
    assert ref.wait(timeout=600) == 0, ref.communicate()[1][-2000:]

    run_dir = tmp_path / "killed"
    proc = _cli([*TINY_FLAGS, *total, "--run-dir", str(run_dir)])
    _wait_for_checkpoint(run_dir, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = max(int(p.name.split("-")[1]) for p in list_checkpoints(run_dir))
    assert done < 24, "the run finished before it could be killed; the test proves nothing"

    resumed = _cli([*TINY_FLAGS, *total, "--run-dir", str(run_dir), "--resume"])
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out
    assert (run_dir / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    # metrics.jsonl: every line whole, one record per update, none duplicated.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    updates = [r["update"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert len(lines) == len(updates) == 24 and updates == list(range(1, 25))


def test_corrupted_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    run = train(tiny_config(str(tmp_path / "run"), total_timesteps=4 * 16 * 3, keep_checkpoints=3, final_eval=False))
    newest = list_checkpoints(run)[-1]
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated write
    warnings: list[str] = []
    ckpt = load_latest_checkpoint(run, warn=warnings.append)
    assert ckpt is not None and ckpt.update == 2
    assert warnings and "checksum" in warnings[0] and newest.name in warnings[0]
    # A flipped byte is caught too.
    older = list_checkpoints(run)[-2]
    state = bytearray((older / "trainer_state.pt").read_bytes())
    state[len(state) // 2] ^= 0xFF
    (older / "trainer_state.pt").write_bytes(bytes(state))
    ckpt = load_latest_checkpoint(run, warn=warnings.append)
    assert ckpt is not None and ckpt.update == 1
    # Resume continues from that good checkpoint and finishes.
    resumed = train(tiny_config(str(run), total_timesteps=4 * 16 * 3, resume=True, final_eval=False))
    updates = [r["update"] for r in read_metrics(resumed / "metrics.jsonl") if "losses/policy_loss" in r]
    assert updates == [1, 2, 3]


def _nan_after(monkeypatch: pytest.MonkeyPatch, first_bad_call: int, bad_calls: int) -> None:
    """Make ppo_loss's policy-loss term NaN on calls [first_bad_call, first_bad_call + bad_calls)."""
    real = ppo_module.ppo_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        total, metrics = real(*args, **kwargs)
        calls["n"] += 1
        if first_bad_call <= calls["n"] < first_bad_call + bad_calls:
            metrics["losses/policy_loss"] = metrics["losses/policy_loss"] * float("nan")
            total = total * float("nan")
        return total, metrics

    monkeypatch.setattr(ppo_module, "ppo_loss", poisoned)


def test_a_nan_skips_the_update_and_training_goes_on(tmp_path, monkeypatch):
    # tiny_config: 2 epochs x 2 minibatches = 4 loss calls per update; poison update 2's third call.
    _nan_after(monkeypatch, first_bad_call=7, bad_calls=1)
    run = train(tiny_config(str(tmp_path / "run"), total_timesteps=4 * 16 * 3, final_eval=False))
    records = read_metrics(run / "metrics.jsonl")
    assert [r.get("nonfinite/skipped_update") for r in records] == [None, 1, None]
    assert records[1]["nonfinite/term"] == "losses/policy_loss"
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_repeated_nans_stop_the_run_with_a_clear_message_after_saving(tmp_path, monkeypatch):
    _nan_after(monkeypatch, first_bad_call=5, bad_calls=10**6)
    cfg = tiny_config(str(tmp_path / "run"), total_timesteps=4 * 16 * 6, max_nonfinite_updates=3, final_eval=False)
    with pytest.raises(TrainingStopped, match=r"update 4.*losses/policy_loss"):
        train(cfg)
    run = Path(cfg.run_dir)
    ckpt = load_latest_checkpoint(run)
    assert ckpt is not None and ckpt.update == 4
    assert all(torch.isfinite(t).all() for t in ckpt.tensors.values() if t.is_floating_point())
    # Updates 2-4 were skipped, so the weights saved at 3 and 4 are both those of update 1, untouched.
    at3 = load_file(str(run / "checkpoints" / "update-00000003" / "model.safetensors"))
    agent_keys = [k for k in at3 if k.startswith("agent.")]
    assert agent_keys and all(torch.equal(at3[k], ckpt.tensors[k]) for k in agent_keys)
    records = read_metrics(run / "metrics.jsonl")
    assert [r.get("nonfinite/skipped_update") for r in records] == [None, 1, 1, 1]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli([*TINY_FLAGS, "--total-timesteps", str(4 * 16 * 400), "--run-dir", str(run_dir)])
    _wait_for_checkpoint(run_dir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM" in out and "--resume" in out
    last = list_checkpoints(run_dir)[-1]
    assert int(last.name.split("-")[1]) < 400
    updates = [r["update"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert updates[-1] == int(last.name.split("-")[1])


def test_env_error_names_env_and_level_and_saves(tmp_path, monkeypatch):
    from multiscene.envs.minigrid import MiniGridVecEnv

    real_step = MiniGridVecEnv.step
    calls = {"n": 0}

    def failing_step(self, actions):
        calls["n"] += 1
        if calls["n"] == 40:
            raise EnvError(f"{self.env_id}: level_seed 7: simulated crash")
        return real_step(self, actions)

    monkeypatch.setattr(MiniGridVecEnv, "step", failing_step)
    cfg = tiny_config(str(tmp_path / "run"), total_timesteps=4 * 16 * 4, final_eval=False)
    with pytest.raises(EnvError, match=r"MiniGrid-DoorKey-5x5-v0.*level_seed 7.*--resume"):
        train(cfg)
    ckpt = load_latest_checkpoint(Path(cfg.run_dir))
    assert ckpt is not None and ckpt.update == 2 and ckpt.state["carry"]["envs"] is None
    monkeypatch.setattr(MiniGridVecEnv, "step", real_step)
    train(tiny_config(cfg.run_dir, total_timesteps=4 * 16 * 4, resume=True, final_eval=False))
    assert list_checkpoints(Path(cfg.run_dir))[-1].name == "update-00000004"


def test_unwritable_or_full_run_dir_is_reported_at_start(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot be written"):
        train(tiny_config(str(blocker / "run")))

    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match="MiB free"):
        train(tiny_config(str(tmp_path / "full")))


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no run to continue"):
        train(tiny_config(str(tmp_path / "nothing"), resume=True))
    assert not os.path.exists(tmp_path / "nothing" / "config.json")


def test_a_non_finite_optimizer_step_is_undone_and_named(tmp_path, monkeypatch):
    # Finite loss and gradients, but the step writes NaN (K-FAC's curvature failed, as ACKTR's did at 4 envs x
    # 5 steps on Atari): the update is undone and reported, not left to show up as NaN logits in the next rollout.
    from multiscene.optim.kfac import KFAC

    monkeypatch.setattr(KFAC, "precondition", lambda self, module, matrix: torch.full_like(matrix, float("nan")))
    cfg = tiny_config(str(tmp_path / "run"), algo="acktr", critic="scalar", learning_rate=1e-3,
                      max_nonfinite_updates=2, final_eval=False)
    with pytest.raises(TrainingStopped, match=r"update 2: 2 updates .*'parameters after the KFAC step \(.+\)'"
                       r".*the loss and gradients were finite.*--acktr\.damping"):
        train(cfg)
    records = read_metrics(Path(cfg.run_dir) / "metrics.jsonl")
    assert [r.get("nonfinite/skipped_update") for r in records] == [1, 1]
    assert records[0]["nonfinite/term"].startswith("parameters after the KFAC step (")
    ckpt = load_latest_checkpoint(Path(cfg.run_dir))
    assert ckpt is not None and all(torch.isfinite(t).all() for t in ckpt.tensors.values() if t.is_floating_point())
