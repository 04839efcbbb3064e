"""The benchmark code paths on tiny budgets: they finish and print every field; bad input exits 2 naming the flag.

No test here asserts a wall-clock time: the machines are shared and timings are noise; the tests check that
the numbers exist, are finite and positive, and relate as their definitions say.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from multiscene.bench import main as bench_main
from multiscene.bench.throughput import ThroughputResult

TINY = ["--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2", "--update-epochs", "1", "--hidden-size", "16",
        "--torch-threads", "1", "--num-threads", "1", "--device", "cpu"]
RATES = ("env_sps", "train_sps", "ceiling_sps", "ratio", "collect_seconds", "update_seconds", "ceiling_act_seconds",
         "ceiling_update_seconds")


def _parse(out: str) -> dict[str, str]:
    fields = {}
    for line in out.splitlines():
        if ": " in line and not line.startswith("{"):
            key, value = line.split(": ", 1)
            fields[key] = value
    return fields


@pytest.mark.parametrize(
    ("preset", "extra"),
    [
        ("cleanrl-procgen", []),  # feed-forward IMPALA-CNN on Procgen
        ("procgen-easy", ["--env", "coinrun"]),  # RL²: LSTM + scalar critic
        ("procgen-easy", ["--critic", "sparse-dve", "--env", "starpilot"]),  # Sparse DVE, L_CC on
        ("quickstart", []),  # MiniGrid, Sparse DVE
        ("quickstart", ["--critic", "scalar", "--bf16"]),  # MiniGrid RL² under bf16 autocast
        # issue 10: the algorithm axis and MuJoCo (the one-step algorithms time their own update in the ceiling)
        ("ppo-mujoco", ["--env", "InvertedPendulum-v5"]),
        ("a2c-mujoco", ["--env", "InvertedPendulum-v5"]),
        ("acktr-mujoco", ["--env", "InvertedPendulum-v5"]),
        ("acktr-gym", []),  # K-FAC on CartPole's categorical policy
    ],
)
def test_throughput_prints_every_field(capsys, preset, extra):
    code = bench_main(["throughput", "--preset", preset, "--updates", "1", "--warmup-updates", "0",
                       "--env-steps", "4", "--json", *TINY, *extra])
    assert code == 0
    out = capsys.readouterr().out
    fields = _parse(out)
    expected = {f.name for f in __import__("dataclasses").fields(ThroughputResult)}
    assert expected <= set(fields), expected - set(fields)
    data = json.loads(out.strip().splitlines()[-1])
    for name in RATES:
        assert math.isfinite(data[name]) and data[name] > 0, (name, data[name])
    # The ratio is defined as train / ceiling, and both rates follow from their timed parts.
    assert data["ratio"] == pytest.approx(data["train_sps"] / data["ceiling_sps"])
    batch = data["num_envs"] * data["num_steps"]
    assert data["ceiling_sps"] == pytest.approx(batch / (data["ceiling_act_seconds"] + data["ceiling_update_seconds"]))
    assert data["train_sps"] == pytest.approx(batch / (data["collect_seconds"] + data["update_seconds"]))
    assert data["preset"] == preset and data["num_envs"] == 4 and data["torch_threads"] == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["throughput", "--preset", "no-such-preset"], "--preset"),
        (["throughput", "--preset", "quickstart", "--updates", "0"], "--updates"),
        (["throughput", "--preset", "quickstart", "--env-steps", "0"], "--env-steps"),
        (["learning", "--total-timesteps", "10", "--num-envs", "4", "--num-steps", "8"], "--total-timesteps"),
        (["learning", "--methods", "rl2", "ppo-magic"], "--methods"),
        (["learning", "--tasks", "coinrun"], "--tasks"),
        (["learning", "--tasks", "MiniGrid-NoSuchTask-v0"], "--env"),
        (["learning", "--seeds", "0"], "--seeds"),
        (["no-such-bench"], "update-cost or learning"),
        (["update-cost", "--preset", "a2c-gym", "--updates", "1"], "--updates"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(capsys, argv, needle):
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_learning_bench_tiny(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code = bench_main(["learning", "--out", str(out_dir), "--tasks", "MiniGrid-LavaGapS5-v0", "--methods", "rl2",
                       "sparse-dve", "--seeds", "1", "--total-timesteps", "32", "--num-envs", "4", "--num-steps", "8",
                       "--num-minibatches", "2", "--hidden-size", "16", "--num-levels", "5", "--eval-episodes", "2"])
    assert code == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    for label in ("held-out return", "train return", "held-out episode length", "held-out value error",
                  "held-out mean confusion", "wall_seconds"):
        assert label in printed
    results = json.loads((out_dir / "results.json").read_text())
    assert (out_dir / "table.md").exists() and (out_dir / "figure.png").stat().st_size > 0
    runs = {r["method"]: r for r in results["runs"]}
    assert set(runs) == {"rl2", "sparse-dve"}
    for run in runs.values():
        assert run["test_length"] > 0 and run["train_length"] > 0
        assert run["test_value_error"] is not None and run["test_value_error"] >= 0
    # Confusion exists only where there are clusters, and lies in [1/N_b, 1].
    assert runs["rl2"]["test_confusion"] is None and runs["rl2"]["test_clusters_in_use"] is None
    assert 1 / 3 - 1e-6 <= runs["sparse-dve"]["test_confusion"] <= 1 + 1e-6
    assert runs["sparse-dve"]["test_clusters_in_use"] in (1.0, 2.0, 3.0)
    assert 0.0 <= runs["sparse-dve"]["test_scene_nmi"] <= 1.0 + 1e-9
    # Every run is an ordinary run directory written by a sweep trial, with the random policy's floor read.
    for run in runs.values():
        assert run["test_random_return"] is not None
    trials = sorted(p.name for p in (out_dir / "trials").iterdir())
    assert trials == ["env=MiniGrid-LavaGapS5-v0_critic=scalar_s1", "env=MiniGrid-LavaGapS5-v0_critic=sparse-dve_s1"]
    assert all((out_dir / "trials" / t / "eval" / "final.json").exists() for t in trials)
    assert "random policy" in (out_dir / "table.md").read_text()
    assert "| MiniGrid-LavaGapS5-v0 | " in (out_dir / "table.md").read_text().split("Paired by seed")[1]
    iqm = results["aggregate"]["test_return"]["sparse-dve"]
    assert iqm["iqm_ci"][0] <= iqm["iqm"] <= iqm["iqm_ci"][1]
    # A second call reuses the finished runs instead of training again.
    assert bench_main(["learning", "--out", str(out_dir), "--tasks", "MiniGrid-LavaGapS5-v0", "--methods", "rl2",
                       "sparse-dve", "--seeds", "1", "--total-timesteps", "32", "--num-envs", "4", "--num-steps", "8",
                       "--num-minibatches", "2", "--hidden-size", "16", "--num-levels", "5", "--eval-episodes", "2"]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    # ... and its results.json adds that call to the first instead of replacing the first call's training time.
    again = json.loads((out_dir / "results.json").read_text())
    assert [len(c["trained"]) for c in again["calls"]] == [2, 0]
    assert again["calls"][0]["wall_seconds"] == results["calls"][0]["wall_seconds"] == results["wall_seconds"]
    assert again["wall_seconds"] == pytest.approx(sum(c["wall_seconds"] for c in again["calls"]))


def test_update_cost_times_both_algorithms_from_the_same_weights(capsys):
    """bench update-cost: every field, ratio = acktr / a2c, the refresh is the slowest ACKTR update, and the
    batch is the config's; and the timing leaves the agent's weights where the rollout found them."""
    code = bench_main(["update-cost", "--preset", "a2c-gym", "--updates", "3", "--json", "--num-envs", "4",
                       "--num-steps", "8", "--hidden-size", "16", "--torch-threads", "1", "--device", "cpu",
                       "--acktr.inverse-every", "3"])
    assert code == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["batch"] == 32 and data["updates"] == 3 and data["encoder"] == "MLPEncoder"
    for name in ("a2c_seconds", "acktr_seconds", "acktr_refresh_seconds", "acktr_plain_seconds"):
        assert math.isfinite(data[name]) and data[name] > 0, name
    assert data["ratio"] == pytest.approx(data["acktr_seconds"] / data["a2c_seconds"])
    assert data["acktr_plain_seconds"] <= data["acktr_refresh_seconds"]
    assert data["parameters"] > 0


def test_time_updates_restores_the_weights_and_steps_each_time():
    """Each timed update starts from the same weights (restored outside the clock), and a real step is taken:
    the weights after one update differ from the start, and after the helper returns they are back."""
    import torch

    from multiscene import registry
    from multiscene.algos.onpolicy.rollout import RolloutCollector
    from multiscene.bench.update_cost import _time_updates
    from multiscene.config import replace
    from multiscene.envs import make_env
    from multiscene.presets import get_preset
    from multiscene.runtime import env_spec, make_agent, seed_everything

    cfg = replace(get_preset("a2c-gym"), num_envs=4, num_steps=8, hidden_size=16, total_timesteps=32, device="cpu")
    seed_everything(cfg.seed, False)
    envs = make_env(env_spec(cfg, "train", cfg.num_envs))
    try:
        agent = make_agent(cfg, envs, device=torch.device("cpu"))
        rollout = RolloutCollector(envs, agent, cfg, torch.device("cpu")).collect(agent)
    finally:
        envs.close()
    algo = registry.load("algorithm", "a2c")()
    adv = algo.advantages(agent.critic, rollout, cfg)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    for name in ("a2c", "acktr"):
        times = _time_updates(name, cfg, agent, rollout, adv, 2, torch.device("cpu"))
        assert len(times) == 2
        after = agent.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    # The same update outside the helper does move the weights (so the timed work is a real step).
    optimizer = algo.make_optimizer(agent, cfg)
    algo.update(agent, optimizer, rollout, adv, {}, cfg, torch.device("cpu"))
    assert any(not torch.equal(before[k], v) for k, v in agent.state_dict().items())


def test_learning_bench_scenes_are_hidden_payoffs_three_and_levels_elsewhere(tmp_path):
    from multiscene.bench.learning import scenes_of
    from multiscene.envs.scenes import HIDDEN_PAYOFF_ID, level_scene

    seeds = np.array([5, 0, 5, 17, 3])
    (tmp_path / "config.json").write_text(json.dumps({"config": {"env": HIDDEN_PAYOFF_ID}}))
    assert scenes_of(tmp_path, seeds).tolist() == [level_scene(int(s)) for s in seeds]
    assert set(scenes_of(tmp_path, np.arange(60)).tolist()) == {0, 1, 2}
    (tmp_path / "config.json").write_text(json.dumps({"config": {"env": "MiniGrid-LavaGapS5-v0"}}))
    assert scenes_of(tmp_path, seeds).tolist() == seeds.tolist()


def test_learning_bench_paired_differences_by_hand():
    from multiscene.bench.learning import paired_markdown

    per_run = {("T", "rl2", 1): {"test_value_error": 0.5}, ("T", "rl2", 2): {"test_value_error": 0.2},
               ("T", "dve", 1): {"test_value_error": 0.3}, ("T", "dve", 2): {"test_value_error": 0.4}}
    table = paired_markdown(per_run, ["T"], ["rl2", "dve"], seeds=2)
    # dve - rl2: -0.2 and +0.2 -> mean +0.000, lower in 1 of 2 seeds.
    assert "| dve - rl2 |" in table and "| T | +0.000 (1 of 2) |" in table
