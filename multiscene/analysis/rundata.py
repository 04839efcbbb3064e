"""A run directory read into one typed record, for ``multiscene report`` and ``multiscene compare`` (issue 4).

Reads only files (SPEC §7: reports must be rebuilt without the training machine): ``config.json``,
``metrics.jsonl``, ``eval/final.json`` (or the latest ``eval/update-*.json``), ``eval/final_steps_<split>.npz``
and ``eval/final_frames_<split>.npz``. A directory that is not a run raises ``RunDataError``; a run without a
final evaluation loads as *partial*, with what it has and a list of what is missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multiscene.config import ConfigError

SPLITS: tuple[str, ...] = ("train", "test")
METHOD_NAMES: dict[str, str] = {"scalar": "RL²", "dve": "DVE", "sparse-dve": "Sparse DVE"}
"""Table 1 column names of seed 000 for each ``--critic``."""
METHOD_ORDER: tuple[str, ...] = ("RL²", "DVE", "Sparse DVE", "ACKTR", "A2MC", "PPO", "MC-PPO", "A2C", "IMPALA",
                                  "IMPALA+VAE")
"""Column order: seed 000's three methods, then seed 004's Table 2 pairs, then seed 002's Table 1 pair."""
ALGO_NAMES: dict[str, str] = {"acktr": "ACKTR", "a2c": "A2C", "ppo": "PPO", "impala": "IMPALA"}
MULTI_CRITIC_NAMES: dict[str, str] = {"acktr": "A2MC", "ppo": "MC-PPO", "a2c": "A2MC (A2C)"}
"""Seed 004's names for ``--critic multi`` per ``--algo`` (A2MC is multi-critic ACKTR, §6; MC-PPO §6.2)."""


class RunDataError(ConfigError):
    """The path is not a readable multiscene run; the message says what is wrong and what was expected."""


@dataclass
class RunData:
    """Everything the analyses read from one run directory."""

    path: Path
    config: dict[str, Any]
    version: str | None
    metrics: list[dict[str, Any]]
    eval_summary: dict[str, Any] | None
    eval_tag: str | None  # "final", or "update-NNNNNNNN" when only a periodic evaluation exists
    steps: dict[str, dict[str, np.ndarray]]  # split -> arrays of eval/final_steps_<split>.npz
    problems: list[str] = field(default_factory=list)
    _frames: dict[str, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)
    loop: str | None = None  # config.json's top-level "algo" (the training loop that wrote the run), when present

    # Fields of the config the analyses need, with the trainer's names (multiscene/config.py).
    @property
    def env(self) -> str:
        return str(self.config["env"])

    @property
    def critic(self) -> str:
        return str(self.config["critic"])

    @property
    def algo(self) -> str:
        """``--algo`` of the run (runs written before the algorithm axis existed were PPO). The loop's own record
        wins: a Dreamer run started from Python keeps ``algo`` "ppo" in its TrainConfig."""
        return str(self.loop or self.config.get("algo", "ppo"))

    @property
    def records_steps(self) -> bool:
        """Whether the run's final evaluation writes per-step records (``final_steps_<split>.npz``): every on-policy
        and IMPALA run; a Dreamer run's evaluation does not (its critic values imagined latent states)."""
        return self.algo != "dreamer"

    @property
    def aux(self) -> str:
        """``--aux`` of the run ("none" when the run predates auxiliary losses)."""
        return str(self.config.get("aux", "none") or "none")

    @property
    def method(self) -> str:
        """The paper's name for the run's method, so that compare groups runs the way the papers' tables do.

        PPO on Procgen/MiniGrid keeps seed 000's critic names (RL², DVE, Sparse DVE). ``--critic multi`` is
        seed 004's A2MC (with ACKTR) or MC-PPO (with PPO); a scalar critic with ACKTR, A2C, or PPO on other env
        families is the algorithm's name. IMPALA is seed 002's baseline; ``--aux vae`` appends "+VAE"
        (IMPALA+VAE, seed 002 Table 1). A non-scalar critic with these algorithms is named in parentheses.
        """
        from multiscene.presets import env_family

        algo, critic = self.algo, self.critic
        first_env = self.env.split(",")[0]
        if critic == "multi":
            name = MULTI_CRITIC_NAMES.get(algo, f"multi-critic {algo}")
        elif algo == "ppo" and (critic != "scalar" or env_family(first_env) in ("procgen", "minigrid")):
            name = METHOD_NAMES.get(critic, critic)
        else:
            name = ALGO_NAMES.get(algo, algo)
            if critic != "scalar":
                name += f" ({METHOD_NAMES.get(critic, critic)})"
        return name + "+VAE" if self.aux == "vae" else name

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def gamma(self) -> float:
        return float(self.config.get("gamma", 0.999))

    @property
    def distribution_mode(self) -> str:
        return str(self.config.get("distribution_mode", "easy"))

    @property
    def num_levels(self) -> int:
        return int(self.config.get("num_levels", 0))

    @property
    def is_minigrid(self) -> bool:
        return self.env.startswith("MiniGrid")

    @property
    def is_dve(self) -> bool:
        """The critic has cluster weights alpha (DVE, Sparse DVE)."""
        return self.critic in ("dve", "sparse-dve") or any("alpha" in s for s in self.steps.values())

    @property
    def num_clusters(self) -> int | None:
        if not self.is_dve:
            return None
        for arrays in self.steps.values():
            if "alpha" in arrays:
                return int(arrays["alpha"].shape[-1])
        return int(self.config.get("dve", {}).get("num_clusters", 3))

    @property
    def final(self) -> bool:
        """The run finished: its final evaluation exists."""
        return self.eval_tag == "final"

    @property
    def partial(self) -> bool:
        """No final evaluation yet, or some of its files are missing: reported with what exists."""
        return not self.final or bool(self.problems)

    @property
    def label(self) -> str:
        return f"{self.method} · {self.env} · seed {self.seed}"

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(global_step, value) of every metrics record where ``key`` is a finite number."""
        xs, ys = [], []
        for record in self.metrics:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                if "global_step" in record:
                    xs.append(float(record["global_step"]))
                    ys.append(float(value))
        return np.asarray(xs), np.asarray(ys)

    def metric_keys(self, prefix: str) -> list[str]:
        """Metric names starting with ``prefix``, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.metrics:
            for key in record:
                if key.startswith(prefix):
                    seen.setdefault(key, None)
        return list(seen)

    def cluster_series(self, name: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per-cluster series ``<name>/<i>`` (the DVE diagnostics), with or without the ``dve/`` prefix."""
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for prefix in (f"dve/{name}/", f"{name}/"):
            for key in self.metric_keys(prefix):
                suffix = key[len(prefix):]
                if suffix.isdigit() and int(suffix) not in out:
                    xs, ys = self.series(key)
                    if len(xs):
                        out[int(suffix)] = (xs, ys)
        return dict(sorted(out.items()))

    def histograms(self, key: str = "dve/confusion_hist") -> tuple[np.ndarray, np.ndarray]:
        """(global_step [U], counts [U, bins]) of the logged confusion histograms."""
        steps: list[float] = []
        rows: list[list[float]] = []
        for record in self.metrics:
            hist = record.get(key)
            if isinstance(hist, list) and hist and all(isinstance(c, (int, float)) for c in hist):
                if rows and len(hist) != len(rows[0]):
                    continue
                steps.append(float(record.get("global_step", len(steps))))
                rows.append([float(c) for c in hist])
        return np.asarray(steps), np.asarray(rows).reshape(len(rows), -1)

    def frames(self, split: str) -> dict[int, np.ndarray]:
        """episode id -> [T, H, W, 3] uint8 frames of eval/final_frames_<split>.npz (empty if absent)."""
        if split not in self._frames:
            path = self.path / "eval" / f"final_frames_{split}.npz"
            out: dict[int, np.ndarray] = {}
            if path.exists():
                with np.load(path) as data:
                    for key in data.files:
                        match = re.fullmatch(r"episode_(\d+)", key)
                        if match:
                            out[int(match.group(1))] = np.asarray(data[key])
            self._frames[split] = out
        return self._frames[split]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDataError(f"{path}: cannot read the {what} ({e}).") from e


STEP_COLUMNS = ("episode", "t", "level_seed", "action", "reward", "done", "value")


def load_steps(path: Path) -> dict[str, np.ndarray]:
    """eval/final_steps_<split>.npz as a dict, checked for the columns every analysis needs."""
    with np.load(path) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    missing = [c for c in STEP_COLUMNS if c not in arrays]
    if missing:
        raise RunDataError(f"{path} lacks the columns {missing} (expected {list(STEP_COLUMNS)}, written by "
                           "multiscene.evaluate).")
    n = len(arrays["episode"])
    for key, value in arrays.items():
        if value.ndim >= 1 and key not in ("reward_scale", "gamma") and len(value) != n:
            raise RunDataError(f"{path}: column {key!r} has {len(value)} rows, 'episode' has {n}.")
    return arrays


def load_run(path: Path | str) -> RunData:
    """Read a run directory. Raises RunDataError for a path that is not a run; tolerates a partial one."""
    path = Path(path)
    if not path.exists():
        raise RunDataError(f"{path} does not exist; pass a run directory (the --run-dir of multiscene train).")
    if not path.is_dir():
        raise RunDataError(f"{path} is a file, not a run directory (expected a folder with config.json, "
                           "metrics.jsonl and eval/).")
    config_path = path / "config.json"
    if not config_path.exists():
        raise RunDataError(f"{path} is not a multiscene run directory: it has no config.json (expected "
                           "config.json, metrics.jsonl and eval/, as written by multiscene train).")
    record = _read_json(config_path, "run configuration")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunDataError(f"{config_path} is not a multiscene config (expected {{\"config\": {{...}}}}).")
    config = record["config"]
    for key in ("env", "critic"):
        if key not in config:
            raise RunDataError(f"{config_path}: the config has no {key!r} field.")

    from multiscene.logger import read_metrics

    problems: list[str] = []
    metrics = read_metrics(path / "metrics.jsonl")
    if not metrics:
        problems.append("metrics.jsonl is missing or empty: no learning curves")

    eval_dir = path / "eval"
    eval_summary, eval_tag = None, None
    if (eval_dir / "final.json").exists():
        eval_summary, eval_tag = _read_json(eval_dir / "final.json", "final evaluation"), "final"
    else:
        periodic = sorted(eval_dir.glob("update-*.json")) if eval_dir.is_dir() else []
        if periodic:
            eval_summary, eval_tag = _read_json(periodic[-1], "periodic evaluation"), periodic[-1].stem
            problems.append(f"no eval/final.json (training unfinished?): final numbers are from {periodic[-1].name}")
        else:
            problems.append("no evaluation yet (no eval/final.json): run `multiscene eval` or finish training")

    steps: dict[str, dict[str, np.ndarray]] = {}
    loop = record.get("algo") if isinstance(record.get("algo"), str) else None
    if eval_tag == "final" and (loop or config.get("algo")) != "dreamer":
        for split in SPLITS:
            steps_path = eval_dir / f"final_steps_{split}.npz"
            if steps_path.exists():
                steps[split] = load_steps(steps_path)
            else:
                problems.append(f"no eval/final_steps_{split}.npz: no value error, clusters or trajectories "
                                f"for the {split} split")
    return RunData(path=path, config=config, version=record.get("multiscene_version"), metrics=metrics,
                   eval_summary=eval_summary, eval_tag=eval_tag, steps=steps, problems=problems, loop=loop)
