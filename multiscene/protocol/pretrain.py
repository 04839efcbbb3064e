"""Seed 003's experiments as ordinary, resumable run directories (issue 13 item 5; SPEC §6).

For levels E^pre = {L_1..L_N} (``--levels``), unseen levels E^tau (``--transfer-levels``), a budget of T env steps
per run (``--steps``) and R seeds (``--seeds``), the protocol arranges, per seed s:

1. ``baseline/<level>/s<s>``  one agent per level of E^pre, T steps (seed 003 §4.1's N baselines);
2. ``joint/s<s>``             one agent on all N levels at once (a multi-level env), T steps (§4.1);
3. ``finetune/<level>/s<s>``  the joint agent's weights fine-tuned on each level of E^pre, T steps (§4.2);
4. ``transfer/<level>/s<s>``  the joint agent's weights trained on each unseen level, T steps (§4.3), and
   ``baseline/<level>/s<s>`` for those levels, from scratch, to compare against.

Each run is an ordinary run directory under ``<out>/runs/``; ``<out>/protocol.json`` holds the protocol's
config and ``<out>/status.json`` the runs finished so far. Running the same command again continues: finished
runs are skipped, a run with a checkpoint is resumed (``--resume``), the rest start. An output folder written by
another config is refused, never overwritten. The protocol only arranges runs, so any algorithm that can
start from another run's weights works; the runner is chosen per ``algo`` (``run_one``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiscene.config import ConfigError, TrainConfig
from multiscene.envs.multilevel import split_env_ids
from multiscene.rundir import atomic_write_json, is_run_dir

PROTOCOL_FILE = "protocol.json"
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class ProtocolConfig:
    """``multiscene protocol pretrain`` options."""

    levels: str
    """E^pre, the pre-training levels: a multi-level env id (``mario:3-1,3-2,3-3,3-4``, ``mario:E4``, ``a,b``)."""
    transfer_levels: str | None
    """E^tau, unseen levels for transfer (``mario:1-1,1-2``); None skips the transfer runs."""
    steps: int
    """T, the budget of every run in env steps."""
    seeds: int
    """R, runs per configuration (seed 003 §5.3 uses 5); seeds 1..R."""
    out: str
    """The output folder (runs/, protocol.json, status.json)."""
    algo: str = "dreamer"
    """The algorithm of every run (``dreamer``, or an on-policy one once its loop takes --init-from)."""


@dataclass(frozen=True)
class RunPlan:
    """One run of the protocol."""

    name: str
    """Path under ``<out>/runs`` (``baseline/mario_3-1/s1``)."""
    kind: str
    """baseline, joint, finetune or transfer."""
    env: str
    """--env of the run."""
    seed: int
    init_from: str | None
    """Name of the run whose weights start this one (the joint run), or None."""


def level_ids(env_id: str, flag: str) -> list[str]:
    """Each level of a multi-level id as its own env id; ConfigError for repeats (``split_env_ids``)."""
    try:
        return split_env_ids(env_id)
    except ConfigError as e:
        raise ConfigError(str(e).replace("--env", flag)) from e


def _dir_name(env_id: str) -> str:
    return env_id.replace(":", "_").replace(",", "+").replace("/", "_")


def plan_runs(cfg: ProtocolConfig) -> list[RunPlan]:
    """The runs in the order they execute (baselines, joint, fine-tune, transfer), every seed."""
    if cfg.steps <= 0:
        raise ConfigError(f"--steps must be a positive number of env steps, got {cfg.steps}.")
    if cfg.seeds <= 0:
        raise ConfigError(f"--seeds must be positive, got {cfg.seeds}.")
    pre = level_ids(cfg.levels, "--levels")
    if len(pre) < 2:
        raise ConfigError(f"--levels needs at least two levels to pre-train on jointly, got {pre}.")
    transfer = level_ids(cfg.transfer_levels, "--transfer-levels") if cfg.transfer_levels else []
    overlap = sorted(set(pre) & set(transfer))
    if overlap:
        raise ConfigError(
            f"--transfer-levels must be unseen in pre-training (seed 003 §4.3); these are also in --levels: "
            f"{', '.join(overlap)}."
        )
    joint_env = ",".join(pre)
    plans: list[RunPlan] = []
    for seed in range(1, cfg.seeds + 1):
        for level in pre:
            plans.append(RunPlan(f"baseline/{_dir_name(level)}/s{seed}", "baseline", level, seed, None))
        joint = f"joint/s{seed}"
        plans.append(RunPlan(joint, "joint", joint_env, seed, None))
        for level in pre:
            plans.append(RunPlan(f"finetune/{_dir_name(level)}/s{seed}", "finetune", level, seed, joint))
        for level in transfer:
            plans.append(RunPlan(f"transfer/{_dir_name(level)}/s{seed}", "transfer", level, seed, joint))
            plans.append(RunPlan(f"baseline/{_dir_name(level)}/s{seed}", "baseline", level, seed, None))
    return plans


RunFn = Callable[[TrainConfig, Any, str | None], Path]
"""(run config, algorithm config, init-from run dir or None) -> run dir."""


def run_one(algo: str) -> RunFn:
    """The trainer of ``algo``."""
    if algo == "dreamer":
        from multiscene.algos.dreamer.loop import train

        return train
    raise ConfigError(
        f"--algo {algo!r}: the protocol needs a loop that can start from another run's weights (--init-from); "
        "today that is dreamer. The on-policy loop gets it with the hook described in docs/dreamer.md."
    )


def _protocol_record(cfg: ProtocolConfig, base: TrainConfig, algo_cfg: Any) -> dict[str, Any]:
    algo_dict = dataclasses.asdict(algo_cfg) if dataclasses.is_dataclass(algo_cfg) else algo_cfg
    base_dict = dataclasses.asdict(base)
    # Run-time switches do not change what the runs compute.
    for key in ("run_dir", "resume", "overwrite", "progress", "device", "env", "seed", "total_timesteps"):
        base_dict.pop(key, None)
    return {"protocol": dataclasses.asdict(cfg) | {"out": None}, "base": base_dict, "algo_config": algo_dict}


def _check_or_write_protocol(out: Path, record: dict[str, Any]) -> None:
    path = out / PROTOCOL_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(record, default=str)):
            differ = sorted(
                f"{section}.{k}"
                for section in ("protocol", "base", "algo_config")
                for k in set(saved.get(section) or {}) | set(record.get(section) or {})
                if (saved.get(section) or {}).get(k) != json.loads(json.dumps(record[section], default=str)).get(k)
            )
            raise ConfigError(
                f"--out {out} holds a protocol run with another config (differs in: {', '.join(differ) or '?'}); "
                "it is never overwritten. Choose another --out, or repeat the original command to continue it."
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a protocol folder (no {PROTOCOL_FILE}); choose another.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def run_protocol(
    cfg: ProtocolConfig, base: TrainConfig, algo_cfg: Any, run_fn: RunFn | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run (or continue) every planned run; returns their run directories in plan order."""
    plans = plan_runs(cfg)
    out = Path(cfg.out)
    _check_or_write_protocol(out, _protocol_record(cfg, base, algo_cfg))
    run_fn = run_fn or run_one(cfg.algo)
    status_path = out / STATUS_FILE
    finished: list[str] = json.loads(status_path.read_text())["finished"] if status_path.exists() else []
    dirs = []
    for plan in plans:
        run_dir = out / "runs" / plan.name
        dirs.append(run_dir)
        if plan.name in finished:
            continue
        resume = is_run_dir(run_dir)
        log(f"protocol: {'resuming' if resume else 'starting'} {plan.name} (--env {plan.env}, seed {plan.seed})")
        run_cfg = dataclasses.replace(base, env=plan.env, seed=plan.seed, total_timesteps=cfg.steps,
                                      run_dir=str(run_dir), resume=resume, overwrite=False)
        init_from = str(out / "runs" / plan.init_from) if plan.init_from else None
        run_fn(run_cfg, algo_cfg, init_from)
        if base.final_eval and not (run_dir / "eval" / "final.json").exists():
            # The run returned early (a stop signal saved a checkpoint): the next call resumes it.
            log(f"protocol: {plan.name} stopped before its budget; run the same command again to continue")
            return dirs
        finished.append(plan.name)
        atomic_write_json(status_path, {"finished": finished})
    return dirs
