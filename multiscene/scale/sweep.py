"""``multiscene sweep``: a grid of config values x seeds on Ray Tune, one ordinary run directory per trial (issue 14).

    multiscene sweep --preset quickstart --grid dve.k1=0.002,0.02,0.2 --grid dve.schedule=pre-boost,post-boost \\
        --seeds 4 --out DIR [--set KEY=VALUE ...] [--task train|critic-fit] [--metric NAME] [--scheduler asha] \\
        [--address auto|HOST:PORT] [--cpus-per-trial N] [--gpus-per-trial G] [--max-concurrent N]

What it does, in order:

1. Parses every ``--grid KEY=V1,V2,...`` and ``--set KEY=VALUE`` against the config (``TrainConfig`` fields,
   ``dve.*`` fields, and for ``--task critic-fit`` also ``fit.*``: ``multiscene.bench.critic_fit.FitSettings``),
   converts each value to the field's type, builds and validates the config of every trial. Any bad key, value
   or combination, and an ``--address`` nobody answers on, is one ``ConfigError`` before Ray starts.
2. Skips the trials whose ``result.json`` says they finished (so an interrupted sweep resumes with the same
   command; an interrupted ``train`` trial resumes from its last checkpoint).
3. Runs the rest as Ray Tune trials: a local Ray instance (``include_dashboard=False``) started and shut down by
   this command, or the cluster at ``--address``. Each trial writes ``DIR/trials/<name>/``: for ``train`` an
   ordinary run directory (``multiscene.trainer.train``: ``report`` and ``compare`` read it), for
   ``critic-fit`` ``config.json``, ``fit_settings.json``, ``metrics.jsonl`` (the held-out error curve and the
   attention gradient norms) and ``result.json``. ``--scheduler asha`` stops poor critic-fit trials early from
   their intermediate held-out errors (``--metric auc_error_after``; a ``train`` trial reports once, at its end,
   so ``--scheduler asha`` is refused for ``--task train``).
4. Writes ``DIR/sweep_results.md`` and ``DIR/sweep_results.csv``: one row per grid point, ranked by the
   interquartile mean over seeds of ``--metric`` with a 95% stratified-bootstrap interval (rliable, as
   ``multiscene.analysis.stats.aggregate_intervals``), plus the other metrics' IQMs.

Metrics. ``train``: ``test_return`` (default, higher is better), ``train_return``, ``test_length``,
``test_value_error``, ``test_confusion``, ``test_clusters_in_use``, ``test_scene_nmi``
(``multiscene.bench.learning.run_metrics``). ``critic-fit``:
``auc_error_after`` (default, lower is better), ``final_error_after``, ``final_confusion``, ``scene_nmi``,
``clusters_in_use``, ``min_cluster_share`` (the smallest of the two largest argmax shares: >= 0.1 means at
least two clusters in use in issue 14's sense).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import socket
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from multiscene.config import ConfigError, DVEConfig, TrainConfig

TASKS: tuple[str, ...] = ("train", "critic-fit")
SCHEDULERS: tuple[str, ...] = ("fifo", "asha")
TRAIN_METRICS: dict[str, bool] = {
    "test_return": True, "train_return": True, "test_length": False, "test_value_error": False,
    "test_confusion": False, "test_clusters_in_use": True, "test_scene_nmi": True,
}
"""``--task train`` metric -> higher is better."""
FIT_METRICS: dict[str, bool] = {
    "auc_error_after": False, "final_error_after": False, "final_confusion": False, "scene_nmi": True,
    "clusters_in_use": True, "min_cluster_share": True,
}
"""``--task critic-fit`` metric -> higher is better."""
RESULT_FILE = "result.json"
"""Written into a trial's directory when the trial has finished (or was stopped by the scheduler)."""


@dataclass(frozen=True)
class Trial:
    """One grid point x one seed."""

    name: str
    """Directory name under DIR/trials; ``<key=value>_..._s<seed>``."""
    point: str
    """The grid point without the seed (rows of the result table)."""
    overrides: dict[str, Any]
    """Grid values and --set values, dotted keys -> typed values."""
    seed: int


@dataclass(frozen=True)
class SweepSpec:
    """Parsed and validated ``multiscene sweep`` arguments."""

    preset: str
    task: Literal["train", "critic-fit"]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    seeds: list[int]
    out: Path
    metric: str
    higher_is_better: bool
    address: str | None
    scheduler: Literal["fifo", "asha"]
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    trials: list[Trial]


# ----------------------------------------------------------------------------------------------------------
# Parsing keys and values against the config


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(key: str, raw: str, annotation: Any) -> Any:
    """Turn the string ``raw`` into a value of ``annotation`` (int, float, bool, str, Literal, X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        if len(options) == 1:
            return _convert(key, raw, options[0])
        raise ConfigError(f"--grid/--set {key}: this field's type {annotation} cannot be swept.")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if raw not in allowed:
            raise ConfigError(f"--grid/--set {key}: {raw!r} is not allowed; choose one of {', '.join(map(str, allowed))}.")
        return raw
    try:
        if annotation is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if annotation is int:
            return int(raw)
        if annotation is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if annotation is str:
            return raw
    except ValueError:
        raise ConfigError(f"--grid/--set {key}: {raw!r} is not a valid {annotation.__name__}.") from None
    raise ConfigError(f"--grid/--set {key}: this field's type {annotation} cannot be swept.")


def sweepable_keys(task: str) -> dict[str, Any]:
    """Dotted key -> type of every field a sweep may set (``dve.*`` nested; ``fit.*`` for critic-fit)."""
    keys: dict[str, Any] = {}
    for name, annotation in _field_types(TrainConfig).items():
        if name in ("dve", "run_dir", "resume", "overwrite", "preset", "seed"):
            continue  # the sweep owns run_dir, resume, overwrite and seed; the preset is --preset
        keys[name] = annotation
    for name, annotation in _field_types(DVEConfig).items():
        keys[f"dve.{name}"] = annotation
    if task == "critic-fit":
        from multiscene.bench.critic_fit import FitSettings

        for name, annotation in _field_types(FitSettings).items():
            keys[f"fit.{name}"] = annotation
    return keys


def parse_assignment(text: str, task: str, many: bool) -> tuple[str, list[Any]]:
    """``KEY=V1,V2`` (``many``) or ``KEY=VALUE`` -> (canonical dotted key, typed values)."""
    if "=" not in text:
        flag = "--grid KEY=V1,V2,..." if many else "--set KEY=VALUE"
        raise ConfigError(f"{flag}: expected KEY=VALUE, got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    keys = sweepable_keys(task)
    if key not in keys:
        known = ", ".join(sorted(keys))
        raise ConfigError(f"--grid/--set: {key!r} is not a config field of --task {task}; known keys: {known}.")
    raws = [v.strip() for v in raw.split(",")] if many else [raw.strip()]
    if any(v == "" for v in raws):
        raise ConfigError(f"--grid/--set {key}: empty value in {raw!r}.")
    return key, [_convert(key, v, keys[key]) for v in raws]


def _safe(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(value))


def build_config(preset: str, task: str, overrides: dict[str, Any], seed: int,
                 run_dir: Path | None) -> tuple[TrainConfig, Any]:
    """(TrainConfig, FitSettings or None) of one trial, validated. Raises ConfigError."""
    from multiscene.config import replace, validate
    from multiscene.presets import get_preset

    top = {k: v for k, v in overrides.items() if "." not in k}
    dve = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("dve.")}
    fit = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("fit.")}
    cfg = replace(get_preset(preset), preset=preset, seed=seed,
                  run_dir=None if run_dir is None else str(run_dir), **top, dve=dve)
    settings = None
    if task == "critic-fit":
        from multiscene.bench.critic_fit import FitSettings
        from multiscene.envs.scenes import HIDDEN_PAYOFF_ID

        settings = FitSettings(**fit)
        for name, value in dataclasses.asdict(settings).items():
            if isinstance(value, (int, float)) and name != "gamma" and value <= 0 and name != "test_level_start":
                raise ConfigError(f"--grid/--set fit.{name} must be positive, got {value}.")
        if settings.batch_episodes > settings.train_levels * settings.episodes_per_level:
            raise ConfigError("fit.batch_episodes must not exceed fit.train_levels x fit.episodes_per_level.")
        # The fit's clock is its step count: the L_CC schedule reads total_timesteps (critic_fit.fit_critic).
        cfg = replace(cfg, env=HIDDEN_PAYOFF_ID, gamma=settings.gamma, total_timesteps=settings.steps,
                      num_envs=1, num_steps=1, num_minibatches=1)
    validate(cfg)
    return cfg, settings


def check_address(address: str | None) -> None:
    """ConfigError unless ``address`` is None, ``auto`` with a running cluster, or a reachable HOST:PORT."""
    if address is None:
        return
    if address == "auto":
        from ray._private.services import find_gcs_addresses  # the lookup ray.init(address="auto") does

        if not find_gcs_addresses():
            raise ConfigError("--address auto: no running Ray cluster was found on this machine "
                              "(start one with `ray start --head`, or leave --address out for a local instance).")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address must be auto or HOST:PORT, got {address!r}.")
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as e:
        raise ConfigError(f"--address {address}: cannot reach a Ray head there ({e}).") from None


def parse_args(argv: Sequence[str]) -> SweepSpec:
    """Every check that needs no Ray: one ConfigError naming the flag, before any trial starts."""
    p = argparse.ArgumentParser(prog="multiscene sweep", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="quickstart", help="preset every trial starts from")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config field and its values (repeat for a full grid), e.g. dve.k1=0.002,0.02")
    p.add_argument("--set", action="append", default=[], dest="fixed", metavar="KEY=VALUE",
                   help="a config field fixed for every trial")
    p.add_argument("--seeds", default="4", help="N (seeds 1..N) or a comma list of seeds, e.g. 101,102")
    p.add_argument("--out", type=Path, required=True, help="sweep directory (trials/, tables)")
    p.add_argument("--task", default="train", help="train (PPO runs) or critic-fit (multiscene.bench.critic_fit)")
    p.add_argument("--metric", default=None, help="metric that ranks the grid points (see module docs)")
    p.add_argument("--address", default=None, help="auto or HOST:PORT of a Ray cluster (default: local Ray)")
    p.add_argument("--scheduler", default="fifo", help="fifo or asha")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=0, help="0: as many as the resources allow")
    try:
        ns = p.parse_args(list(argv))
    except SystemExit as e:
        if e.code == 0:
            raise
        raise ConfigError("bad arguments (see the usage line above).") from None

    if ns.task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}; got {ns.task!r}.")
    if ns.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}; got {ns.scheduler!r}.")
    if ns.scheduler == "asha" and ns.task == "train":
        raise ConfigError("--scheduler asha stops trials from their intermediate results, and a --task train trial "
                          "reports once, at its end; use --scheduler fifo (or --task critic-fit).")
    if ns.scheduler == "asha" and ns.metric not in (None, "auc_error_after"):
        raise ConfigError("--scheduler asha compares critic-fit trials by their running auc_error_after; use "
                          f"--metric auc_error_after or --scheduler fifo (got --metric {ns.metric}).")
    if ns.cpus_per_trial <= 0 or ns.gpus_per_trial < 0 or ns.max_concurrent < 0:
        raise ConfigError("--cpus-per-trial must be > 0, --gpus-per-trial >= 0, --max-concurrent >= 0.")
    if ns.gpus_per_trial > 0:
        import torch

        if ns.address is None and not torch.cuda.is_available():
            raise ConfigError(f"--gpus-per-trial {ns.gpus_per_trial}: no CUDA device on this machine.")
    try:
        seeds = ([int(s) for s in ns.seeds.split(",")] if "," in ns.seeds else list(range(1, int(ns.seeds) + 1)))
    except ValueError:
        raise ConfigError(f"--seeds takes N or a comma list of integers, got {ns.seeds!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must name at least one seed, each once; got {ns.seeds!r}.")
    metrics = TRAIN_METRICS if ns.task == "train" else FIT_METRICS
    metric = ns.metric or ("test_return" if ns.task == "train" else "auc_error_after")
    if metric not in metrics:
        raise ConfigError(f"--metric for --task {ns.task} must be one of {', '.join(metrics)}; got {metric!r}.")
    from multiscene.presets import PRESETS

    if ns.preset not in PRESETS:
        raise ConfigError(f"--preset must be one of: {', '.join(PRESETS)}; got {ns.preset!r}.")

    grid: dict[str, list[Any]] = {}
    for text in ns.grid:
        key, values = parse_assignment(text, ns.task, many=True)
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice.")
        grid[key] = values
    fixed: dict[str, Any] = {}
    for text in ns.fixed:
        key, values = parse_assignment(text, ns.task, many=False)
        if key in grid:
            raise ConfigError(f"--set {key} is also a --grid key.")
        fixed[key] = values[0]

    import itertools

    trials: list[Trial] = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        chosen = dict(zip(keys, combo, strict=True))
        point = "_".join(f"{k}={_safe(v)}" for k, v in chosen.items()) or "base"
        for seed in seeds:
            overrides = {**fixed, **chosen}
            name = f"{point}_s{seed}"
            build_config(ns.preset, ns.task, overrides, seed, ns.out / "trials" / name)  # raises ConfigError
            trials.append(Trial(name=name, point=point, overrides=overrides, seed=seed))
    check_address(ns.address)
    return SweepSpec(preset=ns.preset, task=ns.task, grid=grid, fixed=fixed, seeds=seeds, out=ns.out, metric=metric,
                     higher_is_better=metrics[metric], address=ns.address, scheduler=ns.scheduler,
                     cpus_per_trial=ns.cpus_per_trial, gpus_per_trial=ns.gpus_per_trial,
                     max_concurrent=ns.max_concurrent, trials=trials)


# ----------------------------------------------------------------------------------------------------------
# One trial (runs inside a Ray worker)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)  # atomic: a killed trial never leaves half a result


def _critic_fit_metrics(record: dict[str, Any]) -> dict[str, Any]:
    shares = sorted(record["argmax_shares"] or [], reverse=True)
    return {
        "auc_error_after": record["auc_error_after"],
        "final_error_after": record["final_error_after"],
        "final_confusion": record["final_confusion"],
        "scene_nmi": record["scene_nmi"],
        "clusters_in_use": record["clusters_in_use"],
        "min_cluster_share": shares[1] if len(shares) > 1 else None,
    }


def run_trial(trial: dict[str, Any], preset: str, task: str, out: str, report: Any = None) -> dict[str, Any]:
    """Run one trial (a dict of ``Trial`` fields) and write its ``result.json``; returns the metrics.

    ``report(metrics)`` is called with intermediate metrics where the task has them (critic-fit: the running
    mean of the held-out error after each evaluation, as ``auc_error_after``), so ASHA can stop a trial.
    """
    import torch

    torch.set_num_threads(1)  # many trials share few cores (docs/benchmarks.md, thread settings)
    trial_dir = Path(out) / "trials" / trial["name"]
    trial_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if task == "train":
        from multiscene.bench.learning import run_metrics
        from multiscene.config import replace
        from multiscene.trainer import train

        cfg, _ = build_config(preset, task, trial["overrides"], trial["seed"], trial_dir)
        resume = (trial_dir / "config.json").exists()  # an interrupted trial continues from its checkpoint
        cfg = replace(cfg, resume=resume, overwrite=not resume)
        try:
            train(cfg)
        except Exception:
            if not resume:
                raise
            # No usable checkpoint to resume from: start this trial afresh.
            train(replace(cfg, resume=False, overwrite=True))
        metrics: dict[str, Any] = {k: _finite(v) for k, v in run_metrics(trial_dir).items()}
    else:
        from multiscene.bench.critic_fit import fit_record

        cfg, settings = build_config(preset, task, trial["overrides"], trial["seed"], None)
        _write_json(trial_dir / "config.json", dataclasses.asdict(cfg))
        _write_json(trial_dir / "fit_settings.json", dataclasses.asdict(settings))
        record = fit_record(cfg, settings, trial["seed"], on_eval=None if report is None else (
            lambda entries: report({"auc_error_after": sum(e["error_after"] for e in entries) / len(entries),
                                    "fit_step": entries[-1]["step"]})))
        with open(trial_dir / "metrics.jsonl", "w") as f:
            for entry in record["curve"]:
                f.write(json.dumps({"kind": "eval", **entry}) + "\n")
            for entry in record["gradients"]:
                f.write(json.dumps({"kind": "gradients", **entry}) + "\n")
        metrics = _critic_fit_metrics(record)
        metrics["argmax_shares"] = record["argmax_shares"]
        metrics["cc_fired_step"] = record["cc_fired_step"]
    result = {"name": trial["name"], "seed": trial["seed"], "overrides": trial["overrides"], "status": "done",
              "metrics": metrics, "seconds": time.time() - start}
    _write_json(trial_dir / RESULT_FILE, result)
    return metrics


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one ``run_trial``; reports the final metrics once."""
    from ray import tune

    spec = config["trial"]
    final = run_trial(spec, config["preset"], config["task"], config["out"],
                      report=(lambda m: tune.report(m)) if config["intermediate"] else None)
    tune.report({k: v for k, v in final.items() if isinstance(v, (int, float)) or v is None} | {"done": True})


# ----------------------------------------------------------------------------------------------------------
# The sweep


def pending(spec: SweepSpec) -> list[Trial]:
    """Trials without a result.json (not finished, or interrupted)."""
    return [t for t in spec.trials if not (spec.out / "trials" / t.name / RESULT_FILE).exists()]


def run_sweep(spec: SweepSpec, log: Any = None) -> dict[str, Any]:
    """Run the pending trials on Ray Tune, then write the ranked tables. Returns {"ran", "skipped", "table",
    "ray_session"} (``ray_session``: the session directory of the Ray instance used, None if none was started).
    ``log``: where progress lines go (default: sys.stdout at call time)."""
    log = sys.stdout if log is None else log
    spec.out.mkdir(parents=True, exist_ok=True)
    _write_json(spec.out / "sweep.json", {
        "preset": spec.preset, "task": spec.task, "grid": spec.grid, "fixed": spec.fixed, "seeds": spec.seeds,
        "metric": spec.metric, "trials": [t.name for t in spec.trials]})
    todo = pending(spec)
    print(f"[multiscene sweep] {len(spec.trials)} trials, {len(spec.trials) - len(todo)} already finished, "
          f"{len(todo)} to run", file=log, flush=True)
    session = None
    if todo:
        session = _run_on_ray(spec, todo, log)
    table = write_tables(spec)
    return {"ran": [t.name for t in todo], "skipped": len(spec.trials) - len(todo), "table": table,
            "ray_session": session}


def _run_on_ray(spec: SweepSpec, todo: list[Trial], log: Any) -> str | None:
    import os

    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if spec.address is not None:
        init_kwargs["address"] = spec.address
    # Workers import multiscene from wherever this process did (a checkout run with PYTHONPATH included).
    package_root = str(Path(__file__).resolve().parents[2])
    init_kwargs["runtime_env"] = {"env_vars": {
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p),
        "OMP_NUM_THREADS": "1"}}
    try:
        ray.init(**init_kwargs)
    except Exception as e:  # noqa: BLE001 - an unreachable cluster is bad input, reported as one line
        raise ConfigError(f"--address {spec.address}: Ray could not connect ({e}).") from e
    session = None
    try:
        from ray._private.worker import global_worker

        node = getattr(global_worker, "node", None)
        session = node.get_session_dir_path() if node is not None else None
        intermediate = spec.scheduler == "asha" and spec.task == "critic-fit"
        scheduler = None
        if spec.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            max_t = 1_000_000
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=2,
                                      reduction_factor=2)
        param_space = {
            "trial": tune.grid_search([dataclasses.asdict(t) for t in todo]),
            "preset": spec.preset, "task": spec.task, "out": str(spec.out.resolve()), "intermediate": intermediate,
        }
        resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
        metric = spec.metric
        tuner = tune.Tuner(
            tune.with_resources(_tune_trainable, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode="max" if spec.higher_is_better else "min", scheduler=scheduler,
                max_concurrent_trials=spec.max_concurrent or None),
            run_config=tune.RunConfig(name="tune", storage_path=str((spec.out / "_tune").resolve()), verbose=0),
        )
        results = tuner.fit()
        for result in results:
            trial = result.config["trial"]
            trial_dir = spec.out / "trials" / trial["name"]
            if result.error is not None:
                print(f"[multiscene sweep] trial {trial['name']} failed: {result.error}", file=log, flush=True)
            elif not (trial_dir / RESULT_FILE).exists():
                # Stopped early by ASHA: record its last intermediate metrics so the sweep counts it as done.
                trial_dir.mkdir(parents=True, exist_ok=True)
                last = {k: v for k, v in (result.metrics or {}).items() if k in FIT_METRICS}
                _write_json(trial_dir / RESULT_FILE, {"name": trial["name"], "seed": trial["seed"],
                                                      "overrides": trial["overrides"], "status": "stopped",
                                                      "metrics": last, "seconds": None})
    finally:
        ray.shutdown()
    return session


# ----------------------------------------------------------------------------------------------------------
# Result tables


def collect_results(spec: SweepSpec) -> dict[str, list[dict[str, Any]]]:
    """Grid point -> the result.json of each of its trials that has one."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for t in spec.trials:
        path = spec.out / "trials" / t.name / RESULT_FILE
        if path.exists():
            by_point.setdefault(t.point, []).append(json.loads(path.read_text()))
    return by_point


def rank_points(spec: SweepSpec, reps: int = 2000) -> list[dict[str, Any]]:
    """Rows of the result table, best first: point, seeds, IQM and 95% CI of the metric, other metrics' IQMs."""
    import numpy as np

    from multiscene.analysis.stats import aggregate_intervals, iqm

    metrics = TRAIN_METRICS if spec.task == "train" else FIT_METRICS
    rows: list[dict[str, Any]] = []
    for point, results in collect_results(spec).items():
        values = [r["metrics"].get(spec.metric) for r in results if r["status"] == "done"]
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        row: dict[str, Any] = {"point": point, "seeds": len(values), "stopped": sum(r["status"] != "done" for r in results)}
        if values:
            agg = aggregate_intervals({point: np.asarray(values)[:, None]}, reps=reps)[point]
            row.update({"iqm": agg["iqm"], "ci_low": agg["iqm_ci"][0], "ci_high": agg["iqm_ci"][1],
                        "per_seed": values})
        for other in metrics:
            if other == spec.metric:
                continue
            vals = [r["metrics"].get(other) for r in results if r["status"] == "done"]
            vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            row[other] = iqm(np.asarray(vals)[:, None]) if vals else None
        rows.append(row)
    sign = -1.0 if spec.higher_is_better else 1.0
    rows.sort(key=lambda r: (r.get("iqm") is None, sign * r["iqm"] if r.get("iqm") is not None else 0.0))
    return rows


def write_tables(spec: SweepSpec) -> str:
    """Write sweep_results.md and sweep_results.csv; returns the Markdown."""
    rows = rank_points(spec)
    metrics = TRAIN_METRICS if spec.task == "train" else FIT_METRICS
    others = [m for m in metrics if m != spec.metric]
    better = "higher" if spec.higher_is_better else "lower"
    lines = [f"# Sweep: --task {spec.task}, --preset {spec.preset}", "",
             f"Ranked by the IQM over seeds of `{spec.metric}` ({better} is better), 95% stratified-bootstrap "
             f"interval (rliable). Seeds: {', '.join(map(str, spec.seeds))}. "
             f"Fixed: {', '.join(f'{k}={v}' for k, v in spec.fixed.items()) or 'none'}.", "",
             f"| rank | grid point | seeds | {spec.metric} IQM [95% CI] | per seed | "
             + " | ".join(others) + " |",
             "|---|---|---|---|---|" + "---|" * len(others)]

    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for rank, row in enumerate(rows, start=1):
        ci = (f"{row['iqm']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]" if row.get("iqm") is not None
              else "n/a")
        seeds = f"{row['seeds']}" + (f" (+{row['stopped']} stopped)" if row["stopped"] else "")
        per_seed = ", ".join(f"{v:.4g}" for v in row.get("per_seed", []))
        lines.append(f"| {rank} | {row['point']} | {seeds} | {ci} | {per_seed} | "
                     + " | ".join(fmt(row.get(m)) for m in others) + " |")
    markdown = "\n".join(lines) + "\n"
    (spec.out / "sweep_results.md").write_text(markdown)
    with open(spec.out / "sweep_results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "point", "seeds", "stopped", f"{spec.metric}_iqm", "ci_low", "ci_high", *others])
        for rank, row in enumerate(rows, start=1):
            writer.writerow([rank, row["point"], row["seeds"], row["stopped"], row.get("iqm"), row.get("ci_low"),
                             row.get("ci_high"), *[row.get(m) for m in others]])
    return markdown


def main(argv: Sequence[str]) -> int:
    """``multiscene sweep`` (see the module docstring)."""
    spec = parse_args(argv)
    outcome = run_sweep(spec)
    print(outcome["table"])
    print(f"[multiscene sweep] tables: {spec.out / 'sweep_results.md'}, {spec.out / 'sweep_results.csv'}")
    failed = [t.name for t in pending(spec)]
    if failed:
        print(f"[multiscene sweep] {len(failed)} trials did not finish ({', '.join(failed)}); run the same command "
              "again to retry them.", file=sys.stderr)
        return 1
    return 0
