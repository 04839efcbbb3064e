"""RL², DVE and Sparse DVE on three multi-scene MiniGrid tasks (issue #5); see docs/benchmarks.md.

The same benchmark as ``multiscene bench learning``, as a script:

    python benchmarks/minigrid_multiscene.py --out benchmarks/results/learning --seeds 5

Every flag of ``multiscene bench learning --help`` applies.
"""

from __future__ import annotations

import sys

from multiscene.bench import main

if __name__ == "__main__":
    sys.exit(main(["learning", *sys.argv[1:]]))
