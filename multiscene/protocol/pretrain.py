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
    """The trainer of ``algo`` (any registered algorithm whose loop takes ``--init-from``)."""
    from multiscene import registry

    trainer = registry.load("algorithm", algo)
    if algo == "impala":
        raise ConfigError("--algo impala: its loop cannot start from another run's weights (--init-from) yet.")

    group = getattr(trainer, "config_group", None)

    def run(cfg: TrainConfig, algo_cfg: Any, init_from: str | None) -> Path:
        changes: dict[str, Any] = {"algo": algo, "init_from": init_from}
        if group is not None and isinstance(algo_cfg, group[1]):
            changes[group[0]] = algo_cfg  # the algorithm's own options (--dreamer.*) as the protocol records them
        return trainer.train(dataclasses.replace(cfg, **changes))

    return run


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


# ----------------------------------------------------------------------------------------------------------
# Figures (seed 003 Figs. 3-7) from the runs' metrics.jsonl


def _curve(run_dir: Path, key: str) -> tuple[list[float], list[float]]:
    from multiscene.logger import read_metrics

    steps, values = [], []
    for record in read_metrics(run_dir / "metrics.jsonl"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(float(record["global_step"]))
            values.append(float(value))
    return steps, values


def protocol_figures(out: Path | str, log: Callable[[str], None] = print) -> list[Path]:
    """Draw seed 003's figures from a protocol folder into ``<out>/report/``; returns the PNGs written.

    - ``pretrain_returns.png`` (Fig. 3): per pre-training level, the joint agent's train return on that level
      (solid) and the baselines' (dashed), with a dotted line at T/N, where a baseline has used as many steps
      as the joint agent spent on its level;
    - ``finetune_returns.png`` (Fig. 5) and ``transfer_returns.png`` (Fig. 6): fine-tuned or transferred
      agents (solid) against baselines (dashed), per level;
    - ``combined_returns.png`` (Fig. 7): fine-tuning curves shifted right by T/N (the pre-training steps spent
      per level) against the baselines at equal steps;
    - ``image_loss.png`` (Fig. 4): the world model's image loss of every baseline and joint run;
    - ``reconstructions_<level>.png`` (Fig. 8), per transfer level: frames of that unseen level and their
      reconstructions by the seed-1 joint agent and baselines (``multiscene.protocol.reconstruct``, which says
      which agents and why), with ``reconstructions.json`` (each agent's reconstruction error; runs skipped, such
      as non-Dreamer ones, and why, also told through ``log``) and the drawn arrays in ``reconstructions_<level>.npz``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    cfg = ProtocolConfig(**(json.loads((out / PROTOCOL_FILE).read_text())["protocol"] | {"out": str(out)}))
    plans = plan_runs(cfg)
    pre = level_ids(cfg.levels, "--levels")
    transfer = level_ids(cfg.transfer_levels, "--transfer-levels") if cfg.transfer_levels else []
    runs = out / "runs"
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def runs_of(kind: str, level: str | None) -> list[RunPlan]:
        return [p for p in plans if p.kind == kind and (level is None or p.env == level)]

    def panel_figure(name: str, levels: list[str], solid: Callable[[str], list[tuple[RunPlan, str, float]]],
                     title: str) -> None:
        if not levels:
            return
        fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.2), squeeze=False)
        for ax, (i, level) in zip(axes[0], enumerate(levels)):
            for plan, key, shift in solid(level):
                x, y = _curve(runs / plan.name, key)
                ax.plot([v + shift for v in x], y, color=f"C{i}", lw=1.2, marker=".",
                        label=f"{plan.kind} s{plan.seed}" if plan.seed == 1 else None)
            for plan in runs_of("baseline", level):
                x, y = _curve(runs / plan.name, "charts/episodic_return")
                ax.plot(x, y, color=f"C{i}", ls="--", lw=1.0, marker=".", label="baseline" if plan.seed == 1 else None)
            if name == "pretrain_returns":
                ax.axvline(cfg.steps / len(pre), color="gray", ls=":", lw=0.8)
            ax.set_title(level)
            ax.set_xlabel("env steps")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("train return")
        fig.suptitle(title, y=1.06)
        path = report / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    panel_figure("pretrain_returns", pre,
                 lambda lv: [(p, f"levels/{lv}/episodic_return", 0.0) for p in runs_of("joint", None)],
                 f"pre-training on {len(pre)} levels (solid: one joint agent; dashed: one baseline per level)")
    panel_figure("finetune_returns", pre, lambda lv: [(p, "charts/episodic_return", 0.0) for p in runs_of("finetune", lv)],
                 "fine-tuning the joint agent per level (dashed: baselines)")
    panel_figure("transfer_returns", transfer,
                 lambda lv: [(p, "charts/episodic_return", 0.0) for p in runs_of("transfer", lv)],
                 "transfer of the joint agent to unseen levels (dashed: baselines)")
    panel_figure("combined_returns", pre,
                 lambda lv: [(p, "charts/episodic_return", cfg.steps / len(pre)) for p in runs_of("finetune", lv)],
                 "pre-training (T/N steps per level) + fine-tuning against baselines at equal steps")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, level in enumerate(pre + transfer):
        for plan in runs_of("baseline", level):
            x, y = _curve(runs / plan.name, "dreamer/image_loss")
            ax.plot(x, y, color=f"C{i}", ls="--", lw=1.0, label=f"baseline {level}" if plan.seed == 1 else None)
    for plan in runs_of("joint", None):
        x, y = _curve(runs / plan.name, "dreamer/image_loss")
        ax.plot(x, y, color="black", lw=1.5, label="joint" if plan.seed == 1 else None)
    ax.set_xlabel("env steps")
    ax.set_ylabel("image loss")
    ax.set_title("world-model image loss")
    ax.legend(fontsize=7)
    path = report / "image_loss.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    from multiscene.protocol.reconstruct import reconstruction_figures

    written += reconstruction_figures(out, transfer, pre, plans, report, log=log)
    return written
