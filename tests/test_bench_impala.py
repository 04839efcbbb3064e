"""``multiscene bench throughput --algo impala`` (issue 12, "Speed"): the timing window by hand, the learner's
ceiling on synthetic unrolls, bad input, and one tiny run on a local Ray with 2 actors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multiscene.bench import main as bench_main
from multiscene.bench.impala import run_sps, synthetic_unroll, time_learner_ceiling


def test_run_sps_times_the_window_after_the_warmup(tmp_path: Path) -> None:
    # records after updates 1..4 at t = 10, 12, 13, 15 s with 100 steps each: from the end of update 1 to the
    # end of update 4, 300 steps in 5 s = 60 steps/s; skipping 2 updates: 200 steps in 3 s.
    lines = [{"update": u, "global_step": 100 * u, "time": t, "losses/policy_loss": 0.0}
             for u, t in zip(range(1, 5), (10.0, 12.0, 13.0, 15.0), strict=True)]
    lines.append({"update": 4, "global_step": 400, "eval/test/return_mean": 1.0})  # not a training record
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert run_sps(tmp_path, 1) == pytest.approx(60.0)
    assert run_sps(tmp_path, 2) == pytest.approx(200.0 / 3.0)
    from multiscene.config import ConfigError

    with pytest.raises(ConfigError, match="--updates"):
        run_sps(tmp_path, 4)


def test_learner_ceiling_runs_real_learner_steps_on_the_run_shapes() -> None:
    from multiscene.algos.impala import ImpalaConfig
    from multiscene.cli import parse_train_args
    from multiscene.runtime import make_agent

    torch.set_num_threads(1)
    cfg = parse_train_args(["--algo", "impala", "--env", "MiniGrid-DoorKey-5x5-v0", "--hidden-size", "16",
                            "--torch-threads", "1"])
    impala = ImpalaConfig(num_actors=2, envs_per_actor=2, unroll_length=8, batch_size=4)
    agent = make_agent(cfg, (7, 7, 3), 7, torch.device("cpu"))
    unroll = synthetic_unroll(agent, (7, 7, 3), 7, T=8, B=4)
    assert unroll.obs.shape == (9, 4, 7, 7, 3) and unroll.num_steps == 32
    assert [tuple(s.shape) for s in unroll.initial_state] == [tuple(s.shape) for s in agent.initial_state(4, "cpu")]
    seconds = time_learner_ceiling(cfg, impala, repeats=2)
    assert 0.0 < seconds < 30.0
    # a bigger batch costs more learner time (the ceiling is a real measurement, not a constant)
    bigger = time_learner_ceiling(cfg, ImpalaConfig(envs_per_actor=2, unroll_length=64, batch_size=32), repeats=2)
    assert bigger > seconds


def test_learner_ceiling_with_the_multi_critic_times_its_vwr_head() -> None:
    """--critic multi: the synthetic batch carries the VWR the actors would ship (``extra_rewards``), so the
    ceiling's learner steps run (without it the multi-critic's head_rewards refuses the batch)."""
    from multiscene.algos.impala import ImpalaConfig
    from multiscene.cli import parse_train_args
    from multiscene.rewards.vwr import RunningVWR
    from multiscene.runtime import make_agent

    torch.set_num_threads(1)
    cfg = parse_train_args(["--algo", "impala", "--env", "MiniGrid-DoorKey-5x5-v0", "--critic", "multi",
                            "--hidden-size", "16", "--torch-threads", "1", "--vwr.window", "4"])
    agent = make_agent(cfg, (7, 7, 3), 7, torch.device("cpu"))
    assert synthetic_unroll(agent, (7, 7, 3), 7, T=8, B=4).extra_rewards is None  # no cfg, no transform
    unroll = synthetic_unroll(agent, (7, 7, 3), 7, T=8, B=4, cfg=cfg)
    assert unroll.extra_rewards is not None and unroll.extra_rewards.shape == (8, 4, 1)
    vwr = RunningVWR.from_config(4, cfg.vwr)
    expected = torch.stack([vwr.step(unroll.rewards[t], torch.full((4,), t == 0)) for t in range(8)])
    torch.testing.assert_close(unroll.extra_rewards[..., 0], expected)
    seconds = time_learner_ceiling(cfg, ImpalaConfig(num_actors=1, envs_per_actor=2, unroll_length=8, batch_size=4),
                                   repeats=1)
    assert 0.0 < seconds < 30.0


def test_too_few_updates_is_refused_before_ray_starts(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["throughput", "--algo", "impala", "--env", "MiniGrid-DoorKey-5x5-v0", "--updates", "1"])
    assert code == 2
    assert "--updates must be at least 2" in capsys.readouterr().err


def test_bench_throughput_impala_with_two_actors(capsys: pytest.CaptureFixture[str]) -> None:
    """One tiny run on a local Ray (about 20 s on the 2-core machine, most of it Ray's start)."""
    code = bench_main(["throughput", "--algo", "impala", "--env", "MiniGrid-DoorKey-5x5-v0", "--hidden-size", "16",
                       "--torch-threads", "1", "--impala.envs-per-actor", "2", "--impala.unroll-length", "8",
                       "--impala.batch-size", "4", "--impala.actor-num-cpus", "0.5", "--updates", "3", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["num_actors"] == 2  # the bench's default, not --impala.num-actors' 8
    assert result["updates"] == 3 and result["batch_size"] == 4 and result["unroll_length"] == 8
    for key in ("train_sps", "actor_sps", "actor_sps_since_start", "learner_sps", "ceiling_sps"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["train_sps"] / result["ceiling_sps"])
    assert result["learner_busy"] == pytest.approx(result["train_sps"] / result["learner_sps"])
    # an unroll's policy cannot be older than the run: lag within [0, warm-up + timed updates]
    assert 0.0 <= result["policy_lag_mean"] <= 4.0
    assert any(line.startswith("ratio: ") for line in out)
