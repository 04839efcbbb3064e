"""MiniGrid-HiddenPayoff-v0 (multiscene.envs.scenes) and the DVE value-error benchmark (issue 3)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import gymnasium
import numpy as np
import pytest
from conftest import load_benchmark_script

from multiscene.envs import EnvSpec, LevelSet, make_env
from multiscene.envs.scenes import (
    HIDDEN_PAYOFF_ID,
    PAYOFF_JITTER,
    SCENE_COLORS,
    SCENE_PAYOFFS,
    HiddenPayoffEnv,
    level_payoff,
    level_scene,
)

LEFT, RIGHT, FORWARD = 0, 1, 2
SHORTEST_PATH = (RIGHT, RIGHT, FORWARD, FORWARD, FORWARD)
"""Turn around (the cue and the goal are south of the start) and walk over the cue onto the goal."""


def _load_benchmark() -> ModuleType:
    return load_benchmark_script("dve_value_error.py")


def _walk(seed: int, actions: tuple[int, ...]) -> tuple[list[np.ndarray], list[float], bool]:
    env = HiddenPayoffEnv()
    obs, _ = env.reset(seed=seed)
    frames, rewards, terminated = [obs["image"]], [], False
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs["image"])
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return frames, rewards, terminated


def _seed_of_each_scene() -> list[int]:
    seeds: dict[int, int] = {}
    for seed in range(200):
        seeds.setdefault(level_scene(seed), seed)
    return [seeds[k] for k in range(len(SCENE_PAYOFFS))]


def test_registered_and_built_by_the_minigrid_vec_env() -> None:
    assert HIDDEN_PAYOFF_ID in gymnasium.registry
    envs = make_env(EnvSpec(HIDDEN_PAYOFF_ID, 3, 0, LevelSet(0, 50)))
    try:
        assert envs.obs_shape == (7, 7, 3) and envs.num_actions == 7
        first = envs.reset()
        assert first.first.all()
    finally:
        envs.close()


def test_first_observation_is_the_same_in_every_level() -> None:
    seeds_by_scene = _seed_of_each_scene()
    reference = _walk(0, ())[0][0]
    for seed in [*seeds_by_scene, *range(40)]:
        assert np.array_equal(_walk(seed, ())[0][0], reference), f"level {seed} starts differently"
    # Through the vectorized env too, whose resets draw the level seeds.
    envs = make_env(EnvSpec(HIDDEN_PAYOFF_ID, 8, 3, LevelSet(0, 1000)))
    try:
        step = envs.reset()
        assert len(set(step.level_seed.tolist())) > 1
        assert all(np.array_equal(obs, reference) for obs in step.obs)
    finally:
        envs.close()


def test_the_cue_tells_the_scene_after_the_first_turn() -> None:
    """After one turn the view differs between scenes (the cue's colour) and only there."""
    seeds = _seed_of_each_scene()
    after_turn = [_walk(seed, (RIGHT,))[0][1] for seed in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert not np.array_equal(after_turn[i], after_turn[j])
    same_scene = [seed for seed in range(200) if level_scene(seed) == level_scene(seeds[0])][:3]
    assert all(np.array_equal(_walk(seed, (RIGHT,))[0][1], after_turn[0]) for seed in same_scene)
    assert len(SCENE_COLORS) == len(SCENE_PAYOFFS) and "green" not in SCENE_COLORS


def test_levels_pay_three_clusters_of_values() -> None:
    """The shortest path earns the level's payoff; the payoffs form three separated clusters by scene."""
    payoffs: dict[int, list[float]] = {k: [] for k in range(len(SCENE_PAYOFFS))}
    for seed in range(60):
        _, rewards, terminated = _walk(seed, SHORTEST_PATH)
        assert terminated and len(rewards) == len(SHORTEST_PATH)
        assert rewards[:-1] == [0.0] * (len(SHORTEST_PATH) - 1)
        assert rewards[-1] == pytest.approx(level_payoff(seed))
        payoffs[level_scene(seed)].append(rewards[-1])
    for k, values in payoffs.items():
        assert values, f"scene {k} never drawn in 60 levels"
        assert min(values) >= SCENE_PAYOFFS[k] * (1 - PAYOFF_JITTER) - 1e-9
        assert max(values) <= SCENE_PAYOFFS[k] * (1 + PAYOFF_JITTER) + 1e-9
        assert np.std(values) > 0  # the per-level jitter spreads each cluster
    # Clusters do not overlap: the highest value of one scene is below the lowest of the next.
    for k in range(len(SCENE_PAYOFFS) - 1):
        assert max(payoffs[k]) < min(payoffs[k + 1])


def test_levels_are_reproducible_from_their_seed() -> None:
    for seed in (0, 7, 12345):
        env = HiddenPayoffEnv()
        env.reset(seed=seed)
        assert (env.scene, env.payoff) == (level_scene(seed), level_payoff(seed))
        assert _walk(seed, SHORTEST_PATH)[1] == _walk(seed, SHORTEST_PATH)[1]

    def draws(spec_seed: int) -> list[int]:
        envs = make_env(EnvSpec(HIDDEN_PAYOFF_ID, 2, spec_seed, LevelSet(0, 500)))
        try:
            seeds = envs.reset().level_seed.tolist()
            for _ in range(70):  # past the 64-step limit: every env restarts on a new level at least once
                seeds += envs.step(np.full(2, LEFT)).level_seed.tolist()
            return seeds
        finally:
            envs.close()

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_returns_to_go_by_hand() -> None:
    bench = _load_benchmark()
    # Two interleaved episodes: A = rewards (0, 0, 1) and B = (0, 2), gamma 0.5.
    episode = np.array([0, 1, 0, 1, 0])
    t = np.array([0, 0, 1, 1, 2])
    reward = np.array([0.0, 0.0, 0.0, 2.0, 1.0])
    g = bench.returns_to_go(episode, t, reward, 0.5)
    np.testing.assert_allclose(g, [0.25, 1.0, 0.5, 2.0, 1.0])


def test_benchmark_runs_end_to_end_on_a_tiny_budget(tmp_path: Path) -> None:
    bench = _load_benchmark()
    out = tmp_path / "bench.json"
    bench.main([
        "--critics", "scalar", "dve",
        "--seeds", "1",
        "--total-timesteps", "128",
        "--num-envs", "4",
        "--num-steps", "32",
        "--num-levels", "20",
        "--hidden-size", "16",
        "--eval-episodes", "4",
        "--out-dir", str(tmp_path / "runs"),
        "--json", str(out),
    ])
    results = json.loads(out.read_text())
    assert {"command", "date", "machine", "settings", "runs", "summary"} <= set(results)
    assert [(r["critic"], r["seed"]) for r in results["runs"]] == [("scalar", 1), ("dve", 1)]
    for run in results["runs"]:
        for split in ("train", "test"):
            stats = run[split]
            assert stats["episodes"] == 4
            for field in ("error", "error_t0", "scene_blind_floor", "scene_aware_floor", "by_t", "by_scene",
                          "per_level"):
                assert field in stats
            assert stats["error"] >= 0 and "0" in stats["by_t"]
    assert "dve" in results["runs"][1]["train"]  # alpha was recorded and analysed
    assert set(results["summary"]["per_critic"]) == {"scalar", "dve"}
    assert "error" in results["summary"]["minus_scalar"]["dve"]["train"]
    # --reuse analyses the same runs again without training: the same numbers.
    again = bench.main(["--critics", "scalar", "dve", "--seeds", "1", "--out-dir", str(tmp_path / "runs"),
                        "--json", str(tmp_path / "again.json"), "--reuse"])
    assert again["runs"][0]["train"]["error"] == results["runs"][0]["train"]["error"]
