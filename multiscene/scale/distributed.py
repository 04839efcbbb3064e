"""Data-parallel on-policy training on torch.distributed, started by ``torchrun`` (issue 15, "Data-parallel PPO").

Every rank runs the same loop (multiscene/algos/onpolicy/loop.py) on its own share of the envs; the pieces
below are the only places where ranks talk to each other, and each is a no-op in a single process, so a plain
``multiscene train`` stays bit-identical (tests/test_pinned_ppo.py):

- ``init_distributed``: the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT); gloo on the CPU, nccl on CUDA (one GPU per local rank);
- ``local_config``: ``--num-envs`` is the GLOBAL number of envs (and so ``--total-timesteps`` and the batch
  are global too); each rank steps ``num_envs / world_size`` of them;
- ``average_gradients``: the mean of the ranks' gradients, before clipping and the optimizer step (each rank's
  loss is a mean over an equal share of the global minibatch, so the mean gradient is the global one);
- ``global_moments`` / ``global_mean_std``: advantage normalization over the global (mini)batch;
- ``agree``: a collective "does any rank ..." (a non-finite loss, a stop signal), so every rank takes the same
  branch and none waits forever in a collective the others skipped;
- ``mean_metrics`` / ``global_rollout_view``: every logged statistic over the global batch;
- ``merge_running_moments``: running mean/variance statistics (observation and reward normalizers) merged
  over the ranks after each rollout, so that every rank normalizes with the same statistics;
- ``gather_to_main`` / ``broadcast_object``: per-rank checkpoint state to rank 0, and the loaded state back.

A dead peer makes a collective fail; ``is_peer_failure`` recognizes that, and the loop turns it into
``PeerLost``, a ``TrainingStopped`` that names the last good checkpoint.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from multiscene.runtime import TrainingStopped

if TYPE_CHECKING:
    from collections.abc import Iterable

    from multiscene.algos.onpolicy.base import Advantages
    from multiscene.algos.onpolicy.rollout import Rollout
    from multiscene.config import TrainConfig

TIMEOUT_ENV = "MULTISCENE_DIST_TIMEOUT_S"
"""Seconds a collective may wait for a silent peer before the job fails (default 1800: rank 0's periodic
evaluation runs while the other ranks wait at the next collective). A peer that died is noticed at once."""
DEFAULT_TIMEOUT_S = 1800.0
RANK_SEED_OFFSET = 500
"""Rank r >= 1 seeds its training envs with ``seed * 1000 + 500 + r`` (rank 0 keeps the single-process seed;
evaluation uses offsets 101-303 and the test split 7919, so the streams never coincide for r < 500)."""

_device = torch.device("cpu")  # where collective tensors live: the CPU for gloo, this rank's GPU for nccl


class PeerLost(TrainingStopped):
    """Another rank died or stopped answering; the job ends, the last written checkpoint is usable."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1``: a plain single process (no process group)."""

    rank: int = 0
    """This process's rank in [0, world_size)."""
    world_size: int = 1
    """Number of processes (torchrun's WORLD_SIZE: nnodes x nproc_per_node)."""
    local_rank: int = 0
    """Rank on this node; picks the GPU with nccl."""
    backend: str | None = None
    """gloo, nccl, or None in a single process."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and evaluations."""
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the job torchrun started (or stay a single process when WORLD_SIZE is unset or 1).

    Returns the context and the device this rank trains on: with CUDA, GPU ``LOCAL_RANK`` and nccl; otherwise
    the CPU and gloo. The timeout of every collective is ``$MULTISCENE_DIST_TIMEOUT_S`` (default 1800 s).
    """
    global _device
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return DistContext(), device
    rank_, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank_, world_size=size, timeout=timeout)
    _device = device if backend == "nccl" else torch.device("cpu")
    return DistContext(rank_, size, local_rank, backend), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_all() -> None:
    """Every rank waits here until all have arrived (nothing to do alone). Called when the training loop ends,
    before any rank goes on to leave the job: a rank that tore its process group down while rank 0 was still
    inside the last checkpoint's gather ended with "terminate called without an active exception" (SIGABRT)."""
    if is_distributed():
        dist.barrier()


def is_peer_failure(error: BaseException) -> bool:
    """True for the errors a collective raises when a peer died or timed out (gloo: "Connection closed by
    peer", nccl: a watchdog timeout); False for anything else, which must surface as itself."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("connection closed by peer", "connection reset", "timed out", "gloo", "nccl")
    )


# ----------------------------------------------------------------------------------------------------------
# Configuration


def local_config(cfg: TrainConfig, size: int) -> TrainConfig:
    """This rank's share of ``cfg``: ``num_envs / size`` envs; the other fields unchanged.

    ``cfg.num_envs`` is the global number of envs, so a 2-process run of ``--num-envs 16`` has the same
    batch, minibatches and budget per update as a 1-process run. Raises ConfigError when the envs do not
    split evenly (the ranks' equal shares are what makes the mean gradient the global one).
    """
    from multiscene.config import ConfigError, replace

    if size == 1:
        return cfg
    if cfg.num_envs < size:
        raise ConfigError(
            f"torchrun started {size} processes but --num-envs is {cfg.num_envs}: each process needs at least "
            f"one env. --num-envs is the global number of envs; use a multiple of {size} (e.g. {size}), or "
            "fewer processes (--nproc_per_node)."
        )
    if cfg.num_envs % size:
        raise ConfigError(
            f"--num-envs ({cfg.num_envs}) must be divisible by the number of processes ({size}): it is the "
            f"global number of envs, split evenly over the ranks. Nearest allowed: "
            f"{cfg.num_envs // size * size} or {(cfg.num_envs // size + 1) * size}."
        )
    local = replace(cfg, num_envs=cfg.num_envs // size)
    if cfg.minibatch_by == "env" and local.num_envs % cfg.num_minibatches:
        raise ConfigError(
            f"--num-minibatches ({cfg.num_minibatches}) must divide each process's envs (--num-envs "
            f"{cfg.num_envs} / {size} processes = {local.num_envs}): a minibatch takes whole env sequences "
            f"from every rank. Allowed: {[d for d in range(1, local.num_envs + 1) if local.num_envs % d == 0]}."
        )
    if cfg.minibatch_by == "step" and local.batch_size % cfg.num_minibatches:
        raise ConfigError(
            f"--num-minibatches ({cfg.num_minibatches}) must divide each process's batch ({local.batch_size} "
            f"steps = --num-envs / {size} x --num-steps) with --minibatch-by step."
        )
    return local


# ----------------------------------------------------------------------------------------------------------
# Collectives (each a no-op, touching nothing, in a single process)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks, in one flat all-reduce (call after backward, before
    clipping: the clipped norm is then the global gradient's, equal on every rank)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _all_sum(values: torch.Tensor) -> torch.Tensor:
    out = values.to(_device, torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def global_moments(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of ``x`` over the valid entries of every rank: two all-reduces of sums, in
    float64 (the second pass around the global mean avoids the cancellation of E[x^2] - E[x]^2)."""
    if mask is None:
        m = torch.ones_like(x)
    else:
        m = mask.to(x.dtype)
        while m.dim() < x.dim():
            m = m.unsqueeze(-1)
        m = m.expand_as(x)
    sums = _all_sum(torch.stack([(x * m).sum().double(), m.sum().double()]))
    count = sums[1].clamp_min(1.0)
    mean = (sums[0] / count).to(x.dtype)
    sq = _all_sum(((x - mean) ** 2 * m).sum().double()[None])[0]
    return mean, (sq / count).to(x.dtype)


def global_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation (``Tensor.std``'s) of ``x`` over every rank."""
    mean, var = global_moments(x)
    n = _all_sum(torch.tensor([float(x.numel())], dtype=torch.float64))[0]
    return mean, (var * (n / (n - 1).clamp_min(1.0))).sqrt().to(x.dtype)


def agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def max_int(value: int) -> int:
    """The largest ``value`` over the ranks (e.g. a signal number, 0 when none arrived)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def agree_on_bad_term(bad: str | None) -> str | None:
    """The non-finite term of this rank, or, when only another rank had one, a name saying so: every rank
    then skips the update together (issue #6's rule, kept in lockstep)."""
    if not agree(bad is not None):
        return None
    return bad if bad is not None else "another rank's loss"


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the ranks (equal shares: the mean of means is the global mean)."""
    if not is_distributed() or not metrics:
        return metrics
    keys = sorted(metrics)
    values = _all_sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, values.tolist())}


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the same seed already gives the same init; this makes
    it so across machines whose kernels may differ)."""
    if not is_distributed():
        return
    for t in module.state_dict().values():
        buf = t.detach().to(_device)
        dist.broadcast(buf, src=0)
        t.copy_(buf.to(t.device))


def global_rollout_view(rollout: Rollout, adv: Advantages) -> tuple[Rollout, Advantages]:
    """The parts of a rollout the logged statistics read (episodes, values, returns, DVE alpha), joined over
    the ranks along the env axis; the other fields stay this rank's."""
    import dataclasses

    if not is_distributed():
        return rollout, adv
    mine = (rollout.episodes, rollout.values, adv.returns, rollout.alpha)
    parts = all_gather_objects(mine)
    episodes = [e for p in parts for e in p[0]]
    values = torch.cat([p[1] for p in parts], dim=1)
    returns = torch.cat([p[2] for p in parts], dim=1)
    alpha = None if rollout.alpha is None else torch.cat([p[3] for p in parts], dim=1)
    return dataclasses.replace(rollout, episodes=episodes, values=values, alpha=alpha), adv._replace(returns=returns)


def merge_running_moments(
    mean: torch.Tensor, var: torch.Tensor, count: float, before: tuple[torch.Tensor, torch.Tensor, float]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Merge running (mean, var, count) statistics that started from the same ``before`` on every rank and
    then each absorbed its own data: the result is what one process would hold after absorbing all of it.

    Per rank, count * (var + mean^2) is the running sum of squares and count * mean the sum; each rank's
    includes ``before``'s, which is counted once (Chan et al.'s parallel update, written with sums).
    """
    if not is_distributed():
        return mean, var, count
    m0, v0, n0 = (torch.as_tensor(x, dtype=torch.float64) for x in before)
    m, v = mean.to(torch.float64), var.to(torch.float64)
    n = torch.as_tensor(count, dtype=torch.float64)
    shape = m.shape
    size = dist.get_world_size()
    packed = torch.cat([(n * m).reshape(-1), (n * (v + m * m)).reshape(-1), n.reshape(1)])
    total = _all_sum(packed)
    k = m.numel()
    n_all = total[-1] - (size - 1) * n0
    s = total[:k].reshape(shape) - (size - 1) * n0 * m0
    sq = total[k : 2 * k].reshape(shape) - (size - 1) * n0 * (v0 + m0 * m0)
    new_mean = s / n_all
    new_var = (sq / n_all - new_mean * new_mean).clamp_min(0.0)
    return new_mean.to(mean.dtype), new_var.to(var.dtype), float(n_all)
