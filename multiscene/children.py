"""Child processes that end with their parent.

The house rule is that no command leaves a process behind. A benchmark that starts ``multiscene train``
processes (``multiscene/bench/paired_runs.py``, ``benchmarks/*.py``) and is then killed with SIGTERM or SIGKILL
does not get to stop its children itself: Ctrl-C reaches the whole foreground process group, ``kill PID`` only
the parent. Linux can deliver a signal to a process when its parent dies if the process asks for it
(``prctl(PR_SET_PDEATHSIG)``); a ``multiscene train`` child given SIGTERM writes a checkpoint and exits, as it
does for any SIGTERM.

Two ways to ask, for two kinds of launchers:

- ``child_env(env)`` marks the environment of a ``python -m multiscene ...`` child with the launcher's pid; the
  child's ``multiscene`` command line calls ``honour_parent_request()`` first thing. Safe from a thread (the
  benchmarks' ``ThreadPoolExecutor``), where ``subprocess``'s ``preexec_fn`` is not. The mark is removed from the
  child's environment on reading, so the child's own children (Ray workers, torchrun ranks) do not inherit it.
- ``end_with_parent(parent_pid)`` directly: as a ``ProcessPoolExecutor`` initializer, or as ``preexec_fn`` of a
  single-threaded launcher whose child is not ours (a peer script, ``torchrun``: the request survives ``exec``).

Elsewhere than on Linux both are no-ops (``end_with_parent`` returns False); the children then outlive a killed
parent as before.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping

__all__ = ["PARENT_ENV", "child_env", "end_with_parent", "end_with_this_process", "honour_parent_request"]

PARENT_ENV = "MULTISCENE_END_WITH_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when the thread that started it exits; True when the
    request is in place. If ``parent_pid`` is already gone (the parent died between starting this process and
    this call), ``sig`` is sent at once, as the kernel would have."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return True


def end_with_this_process() -> Callable[[], object]:
    """``preexec_fn`` / pool initializer that makes the child end with the calling process."""
    return functools.partial(end_with_parent, os.getpid())


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) that asks a ``multiscene`` child to end with this process."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    return out


def honour_parent_request() -> bool:
    """Called by the ``multiscene`` command line before anything else: when the launcher asked for it
    (``child_env``), end with the launcher. True when the request was found and put in place."""
    value = os.environ.pop(PARENT_ENV, None)
    if not value:
        return False
    try:
        parent = int(value)
    except ValueError:
        return False
    return end_with_parent(parent)
