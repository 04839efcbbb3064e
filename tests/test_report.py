"""``multiscene report`` (issue 4): numbers in summary.json against independent computations, figures, bad input.

The run directories here are written by ``write_fake_run`` in the formats of multiscene.evaluate and
multiscene.trainer (config.json, metrics.jsonl, eval/final.json, eval/final_steps_*.npz, eval/final_frames_*.npz),
so the tests do not depend on training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from multiscene.analysis import stats
from multiscene.analysis.report import ReportOptions, build_report, main, minigrid_tile_size
from multiscene.analysis.rundata import RunDataError, load_run

TILE = 8  # fake MiniGrid renders: 5x5 grid of 8-pixel tiles


def _fake_steps(rng: np.random.Generator, episodes: int, n_b: int | None, level_base: int, minigrid: bool,
                quality: float) -> dict[str, np.ndarray]:
    """Per-step eval records; better-separated alpha goes with higher return (so r > 0 is expected)."""
    cols: dict[str, list[np.ndarray]] = {}
    for ep in range(episodes):
        length = int(rng.integers(3, 9))
        sharp = rng.uniform(0.0, 1.0)
        ret = quality + 2.0 * sharp + rng.normal(0, 0.1)
        reward = np.zeros(length, dtype=np.float32)
        reward[-1] = ret
        done = np.zeros(length, dtype=bool)
        done[-1] = True
        row = {"episode": np.full(length, ep), "t": np.arange(length), "level_seed": np.full(length, level_base + ep % 4),
               "action": rng.integers(0, 7, length), "reward": reward, "done": done,
               "value": rng.normal(0.5, 0.2, (length, 1)).astype(np.float32),
               "core_out": rng.normal(0, 1, (length, 16)).astype(np.float16)}
        if n_b is not None:
            logits = rng.normal(0, 1, (length, n_b)) * (0.2 + 6.0 * sharp)
            alpha = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            row["alpha"] = alpha.astype(np.float32)
            row["cluster_values"] = rng.normal(0, 1, (length, n_b)).astype(np.float32)
        if minigrid:
            row["agent_pos"] = np.stack([rng.integers(1, 4, length), rng.integers(1, 4, length)], axis=1)
        for k, v in row.items():
            cols.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["reward_scale"] = np.array(1.5)
    out["gamma"] = np.array(0.9)
    return out


def write_fake_run(path: Path, critic: str = "sparse-dve", env: str = "MiniGrid-DoorKey-5x5-v0", seed: int = 1,
                   quality: float = 1.0, with_eval: bool = True, episodes: int = 16, updates: int = 12,
                   distribution_mode: str = "easy", level_base: int = 1000) -> Path:
    """A run directory in the trainer's formats. ``quality`` shifts every return (known ordering in compare)."""
    rng = np.random.default_rng(seed * 1000 + int(quality * 10))
    minigrid = env.startswith("MiniGrid")
    n_b = 3 if critic in ("dve", "sparse-dve") else None
    path.mkdir(parents=True, exist_ok=True)
    config = {"env": env, "critic": critic, "seed": seed, "preset": "test", "gamma": 0.9, "num_levels": 10,
              "distribution_mode": distribution_mode, "dve": {"num_clusters": 3}}
    (path / "config.json").write_text(json.dumps({"config": config, "multiscene_version": "test"}))
    with open(path / "metrics.jsonl", "w") as f:
        for u in range(1, updates + 1):
            record = {"update": u, "global_step": 256 * u, "time": float(u),
                      "charts/episodic_return": quality + 0.1 * u + rng.normal(0, 0.05),
                      "charts/episodic_length": 50.0 - u, "charts/SPS": 100.0, "losses/value_loss": 0.1,
                      "losses/entropy": 1.0 if u != 3 else None}
            if n_b:
                record["dve/confusion_mean"] = 1.0 - 0.05 * u
                record["dve/confusion_hist"] = [int(c) for c in rng.integers(0, 50, 10)]
                for i in range(n_b):
                    record[f"contribution/{i}"] = 0.2 + 0.01 * i * u
                    record[f"dve/argmax_share/{i}"] = 1.0 / n_b
                    record[f"cluster_value/{i}"] = 0.1 * i
            f.write(json.dumps(record) + "\n")
        if with_eval:
            f.write(json.dumps({"update": updates, "global_step": 256 * updates,
                                "eval/train/return_mean": quality + 1.0, "eval/test/return_mean": quality}) + "\n")
    if with_eval:
        (path / "eval").mkdir(exist_ok=True)
        final: dict = {"global_step": 256 * updates, "reward_scale": 1.5, "gamma": 0.9}
        for split, base in (("train", level_base), ("test", level_base + 100)):
            steps = _fake_steps(rng, episodes, n_b, base, minigrid, quality)
            np.savez_compressed(path / "eval" / f"final_steps_{split}.npz", **steps)
            table = stats.episode_table(steps)
            final[split] = {"return_mean": float(table.episode_return.mean()),
                            "return_std": float(table.episode_return.std()),
                            "length_mean": float(table.length.mean()), "episodes": episodes, "success_rate": None,
                            "per_level": {}, "deterministic": {"return_mean": 0.0}}
            frames = {}
            for ep in range(4):
                length = int((steps["episode"] == ep).sum())
                shape = (length, 5 * TILE, 5 * TILE, 3) if minigrid else (length, 64, 64, 3)
                frames[f"episode_{ep}"] = rng.integers(0, 255, shape, dtype=np.uint8)
            np.savez_compressed(path / "eval" / f"final_frames_{split}.npz", **frames)
        (path / "eval" / "final.json").write_text(json.dumps(final))
    return path


def _check_png(path: Path) -> None:
    assert path.exists(), path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert width >= 200 and height >= 150
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5.0, f"{path} looks blank"


FAST = ReportOptions(tsne_points=60, frames_per_cluster=3, trajectories=2)


@pytest.fixture(scope="module")
def dve_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = write_fake_run(tmp_path_factory.mktemp("runs") / "dve")
    return run, build_report(run, FAST)


def test_report_writes_page_and_valid_figures(dve_report: tuple[Path, dict]) -> None:
    run, summary = dve_report
    out = run / "report"
    assert (out / "index.html").exists() and (out / "summary.json").exists()
    expected = {"learning_curves.png", "confusion.png", "contribution.png", "value_error.png", "clusters_tsne.png",
                "cluster_frames.png", "confusion_return.png", "trajectories.png"}
    assert set(summary["figures"]) == expected
    page = (out / "index.html").read_text()
    for name in expected:
        _check_png(out / name)
        assert f"src='{name}'" in page
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["partial"] is False and summary["method"] == "Sparse DVE"


def test_pearson_matches_scipy_on_the_same_arrays(dve_report: tuple[Path, dict]) -> None:
    run, summary = dve_report
    with np.load(run / "eval" / "final_steps_test.npz") as data:
        episode, reward, alpha = data["episode"], data["reward"], data["alpha"].astype(np.float64)
    inv, ret = [], []
    for ep in np.unique(episode):
        a = alpha[episode == ep]
        delta = 1.0 / (a.shape[1] * (a ** 2).sum(axis=1))  # SPEC §3.3
        inv.append(np.mean(1.0 / delta))
        ret.append(reward[episode == ep].astype(np.float64).sum())
    expected = scipy_stats.pearsonr(inv, ret)
    got = summary["inverse_confusion_return"]["eval_test_episodes"]
    assert got["n"] == len(inv)
    assert got["r"] == pytest.approx(expected.statistic, abs=1e-9)
    assert got["p_value"] == pytest.approx(expected.pvalue, rel=1e-6)
    assert got["r"] > 0.5  # the fake run ties sharper alpha to higher return


def test_value_error_by_hand_on_a_tiny_episode(tmp_path: Path) -> None:
    # One episode of 3 steps, gamma 0.5, reward_scale 2: G = [1 + 0.5*0 + 0.25*4, 0 + 0.5*4, 4] = [2, 2, 4].
    steps = {"episode": np.array([7, 7, 7]), "t": np.arange(3), "level_seed": np.array([5, 5, 5]),
             "action": np.zeros(3, dtype=np.int64), "reward": np.array([1.0, 0.0, 4.0], dtype=np.float32),
             "done": np.array([False, False, True]), "value": np.array([[1.0], [0.5], [3.0]], dtype=np.float32),
             "core_out": np.zeros((3, 4), dtype=np.float16), "reward_scale": np.array(2.0), "gamma": np.array(0.5)}
    result = stats.value_error(steps)
    assert result is not None
    np.testing.assert_allclose(result.realized, [2.0, 2.0, 4.0])
    np.testing.assert_allclose(result.predicted, [2.0, 1.0, 6.0])
    s = result.summary()
    assert s["overall"]["mean_abs_error"] == pytest.approx((0 + 1 + 2) / 3)
    assert s["overall"]["bias"] == pytest.approx((0 - 1 + 2) / 3)
    assert s["per_level"]["5"]["steps"] == 3

    # The same numbers come out of a whole report of a scalar-critic run holding that episode.
    run = write_fake_run(tmp_path / "scalar", critic="scalar")
    np.savez_compressed(run / "eval" / "final_steps_test.npz", **steps)
    summary = build_report(run, FAST)
    assert summary["value_error"]["test"]["overall"]["mean_abs_error"] == pytest.approx(1.0)
    assert "clusters" not in summary and "dve_training" not in summary  # scalar critic: no DVE sections


def test_value_error_skips_cut_episodes() -> None:
    steps = {"episode": np.array([0, 0, 1, 1]), "t": np.array([0, 1, 0, 1]), "level_seed": np.zeros(4),
             "reward": np.ones(4, dtype=np.float32), "done": np.array([False, True, False, False]),
             "value": np.zeros((4, 1), dtype=np.float32), "reward_scale": np.array(1.0), "gamma": np.array(1.0)}
    result = stats.value_error(steps)
    assert result is not None and result.incomplete_episodes == 1
    np.testing.assert_allclose(result.realized, [2.0, 1.0])


def test_purity_by_hand() -> None:
    cluster = np.array([0, 0, 0, 1, 1, 1])
    level = np.array([10, 10, 11, 11, 11, 11])
    p = stats.cluster_level_purity(cluster, level)
    assert p["cluster_purity"] == pytest.approx(5 / 6)  # cluster 0: 2 of level 10; cluster 1: 3 of level 11
    assert p["level_purity"] == pytest.approx(5 / 6)  # level 10: 2 in cluster 0; level 11: 3 in cluster 1


def test_minigrid_paths_use_the_tile_size_of_the_render() -> None:
    assert minigrid_tile_size("MiniGrid-DoorKey-5x5-v0", np.zeros((40, 40, 3))) == 8
    assert minigrid_tile_size("MiniGrid-DoorKey-5x5-v0", np.zeros((160, 160, 3))) == 32


def test_scalar_procgen_run_gets_filmstrip(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "pg", critic="scalar", env="coinrun", episodes=6)
    summary = build_report(run, FAST)
    assert "trajectories.png" in summary["figures"]
    _check_png(run / "report" / "trajectories.png")
    assert summary["trajectories"]["episodes"][0]["frames"] > 0


def test_run_without_evaluation_is_reported_as_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_fake_run(tmp_path / "unfinished", with_eval=False)
    assert main([str(run)]) == 0
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["partial"] is True and summary["final_eval"] is None
    assert any("no evaluation" in p for p in summary["problems"])
    assert "learning_curves.png" in summary["figures"]
    assert "Partial run" in (run / "report" / "index.html").read_text()
    assert "partial" in capsys.readouterr().err


def test_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "not a multiscene run directory" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(RunDataError):
        load_run(tmp_path / "empty")


def test_run_with_only_a_periodic_evaluation_uses_it_and_is_partial(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "midway", with_eval=False)
    (run / "eval").mkdir()
    periodic = {"train": {"return_mean": 0.25, "length_mean": 30.0}, "test": {"return_mean": 0.125, "length_mean": 40.0},
                "global_step": 2560, "reward_scale": 1.0, "gamma": 0.9}
    (run / "eval" / "update-00000010.json").write_text(json.dumps(periodic))
    data = load_run(run)
    assert data.eval_tag == "update-00000010" and data.partial and not data.steps
    summary = build_report(run, FAST)
    assert summary["final_eval"]["test"]["return_mean"] == 0.125
    assert any("update-00000010.json" in p for p in summary["problems"])
    assert "x_pos" not in (run / "report" / "index.html").read_text()  # no distance column off Mario


def test_mario_evaluation_shows_the_distance_travelled(tmp_path: Path) -> None:
    """Issue 13 measures Mario by distance: the evaluation table gets x_pos columns where eval/<tag>.json has
    them (multiscene.evaluate.summarize on Mario)."""
    run = write_fake_run(tmp_path / "mario", with_eval=False)
    (run / "eval").mkdir()
    stats = {"return_mean": 1.0, "length_mean": 30.0, "x_pos_mean": 654.5, "deterministic": {"x_pos_mean": 1234.25}}
    (run / "eval" / "update-00000010.json").write_text(json.dumps({"train": stats, "test": stats, "global_step": 2560}))
    build_report(run, FAST)
    page = (run / "report" / "index.html").read_text()
    assert "<th>x_pos mean</th><th>deterministic x_pos</th>" in page
    assert "<td>654.5</td><td>1234</td>" in page


def _one_episode(rewards: list[float], truncated: bool | None, final_value: float | None = None) -> dict:
    n = len(rewards)
    steps = {"episode": np.zeros(n, dtype=np.int64), "t": np.arange(n), "level_seed": np.full(n, 3),
             "reward": np.asarray(rewards, dtype=np.float32), "done": np.arange(n) == n - 1,
             "value": np.zeros((n, 1), dtype=np.float32), "reward_scale": np.array(2.0), "gamma": np.array(0.5)}
    if truncated is not None:
        steps["truncated"] = (np.arange(n) == n - 1) & truncated
    if final_value is not None:
        steps["final_value"] = np.where(np.arange(n) == n - 1, final_value, np.nan)[:, None].astype(np.float32)
    return steps


def test_value_error_leaves_out_the_last_steps_of_a_time_limit_cut() -> None:
    # 6 steps, gamma 0.5, tolerance 0.05: the unseen tail weighs 0.5 ** (6 - t) = 1/64, 1/32, 1/16, 1/8, 1/4, 1/2
    # for t = 0..5, so t = 0, 1 (1/64, 1/32 <= 0.05) are kept and t = 2..5 left out.
    # Realized (rewards 1): G_0 = 1 + 0.5 + ... + 0.5**5 = 63/32, G_1 = 31/16.
    result = stats.value_error(_one_episode([1.0] * 6, truncated=True))
    assert result is not None and result.truncation == "excluded"
    assert result.truncated_episodes == 1 and result.truncated_steps_left_out == 4
    np.testing.assert_allclose(result.realized, [63 / 32, 31 / 16])
    # The same episode ended by the MDP keeps every step; so does a file without the flag (old runs load as before).
    for flag, mode in ((False, "none"), (None, "unrecorded")):
        plain = stats.value_error(_one_episode([1.0] * 6, truncated=flag))
        assert plain is not None and plain.truncation == mode and len(plain.realized) == 6
        assert plain.truncated_steps_left_out == 0


def test_value_error_bootstraps_a_cut_with_the_final_value_when_recorded() -> None:
    # 2 steps, rewards [1, 1], gamma 0.5, reward_scale 2, V(final obs) = 3 (normalized) = 6 in reward units.
    # G_1 = 1 + 0.5 * 6 = 4; G_0 = 1 + 0.5 * 4 = 3.
    result = stats.value_error(_one_episode([1.0, 1.0], truncated=True, final_value=3.0))
    assert result is not None and result.truncation == "bootstrapped"
    np.testing.assert_allclose(result.realized, [3.0, 4.0])
    assert result.summary()["truncated_steps_left_out"] == 0


def test_report_names_the_truncation_rule(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "cut", critic="scalar")
    steps = dict(np.load(run / "eval" / "final_steps_test.npz"))
    steps["truncated"] = steps["done"].copy()  # every test episode hit its time limit
    steps["gamma"] = np.array(0.3)
    np.savez_compressed(run / "eval" / "final_steps_test.npz", **steps)
    summary = build_report(run, FAST)
    test = summary["value_error"]["test"]
    assert test["truncation"] == "excluded" and test["truncated_episodes"] == 16
    # gamma 0.3: the tail weighs 0.3 and 0.09 (> 0.05) on the last two steps, 0.027 on the third from last, so
    # two steps of each of the 16 episodes (3-8 steps long) are left out.
    assert test["truncated_steps_left_out"] == 32
    assert test["overall"]["steps"] == len(steps["episode"]) - 32
    assert summary["value_error"]["train"]["truncation"] == "unrecorded"  # no flag in that file
    page = (run / "report" / "index.html").read_text()
    assert "cut by a time limit" in page and "left out of the error" in page


def test_compact_step_labels() -> None:
    from multiscene.analysis.figures import compact_steps

    cases = {0: "0", 500: "500", 1024: "1.02k", 1500: "1.5k", 50_000: "50k", 120_000: "120k", 1_000_000: "1M",
             1_250_000: "1.25M", 25_000_000: "25M", 2_000_000_000: "2B", 999_999: "1M", 99_950: "100k", 999: "999"}
    assert {v: compact_steps(v) for v in cases} == cases


def test_step_axes_get_compact_tick_labels() -> None:
    import matplotlib.pyplot as plt

    from multiscene.analysis.figures import steps_axis

    fig, ax = plt.subplots(figsize=(3, 2))  # as narrow as a report panel
    ax.plot([0, 1_400_000], [0, 1])
    steps_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert 3 <= len(labels) <= 7
    assert all(label[-1] in "kM0" and len(label) <= 5 for label in labels), labels
    assert "1M" in labels or "1.2M" in labels
