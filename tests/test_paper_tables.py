"""``multiscene compare`` in the papers' layouts: seed 004 Table 2 (A2MC, issue 11 item 6) and seed 002 Table 1
(IMPALA+VAE, issue 12 item 6), on fake run directories with hand-set final returns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fake-run writer lives beside this file

from test_report import write_fake_run  # noqa: E402

from multiscene.analysis import paper_tables  # noqa: E402
from multiscene.analysis.compare import CompareOptions, build_comparison, main  # noqa: E402
from multiscene.analysis.rundata import load_run  # noqa: E402
from multiscene.analysis.seed004_reference import MUJOCO_TABLE2  # noqa: E402

FAST = CompareOptions(reps=50, smooth=2, curve_points=10, trajectory_levels=1)


def fake_algo_run(path: Path, env: str, algo: str, critic: str, seed: int, test_return: float | None = None,
                  aux: str = "none", episode_returns: list[float] | None = None, **kwargs: object) -> Path:
    """A fake run with ``algo``/``aux`` in its config; ``test_return`` overrides the final test return_mean;
    ``episode_returns`` replaces eval/final_steps_test.npz with one-step-per-reward episodes summing to them."""
    write_fake_run(path, critic=critic, env=env, seed=seed, episodes=6, updates=4, **kwargs)
    record = json.loads((path / "config.json").read_text())
    record["config"].update({"algo": algo, "aux": aux})
    if algo == "impala":
        record["algo"] = "impala"  # as multiscene/algos/impala/loop.py writes it
    (path / "config.json").write_text(json.dumps(record))
    final = json.loads((path / "eval" / "final.json").read_text())
    if test_return is not None:
        final["test"]["return_mean"] = test_return
    if episode_returns is not None:
        n = len(episode_returns)
        # two steps per episode: reward split 0.25 / 0.75 so the sum, not a single step, makes the return
        reward = np.array([[0.25 * r, 0.75 * r] for r in episode_returns], dtype=np.float32).reshape(-1)
        steps = {"episode": np.repeat(np.arange(n), 2), "t": np.tile([0, 1], n),
                 "level_seed": np.repeat(np.arange(n) + 500, 2), "action": np.zeros(2 * n, dtype=np.int64),
                 "reward": reward, "done": np.tile([False, True], n),
                 "value": np.zeros((2 * n, 1), dtype=np.float32), "reward_scale": np.array(1.0),
                 "gamma": np.array(0.99)}
        np.savez_compressed(path / "eval" / "final_steps_test.npz", **steps)
        final["test"]["return_mean"] = float(np.mean(episode_returns))
    (path / "eval" / "final.json").write_text(json.dumps(final))
    return path


def test_method_names_follow_the_papers(tmp_path: Path) -> None:
    cases = [("HalfCheetah-v5", "acktr", "scalar", "none", "ACKTR"), ("HalfCheetah-v5", "acktr", "multi", "none", "A2MC"),
             ("HalfCheetah-v5", "ppo", "scalar", "none", "PPO"), ("HalfCheetah-v5", "ppo", "multi", "none", "MC-PPO"),
             ("coinrun", "impala", "scalar", "none", "IMPALA"), ("coinrun", "impala", "scalar", "vae", "IMPALA+VAE"),
             ("coinrun", "ppo", "scalar", "none", "RL²"), ("coinrun", "ppo", "sparse-dve", "none", "Sparse DVE")]
    for i, (env, algo, critic, aux, expected) in enumerate(cases):
        run = load_run(fake_algo_run(tmp_path / f"r{i}", env, algo, critic, seed=1, aux=aux))
        assert run.method == expected, (env, algo, critic, aux)
    # a run written before the algorithm axis (no "algo" key) keeps seed 000's name
    assert load_run(write_fake_run(tmp_path / "old", critic="scalar", env="coinrun")).method == "RL²"


@pytest.fixture(scope="module")
def mujoco_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """HalfCheetah: ACKTR 100, 200 (mean 150) vs A2MC 240, 300 (mean 270): margin +80%. PPO 50 vs MC-PPO 40:
    -20%. Swimmer: A2MC only."""
    root = tmp_path_factory.mktemp("mujoco")
    spec = [("HalfCheetah-v5", "acktr", "scalar", 1, 100.0), ("HalfCheetah-v5", "acktr", "scalar", 2, 200.0),
            ("HalfCheetah-v5", "acktr", "multi", 1, 240.0), ("HalfCheetah-v5", "acktr", "multi", 2, 300.0),
            ("HalfCheetah-v5", "ppo", "scalar", 1, 50.0), ("HalfCheetah-v5", "ppo", "multi", 1, 40.0),
            ("Swimmer-v5", "acktr", "multi", 1, 30.0)]
    return [fake_algo_run(root / f"{env}-{algo}-{critic}-{seed}", env, algo, critic, seed, ret)
            for env, algo, critic, seed, ret in spec]


def test_a2mc_table2_numbers_and_reference(mujoco_runs: list[Path], tmp_path: Path) -> None:
    summary = build_comparison(mujoco_runs, tmp_path / "out", FAST)
    rows = {r["task"]: r for r in summary["table2_a2mc"]}
    assert list(rows) == ["HalfCheetah", "Swimmer"]  # seed 004's row order
    hc = rows["HalfCheetah"]
    assert hc["ACKTR"] == pytest.approx(150.0) and hc["A2MC"] == pytest.approx(270.0)
    assert hc["A2MC margin %"] == pytest.approx(80.0)
    assert hc["PPO"] == pytest.approx(50.0) and hc["MC-PPO"] == pytest.approx(40.0)
    assert hc["MC-PPO margin %"] == pytest.approx(-20.0)
    assert hc["ACKTR seeds"] == 2 and hc["PPO seeds"] == 1
    assert hc["seed ACKTR"] == MUJOCO_TABLE2["HalfCheetah"]["acktr"]
    assert hc["seed A2MC margin %"] == MUJOCO_TABLE2["HalfCheetah"]["a2mc_margin_pct"]
    sw = rows["Swimmer"]
    assert sw["A2MC"] == pytest.approx(30.0) and sw["ACKTR"] is None and sw["A2MC margin %"] is None

    md = (tmp_path / "out" / "table2_a2mc.md").read_text()
    hc_line = next(line for line in md.splitlines() if line.startswith("| HalfCheetah"))
    cells = [c.strip() for c in hc_line.strip("|").split("|")]
    assert cells[1:4] == ["150.0", "270.0", "+80.0%"]
    assert cells[4:7] == ["1676.2", "2696.6", "+60.8%"]
    assert cells[7:10] == ["50.0", "40.0", "-20.0%"]
    assert "arXiv 1809.02387" in md  # cited
    assert not (tmp_path / "out" / "table1_impala.md").exists()  # no IMPALA run
    # Table 1 keeps the four methods apart instead of pooling them by critic
    methods = {r["method"] for r in summary["table1"]}
    assert methods == {"ACKTR", "A2MC", "PPO", "MC-PPO"}


def test_compare_prints_table2(mujoco_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*map(str, mujoco_runs), "--out", str(tmp_path / "o"), "--reps", "50"]) == 0
    printed = capsys.readouterr().out
    assert "Seed 004 Table 2 layout" in printed and "| HalfCheetah | 150.0 | 270.0 | +80.0%" in printed
    assert "table2_a2mc.md" in printed


def test_impala_table1_pooled_episode_statistics(tmp_path: Path) -> None:
    # IMPALA on coinrun, two seeds with test episodes [0, 10, 10] and [10, 0]: pooled mean 6, variance
    # (ddof 0) 100 * 0.6 * 0.4 = 24, max 10, min 0. IMPALA+VAE: [10, 10, 0, 10] -> 7.5, 18.75.
    runs = [fake_algo_run(tmp_path / "i1", "coinrun", "impala", "scalar", 1, episode_returns=[0, 10, 10],
                          distribution_mode="hard"),
            fake_algo_run(tmp_path / "i2", "coinrun", "impala", "scalar", 2, episode_returns=[10, 0],
                          distribution_mode="hard"),
            fake_algo_run(tmp_path / "v1", "coinrun", "impala", "scalar", 1, aux="vae",
                          episode_returns=[10, 10, 0, 10], distribution_mode="hard")]
    summary = build_comparison(runs, tmp_path / "out", FAST)
    cells = {r["method"]: r for r in summary["table1_impala"]}
    base = cells["IMPALA"]["cell"]
    assert base["mean"] == pytest.approx(6.0) and base["variance"] == pytest.approx(24.0)
    assert (base["max"], base["min"], base["episodes"], base["runs"]) == (10.0, 0.0, 5, 2)
    vae = cells["IMPALA+VAE"]["cell"]
    assert vae["mean"] == pytest.approx(7.5) and vae["variance"] == pytest.approx(18.75)
    assert tuple(cells["IMPALA"]["seed"]) == paper_tables.SEED002_TABLE1["coinrun"]["IMPALA"]
    md = (tmp_path / "out" / "table1_impala.md").read_text()
    assert "| IMPALA (ours) | 6.000 (24.00) [10, 0] |" in md
    assert "| IMPALA+VAE (ours) | 7.500 (18.75) [10, 0] |" in md
    assert "| IMPALA (seed 002) | 6.510 (22.72) [10, 0] |" in md
    assert not (tmp_path / "out" / "table2_a2mc.md").exists()


def test_impala_cell_from_summaries_only_matches_pooled_moments(tmp_path: Path) -> None:
    # A run without per-episode records adds its count, mean and std: {0, 10} x 2 episodes (mean 5, std 5)
    # pooled with episodes [10, 10] gives [0, 10, 10, 10]: mean 7.5, variance 18.75.
    a = fake_algo_run(tmp_path / "a", "coinrun", "impala", "scalar", 1, episode_returns=[10, 10])
    b = fake_algo_run(tmp_path / "b", "coinrun", "impala", "scalar", 2)
    (b / "eval" / "final_steps_test.npz").unlink()
    final = json.loads((b / "eval" / "final.json").read_text())
    final["test"].update({"return_mean": 5.0, "return_std": 5.0, "episodes": 2})
    (b / "eval" / "final.json").write_text(json.dumps(final))
    cell = paper_tables.impala_cell([load_run(a), load_run(b)])
    assert cell is not None
    assert cell["mean"] == pytest.approx(7.5) and cell["variance"] == pytest.approx(18.75)
    assert cell["episodes"] == 4 and cell["summary_only"] == [str(b)]
