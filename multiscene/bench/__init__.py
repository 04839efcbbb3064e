"""Benchmarks (issue #5): ``multiscene bench throughput``, ``multiscene bench update-cost`` (issue 10) and
``multiscene bench learning``.

``main(argv)`` dispatches the subcommand. Bad input (an unknown preset, a budget too small for one update, an
unknown subcommand) prints one line naming the flag and returns 2, as every other ``multiscene`` command does.
"""

from __future__ import annotations

import sys

from multiscene.config import ConfigError

USAGE = """usage: multiscene bench SUBCOMMAND [ARGS]

subcommands:
  throughput  env SPS, training SPS, the network's ceiling and their ratio for one config
              (multiscene bench throughput --preset cleanrl-procgen --updates 3; --help for flags)
  update-cost seconds per A2C and per ACKTR (K-FAC) update on one network and batch, and their ratio
              (multiscene bench update-cost --preset a2c-atari; --help for flags)
  learning    RL², DVE and Sparse DVE on three multi-scene MiniGrid tasks, IQM with 95% bootstrap CIs
              (multiscene bench learning --out benchmarks/results; --help for flags)
"""


def main(argv: list[str]) -> int:
    """Run one benchmark subcommand; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], list(argv[1:])
    try:
        if command == "throughput":
            from multiscene.bench.throughput import main as throughput_main

            return throughput_main(rest)
        if command == "update-cost":
            from multiscene.bench.update_cost import main as update_cost_main

            return update_cost_main(rest)
        if command == "learning":
            from multiscene.bench.learning import main as learning_main

            return learning_main(rest)
    except ConfigError as e:
        print(f"multiscene bench {command}: error: {e}", file=sys.stderr)
        return 2
    print(f"multiscene bench: unknown subcommand {command!r}; choose throughput, update-cost or learning\n\n{USAGE}",
          file=sys.stderr)
    return 2
