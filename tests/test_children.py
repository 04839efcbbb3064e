"""Children that end with their parent (multiscene/children.py): a launcher killed with SIGKILL takes them along.

Each test starts a small launcher process, which starts a child and reports the child's pid; the test kills the
launcher and watches the child. The control (a child started without the request) must outlive the launcher,
so the check can fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from multiscene import children

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")

# The child: honours the launcher's request (as the multiscene command line does), writes whether the mark is
# still in its environment, then waits.
CHILD = textwrap.dedent("""
    import os, sys, time
    from multiscene.children import PARENT_ENV, honour_parent_request
    placed = honour_parent_request()
    with open(sys.argv[1], "w") as f:
        f.write(f"{placed} {PARENT_ENV in os.environ}")
    time.sleep(120)
""")

# The launcher: starts the child from a worker thread (as paired_runs' ThreadPoolExecutor does), with or without
# child_env, prints the child's pid and waits for it.
LAUNCHER = textwrap.dedent("""
    import subprocess, sys, threading, time
    from multiscene.children import child_env
    mode, child, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    def start():
        env = child_env() if mode == "mark" else None
        proc = subprocess.Popen([sys.executable, "-c", child, ready], env=env)
        print(proc.pid, flush=True)
        proc.wait()
    threading.Thread(target=start).start()
    time.sleep(120)
""")

# The launcher of a non-multiscene child (a peer script, torchrun): the request as preexec_fn, kept over exec.
PREEXEC_LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    from multiscene.children import end_with_this_process
    proc = subprocess.Popen(["sleep", "120"], preexec_fn=end_with_this_process())
    print(proc.pid, flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan is reaped by init, but not at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _launch(args: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(children.PARENT_ENV, None)
    launcher = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, env=env)
    line = launcher.stdout.readline()
    assert line.strip(), "the launcher printed no child pid"
    return launcher, int(line)


def _wait_file(path: Path, seconds: float = 60.0) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"the child did not start within {seconds} s")


@pytest.mark.parametrize("mode", ["mark", "control"])
def test_a_marked_child_ends_when_its_launcher_is_killed(tmp_path: Path, mode: str) -> None:
    ready = tmp_path / "ready"
    launcher, child = _launch([LAUNCHER, mode, CHILD, str(ready)])
    try:
        placed, inherited = _wait_file(ready).split()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        if mode == "mark":
            assert placed == "True", "the child did not put the request in place"
            assert inherited == "False", "the mark stayed in the child's environment (its children would inherit it)"
            assert _wait_gone(child, 10.0), "the marked child outlived its killed launcher"
        else:
            assert placed == "False"
            assert not _wait_gone(child, 2.0), "control: an unmarked child should outlive its launcher"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_preexec_request_survives_exec_of_a_foreign_child(tmp_path: Path) -> None:
    launcher, child = _launch([PREEXEC_LAUNCHER])
    try:
        time.sleep(0.5)
        assert _alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        assert _wait_gone(child, 10.0), "the exec'd child outlived its killed launcher"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_paired_runs_marks_every_training_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from multiscene.bench import paired_runs

    seen: list[dict[str, str]] = []

    class Done:
        returncode = 0

    def fake_run(command, **kwargs):  # noqa: ANN001, ANN202 - subprocess.run's signature
        seen.append(kwargs["env"])
        return Done()

    monkeypatch.setattr(paired_runs.subprocess, "run", fake_run)
    run = paired_runs.Run("CartPole-v1", 1000, "a2c", 1, tmp_path / "run")
    paired_runs.train(run, ["true"])
    assert seen and seen[0][children.PARENT_ENV] == str(os.getpid())
    assert seen[0]["OMP_NUM_THREADS"] == "1"


def test_a_request_naming_a_dead_parent_ends_the_child_at_once(tmp_path: Path) -> None:
    # The launcher died between starting the child and the child's request: the child must not stay.
    code = "from multiscene.children import end_with_parent; import time; end_with_parent(1 << 22); time.sleep(30)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
    assert proc.returncode == -signal.SIGTERM
