"""Episode replay for DreamerV2 with seed 003's two changes (§4.1 and §5.2).

- Episodes are stored whole. Sampling first picks an EPISODE uniformly, then a start step uniformly among its
  steps: every episode, and so every level of a multi-level env, is trained on about equally often whatever
  its length (seed 003 §4.1: "sampled by first choosing m episodes").
- A sequence of ``seq_len`` L that runs past the end of its episode (episodes shorter than L, or a start near
  the end) is padded with an absorbing state instead of being dropped (seed 003 §5.2): the last observation
  repeated, reward 0, discount 0, and a uniformly random action (one-hot for discrete actions, uniform in
  [-1, 1] for continuous ones). Padding after an episode that was cut by a time limit (its last discount is 1)
  is marked invalid and left out of the losses: there the MDP did not end, and an absorbing state would teach
  the discount head a terminal that does not exist (ours; measured: on MiniGrid with 30-step time limits the
  continuation predicted everywhere fell to 0.69 when such padding was trained on). Because every step of an episode is an equally likely start, each real step
  lies in the same number of candidate windows, so coverage within an episode is uniform too (our choice;
  DreamerV2 itself clips starts to ``len - L`` and drops shorter episodes).
- Capacity is counted in steps; beyond it the oldest whole episodes are dropped (the newest one always stays).

Step layout of one episode of n steps (index k): ``obs[k]`` the k-th observation; ``action[k]`` the action that
led to it (zeros at k = 0); ``reward[k]`` the reward received with it; ``discount[k]`` 0 if ``obs[k]`` is
terminal, else 1. ``first`` is true at k = 0 only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from multiscene.config import ConfigError


@dataclass(frozen=True)
class Episode:
    """One whole episode, arrays with leading dimension n (steps)."""

    obs: np.ndarray
    """[n, *obs_shape]: uint8 for frames and symbol grids, float32 for float vectors."""
    action: np.ndarray
    """[n, A] float32: one-hot (discrete) or continuous action that led to obs[k]; zeros at k = 0."""
    reward: np.ndarray
    """[n] float32."""
    discount: np.ndarray
    """[n] float32: 0 where obs[k] is terminal."""
    level: int
    """The level (sub-env index or level seed) it ran on; for logging only, never given to the agent."""

    def __len__(self) -> int:
        return int(self.reward.shape[0])


@dataclass(frozen=True)
class SequenceBatch:
    """B sequences of L steps, time-major."""

    obs: np.ndarray
    """[L, B, *obs_shape], the episodes' dtype (uint8, or float32 for float vectors)."""
    action: np.ndarray
    """[L, B, A] float32 (a_{t-1})."""
    reward: np.ndarray
    """[L, B] float32."""
    discount: np.ndarray
    """[L, B] float32."""
    first: np.ndarray
    """[L, B] bool: the step is the first of its episode."""
    padded: np.ndarray
    """[L, B] bool: the step is absorbing padding past the episode's end."""
    valid: np.ndarray
    """[L, B] bool: the step counts in the losses. False only for padding after an episode cut by a time limit
    (not terminal): an absorbing state there would teach a terminal that the MDP does not have (ours)."""
    level: np.ndarray
    """[B] int64: level of each sequence's episode."""


class EpisodeReplay:
    """Whole episodes, ``capacity`` steps in all; samples ``seq_len`` sequences episode-first."""

    def __init__(self, capacity: int, seq_len: int, action_size: int, discrete: bool) -> None:
        if seq_len > capacity:
            raise ConfigError(
                f"--dreamer.seq-len ({seq_len}) is longer than the replay holds (--dreamer.replay-capacity "
                f"{capacity} steps); lower the sequence length or raise the capacity."
            )
        if seq_len <= 0:
            raise ConfigError(f"--dreamer.seq-len must be positive, got {seq_len}.")
        self.capacity = capacity
        self.seq_len = seq_len
        self.action_size = action_size
        self.discrete = discrete
        self.episodes: deque[Episode] = deque()
        self.num_steps = 0
        self.episodes_added = 0
        self.steps_added = 0

    def __len__(self) -> int:
        return len(self.episodes)

    def add(self, episode: Episode) -> None:
        """Store a finished episode; drop the oldest ones beyond ``capacity`` steps."""
        n = len(episode)
        assert n >= 1 and episode.obs.shape[0] == n and episode.action.shape == (n, self.action_size), (
            episode.obs.shape, episode.action.shape, n)
        self.episodes.append(episode)
        self.num_steps += n
        self.episodes_added += 1
        self.steps_added += n
        while self.num_steps > self.capacity and len(self.episodes) > 1:
            self.num_steps -= len(self.episodes.popleft())

    def random_actions(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """[count, A] uniformly random actions for the absorbing padding."""
        if self.discrete:
            return np.eye(self.action_size, dtype=np.float32)[rng.integers(self.action_size, size=count)]
        return rng.uniform(-1.0, 1.0, size=(count, self.action_size)).astype(np.float32)

    def sample(self, batch_size: int, rng: np.random.Generator) -> SequenceBatch:
        """``batch_size`` sequences: an episode uniformly, then a start uniformly among its steps."""
        if not self.episodes:
            raise RuntimeError("the replay is empty: add an episode (prefill) before sampling")
        L = self.seq_len
        picks = rng.integers(len(self.episodes), size=batch_size)
        first_ep = self.episodes[0]
        obs = np.empty((L, batch_size, *first_ep.obs.shape[1:]), dtype=first_ep.obs.dtype)
        action = np.empty((L, batch_size, self.action_size), dtype=np.float32)
        reward = np.zeros((L, batch_size), dtype=np.float32)
        discount = np.zeros((L, batch_size), dtype=np.float32)
        first = np.zeros((L, batch_size), dtype=bool)
        padded = np.zeros((L, batch_size), dtype=bool)
        valid = np.ones((L, batch_size), dtype=bool)
        level = np.empty(batch_size, dtype=np.int64)
        for b, index in enumerate(picks.tolist()):
            ep = self.episodes[index]
            n = len(ep)
            start = int(rng.integers(n))
            real = min(L, n - start)
            obs[:real, b] = ep.obs[start : start + real]
            action[:real, b] = ep.action[start : start + real]
            reward[:real, b] = ep.reward[start : start + real]
            discount[:real, b] = ep.discount[start : start + real]
            first[0, b] = start == 0
            level[b] = ep.level
            if real < L:
                # Absorbing state (seed 003 §5.2): p(s_{t+1} = s_t | s_t, a_t) = 1 for any action.
                obs[real:, b] = ep.obs[n - 1]
                action[real:, b] = self.random_actions(L - real, rng)
                padded[real:, b] = True  # reward and discount stay 0
                valid[real:, b] = ep.discount[n - 1] == 0.0  # absorbing only after a true terminal
        return SequenceBatch(obs, action, reward, discount, first, padded, valid, level)

    def state_dict(self, max_steps: int | None = None) -> dict[str, Any]:
        """The newest whole episodes holding at most ``max_steps`` steps (None: all), plus the counters.

        What is not saved is lost on resume: the replay restarts with the saved episodes only."""
        kept: list[Episode] = []
        steps = 0
        for ep in reversed(self.episodes):
            if max_steps is not None and steps + len(ep) > max_steps:
                break
            kept.append(ep)
            steps += len(ep)
        kept.reverse()
        return {
            "episodes": [
                {"obs": e.obs, "action": e.action, "reward": e.reward, "discount": e.discount, "level": e.level}
                for e in kept
            ],
            "episodes_added": self.episodes_added,
            "steps_added": self.steps_added,
            "saved_steps": steps,
            "total_steps": self.num_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes.clear()
        self.num_steps = 0
        for e in state["episodes"]:
            self.episodes.append(Episode(e["obs"], e["action"], e["reward"], e["discount"], int(e["level"])))
            self.num_steps += len(e["reward"])
        self.episodes_added = int(state["episodes_added"])
        self.steps_added = int(state["steps_added"])


class EpisodeBuilder:
    """Collects the steps of the running episode of each env slot; ``finish`` hands back whole episodes.

    The VecEnv auto-resets and does not return the terminal observation (``multiscene.envs.base``), so the
    final step of an episode repeats the last observation seen, with the final reward and discount; our
    approximation. ``EnvStep.final_obs`` carries the last frame of a time-limit cut (MiniGrid, Gymnasium ids),
    which ``finish`` stores instead with --bootstrap-truncation (issue 16).
    """

    def __init__(self, num_envs: int, action_size: int) -> None:
        self.action_size = action_size
        self._steps: list[dict[str, list[Any]]] = [self._empty() for _ in range(num_envs)]
        self.level = [0] * num_envs

    @staticmethod
    def _empty() -> dict[str, list[Any]]:
        return {"obs": [], "action": [], "reward": [], "discount": []}

    def start(self, index: int, obs: np.ndarray, level: int) -> None:
        self._steps[index] = self._empty()
        self.level[index] = level
        self.append(index, obs, np.zeros(self.action_size, dtype=np.float32), 0.0, 1.0)

    def append(self, index: int, obs: np.ndarray, action: np.ndarray, reward: float, discount: float) -> None:
        s = self._steps[index]
        s["obs"].append(obs)
        s["action"].append(action)
        s["reward"].append(reward)
        s["discount"].append(discount)

    def finish(
        self, index: int, action: np.ndarray, reward: float, terminated: bool, final_obs: np.ndarray | None = None,
    ) -> Episode:
        """Close env ``index``'s episode with its last action and reward. Its last observation is ``final_obs``
        where given (the env's final frame of a time-limit cut, ``EnvStep.final_obs``), else the last one seen,
        repeated (see the class doc). Discount 0 if ``terminated``, else 1 (a cut: the MDP goes on)."""
        s = self._steps[index]
        last = s["obs"][-1] if final_obs is None else final_obs
        self.append(index, last, action, reward, 0.0 if terminated else 1.0)
        obs = np.stack(s["obs"])
        # Frames and symbol grids stay uint8; float vectors (CartPole, MuJoCo) stay floats, in float32: a cast to
        # uint8 would silently truncate them (and wrap negative values).
        obs = obs.astype(np.float32) if obs.dtype.kind == "f" else obs.astype(np.uint8)
        return Episode(
            obs=obs,
            action=np.stack(s["action"]).astype(np.float32),
            reward=np.asarray(s["reward"], dtype=np.float32),
            discount=np.asarray(s["discount"], dtype=np.float32),
            level=self.level[index],
        )

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self._steps, "level": list(self.level)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = state["steps"]
        self.level = list(state["level"])
