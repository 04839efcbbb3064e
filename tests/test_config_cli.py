"""Flat CLI flags over presets, and bad input that names the field and what is allowed (issue #2)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from multiscene.cli import parse_train_args
from multiscene.config import ConfigError, validate
from multiscene.presets import PRESETS, get_preset


def test_flat_flags_in_any_order_override_the_preset():
    cfg = parse_train_args(["--critic", "dve", "--preset", "procgen-easy", "--num-envs", "8", "--env", "starpilot",
                            "--seed", "3", "--num-steps", "16", "--total-timesteps", "1000", "--run-dir", "/tmp/x"])
    assert cfg.preset == "procgen-easy" and cfg.critic == "dve" and cfg.num_envs == 8 and cfg.env == "starpilot"
    assert cfg.seed == 3 and cfg.num_steps == 16 and cfg.total_timesteps == 1000 and cfg.run_dir == "/tmp/x"
    # Untouched fields keep the preset's values.
    assert cfg.num_levels == 200 and cfg.gamma == 0.999


def test_issue_spelling_works_and_dve_group_flags():
    cfg = parse_train_args(["--critic", "sparse-dve", "--preset", "quickstart", "--dve.num-clusters", "4",
                            "--dve.k1", "0.5", "--dve.schedule", "post-boost-auto"])
    assert cfg.critic == "sparse-dve" and cfg.dve.num_clusters == 4 and cfg.dve.k1 == 0.5
    assert cfg.dve.schedule == "post-boost-auto"
    cfg = parse_train_args(["--preset=cleanrl-procgen", "--no-anneal-lr"])
    assert cfg.core == "none" and cfg.anneal_lr is False and cfg.num_levels == 0


def test_every_preset_builds_and_validates():
    for name in PRESETS:
        cfg = get_preset(name)
        validate(cfg)
    assert {"quickstart", "procgen-easy", "procgen-hard", "cleanrl-procgen", "sparse-dve-coinrun",
            "sparse-dve-fruitbot", "rl2-jumper", "dve-plunder"} <= set(PRESETS)
    assert get_preset("quickstart").critic == "sparse-dve"
    assert get_preset("sparse-dve-coinrun").dve.schedule == "pre-boost"
    assert get_preset("sparse-dve-starpilot").dve.schedule == "post-boost"
    assert get_preset("procgen-hard").num_levels == 500 and get_preset("procgen-hard").total_timesteps == 200_000_000


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"num_envs": 10, "num_minibatches": 4}, "--num-minibatches"),
        ({"total_timesteps": 0}, "--total-timesteps"),
        ({"total_timesteps": -5}, "--total-timesteps"),
        ({"total_timesteps": 100}, "one rollout"),
        ({"critic": "sparse-dve", "dve": {"num_clusters": 1}}, "--dve.num-clusters"),
        ({"dve": {"k1": -1.0}}, "--dve.k1"),
        ({"critic": "sparse-dve", "dve": {"schedule": "post-boost", "postboost_step": 10**9}}, "--dve.postboost-step"),
    ],
)
def test_bad_config_names_the_field(changes, needle):
    from multiscene.config import replace

    cfg = replace(get_preset("quickstart"), **changes)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("+", r"\+")):
        validate(cfg)


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        parse_train_args(["--preset", "nope"])


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "multiscene", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_one_clear_message(tmp_path):
    res = _run_cli("train", "--env", "coinrunn", "--run-dir", str(tmp_path / "a"))
    assert res.returncode == 2 and "--env" in res.stderr and "coinrun" in res.stderr
    assert "Traceback" not in res.stderr
    res = _run_cli("train", "--env", "MiniGrid-DoorKey-5x5-v9", "--run-dir", str(tmp_path / "b"))
    assert res.returncode == 2 and "--env" in res.stderr and "MiniGrid-DoorKey-5x5-v0" in res.stderr
    res = _run_cli("train", "--num-envs", "6", "--num-minibatches", "4", "--run-dir", str(tmp_path / "c"))
    assert res.returncode == 2 and "--num-minibatches" in res.stderr
    res = _run_cli("train", "--critic", "bogus")
    assert res.returncode != 0 and "sparse-dve" in res.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_derived_numbers_are_properties_not_fields():
    names = {f.name for f in dataclasses.fields(get_preset("quickstart"))}
    assert "batch_size" not in names and "num_updates" not in names
    cfg = get_preset("quickstart")
    assert cfg.batch_size == cfg.num_envs * cfg.num_steps


def test_resume_keeps_the_runs_own_budget_unless_given(tmp_path):
    import json

    from multiscene.trainer import config_record

    run = tmp_path / "run"
    run.mkdir()
    saved = dataclasses.replace(get_preset("procgen-easy"), run_dir=str(run))
    (run / "config.json").write_text(json.dumps(config_record(saved), default=str))
    cfg = parse_train_args(["--run-dir", str(run), "--resume"])
    assert cfg.total_timesteps == 25_000_000
    cfg = parse_train_args(["--run-dir", str(run), "--resume", "--total-timesteps", "30000000"])
    assert cfg.total_timesteps == 30_000_000


def test_version_and_runs_commands(tmp_path, capsys):
    import multiscene
    from multiscene.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"multiscene {multiscene.__version__}"
    with pytest.raises(SystemExit) as stop:
        main(["runs", str(tmp_path / "nothing-here")])
    assert stop.value.code != 0
