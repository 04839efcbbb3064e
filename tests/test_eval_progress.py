"""Evaluation that shows progress and stays small (issue 15, "The first day" item 2): episodes done per pass
as plain lines (or a rich bar), the final evaluation's step cap (``--final-eval-steps``) and its default rule."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import tiny_config

from multiscene.config import ConfigError, replace, validate
from multiscene.envs import make_env
from multiscene.evaluate import (
    MIN_CAP_STEPS_PER_ENV,
    EvalPass,
    EvalProgress,
    evaluate_run_splits,
    final_eval_step_cap,
    run_episodes,
    run_passes,
)
from multiscene.runtime import env_spec, make_agent


class CountingEnvs:
    """A VecEnv wrapper that counts env steps (num_envs per batched step)."""

    def __init__(self, envs) -> None:
        self.envs, self.env_steps = envs, 0

    def step(self, actions):
        self.env_steps += self.envs.num_envs
        return self.envs.step(actions)

    def __getattr__(self, name):
        return getattr(self.envs, name)


def _agent_and_cfg(tmp_path, **changes):
    cfg = tiny_config(str(tmp_path / "run"), critic="scalar", max_episode_steps=8, **changes)
    probe = make_env(env_spec(cfg, "test", 1))
    try:
        agent = make_agent(cfg, probe)
    finally:
        probe.close()
    return cfg, agent


def test_default_cap_is_a_tenth_of_the_budget_but_never_below_a_short_episode_per_env():
    cfg = tiny_config("unused", total_timesteps=192, eval_num_envs=2, eval_episodes=2)
    assert final_eval_step_cap(cfg) == MIN_CAP_STEPS_PER_ENV * 2  # 192 // 10 = 19 is below the floor
    assert final_eval_step_cap(replace(cfg, total_timesteps=1_000_000)) == 100_000
    assert final_eval_step_cap(replace(cfg, eval_num_envs=8, eval_episodes=4)) == MIN_CAP_STEPS_PER_ENV * 4
    assert final_eval_step_cap(replace(cfg, final_eval_steps=500)) == 500
    assert final_eval_step_cap(replace(cfg, final_eval_steps=0)) is None  # 0: no cap
    # The case: a 512-step Procgen run (procgen preset: 64 episodes x 32 envs per pass) used to run
    # 5 passes of 64 episodes of up to 1,000 steps; now each pass stops within 32 steps per env.
    procgen = tiny_config("unused", env="coinrun", total_timesteps=512, eval_num_envs=32, eval_episodes=64)
    assert final_eval_step_cap(procgen) == 32 * 32
    with pytest.raises(ConfigError, match="--final-eval-steps must be >= 0"):
        validate(replace(cfg, final_eval_steps=-1))


def test_run_episodes_stops_at_the_cap_and_counts_only_finished_episodes(tmp_path):
    cfg, agent = _agent_and_cfg(tmp_path)
    envs = CountingEnvs(make_env(env_spec(cfg, "test", 2)))
    try:
        # Episodes last at most 8 steps: 3 batched steps of 2 envs cannot finish one; 6 env steps are allowed.
        res = run_episodes(agent, envs, 4, False, torch.device("cpu"), torch.Generator().manual_seed(0),
                           record=True, max_steps=7)
        assert res.capped and envs.env_steps == 6
        assert all(e.length <= 3 for e in res.episodes)
        recorded = res.recorder.arrays()["episode"]
        assert len(recorded) == sum(e.length for e in res.episodes)  # the rows of cut-off episodes are dropped
        envs.env_steps = 0
        res = run_episodes(agent, envs, 4, False, torch.device("cpu"), torch.Generator().manual_seed(0),
                           max_steps=10_000)
        assert not res.capped and len(res.episodes) == 4 and envs.env_steps <= 2 * 2 * 8
    finally:
        envs.close()


def test_final_evaluation_prints_episodes_per_pass_and_marks_a_capped_pass(tmp_path, capsys):
    cfg, agent = _agent_and_cfg(tmp_path, eval_episodes=3, eval_num_envs=2)
    (tmp_path / "run").mkdir()
    summary = evaluate_run_splits(agent, cfg, torch.device("cpu"), tag="final", run_dir=tmp_path / "run",
                                  max_steps=2 * 8, progress="plain")
    out = capsys.readouterr().out
    for name in ("train/sampled", "train/deterministic", "test/sampled", "test/deterministic",
                 "test/random-policy"):
        last = [line for line in out.splitlines() if re.match(rf"\[multiscene\] eval final: {name} \d", line)][-1]
        done = int(re.search(r"(\d+)/3 episodes", last).group(1))
        # 2 envs x 8 steps: each env finishes its first (<= 8-step) episode; env 0's second (its quota is 2 of
        # the 3) only if the first ended early.
        assert 2 <= done <= 3
    assert summary["step_cap"] == 16
    written = json.loads((tmp_path / "run" / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        assert written[split]["episodes"] == summary[split]["episodes"]
        assert written[split]["capped"] == (written[split]["episodes"] < 3)
        assert set(written[split]) >= {"return_mean", "return_std", "length_mean", "episodes", "per_level",
                                       "deterministic"}  # eval/final.json keeps its layout
    # Uncapped, the same evaluation runs every episode and says nothing about a cap.
    summary = evaluate_run_splits(agent, cfg, torch.device("cpu"), tag="again", run_dir=tmp_path / "run",
                                  progress="none")
    assert summary["test"]["episodes"] == 3 and "capped" not in summary["test"] and "step_cap" not in summary
    assert capsys.readouterr().out == ""


def test_plain_progress_lines_are_rate_limited_and_rich_mode_runs(capsys):
    bar = EvalProgress("final", ["train/sampled", "test/sampled"], 5, mode="plain", line_interval_s=3600.0)
    for done in range(1, 5):
        bar.update("train/sampled", done)
    bar.finish("train/sampled", 5, None)
    bar.close()
    assert capsys.readouterr().out.splitlines() == ["[multiscene] eval final: train/sampled 5/5 episodes"]
    bar = EvalProgress("final", ["train/sampled", "test/sampled"], 2, mode="plain", line_interval_s=0.0)
    bar.update("test/sampled", 1)
    bar.finish("test/sampled", 1, 64)
    assert capsys.readouterr().out.splitlines() == [
        "[multiscene] eval final: train/sampled 0/2, test/sampled 1/2 episodes",
        "[multiscene] eval final: test/sampled 1/2 episodes (stopped at the cap of 64 env steps)",
    ]
    rich_bar = EvalProgress("final", ["train/sampled"], 2, mode="rich")
    rich_bar.update("train/sampled", 2)
    rich_bar.finish("train/sampled", 2, None)
    rich_bar.close()
    assert "eval final train/sampled" in capsys.readouterr().out


def test_passes_run_side_by_side_give_the_episodes_they_give_alone(tmp_path):
    cfg, agent = _agent_and_cfg(tmp_path)

    def passes() -> list[EvalPass]:
        return [
            EvalPass("train/sampled", make_env(env_spec(cfg, "train", 2, seed_offset=101)), 3,
                     generator=torch.Generator().manual_seed(3), record=True, frame_episodes=1),
            EvalPass("test/deterministic", make_env(env_spec(cfg, "test", 3, seed_offset=102)), 4,
                     deterministic=True),
            EvalPass("test/random-policy", make_env(env_spec(cfg, "test", 2, seed_offset=101)), 2,
                     generator=torch.Generator().manual_seed(5), random_policy=True),
        ]

    def episodes(res) -> list[tuple[int, int, int, float]]:
        return sorted((e.env_index, e.level_seed, e.length, e.episode_return) for e in res.episodes)

    together_specs = passes()
    together = run_passes(agent, together_specs, torch.device("cpu"))
    alone = []
    for spec in passes():
        alone.append(run_passes(agent, [spec], torch.device("cpu"))[0])
        spec.envs.close()
    for spec in together_specs:
        spec.envs.close()
    for a, b in zip(together, alone):
        assert episodes(a) == episodes(b) and len(a.episodes) > 0
    rows_together, rows_alone = together[0].recorder.arrays(), alone[0].recorder.arrays()
    assert set(rows_together) == set(rows_alone)
    for key in ("episode", "t", "level_seed", "action", "done"):
        assert np.array_equal(rows_together[key], rows_alone[key]), key
    np.testing.assert_allclose(rows_together["value"], rows_alone["value"], rtol=1e-5, atol=1e-6)
    assert sorted(together[0].recorder.frames) == sorted(alone[0].recorder.frames) == [0]
