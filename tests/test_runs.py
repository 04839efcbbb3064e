"""``multiscene runs`` (issue 15, item 4): the status rule on run directories laid out as the trainer leaves them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from multiscene.analysis.runs import find_run_dirs, main, scan_runs, summarize_run

BATCH = 2 * 64  # num_envs x num_steps of every fake run below


def write_run(path: Path, updates_logged: int, checkpoints: tuple[int, ...] = (), total_updates: int = 8,
              final_return: float | None = None, algo: str | None = None, nonfinite_last: bool = False,
              age_s: float = 3600.0) -> Path:
    """config.json, metrics.jsonl with one record per update, checkpoints/update-N folders, eval/final.json;
    every file dated ``age_s`` seconds ago."""
    path.mkdir(parents=True)
    config = {"env": "MiniGrid-DoorKey-5x5-v0", "critic": "sparse-dve", "seed": 4, "num_envs": 2, "num_steps": 64,
              "total_timesteps": total_updates * BATCH + 5}  # the remainder is never run: 8 updates
    if algo is not None:
        config["algo"] = algo
    (path / "config.json").write_text(json.dumps({"config": config, "multiscene_version": "test"}))
    with open(path / "metrics.jsonl", "w") as f:
        for u in range(1, updates_logged + 1):
            record = {"update": u, "global_step": u * BATCH, "charts/episodic_return": 0.1 * u}
            if nonfinite_last and u == updates_logged:
                record = {"update": u, "global_step": u * BATCH, "nonfinite/skipped_update": 1}
            f.write(json.dumps(record) + "\n")
    for u in checkpoints:
        (path / "checkpoints" / f"update-{u:08d}").mkdir(parents=True)
    if checkpoints:
        (path / "checkpoints" / ".update-00000099.tmp-123").mkdir()  # a torn write: not a checkpoint
    if final_return is not None:
        (path / "eval").mkdir()
        (path / "eval" / "final.json").write_text(json.dumps({"test": {"return_mean": final_return}}))
    old = os.path.getmtime(path) - age_s
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old))
    return path


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_run(root / "a-finished", 8, checkpoints=(4, 8), final_return=0.75)
    write_run(root / "b-no-final-eval", 8, checkpoints=(8,), algo="a2c")
    write_run(root / "c-sigterm", 3, checkpoints=(2, 3))  # interval 2, stopped at 3: the signal checkpoint
    write_run(root / "d-nonfinite", 5, checkpoints=(4, 5), nonfinite_last=True)
    write_run(root / "e-killed", 5, checkpoints=(2, 4))
    write_run(root / "f-died-early", 1)
    write_run(root / "sweep" / "g-nested", 2, checkpoints=(2,))
    (root / "notes.txt").write_text("not a run")
    (root / "plots").mkdir()
    return root


def test_status_rule_and_columns(runs_dir: Path) -> None:
    rows = {r.path.name: r for r in scan_runs(runs_dir)}
    assert list(rows) == ["a-finished", "b-no-final-eval", "c-sigterm", "d-nonfinite", "e-killed", "f-died-early",
                          "g-nested"]  # stray file and folder passed over, the nested run found
    assert {name: r.status for name, r in rows.items()} == {
        "a-finished": "finished", "b-no-final-eval": "finished", "c-sigterm": "stopped", "d-nonfinite": "stopped",
        "e-killed": "crashed", "f-died-early": "crashed", "g-nested": "stopped"}
    a = rows["a-finished"]
    assert (a.env, a.algo, a.critic, a.seed) == ("MiniGrid-DoorKey-5x5-v0", "ppo", "sparse-dve", 4)  # no algo: ppo
    assert a.steps_done == 8 * BATCH and a.total_steps == 8 * BATCH and a.num_updates == 8
    assert a.last_return == pytest.approx(0.8) and a.held_out_return == 0.75
    assert rows["b-no-final-eval"].algo == "a2c" and rows["b-no-final-eval"].held_out_return is None
    assert rows["c-sigterm"].last_checkpoint == 3 and rows["c-sigterm"].steps_done == 3 * BATCH
    assert "non-finite" in rows["d-nonfinite"].note
    assert rows["d-nonfinite"].last_return == pytest.approx(0.4)  # the last record that has a return
    assert rows["e-killed"].last_checkpoint == 4 and "1 update(s) logged after" in rows["e-killed"].note
    assert rows["f-died-early"].note == "no checkpoint"


def test_recent_writes_mean_running_unless_finished(tmp_path: Path) -> None:
    live = write_run(tmp_path / "live", 3, checkpoints=(2,), age_s=30)
    done = write_run(tmp_path / "done", 8, checkpoints=(8,), final_return=1.0, age_s=30)
    now = os.path.getmtime(live / "metrics.jsonl") + 30
    assert summarize_run(live, now=now).status == "running"
    assert summarize_run(live, now=now, active_window_s=10).status == "crashed"
    assert summarize_run(done, now=now).status == "finished"


def test_a_run_directory_itself_and_an_empty_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "one", 2, checkpoints=(2,))
    assert find_run_dirs(run) == [run]
    (tmp_path / "empty").mkdir()
    assert find_run_dirs(tmp_path / "empty") == []


def test_main_prints_a_table_and_json(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(runs_dir), "--notes"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "sweep/g-nested" in lines
    assert "1.02k / 1.02k" in lines["a-finished"] and "finished" in lines["a-finished"]
    assert "0.75" in lines["a-finished"] and "a2c" in lines["b-no-final-eval"]
    assert "crashed" in lines["e-killed"] and "stopped" in lines["c-sigterm"]

    assert main([str(runs_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows].count("stopped") == 3 and rows[0]["path"] == str(runs_dir / "a-finished")


def test_missing_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 0
    assert "no run directories under" in capsys.readouterr().out
