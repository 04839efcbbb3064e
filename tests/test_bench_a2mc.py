"""benchmarks/a2mc_vs_baselines.py (issue 11): its summary and tables on run directories written here, checked
against hand computations, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("a2mc_vs_baselines.py")


def _write_run(run_dir: Path, records: list[dict], num_envs: int = 5, num_steps: int = 500) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (run_dir / "config.json").write_text(json.dumps({"config": {"num_envs": num_envs, "num_steps": num_steps}}))


def _curve(level: float, budget: int = 10_000, updates: int = 10) -> list[dict]:
    """Return ``level`` for the first 80% of the updates and ``2 * level`` for the last 20%: auc = 1.2 level,
    final = 2 level."""
    return [{"update": u, "global_step": u * budget // updates,
             "charts/episodic_return": level if u <= 0.8 * updates else 2 * level, "charts/episodes": 1}
            for u in range(1, updates + 1)]


def test_paired_margin_by_hand(bench):
    base = {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}
    ours = {1: 15.0, 2: 30.0, 3: 45.0, 4: 60.0, 5: 999.0}  # seed 5 has no baseline run: left out
    m = bench.paired_margin(base, ours)
    # IQM of 4 values: the mean of the middle two. 25 and 37.5 -> +50%.
    assert m["baseline_iqm"] == pytest.approx(25.0) and m["ours_iqm"] == pytest.approx(37.5)
    assert m["margin_pct"] == pytest.approx(50.0) and m["seeds"] == 4
    # Every seed's pair is 1.5x its baseline, and the IQM is scale-equivariant: every paired replicate gives +50%.
    assert m["ci"] == pytest.approx([50.0, 50.0])
    # The same numbers paired differently move the replicates: the interval opens (the pairing is real).
    shuffled = bench.paired_margin(base, {1: 60.0, 2: 15.0, 3: 45.0, 4: 30.0})
    assert shuffled["margin_pct"] == pytest.approx(50.0)
    assert shuffled["ci"][0] < 0.0 < 100.0 < shuffled["ci"][1]
    # A negative baseline: the margin is over |baseline|, as seed 004's.
    neg = bench.paired_margin({1: -200.0, 2: -200.0}, {1: -100.0, 2: -100.0})
    assert neg["margin_pct"] == pytest.approx(50.0)
    assert bench.paired_margin({1: 0.0}, {1: 5.0}) is None
    assert bench.paired_margin({1: 1.0}, {2: 5.0}) is None


def test_mujoco_summary_and_table_on_synthetic_runs(bench, tmp_path):
    task, budget = "HalfCheetah-v5", 10_000
    levels = {"acktr": [100.0, 200.0, 300.0, 1000.0], "a2mc": [150.0, 300.0, 450.0, 1500.0],
              "ppo": [-400.0, -300.0, -200.0, -100.0], "mcppo": [-200.0, -150.0, -100.0, -50.0]}
    runs = []
    for method, per_seed in levels.items():
        for seed, level in enumerate(per_seed, start=1):
            run = bench.Run(task, budget, method, seed, tmp_path / f"{task}-{method}-{seed}")
            _write_run(run.run_dir, _curve(level, budget))
            runs.append(run)
    summary = bench.summarize_mujoco(runs, reps=50)  # the points do not depend on reps
    entry = summary["tasks"][task]
    # IQM over 4 seeds = mean of the middle two; auc = 1.2 x level, final = 2 x level.
    assert entry["auc"]["acktr"]["iqm"] == pytest.approx(1.2 * 250.0)
    assert entry["final"]["acktr"]["iqm"] == pytest.approx(2 * 250.0)
    assert entry["auc"]["a2mc"]["iqm"] == pytest.approx(1.2 * 375.0)
    assert entry["auc"]["ppo"]["iqm"] == pytest.approx(1.2 * -250.0)
    assert entry["auc"]["acktr"]["runs"] == 4
    a2mc, mcppo = entry["margins"]["a2mc"], entry["margins"]["mcppo"]
    assert a2mc["baseline"] == "acktr" and mcppo["baseline"] == "ppo"
    for metric in ("auc", "final"):
        assert a2mc[metric]["margin_pct"] == pytest.approx(50.0)  # 375 vs 250
        assert mcppo[metric]["margin_pct"] == pytest.approx(50.0)  # -125 vs -250, over |-250|
        assert a2mc[metric]["ci"] == pytest.approx([50.0, 50.0])  # every seed's pair is 1.5x
    # P(A2MC > ACKTR) by hand (Mann-Whitney, a tie counts half): of the 16 (a2mc, acktr) pairs, 150 beats 100;
    # 300 beats 100, 200 and ties 300; 450 beats 100, 200, 300; 1500 beats all four: 10 wins, 1 tie.
    assert a2mc["p_auc"]["probability"] == pytest.approx(10.5 / 16)
    assert a2mc["seed004"] == {"value": 60.8, "kind": "margin_pct"}
    assert mcppo["seed004"] == {"value": 83.9, "kind": "parenthesized"}

    table = bench.table_markdown({"mujoco": summary}, {task: budget})
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith(f"| {task}")}
    assert "+50.0% [+50.0, +50.0] (n=4)" in rows["a2mc vs acktr"] and "+60.8%" in rows["a2mc vs acktr"]
    assert "(83.9)" in rows["mcppo vs ppo"]
    assert rows["acktr"].endswith("| — | — | — |")
    assert "300.0 [" in rows["acktr"]  # auc IQM
    json.dumps(bench.jsonable(summary), allow_nan=False)


def test_a_missing_side_leaves_its_margin_out(bench, tmp_path):
    # ACKTR's seed 2 never finished an episode: its scores are NaN, so the pair rests on seed 1 only.
    runs = [bench.Run("Swimmer-v5", 1000, method, seed, tmp_path / f"{method}{seed}")
            for method in ("acktr", "a2mc") for seed in (1, 2)]
    _write_run(runs[0].run_dir, _curve(10.0, 1000))
    _write_run(runs[1].run_dir, [{"update": 1, "global_step": 1000}])
    _write_run(runs[2].run_dir, _curve(20.0, 1000))
    _write_run(runs[3].run_dir, _curve(40.0, 1000))
    entry = bench.summarize_mujoco(runs, reps=50)["tasks"]["Swimmer-v5"]
    assert entry["auc"]["acktr"]["runs"] == 1 and entry["auc"]["a2mc"]["runs"] == 2
    assert entry["margins"]["a2mc"]["auc"]["seeds"] == 1
    assert entry["margins"]["a2mc"]["auc"]["margin_pct"] == pytest.approx(100.0)
    assert "mcppo" not in entry["margins"]  # no PPO runs: no pair


def test_atari_run_summary_reads_the_hotwire_counters(bench, tmp_path):
    records = [
        {"update": 1, "global_step": 80, "hotwire/envs_trapped": 4.0, "hotwire/segments_hotwired_total": 1.0},
        {"update": 2, "global_step": 160, "hotwire/envs_trapped": 4.0, "hotwire/segments_hotwired_total": 2.0},
        {"update": 3, "global_step": 240, "hotwire/envs_trapped": 3.0, "hotwire/segments_hotwired_total": 2.0,
         "charts/episodic_return": 1.0, "charts/episodes": 2, "charts/episodes_nonzero_return": 1},
        {"update": 4, "global_step": 320, "hotwire/envs_trapped": 1.0, "hotwire/segments_hotwired_total": 3.0,
         "charts/episodic_return": 4.0, "charts/episodes": 1, "charts/episodes_nonzero_return": 1},
    ]
    _write_run(tmp_path / "hw", records, num_envs=4, num_steps=20)
    s = bench.atari_run_summary(tmp_path / "hw")
    assert s["first_reward_step"] == 240 and s["envs_scored"] == 3 and s["batch"] == 80
    assert s["segments_hotwired"] == 3 and s["episodes"] == 3 and s["episodes_nonzero"] == 2
    assert s["mean_return"] == pytest.approx((1.0 * 2 + 4.0) / 3)  # per-update means weighted by games
    control = [{**r, "hotwire/envs_trapped": 4.0, "hotwire/segments_hotwired_total": 0.0} for r in records]
    for r in control[2:]:
        r.update({"charts/episodic_return": 0.0, "charts/episodes_nonzero_return": 0})
    _write_run(tmp_path / "ctl", control, num_envs=4, num_steps=20)
    c = bench.atari_run_summary(tmp_path / "ctl")
    assert c["first_reward_step"] is None and c["envs_scored"] == 0
    runs = [bench.Run("FreewayNoFrameskip-v4", 320, "a2c", 1, tmp_path / "ctl"),
            bench.Run("FreewayNoFrameskip-v4", 320, "a2c+hotwire", 1, tmp_path / "hw")]
    summary = bench.summarize_atari(runs)
    assert summary["arms"]["a2c+hotwire"]["median_first_reward_step"] == 240
    assert summary["arms"]["a2c"] == {"runs": 1, "runs_with_reward": 0, "median_first_reward_step": None}
    table = bench.table_markdown({"atari": summary}, {})
    assert "| a2c | 1 | none by 320 | 0 of 4 | 0 | 3 | 0 | 0.00 |" in table
    assert "| a2c+hotwire | 1 | 240 | 3 of 4 | 3 | 3 | 2 | 2.00 |" in table


def test_plan_and_commands(bench, tmp_path):
    args = SimpleNamespace(atari_algo="a2c", hotwire_fraction=1.0)
    runs = bench.plan({"Walker2d-v5": 5000}, 2, ("FreewayNoFrameskip-v4", 1280), 1, "a2c", tmp_path)
    assert [(r.method, r.seed) for r in runs] == [
        ("acktr", 1), ("a2mc", 1), ("ppo", 1), ("mcppo", 1), ("a2c", 1), ("a2c+hotwire", 1),
        ("acktr", 2), ("a2mc", 2), ("ppo", 2), ("mcppo", 2)]
    command = bench.command_for(args)
    mujoco = command(runs[1])
    assert mujoco[mujoco.index("--preset") + 1] == "a2mc-mujoco-walker2d"
    assert mujoco[mujoco.index("--total-timesteps") + 1] == "5000" and "--no-final-eval" in mujoco
    assert mujoco[mujoco.index("--torch-threads") + 1] == "1"
    control, hotwired = command(runs[4]), command(runs[5])
    for cmd in (control, hotwired):
        assert cmd[cmd.index("--preset") + 1] == "a2c-atari" and "--hotwire" in cmd
        assert cmd[cmd.index("--hotwire-cfg.fraction") + 1] == "1.0"
    assert control[control.index("--hotwire-cfg.epsilon") + 1] == "0" and "--hotwire-cfg.epsilon" not in hotwired
    only_pair = bench.plan({"Walker2d-v5": 5000}, 1, None, 0, "a2c", tmp_path, methods=("a2mc", "acktr"))
    assert [r.method for r in only_pair] == ["acktr", "a2mc"]
    # 100k steps of each of the 4 methods at ESTIMATED_SPS plus start-up, over 2 workers.
    expected = sum(100_000 / bench.ESTIMATED_SPS[m] + bench.STARTUP_SECONDS for m in bench.MUJOCO_METHODS) / 2
    full = bench.plan({"Walker2d-v5": 100_000}, 1, None, 0, "a2c", tmp_path)
    assert bench.estimated_seconds(full, 2) == pytest.approx(expected)


@pytest.mark.parametrize("argv, flag", [(["--tasks", "CartPole-v1:1000"], "--tasks"),
                                        (["--tasks", "Swimmer-v5:many"], "--tasks"),
                                        (["--atari", "NotAGame:1000"], "--atari"),
                                        (["--hotwire-fraction", "2"], "--hotwire-fraction")])
def test_bad_input_names_the_flag(bench, tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(tmp_path), "--report-only", *argv])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_rollout_metrics_counts_games_that_scored():
    from multiscene.algos.onpolicy.loop import rollout_metrics
    from multiscene.envs.base import EpisodeStats

    episodes = [EpisodeStats(i, value, 10, 0, None) for i, value in enumerate((0.0, 3.0, -1.0))]
    values = torch.zeros(4, 3, 1)
    rollout = SimpleNamespace(episodes=episodes, values=values, alpha=None)
    out = rollout_metrics(rollout, SimpleNamespace(returns=values + 1), SimpleNamespace(head_names=("env",)),
                          SimpleNamespace(fired_step=None))
    assert out["charts/episodes"] == 3 and out["charts/episodes_nonzero_return"] == 2
    assert out["charts/episodic_return"] == pytest.approx(2.0 / 3)


@pytest.mark.slow
def test_tiny_end_to_end(bench, tmp_path):
    """One update of ACKTR and A2MC on Hopper (whose random-policy episodes end within one) and of both hot-wiring
    arms on Freeway; then a second call reuses the finished runs and only summarizes."""
    argv = ["--out", str(tmp_path / "out"), "--tasks", "Hopper-v5:2500", "--methods", "acktr", "a2mc",
            "--seeds", "1", "--atari", "Freeway:640", "--atari-seeds", "1"]
    assert bench.main(argv) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"table.md", "results.json", "curves.png", "hotwire.png", "runs"}
    results = json.loads((out / "results.json").read_text())
    entry = results["mujoco"]["tasks"]["Hopper-v5"]
    assert entry["auc"]["acktr"]["runs"] == 1 and entry["margins"]["a2mc"]["auc"]["seeds"] == 1
    atari = {r["method"]: r for r in results["atari"]["runs"]}
    assert atari["a2c"]["segments_hotwired"] == 0 and atari["a2c"]["steps"] == 640
    assert atari["a2c+hotwire"]["num_envs"] == 32
    start = time.time()
    assert bench.main(argv) == 0  # every run finished: nothing is trained again
    assert time.time() - start < 15
    assert math.isfinite(entry["auc"]["a2mc"]["iqm"])
