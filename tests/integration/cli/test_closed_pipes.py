"""A process whose stdout and stderr pipes were closed by the reader (a log shipper that
died, ``| head``) still obeys SIGTERM: logging fails silently, the signal ladder runs.

Each service is a real process with real pipes; the test reads them until the service is
up, closes its read ends, sends SIGTERM once and waits a bounded time for the exit, and for
every child process to be gone. ``up`` gets a second SIGTERM while it stops its children:
that hurries the stop along, it must not cut it short and orphan them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.agents import agent_env, pid_alive
from tests.support.processes import coordinator_env
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(120)

#: the processes below each started process when it was signalled, for the clean-up
_SEEN: dict[int, set[int]] = {}

#: the first SIGTERM drains an idle agent and stops an idle coordinator within this
EXIT_BOUND = 15.0


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _commands(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            found.append(str(pid))
    return found


@contextmanager
def _piped(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        # children seen earlier too: one orphaned by a failed stop is no descendant any more
        for pid in [proc.pid, *_descendants(proc.pid), *_SEEN.pop(proc.pid, set())]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _close_pipes_then_sigterm(proc: subprocess.Popen[bytes], *, signals: int = 1) -> float:
    """Close the read ends, SIGTERM (``signals`` times, 0.3 s apart); seconds until the
    process exited, every process below it included."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    children = _SEEN[proc.pid] = _descendants(proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for _ in range(signals - 1):
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"SIGTERM ignored with closed pipes: still running after {EXIT_BOUND} s"
        ) from None
    took = time.monotonic() - started
    deadline = time.monotonic() + 5
    while alive := [pid for pid in children if pid_alive(pid)]:
        assert time.monotonic() < deadline, f"children outlived it: {_commands(alive)}"
        time.sleep(0.1)
    print(f"exited {took:.1f} s after SIGTERM with its pipes closed")
    return took


def _coordinator(tmp_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = coordinator_env(
        f"sqlite:///{tmp_path / 'coordinator.db'}", PORT=str(port), LOG_LEVEL="INFO"
    )
    return [sys.executable, "-m", "claude_cluster", "coordinator", "--migrate"], env


def test_the_coordinator_obeys_sigterm_with_its_pipes_closed(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _coordinator(tmp_path, port)
    with _piped(argv, env, tmp_path) as proc:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        _close_pipes_then_sigterm(proc)


def test_the_agent_obeys_sigterm_with_its_pipes_closed(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _coordinator(tmp_path, port)
    with _piped(argv, env, tmp_path) as coordinator:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", coordinator)
        agent_port = free_port()
        agent = agent_env(
            url,
            tmp_path / "ws",
            agent_port,
            AGENT_RUNNER="command",
            AGENT_COMMAND="true",
            RUN_SANDBOX="off",
        )
        with _piped([sys.executable, "-m", "claude_cluster.agent"], agent, tmp_path) as proc:
            _wait_http(f"http://127.0.0.1:{agent_port}/health", proc)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            deadline = time.monotonic() + 30
            while not httpx.get(f"{url}/api/v1/agents", headers=headers).json():
                assert time.monotonic() < deadline, "the agent did not register"
                time.sleep(0.2)
            _close_pipes_then_sigterm(proc)
            assert proc.returncode == 0, "drained and exited as the first signal asks"


def test_up_obeys_sigterm_with_its_pipes_closed(tmp_path: Path) -> None:
    port, agent_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(HOME=str(tmp_path / "home"), AGENT_COMMAND="true", LOG_LEVEL="INFO")
    argv = [
        sys.executable,
        "-m",
        "claude_cluster",
        "up",
        "--agents",
        "1",
        "--port",
        str(port),
        "--agent-port",
        str(agent_port),
        "--runner",
        "command",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    with _piped(argv, env, tmp_path) as up:
        assert up.stdout is not None
        output = b""
        deadline = time.monotonic() + 90
        while b"claude-cluster is up" not in output:
            assert up.poll() is None and time.monotonic() < deadline, "up did not come up"
            output += up.stdout.readline()
        assert len(_descendants(up.pid)) >= 2, "a coordinator and an agent"
        # an impatient second signal while `up` stops its children must not orphan them
        _close_pipes_then_sigterm(up, signals=2)
