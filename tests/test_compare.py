"""``multiscene compare`` (issue 4): known ordering of fake methods, Table 1 numbers, rliable aggregates, bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fake-run writer lives beside this file

from test_report import _check_png, write_fake_run  # noqa: E402

from multiscene.analysis import stats  # noqa: E402
from multiscene.analysis.compare import CompareOptions, build_comparison, main  # noqa: E402

FAST = CompareOptions(reps=200, smooth=2, curve_points=20)


@pytest.fixture(scope="module")
def procgen_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """RL² clearly worse than Sparse DVE on two Procgen games, three seeds each (same seeds: same test levels)."""
    root = tmp_path_factory.mktemp("cmp")
    runs = []
    for game, offset in (("coinrun", 5.5), ("starpilot", 10.0)):
        for critic, quality in (("scalar", 0.0), ("sparse-dve", 2.5)):
            for seed in (1, 2, 3):
                runs.append(write_fake_run(root / f"{game}-{critic}-s{seed}", critic=critic, env=game, seed=seed,
                                           quality=offset + quality, episodes=8, updates=8))
    return runs


def test_compare_reproduces_a_known_ordering(procgen_runs: list[Path], tmp_path: Path) -> None:
    summary = build_comparison(procgen_runs, tmp_path / "out", FAST)
    rows = {(r["game"], r["method"]): r for r in summary["table1"]}
    assert set(rows) == {(g, m) for g in ("coinrun", "starpilot") for m in ("RL²", "Sparse DVE")}
    for game in ("coinrun", "starpilot"):
        assert rows[(game, "Sparse DVE")]["return_mean"] > rows[(game, "RL²")]["return_mean"]
        # Table 1 cell = mean over seeds of eval/final.json's test return_mean
        finals = [json.loads((p / "eval" / "final.json").read_text())["test"]["return_mean"]
                  for p in procgen_runs if p.name.startswith(f"{game}-scalar")]
        assert rows[(game, "RL²")]["return_mean"] == pytest.approx(np.mean(finals))
        assert rows[(game, "RL²")]["return_std"] == pytest.approx(np.std(finals, ddof=1))

    agg = summary["aggregates"]
    assert agg["aggregate_kind"] == "normalized" and agg["tasks"] == ["coinrun", "starpilot"]
    assert agg["intervals"]["Sparse DVE"]["iqm"] > agg["intervals"]["RL²"]["iqm"]
    poi = agg["probability_of_improvement_over_RL²"]["Sparse DVE"]
    assert poi["probability"] == pytest.approx(1.0)  # every Sparse DVE run beats every RL² run
    for method in ("RL²", "Sparse DVE"):
        v = agg["intervals"][method]
        assert v["iqm_ci"][0] <= v["iqm"] <= v["iqm_ci"][1]
        assert v["runs"] == 3 and v["tasks"] == 2
    # normalized with the SPEC §9 easy constants, recorded
    coin = agg["scores"]["coinrun"]["RL²"]
    assert coin == pytest.approx([(rows_value - 5.0) / 5.0 for rows_value in
                                  [json.loads((p / "eval" / "final.json").read_text())["test"]["return_mean"]
                                   for p in procgen_runs if p.name.startswith("coinrun-scalar")]])
    assert "easy" in agg["normalization"]

    out = tmp_path / "out"
    md = (out / "table1.md").read_text()
    assert md.splitlines()[0] == "| game | RL² | Sparse DVE | len RL² | len Sparse DVE |"
    with open(out / "table1.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert set(summary["figures"]) == {"curves_coinrun.png", "curves_starpilot.png", "aggregate.png",
                                       "trajectories_coinrun.png", "trajectories_starpilot.png"}
    for name in summary["figures"]:
        _check_png(out / name)
    assert summary["trajectories"]["coinrun"]["common_levels"]


def test_iqm_against_a_hand_computed_case() -> None:
    # 8 scores (4 runs x 2 tasks): the IQM drops the lowest and highest quarter (2 each), averaging 3, 4, 5, 6;
    # the outlier 100 moves the mean, not the IQM.
    scores = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]]).reshape(4, 2)
    assert stats.iqm(scores) == pytest.approx((3 + 4 + 5 + 6) / 4)
    intervals = stats.aggregate_intervals({"m": scores}, reps=100)
    assert intervals["m"]["iqm"] == pytest.approx(4.5)
    assert intervals["m"]["mean"] == pytest.approx(128 / 8)


def test_minigrid_trajectories_side_by_side_and_raw_scores(tmp_path: Path) -> None:
    runs = [write_fake_run(tmp_path / f"{c}", critic=c, seed=1, quality=q, episodes=8, updates=6)
            for c, q in (("dve", 0.5), ("sparse-dve", 1.0))]
    summary = build_comparison(runs, tmp_path / "out", FAST)
    traj = summary["trajectories"]["MiniGrid-DoorKey-5x5-v0"]
    assert traj["methods"] == ["DVE", "Sparse DVE"] and traj["drawn_levels"]
    _check_png(tmp_path / "out" / traj["figure"])
    assert summary["aggregates"]["aggregate_kind"] == "raw"  # no (R_min, R_max) for MiniGrid
    assert "probability_of_improvement_over_RL²" not in summary["aggregates"]


def test_partial_run_is_marked_and_left_out_of_table(tmp_path: Path) -> None:
    done = write_fake_run(tmp_path / "done", critic="scalar", env="coinrun", quality=6.0, episodes=6)
    unfinished = write_fake_run(tmp_path / "unfinished", critic="scalar", env="coinrun", seed=2, with_eval=False)
    assert main([str(done), str(unfinished), "--out", str(tmp_path / "out"), "--reps", "50"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"][str(unfinished)]["partial"] is True
    row = summary["table1"][0]
    assert row["runs"] == 2 and row["evaluated_runs"] == 1 and row["partial_runs"] == 1
    assert "*" in (tmp_path / "out" / "table1.md").read_text().splitlines()[2]


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_fake_run(tmp_path / "ok", critic="scalar", env="coinrun", episodes=4)
    (tmp_path / "looks-like-a-run").mkdir()
    (tmp_path / "looks-like-a-run" / "metrics.jsonl").write_text("")  # a run folder that lost its config.json
    assert main([str(run), str(tmp_path / "looks-like-a-run"), "--out", str(tmp_path / "o1")]) == 2
    assert "not a multiscene run directory" in capsys.readouterr().err
    assert main([str(run), str(tmp_path / "typo"), "--out", str(tmp_path / "o1")]) == 2
    assert "no such file or directory" in capsys.readouterr().err

    multi = write_fake_run(tmp_path / "multi", critic="dve", env="coinrun,starpilot", episodes=4)
    assert main([str(run), str(multi), "--out", str(tmp_path / "o2")]) == 2
    assert "several games" in capsys.readouterr().err

    hard = write_fake_run(tmp_path / "hard", critic="dve", env="coinrun", distribution_mode="hard", episodes=4)
    assert main([str(run), str(hard), "--out", str(tmp_path / "o3")]) == 2
    assert "different protocols" in capsys.readouterr().err

    assert main([str(run), str(run), "--out", str(tmp_path / "o4")]) == 2
    assert "more than once" in capsys.readouterr().err


def test_out_that_is_a_run_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_fake_run(tmp_path / "run", critic="scalar", env="coinrun", episodes=4, updates=3)
    before = sorted(p.name for p in run.iterdir())
    assert main([str(run), "--out", str(run), "--reps", "20"]) == 2
    err = capsys.readouterr().err
    assert f"--out {run} is a run directory" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into the run


def test_stray_entries_are_skipped_with_one_warning_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = tmp_path / "runs"
    a = write_fake_run(runs_dir / "a", critic="scalar", env="coinrun", episodes=4, updates=3)
    b = write_fake_run(runs_dir / "b", critic="scalar", env="coinrun", seed=2, episodes=4, updates=3)
    (runs_dir / "notes.txt").write_text("stray file")
    (runs_dir / "plots").mkdir()
    entries = sorted(runs_dir.iterdir())  # what the shell makes of runs/*
    assert main([str(p) for p in entries] + ["--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert warnings == [f"multiscene compare: skipping {runs_dir / 'notes.txt'}: not a run directory (a file)",
                        f"multiscene compare: skipping {runs_dir / 'plots'}: not a run directory (a folder "
                        "without config.json or metrics.jsonl)"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["runs"]) == {str(a), str(b)}

    # Nothing left: one error, exit status 2.
    assert main([str(runs_dir / "notes.txt"), str(runs_dir / "plots"), "--out", str(tmp_path / "o2")]) == 2
    assert "none of the 2 path(s) given is a run directory" in capsys.readouterr().err
