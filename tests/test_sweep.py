"""``multiscene sweep`` (issue 14): bad input before any trial, the ranked table by hand, and a real Ray Tune run
of 4 tiny trials that resumes after an interruption and leaves no Ray process behind."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from multiscene.config import ConfigError
from multiscene.scale.sweep import RESULT_FILE, parse_args, rank_points, run_sweep, run_trial, write_tables

TINY_FIT = [
    "--set", "hidden_size=16", "--set", "fit.steps=4", "--set", "fit.train_levels=4",
    "--set", "fit.episodes_per_level=2", "--set", "fit.test_levels=4", "--set", "fit.batch_episodes=4",
    "--set", "fit.eval_every=2", "--set", "fit.grad_every=2",
]
TINY_TRAIN = [
    "--set", "num_envs=2", "--set", "num_steps=8", "--set", "num_minibatches=1", "--set", "update_epochs=1",
    "--set", "total_timesteps=16", "--set", "hidden_size=16", "--set", "eval_episodes=2",
    "--set", "eval_num_envs=2", "--set", "num_levels=4", "--set", "tensorboard=false",
    "--set", "progress=none", "--set", "device=cpu", "--set", "max_episode_steps=8",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens there


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "dve.k9=0.1,0.2"], "not a config field"),
        (["--grid", "dve.k1=0.1,lots"], "not a valid float"),
        (["--grid", "num_envs=4.5"], "not a valid int"),
        (["--grid", "dve.schedule=pre-boost,sometimes"], "choose one of"),
        (["--grid", "dve.k1=-0.1"], "--dve.k1"),  # a valid float the config rejects
        (["--grid", "fit.steps=10"], "not a config field of --task train"),
        (["--grid", "dve.k1=0.1", "--grid", "dve.k1=0.2"], "twice"),
        (["--grid", "dve.k1"], "KEY="),
        (["--task", "critic-fit", "--metric", "test_return"], "--metric"),
        (["--task", "evolve"], "--task"),
        (["--scheduler", "pbt"], "--scheduler"),
        (["--seeds", "two"], "--seeds"),
        (["--preset", "nope"], "--preset"),
        (["--address", "nonsense"], "HOST:PORT"),
        (["--scheduler", "asha"], "reports once"),
        (["--task", "critic-fit", "--scheduler", "asha", "--metric", "scene_nmi"], "auc_error_after"),
    ],
)
def test_bad_input_is_one_config_error_before_any_trial(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=message):
        parse_args(["--out", str(out), *args])
    assert not out.exists()


def test_unreachable_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot reach"):
        parse_args(["--out", str(tmp_path / "s"), "--grid", "dve.k1=0.1", "--address", f"127.0.0.1:{_closed_port()}"])


def test_grid_builds_typed_trials(tmp_path: Path) -> None:
    spec = parse_args(["--out", str(tmp_path), "--grid", "dve.k1=0.002,0.02", "--grid",
                       "dve.schedule=pre-boost,spread", "--set", "learning-rate=3e-4", "--seeds", "7,9"])
    assert len(spec.trials) == 8
    assert {t.seed for t in spec.trials} == {7, 9}
    first = spec.trials[0]
    assert first.overrides == {"learning_rate": 3e-4, "dve.k1": 0.002, "dve.schedule": "pre-boost"}
    assert first.name == "dve.k1=0.002_dve.schedule=pre-boost_s7"
    assert isinstance(first.overrides["dve.k1"], float)
    assert len({t.name for t in spec.trials}) == 8


def _fake_result(out: Path, name: str, seed: int, value: float, status: str = "done") -> None:
    trial_dir = out / "trials" / name
    trial_dir.mkdir(parents=True)
    (trial_dir / RESULT_FILE).write_text(json.dumps({
        "name": name, "seed": seed, "overrides": {}, "status": status,
        "metrics": {"auc_error_after": value, "final_error_after": value / 2, "final_confusion": None,
                    "scene_nmi": None, "clusters_in_use": None, "min_cluster_share": None}}))


def test_ranked_table_by_hand(tmp_path: Path) -> None:
    spec = parse_args(["--out", str(tmp_path), "--task", "critic-fit", "--grid", "critic=scalar,dve",
                       "--seeds", "4"])
    # scalar: 0.1, 0.2, 0.3, 0.9 -> IQM = mean of the middle two = 0.25; dve: 0.2 x 4 -> 0.2 (ranked first).
    for seed, value in zip(range(1, 5), (0.1, 0.2, 0.3, 0.9), strict=True):
        _fake_result(tmp_path, f"critic=scalar_s{seed}", seed, value)
        _fake_result(tmp_path, f"critic=dve_s{seed}", seed, 0.2)
    rows = rank_points(spec, reps=200)
    assert [r["point"] for r in rows] == ["critic=dve", "critic=scalar"]
    assert rows[0]["iqm"] == pytest.approx(0.2) and rows[0]["ci_low"] == pytest.approx(0.2)
    assert rows[1]["iqm"] == pytest.approx(0.25)
    assert rows[1]["ci_low"] <= 0.25 <= rows[1]["ci_high"]
    assert rows[1]["final_error_after"] == pytest.approx(0.125)  # IQM of halves
    markdown = write_tables(spec)
    assert markdown.index("critic=dve") < markdown.index("critic=scalar")
    csv_lines = (tmp_path / "sweep_results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,point,seeds,stopped,auc_error_after_iqm")
    assert csv_lines[1].startswith("1,critic=dve,4,0,")
    # higher-is-better metrics rank the other way
    spec_nmi = dataclasses.replace(spec, metric="final_error_after", higher_is_better=True)
    assert rank_points(spec_nmi, reps=200)[0]["point"] == "critic=scalar"


def test_critic_fit_trial_writes_its_directory(tmp_path: Path) -> None:
    spec = parse_args(["--out", str(tmp_path), "--task", "critic-fit", "--grid", "critic=sparse-dve",
                       "--set", "dve.schedule=spread", "--set", "dve.contribution=normalized", "--seeds", "1",
                       *TINY_FIT])
    reports: list[dict] = []
    metrics = run_trial(dataclasses.asdict(spec.trials[0]), spec.preset, spec.task, str(tmp_path),
                        report=reports.append)
    trial_dir = tmp_path / "trials" / spec.trials[0].name
    config = json.loads((trial_dir / "config.json").read_text())
    assert config["critic"] == "sparse-dve" and config["dve"]["contribution"] == "normalized"
    assert config["total_timesteps"] == 4  # the schedule's clock is the fit step
    lines = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if e["kind"] == "eval"] == [0.0, 2.0, 4.0]
    assert {"grad_norm_value", "grad_norm_cc_confusion", "cluster_spread"} <= set(
        next(e for e in lines if e["kind"] == "gradients"))
    result = json.loads((trial_dir / RESULT_FILE).read_text())
    assert result["status"] == "done" and result["metrics"]["auc_error_after"] == metrics["auc_error_after"]
    assert len(reports) == 3  # one intermediate report per evaluation
    # The reported running AUC at the end equals the final AUC.
    assert reports[-1]["auc_error_after"] == pytest.approx(metrics["auc_error_after"])
    assert 1 <= metrics["clusters_in_use"] <= 3


def _ray_processes(session: str) -> list[int]:
    """Processes whose command line names the Ray session directory (raylet, GCS, workers of that instance)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if session in cmdline:
            found.append(int(entry.name))
    return found


def test_sweep_on_ray_runs_resumes_and_leaves_no_ray_process(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--grid", "critic=scalar,dve", "--seeds", "2", "--max-concurrent", "2",
            "--metric", "test_value_error", *TINY_TRAIN]
    spec = parse_args(argv)
    outcome = run_sweep(spec)
    assert len(outcome["ran"]) == 4 and outcome["skipped"] == 0
    session = outcome["ray_session"]
    assert session
    assert not _ray_processes(Path(session).name)
    for trial in spec.trials:
        run_dir = out / "trials" / trial.name
        # an ordinary run directory: report and compare read these
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        assert saved["seed"] == trial.seed and saved["critic"] == trial.overrides["critic"]
        assert (run_dir / "eval" / "final.json").exists() and (run_dir / "metrics.jsonl").exists()
        assert json.loads((run_dir / RESULT_FILE).read_text())["status"] == "done"
    rows = rank_points(spec, reps=200)
    assert sorted(r["point"] for r in rows) == ["critic=dve", "critic=scalar"]
    assert all(r["seeds"] == 2 for r in rows)
    assert rows[0]["iqm"] <= rows[1]["iqm"]  # value error: lower first
    for row in rows:
        per_seed = [json.loads((out / "trials" / f"{row['point']}_s{s}" / RESULT_FILE).read_text())
                    ["metrics"]["test_value_error"] for s in (1, 2)]
        assert row["iqm"] == pytest.approx(float(np.mean(per_seed)))  # IQM of two values is their mean
    assert (out / "sweep_results.md").exists() and (out / "sweep_results.csv").exists()

    # Interrupt one trial: its result is lost (killed before the end). The same command reruns only that one.
    lost = spec.trials[1]
    (out / "trials" / lost.name / RESULT_FILE).unlink()
    kept = {t.name: (out / "trials" / t.name / RESULT_FILE).stat().st_mtime_ns for t in spec.trials if t != lost}
    again = run_sweep(parse_args(argv))
    assert again["ran"] == [lost.name] and again["skipped"] == 3
    assert json.loads((out / "trials" / lost.name / RESULT_FILE).read_text())["status"] == "done"
    assert {name: (out / "trials" / name / RESULT_FILE).stat().st_mtime_ns for name in kept} == kept
    assert not _ray_processes(Path(again["ray_session"]).name)
