"""``--track``: MetricsLogger mirrors every record to Weights & Biases (issue 15, first day item 3).

Two kinds of check: a recording stand-in for the wandb module pins exactly what is sent (fast, no process), and
one real wandb run in offline mode (no network) shows the records reach W&B's own run file.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from multiscene.config import ConfigError
from multiscene.logger import WANDB_RUN_FILE, MetricsLogger, read_metrics

RECORDS = [
    {"update": 1, "global_step": 256, "charts/episodic_return": 0.5, "charts/SPS": 100.0, "losses/entropy": None,
     "dve/confusion_hist": [4, 0, 1], "dve/confusion_hist_low": 1 / 3},
    {"update": 2, "global_step": 512, "charts/episodic_return": 0.75, "nonfinite/term": "losses/value_loss"},
]


class _FakeRun:
    def __init__(self, calls: dict[str, list[Any]]) -> None:
        self.calls = calls

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.calls["define_metric"].append((name, step_metric))

    def log(self, data: dict[str, Any]) -> None:
        self.calls["log"].append(data)

    def finish(self) -> None:
        self.calls["finish"].append(True)


class _FakeHistogram:
    def __init__(self, np_histogram: tuple[np.ndarray, np.ndarray]) -> None:
        self.counts, self.edges = np_histogram


def _fake_wandb(calls: dict[str, list[Any]]) -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.Histogram = _FakeHistogram  # type: ignore[attr-defined]

    def init(**kwargs: Any) -> _FakeRun:
        calls["init"].append(kwargs)
        return _FakeRun(calls)

    module.init = init  # type: ignore[attr-defined]
    return module


def test_every_record_goes_to_wandb_and_the_run_directory_stays_the_source(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, list[Any]] = {"init": [], "define_metric": [], "log": [], "finish": []}
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    config = {"env": "MiniGrid-DoorKey-5x5-v0", "seed": 3}
    logger = MetricsLogger(tmp_path, tensorboard=False, track=True, wandb_project="proj", wandb_entity="team",
                           config=config, run_name="doorkey-s3")
    for record in RECORDS:
        logger.log(record)
    logger.close()

    (init,) = calls["init"]
    assert init["project"] == "proj" and init["entity"] == "team" and init["config"] == config
    assert init["name"] == "doorkey-s3" and init["dir"] == str(tmp_path)
    run_id = init["id"]
    # W&B's id form; not str.islower(), which is False for an all-digit id (2.3% of uuid4 hex prefixes).
    assert re.fullmatch(r"[a-z0-9]{8}", run_id), run_id
    assert ("*", "global_step") in calls["define_metric"]  # x axis = env steps, as in CleanRL's dashboards
    first, second = calls["log"]
    assert first["global_step"] == 256 and first["charts/episodic_return"] == 0.5 and first["charts/SPS"] == 100.0
    assert "losses/entropy" not in first  # None is not a value
    hist = first["dve/confusion_hist"]
    assert isinstance(hist, _FakeHistogram) and hist.counts.tolist() == [4, 0, 1]
    np.testing.assert_allclose(hist.edges, [1 / 3, 5 / 9, 7 / 9, 1.0])  # the bins span [1/N_b, 1]
    assert second == {"update": 2, "global_step": 512, "charts/episodic_return": 0.75,
                      "nonfinite/term": "losses/value_loss"}
    assert calls["finish"] == [True]
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {**RECORDS[0], "losses/entropy": None}, RECORDS[1]]  # the file holds every record, untouched

    # --resume: the same W&B run continues (id saved in the run directory), not a second one.
    assert json.loads((tmp_path / WANDB_RUN_FILE).read_text())["id"] == run_id
    MetricsLogger(tmp_path, tensorboard=False, track=True, config=config).close()
    assert calls["init"][1]["id"] == run_id and calls["init"][1]["resume"] == "allow"


def test_track_without_wandb_is_a_config_error_naming_the_flag(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match="--track"):
        MetricsLogger(tmp_path, tensorboard=False, track=True)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing half-written
    MetricsLogger(tmp_path, tensorboard=False, track=False).close()  # without --track wandb is never imported


def test_offline_wandb_run_receives_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    logger = MetricsLogger(tmp_path, tensorboard=False, track=True, wandb_project="multiscene-test",
                           config={"env": "coinrun", "learning_rate": 0.0005}, run_name="offline-check")
    for record in RECORDS:
        logger.log(record)
    logger.close()
    import wandb

    wandb.teardown()  # wandb-core may hold the end of its record log until its service stops (at process exit)
    run_id = json.loads((tmp_path / WANDB_RUN_FILE).read_text())["id"]
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = run_file.read_bytes()  # W&B's record log: protobuf records, keys and values as plain bytes
    for needle in (b"charts/episodic_return", b"dve/confusion_hist", b"global_step", b"learning_rate",
                   b"offline-check", b"multiscene-test"):
        assert needle in data, needle
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
