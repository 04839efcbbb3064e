"""What Ray costs IMPALA per unroll, and IMPALA's steps/s against the on-policy loop (issue 12, "Speed").

    python benchmarks/impala_overhead.py ray-cost  [--env coinrun] [--unroll-length 80] [--envs-per-actor 1]
    python benchmarks/impala_overhead.py throughput [--env coinrun] [--updates 20] [--hidden-size 256]

``ray-cost`` starts a local Ray with one actor holding a ready-made unroll of the real shapes and the real
agent's weights, and times (medians over repeats):

- ``call_ms``: a round trip to the actor returning nothing (Ray's per-call cost);
- ``unroll_ms``: a round trip returning the unroll (call + serialization + object store + deserialization);
- ``unroll_pickle_ms``: pickling and unpickling the same unroll in-process, without Ray (the floor);
- ``weights_put_ms``: ``ray.put`` of the learner's state dict (once per update);
- ``weights_get_ms``: the actor's ``ray.get`` of it (once per update and actor).

``throughput`` trains the same network on the same envs twice for ``--updates`` updates of equal size
(16 envs x 80 steps): the on-policy loop with one epoch and one minibatch (one gradient step per batch, like
the IMPALA learner), and IMPALA with 2 actors x 8 envs; steps/s are taken from metrics.jsonl between update 5
and the last (start-up excluded).

Both live in ``multiscene/bench/impala.py`` (``ray_cost``, ``impala_vs_onpolicy``); ``multiscene bench throughput
--algo impala`` measures one IMPALA config's actor and learner steps/s and the learner's ratio to its ceiling.
"""

from __future__ import annotations

import argparse
import json

import torch

# The measurements live in the library so that `multiscene bench throughput --algo impala` shares them.
from multiscene.bench.impala import impala_vs_onpolicy, ray_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["ray-cost", "throughput"])
    parser.add_argument("--env", default="coinrun")
    parser.add_argument("--unroll-length", type=int, default=80)
    parser.add_argument("--envs-per-actor", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "ray-cost":
        result = ray_cost(args.env, args.unroll_length, args.envs_per_actor, args.repeats)
    else:
        result = impala_vs_onpolicy(args.env, args.updates, args.hidden_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
