"""``multiscene`` command line: train, eval, report, compare, bench.

``multiscene train --critic sparse-dve --preset quickstart`` works as written: the preset is read first, then
tyro parses every other flag on top of it, so any preset field can be overridden with a flat flag.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = """usage: multiscene COMMAND [ARGS]

commands:
  train      train an agent (multiscene train --preset quickstart; --help for every flag)
  eval       evaluate a run's checkpoint again (multiscene eval RUN_DIR [--episodes N] [--video])
  report     write RUN_DIR/report/ (multiscene report RUN_DIR)
  compare    compare runs (multiscene compare RUN_DIR... --out DIR)
  runs       run directories and their status (multiscene runs [DIR])
  protocol   seed 003's pre-train / fine-tune / transfer runs (multiscene protocol pretrain --levels L
             --transfer-levels L --steps T --seeds R --out DIR [train flags]; multiscene protocol report DIR)
  bench      benchmarks (multiscene bench throughput --preset P | multiscene bench learning)
  sweep      grid x seeds on Ray Tune (multiscene sweep --preset P --grid dve.k1=0.002,0.02 --seeds 4 --out DIR)
"""


def _pop_option(argv: list[str], name: str) -> str | None:
    """Remove ``--name VALUE`` or ``--name=VALUE`` from argv and return VALUE."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 >= len(argv):
                from multiscene.config import ConfigError

                raise ConfigError(f"{name} needs a value.")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _peek_option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in argv (left in place)."""
    args = list(argv)
    return _pop_option(args, name)


def parse_train_args(argv: Sequence[str]):  # noqa: ANN201 - returns TrainConfig (lazy import keeps --help fast)
    import tyro

    from multiscene.config import replace
    from multiscene.presets import default_preset, get_preset

    args = list(argv)
    # Without --preset, the defaults follow the env family and the algorithm (issue 15): --env coinrun starts
    # from procgen-easy, --env HalfCheetah-v5 --algo acktr from acktr-mujoco; no --env: the quickstart.
    preset_name = _pop_option(args, "--preset") or default_preset(_peek_option(args, "--env"),
                                                                  _peek_option(args, "--algo"))
    default = replace(get_preset(preset_name), preset=preset_name)
    cfg = tyro.cli(type(default), default=default, args=args, prog="multiscene train",
                   description=f"Train one agent across many levels (preset: {preset_name}).")
    if cfg.resume and cfg.run_dir and not any(a.startswith("--total-timesteps") for a in args):
        # A resumed run keeps its own budget unless --total-timesteps is given (the preset's would be wrong).
        from pathlib import Path

        from multiscene.trainer import CONFIG_FILE, load_config

        if (Path(cfg.run_dir) / CONFIG_FILE).exists():
            cfg = replace(cfg, total_timesteps=load_config(Path(cfg.run_dir)).total_timesteps)
    if _peek_option(args, "--critic") is None:
        from multiscene.config import critics_of

        allowed = critics_of(cfg.algo)
        if cfg.critic not in allowed:
            # The preset's critic is one the algorithm does not use (--algo dreamer from the quickstart's Sparse
            # DVE): take the algorithm's own. Asked for explicitly, validate() refuses it with a message.
            cfg = replace(cfg, critic=allowed[0])
    if cfg.bootstrap_truncation and "--bootstrap-truncation" not in args:
        from multiscene.envs import knows_truncation

        if not knows_truncation(cfg.env):
            # Not asked for: an env that cannot tell time limits apart (Procgen) keeps its papers' treatment.
            # Asked for explicitly, validate() refuses it with a message (issue 16, "Bad input").
            cfg = replace(cfg, bootstrap_truncation=False)
    return cfg


def cmd_train(argv: Sequence[str]) -> int:
    from multiscene.trainer import train

    cfg = parse_train_args(argv)
    run_dir = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 alone reports
    final = run_dir / "eval" / "final.json"
    if final.exists():
        import json

        summary = json.loads(final.read_text())
        for split in ("train", "test"):
            s = summary.get(split, {})
            print(f"[multiscene] final eval {split:5s}: return {s.get('return_mean')} +- {s.get('return_std')}, "
                  f"length {s.get('length_mean')}, episodes {s.get('episodes')}")
        rnd = summary.get("random_policy_test")
        if rnd:
            print(f"[multiscene] random policy test: return {rnd.get('return_mean')} (the floor to beat)")
    print(f"[multiscene] run directory: {run_dir}")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="multiscene eval", description="Evaluate a run's latest good checkpoint.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=None, help="episodes per split and mode (default: the run's eval_episodes)")
    parser.add_argument("--tag", default="eval", help="written to RUN_DIR/eval/<tag>.json (default: eval)")
    parser.add_argument("--video", action="store_true", help="also write mp4s of sampled-policy episodes to RUN_DIR/eval/videos/")
    parser.add_argument("--video-episodes", type=int, default=2, help="episodes per split recorded with --video")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ns = parser.parse_args(list(argv))
    from multiscene.evaluate import evaluate_checkpoint

    summary = evaluate_checkpoint(ns.run_dir, episodes=ns.episodes, tag=ns.tag, video=ns.video,
                                  video_episodes=ns.video_episodes, device=ns.device)
    for split in ("train", "test"):
        s = summary[split]
        print(f"{split:5s}: return {s['return_mean']:.3f} +- {s['return_std']:.3f}, length {s['length_mean']:.1f}, "
              f"episodes {s['episodes']}")
    print(f"written: {ns.run_dir / 'eval' / (ns.tag + '.json')}")
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from multiscene.analysis.report import main as report_main

    return report_main(list(argv))


def cmd_compare(argv: Sequence[str]) -> int:
    from multiscene.analysis.compare import main as compare_main

    return compare_main(list(argv))


def cmd_bench(argv: Sequence[str]) -> int:
    from multiscene.bench import main as bench_main

    return bench_main(list(argv))


def cmd_runs(argv: Sequence[str]) -> int:
    from multiscene.analysis.runs import main as runs_main

    return runs_main(list(argv))


def cmd_protocol(argv: Sequence[str]) -> int:
    """``protocol pretrain ...`` runs seed 003's experiments as ordinary run directories; ``protocol report
    DIR`` draws its figures."""
    from multiscene.config import ConfigError

    args = list(argv)
    if not args or args[0] not in ("pretrain", "report"):
        raise ConfigError("multiscene protocol: choose 'pretrain' (run the experiments) or 'report DIR' (figures).")
    from multiscene.protocol.pretrain import ProtocolConfig, protocol_figures, run_protocol

    if args[0] == "report":
        if len(args) != 2:
            raise ConfigError("usage: multiscene protocol report DIR")
        for path in protocol_figures(args[1]):
            print(f"written: {path}")
        return 0
    rest = args[1:]
    options = {}
    for name in ("--levels", "--transfer-levels", "--steps", "--seeds", "--out"):
        options[name] = _pop_option(rest, name)
    for name in ("--levels", "--steps", "--out"):
        if options[name] is None:
            raise ConfigError(f"multiscene protocol pretrain needs {name}.")
    algo = _peek_option(rest, "--algo") or "dreamer"
    if _peek_option(rest, "--algo") is None:
        rest += ["--algo", algo]
    if _peek_option(rest, "--env") is None:
        rest += ["--env", options["--levels"]]  # picks the env family's preset
    base = parse_train_args(rest)
    try:
        steps, seeds = int(options["--steps"]), int(options["--seeds"] or 1)
    except ValueError as e:
        raise ConfigError(f"--steps and --seeds take whole numbers: {e}") from e
    protocol = ProtocolConfig(levels=options["--levels"], transfer_levels=options["--transfer-levels"],
                              steps=steps, seeds=seeds, out=options["--out"], algo=algo)
    dirs = run_protocol(protocol, base, getattr(base, algo, None))
    print(f"[multiscene] protocol: {len(dirs)} run directories under {protocol.out}/runs")
    return 0


def cmd_sweep(argv: Sequence[str]) -> int:
    from multiscene.scale.sweep import main as sweep_main

    return sweep_main(list(argv))


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "report": cmd_report, "compare": cmd_compare, "runs": cmd_runs,
            "protocol": cmd_protocol, "sweep": cmd_sweep, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> None:
    from multiscene.children import honour_parent_request

    honour_parent_request()  # a benchmark that started this process and dies takes it along (children.py)
    from multiscene.config import ConfigError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0)
    if args[0] in ("--version", "-V"):
        import multiscene

        print(f"multiscene {multiscene.__version__}")
        sys.exit(0)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"multiscene: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        code = COMMANDS[command](rest)
    except ConfigError as e:
        print(f"multiscene {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - surface known stop reasons as one clear line
        from multiscene.envs.base import EnvError
        from multiscene.trainer import TrainingStopped

        if isinstance(e, (EnvError, TrainingStopped)):
            print(f"multiscene {command}: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(code)
