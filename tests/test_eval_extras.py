"""Mario's distance travelled in the evaluations (issue 13: "measured by distance travelled"): the env's episode
extras (``pop_episode_extras``) of exactly the counted episodes become ``x_pos_mean``, ``x_pos_std`` and
``flag_rate`` of every pass, in the Dreamer and the on-policy evaluation alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config

from multiscene.envs.base import ActionSpec, EnvSpec, EnvStep, EpisodeStats

EPISODE_LENGTHS = (4, 2)
"""Env 0's episodes take 4 steps, env 1's 2: env 1 finishes episodes past its quota while env 0 is still
playing, so stats over more than the counted episodes would differ."""


class FakeExtrasEnv:
    """Two envs of fixed-length episodes, each handing out Mario-like extras: episode k of env i ends at
    ``x_pos = 100 i + k`` and reaches the flag when k is even. The level is the env index."""

    obs_shape = (4,)
    obs_dtype = np.float32
    num_actions = 2
    action_spec = ActionSpec.discrete(2)
    supports_render = True

    def __init__(self, spec: EnvSpec) -> None:
        assert spec.num_envs == len(EPISODE_LENGTHS), spec
        self.num_envs = spec.num_envs
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._episodes = np.zeros(self.num_envs, dtype=np.int64)
        self._extras: list[dict[str, Any]] = [{"x_pos": -1, "flag_get": True}]  # from before the pass: dropped

    def _step(self, first: np.ndarray, episodes: list[EpisodeStats] | None = None) -> EnvStep:
        n = self.num_envs
        return EnvStep(obs=np.zeros((n, 4), np.float32), reward=np.ones(n, np.float32), terminated=first.copy(),
                       truncated=np.zeros(n, bool), first=first, level_seed=np.arange(n), episodes=episodes or [])

    def reset(self) -> EnvStep:
        self._t[:] = 0
        return self._step(np.ones(self.num_envs, bool))

    def step(self, actions: np.ndarray) -> EnvStep:
        assert len(actions) == self.num_envs
        self._t += 1
        first = self._t >= np.array(EPISODE_LENGTHS)
        episodes = []
        for i in np.flatnonzero(first):
            k = int(self._episodes[i])
            episodes.append(EpisodeStats(int(i), float(self._t[i]), int(self._t[i]), int(i), k % 2 == 0))
            self._extras.append({"level": f"1-{i + 1}", "x_pos": 100 * int(i) + k, "flag_get": k % 2 == 0})
            self._episodes[i] += 1
            self._t[i] = 0
        return self._step(first, episodes)

    def pop_episode_extras(self) -> list[dict[str, Any]]:
        out, self._extras = self._extras, []
        return out

    def render(self) -> np.ndarray:
        return np.zeros((self.num_envs, 8, 8, 3), np.uint8)

    def agent_positions(self) -> np.ndarray | None:
        return None

    def close(self) -> None:
        pass


# 5 episodes on 2 envs: env 0 counts its episodes 0, 1, 2 (x_pos 0, 1, 2; flags T, F, T), env 1 its episodes 0, 1
# (x_pos 100, 101; flags T, F) and not the ones it ends while env 0 plays on (x_pos 102, 103).
COUNTED_X = [0.0, 1.0, 2.0, 100.0, 101.0]
EXPECTED = {"x_pos_mean": float(np.mean(COUNTED_X)), "x_pos_std": float(np.std(COUNTED_X)), "flag_rate": 3 / 5}


def check_pass(stats: dict[str, Any], per_level: bool = True) -> None:
    assert stats["episodes"] == 5
    for key, value in EXPECTED.items():
        assert stats[key] == pytest.approx(value), key
    if per_level:
        assert stats["per_level"]["0"]["x_pos_mean"] == pytest.approx(1.0)
        assert stats["per_level"]["1"]["x_pos_mean"] == pytest.approx(100.5)


def test_dreamer_evaluation_reports_the_distance_of_the_counted_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from multiscene.algos.dreamer import DreamerConfig, loop

    monkeypatch.setattr(loop, "make_env", FakeExtrasEnv)
    cfg = tiny_config(str(tmp_path), critic="scalar", eval_episodes=5, eval_num_envs=2)
    agent = loop.DreamerAgent((4,), 2, DreamerConfig(size="small"))
    extras: list[dict[str, Any] | None] = []
    episodes = loop.run_policy_episodes(agent, FakeExtrasEnv(EnvSpec("fake", 2, 0, None)),  # type: ignore[arg-type]
                                        5, False, torch.device("cpu"), extras=extras)
    assert [(e.env_index, x["x_pos"]) for e, x in zip(episodes, extras)] == [  # type: ignore[index]
        (1, 100), (0, 0), (1, 101), (0, 1), (0, 2)]

    summary = loop.evaluate_dreamer(agent, cfg, torch.device("cpu"), tmp_path, tag="final")
    saved = json.loads((tmp_path / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        check_pass(saved[split])
        check_pass(saved[split]["deterministic"])
    check_pass(saved["random_policy_test"], per_level=False)
    assert loop._eval_record(summary)["eval/test/x_pos_mean"] == pytest.approx(EXPECTED["x_pos_mean"])


def test_on_policy_evaluation_reports_the_distance_of_the_counted_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiscene.evaluate as evaluate
    from multiscene.runtime import make_agent

    monkeypatch.setattr(evaluate, "make_env", FakeExtrasEnv)
    cfg = tiny_config(str(tmp_path), env="CartPole-v1", critic="scalar", eval_episodes=5, eval_num_envs=2)
    agent = make_agent(cfg, (4,), 2)
    evaluate.evaluate_run_splits(agent, cfg, torch.device("cpu"), "final", tmp_path)
    saved = json.loads((tmp_path / "eval" / "final.json").read_text())
    for split in ("train", "test"):
        check_pass(saved[split])
        check_pass(saved[split]["deterministic"])
    check_pass(saved["random_policy_test"], per_level=False)


def test_envs_without_extras_keep_their_summary_keys() -> None:
    from multiscene.evaluate import summarize

    episodes = [EpisodeStats(0, 1.0, 3, 0, None)]
    assert summarize(episodes, [None]) == summarize(episodes)
    assert "x_pos_mean" not in summarize(episodes, [None])
