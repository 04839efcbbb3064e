"""Data-parallel training under torchrun (issue 15): the same update as one process on the same global batch,
a 2-process run that stops on SIGTERM and resumes to the end, and a killed rank that ends the job with a clear
message and a usable checkpoint (every launch bounded by a timeout), plus the ConfigErrors of bad splits.

The processes talk over gloo on 127.0.0.1 ports picked free by the test.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from conftest import tiny_config

from multiscene.algos.onpolicy import loop
from multiscene.algos.onpolicy.a2c import A2C
from multiscene.algos.onpolicy.acktr import ACKTR
from multiscene.algos.onpolicy.base import Advantages, scheduled_terms
from multiscene.algos.onpolicy.ppo import PPO
from multiscene.algos.onpolicy.rollout import Rollout, RolloutCollector
from multiscene.checkpoint import load_latest_checkpoint
from multiscene.config import ConfigError, replace
from multiscene.critics.schedule import make_cc_schedule
from multiscene.envs import make_env
from multiscene.logger import read_metrics
from multiscene.normalize import RunningObsNorm
from multiscene.runtime import env_spec, make_agent, seed_everything
from multiscene.scale import distributed

ROOT = Path(__file__).resolve().parents[1]
ALGOS = {"ppo": PPO, "a2c": A2C}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------------------
# Bad input: one clear message naming the flag


def test_local_config_splits_the_global_envs_or_names_the_flag():
    cfg = tiny_config("unused", num_envs=8, num_minibatches=2)
    assert distributed.local_config(cfg, 1) is cfg
    local = distributed.local_config(cfg, 2)
    assert local.num_envs == 4 and local.num_minibatches == 2 and local.total_timesteps == cfg.total_timesteps
    with pytest.raises(ConfigError, match=r"torchrun started 16 processes but --num-envs is 8"):
        distributed.local_config(cfg, 16)
    with pytest.raises(ConfigError, match=r"--num-envs \(8\) must be divisible by the number of processes \(3\)"):
        distributed.local_config(cfg, 3)
    with pytest.raises(ConfigError, match=r"--num-minibatches \(4\) must divide each process's envs"):
        distributed.local_config(replace(cfg, num_minibatches=4), 4)


def test_single_process_collectives_touch_nothing():
    x = torch.randn(5, 3)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))
    assert distributed.agree(False) is False and distributed.agree_on_bad_term("loss") == "loss"
    assert distributed.mean_metrics({"a": 1.5}) == {"a": 1.5}
    m, v, n = distributed.merge_running_moments(x.mean(0), x.var(0), 5.0, (x.mean(0), x.var(0), 5.0))
    assert torch.equal(m, x.mean(0)) and n == 5.0


# ----------------------------------------------------------------------------------------------------------
# The same update as one process on the same global batch


def _slice_envs(rollout: Rollout, adv: Advantages, envs: slice) -> tuple[Rollout, Advantages]:
    """Envs ``envs`` of a rollout (dim 1 of every [T, B, ...] field; dim 0 of next_value)."""
    changes = {}
    for f in dataclasses.fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = value[envs] if f.name == "next_value" else value[:, envs]
    changes["initial_state"] = tuple(s[:, envs] for s in rollout.initial_state)
    return dataclasses.replace(rollout, **changes), Advantages(*(x[:, envs] for x in adv))


def _update(algo_name: str, payload: dict, envs: slice, local_cfg) -> tuple[dict, dict]:
    """Rebuild the agent from ``payload``, apply one update of ``algo_name`` to envs ``envs`` of its rollout."""
    cfg = replace(payload["cfg"], algo=algo_name)
    agent = make_agent(cfg, payload["obs_shape"], payload["num_actions"])
    agent.load_state_dict(payload["state"])
    algo = ALGOS[algo_name]()
    optimizer = algo.make_optimizer(agent, cfg)
    rollout, adv = _slice_envs(payload["rollout"], payload["adv"], envs)
    scales = scheduled_terms(agent, make_cc_schedule(cfg), 0, cfg)
    torch.manual_seed(0)
    result = algo.update(agent, optimizer, rollout, adv, scales, replace(local_cfg, algo=algo_name),
                         torch.device("cpu"))
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}, distributed.mean_metrics(result.metrics)


def _rank_worker(rank: int, port: int, payload_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        payload = torch.load(payload_path, weights_only=False)
        local_cfg = distributed.local_config(payload["cfg"], 2)
        half = payload["cfg"].num_envs // 2
        mine = slice(rank * half, (rank + 1) * half)
        results = {name: _update(name, payload, mine, local_cfg) for name in ALGOS}
        # Running moments merged over ranks == one running statistic fed every rank's data.
        gen = torch.Generator().manual_seed(7)
        data = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64) * 3 + 1
        norm = RunningObsNorm((3,))
        norm.update(torch.randn(10, 3, generator=gen))  # a common history every rank shares
        before = (norm.mean.clone(), norm.var.clone(), float(norm.count))
        norm.update(data[rank])
        merged = distributed.merge_running_moments(norm.mean, norm.var, float(norm.count), before)
        adv_moments = distributed.global_moments(data[rank])
        # ACKTR is refused under torchrun, by every rank, before anything is written (the loop then leaves
        # the process group, so this comes last).
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        try:
            loop.train(replace(payload["cfg"], algo="acktr"), ACKTR())
            refusal = None
        except ConfigError as e:
            refusal = str(e)
        if rank == 0:
            torch.save({"results": results, "merged": merged, "adv_moments": adv_moments, "refusal": refusal},
                       out_path)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def test_two_gloo_ranks_make_the_update_of_one_process_on_the_same_global_batch(tmp_path):
    # fork: the workers inherit the imported modules (spawn re-imports torch, ~30 s on a loaded 2-core box).
    # num_minibatches 1: each epoch takes the whole batch, so the split of envs over ranks cannot change which
    # transitions share a minibatch (with several minibatches each rank permutes its own envs).
    cfg = tiny_config(str(tmp_path / "unused"), critic="scalar", num_envs=4, num_minibatches=1, update_epochs=2,
                      norm_adv=True)
    seed_everything(cfg.seed, True)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        agent = make_agent(cfg, envs)
        rollout = RolloutCollector(envs, agent, cfg, torch.device("cpu")).collect(agent)
    finally:
        envs.close()
    adv = PPO().advantages(agent.critic, rollout, cfg)
    payload = {"cfg": cfg, "obs_shape": tuple(agent.obs_shape), "num_actions": agent.num_actions,
               "state": agent.state_dict(), "rollout": rollout, "adv": adv}
    torch.save(payload, tmp_path / "payload.pt")
    mp.start_processes(_rank_worker, args=(free_port(), str(tmp_path / "payload.pt"), str(tmp_path / "out.pt")),
                       nprocs=2, join=True, start_method="fork")
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    for name in ALGOS:
        single_params, single_metrics = _update(name, payload, slice(None), cfg)
        dp_params, dp_metrics = out["results"][name]
        moved = max(float((single_params[k] - payload["state"][k]).abs().max()) for k in single_params)
        assert moved > 1e-4, name  # the update did something, so equality below is not vacuous
        for k in single_params:
            torch.testing.assert_close(dp_params[k], single_params[k], rtol=1e-4, atol=1e-6, msg=f"{name} {k}")
        assert set(dp_metrics) == set(single_metrics)
        for k in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/grad_norm"):
            assert dp_metrics[k] == pytest.approx(single_metrics[k], rel=1e-4, abs=1e-6), (name, k)
    gen = torch.Generator().manual_seed(7)
    data = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64) * 3 + 1
    reference = RunningObsNorm((3,))
    reference.update(torch.randn(10, 3, generator=gen))
    reference.update(data.reshape(100, 3))
    mean, var, count = out["merged"]
    torch.testing.assert_close(mean, reference.mean)
    torch.testing.assert_close(var, reference.var)
    assert count == pytest.approx(float(reference.count))
    mean, var = out["adv_moments"]
    torch.testing.assert_close(mean, data.mean())
    torch.testing.assert_close(var, data.var(unbiased=False))
    assert out["refusal"].startswith("--algo acktr does not run under torchrun (2 processes): K-FAC")
    assert not (tmp_path / "unused").exists()


# ----------------------------------------------------------------------------------------------------------
# torchrun end to end: SIGTERM on one rank -> one checkpoint; --resume -> the end; a killed rank -> a clear message


def _torchrun(run_dir: Path, *extra: str, total: int) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "multiscene", "train", "--env", "MiniGrid-DoorKey-5x5-v0",
        "--critic", "sparse-dve", "--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2",
        "--update-epochs", "1", "--total-timesteps", str(total), "--hidden-size", "16", "--num-levels", "20",
        "--max-episode-steps", "16", "--eval-episodes", "2", "--eval-num-envs", "2", "--checkpoint-interval", "1",
        "--keep-checkpoints", "50", "--torch-threads", "1", "--num-threads", "1", "--progress", "plain",
        "--no-tensorboard", "--run-dir", str(run_dir), *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "60"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of worker ``rank`` among the launcher's children (torchrun sets RANK in their environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under pid {launcher.pid}")


def _wait_for_checkpoint(run_dir: Path, launcher: subprocess.Popen, after: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ckpts = sorted((run_dir / "checkpoints").glob("update-*"))
        if ckpts and int(ckpts[-1].name.split("-")[1]) > after:
            return
        assert launcher.poll() is None, launcher.communicate()[0]
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def _finish(launcher: subprocess.Popen, timeout_s: float) -> tuple[int, str]:
    try:
        out = launcher.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # our own launcher's process group, started for this test
        out = launcher.communicate()[0]
        raise AssertionError(f"the job hung past {timeout_s} s:\n{out}") from None
    return launcher.returncode, out


@pytest.mark.slow  # three torchrun launches of two processes: 98-161 s measured on 2 cores beside other jobs
def test_torchrun_sigterm_on_one_rank_checkpoints_all_then_resume_finishes_then_a_killed_rank_ends_the_job(
    tmp_path,
):
    run = tmp_path / "run"
    # 400 updates: far more than run before the signal arrives. (This test failed now and then with rank 1 ending
    # in "terminate called without an active exception" after the stop checkpoint: a rank left the job while rank 0
    # was still in the checkpoint's gather. The loop now waits for every rank first: dist.wait_for_all.)
    total = 4 * 8 * 400

    # 1. SIGTERM to rank 1 alone: every rank stops at the same update, rank 0 writes one checkpoint, exit 0.
    job = _torchrun(run, total=total)
    _wait_for_checkpoint(run, job, after=0, timeout_s=120)
    os.kill(_rank_pid(job, 1), signal.SIGTERM)
    code, out = _finish(job, timeout_s=120)
    assert code == 0, out
    assert "received SIGTERM: checkpoint saved at update" in out
    stopped = load_latest_checkpoint(run)
    assert stopped is not None and stopped.update < 400
    assert stopped.state["world_size"] == 2 and len(stopped.state["ranks"]) == 2
    carries = [r["carry"] for r in stopped.state["ranks"]]
    assert not torch.equal(carries[0]["obs"], carries[1]["obs"])  # each rank's own envs were saved

    # 2. --resume restores every rank and trains to the end of a small budget, with the final evaluation.
    resume_total = 4 * 8 * (stopped.update + 2)
    code, out = _finish(_torchrun(run, "--resume", "--total-timesteps", str(resume_total), total=resume_total),
                        timeout_s=180)
    assert code == 0, out
    assert f"resumed from update-{stopped.update:08d}" in out
    updates = [r["update"] for r in read_metrics(run / "metrics.jsonl") if "losses/policy_loss" in r]
    assert updates == list(range(1, stopped.update + 3))  # each update logged once, by rank 0 alone
    assert (run / "eval" / "final.json").exists()

    # 3. SIGKILL one rank mid-run: the job ends (no hang) with a message naming the last checkpoint, usable.
    job = _torchrun(run, "--resume", "--total-timesteps", str(total), "--no-final-eval", total=total)
    _wait_for_checkpoint(run, job, after=stopped.update + 2, timeout_s=120)
    os.kill(_rank_pid(job, 1), signal.SIGKILL)
    code, out = _finish(job, timeout_s=120)
    assert code != 0
    assert "another process of the job died or stopped answering" in out, out
    last = load_latest_checkpoint(run)
    assert last is not None and last.update > stopped.update + 2
    assert len(last.state["ranks"]) == 2
